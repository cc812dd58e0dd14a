"""Latents to pictures with the shared VAE, as the pipelines decode them: the call's own tiling and slicing,
and one retry in tiles when a decode runs out of GPU memory."""

from __future__ import annotations

import copy
import logging

import torch
from PIL import Image

log = logging.getLogger("t2i")


RETRY_TILE = 256  # pixels: the tile an out-of-memory decode is retried with (or the VAE's own, if smaller)


def _call_vae(vae, tile_size: int | None, slicing: bool):
    """A shallow copy of the shared VAE with this call's tiling and slicing: the flags are set on the
    copy (its submodules are the shared ones), so no other generation sees them."""
    view = copy.copy(vae)
    view.use_slicing = slicing
    view.use_tiling = tile_size is not None
    if tile_size is not None:
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        view.tile_sample_min_size, view.tile_latent_min_size = tile_size, tile_size // scale
    return view


def _decode_once(vae, latents: torch.Tensor, generators) -> torch.Tensor:
    """Latents -> images in [-1, 1], retrying in fp32 if fp16 gave NaN.

    The SD 1.x VAE overflows in fp16 on some latents and the pipelines never upcast it: the result
    is a black image. Detecting it costs one isfinite over the decoded batch. The retry decodes
    with an fp32 copy of the VAE, so the shared model is never changed, even for a moment.
    """
    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    if not torch.isfinite(images).all() and vae.dtype != torch.float32:
        log.warning("the %s VAE decode gave NaN (a black image): decoding again in fp32", vae.dtype)
        vae = copy.deepcopy(vae).float()
        images = vae.decode(latents.float() / vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    return images


def decode(pipe, latents: torch.Tensor, generators, tile_size: int | None = None,
           slicing: bool = False) -> tuple[list[Image.Image], int | None]:
    """(PIL images, the VAE tile size used or None), decoded as the pipelines decode them.

    A decode that runs out of GPU memory is tried again in tiles, an image at a time (as ComfyUI
    does), with a warning; the tile size used goes into each image's record so that it re-makes.
    """
    try:
        images = _decode_once(_call_vae(pipe.vae, tile_size, slicing), latents, generators)
    except torch.OutOfMemoryError:
        if tile_size is not None and slicing:
            raise
        tile_size = tile_size or min(RETRY_TILE, pipe.vae.tile_sample_min_size)
        log.warning("the VAE decode ran out of memory: decoding again in %d-pixel tiles, an image at a time",
                    tile_size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        images = _decode_once(_call_vae(pipe.vae, tile_size, True), latents, generators)
    images = pipe.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * len(images))
    return images, tile_size
