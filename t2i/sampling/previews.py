"""What the sampler predicts the finished image to be, step by step: the denoising strip and live previews.

A1111's live preview shows the clean-image estimate x0 of the current step, not the noisy latent. The call's
own scheduler (t2i builds one a call) has its `step` wrapped: each step's x0 is the scheduler's own
`pred_original_sample` (or `denoised`) where it gives one, else it is computed from the step's sample and
UNet output (t2i.sampling.noise_level) for the samplers that keep none (DPM++ multistep and singlestep,
UniPC, DEIS, PLMS). The wrapper only reads: the sampled image is the same with previews on or off.

- The strip (`--strip EVERY`): every EVERY-th step's x0 is kept and decoded with the VAE at the end; the
  final image closes the strip.
- Live previews (the server's `current_image`): the latest x0 turned into pixels either by the VAE ("full",
  A1111's "Full": a decoder call a preview) or by a linear map from the latent's channels to RGB fitted once
  to the model's own VAE on encoded colour blocks ("approx", A1111's "Approx cheap", which ships fixed
  coefficients for SD's VAE): no VAE call during sampling. SD's VAE is close to linear in colour, which
  is why A1111's fixed map works for it; a VAE that is not (the `demo` model's: 57/255 mean error) shows
  its previews rightly placed but off in colour, and "full" is the choice there.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

from t2i.sampling.noise_level import alpha_bar, clean_and_noise


class Previews:
    """Wraps `scheduler.step` to keep x0 estimates: every `every`-th one (the strip; 0: none) and the latest."""

    def __init__(self, scheduler, every: int = 0):
        self.every, self.calls = every, 0
        self.frames: list[torch.Tensor] = []
        self._latest: torch.Tensor | None = None
        self._lock = threading.Lock()  # the server reads `latest` from another thread
        original = scheduler.step

        def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            clean = getattr(out, "pred_original_sample", None)
            if clean is None:
                clean = getattr(out, "denoised", None)
            if clean is None:
                alpha = alpha_bar(scheduler, timestep, sample.dtype, sample.device)
                clean = clean_and_noise(sample, model_output, alpha, scheduler.config.prediction_type)[0]
            self._keep(clean.detach())
            return out if return_dict else out.to_tuple()

        scheduler.step = step

    def _keep(self, clean: torch.Tensor) -> None:
        self.calls += 1
        with self._lock:
            self._latest = clean
        if self.every and self.calls % self.every == 0:
            self.frames.append(clean.clone())

    def reset(self) -> None:
        """A new batch: no frames yet."""
        self.calls, self.frames = 0, []
        with self._lock:
            self._latest = None

    @property
    def latest(self) -> torch.Tensor | None:
        with self._lock:
            return self._latest


PREVIEW_MODES = ("approx", "full")


def preview_image(model, pipe, latents: torch.Tensor, size: tuple[int, int], mode: str) -> Image.Image:
    """The batch's first image as a live preview: by the VAE ("full") or the fitted colour map ("approx")."""
    if mode == "full":
        return decode_frames(pipe, [latents[:1]])[0][0]
    return approximate_image(latents, latent_colours(model), size, pipe.vae.config.scaling_factor)


def decode_frames(pipe, frames: list[torch.Tensor]) -> list[list[Image.Image]]:
    """Each kept x0 decoded with the VAE: frames[i] -> the batch's images at that step."""
    decoded = []
    with torch.no_grad():
        for latents in frames:
            pixels = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
            decoded.append(pipe.image_processor.postprocess(pixels, output_type="pil"))
    return decoded


def fit_latent_to_rgb(vae, samples: int = 64, side: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(4x3 matrix, 3 offsets) mapping a latent's channels to RGB in [-1, 1], by least squares on images
    of coloured blocks encoded with `vae` (each latent pixel against its patch's mean colour)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.rand(samples, 3, 4, 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(blocks, size=(side, side), mode="nearest")
    with torch.no_grad():
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu()
    scale = side // latents.shape[-1]
    colours = torch.nn.functional.avg_pool2d(images, scale)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).numpy()
    y = colours.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    return solution[:-1], solution[-1]


def latent_colours(model) -> tuple[np.ndarray, np.ndarray]:
    """The linear map for `model`'s VAE, fitted once per model (cached with its other per-model extras)."""
    return model.adapters.get("latent-to-rgb", lambda: fit_latent_to_rgb(model.pipe.vae))


def approximate_image(latents: torch.Tensor, fit: tuple[np.ndarray, np.ndarray], size: tuple[int, int],
                      scaling_factor: float) -> Image.Image:
    """The first image of a batch of latents as pixels, by the fitted linear map, resized to `size`."""
    matrix, offset = fit
    channels = (latents[0].detach().float().cpu() / scaling_factor).permute(1, 2, 0).numpy()
    rgb = np.clip((channels @ matrix + offset + 1) * 127.5, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
