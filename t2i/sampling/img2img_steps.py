"""A1111's img2img steps around the sampler: resize modes, mask blur and invert, masked-content fill,
"only masked" inpainting, and the overlay that keeps unmasked pixels as they were.

The server runs them for img2img requests and generation runs them for outpainting, before and
after the same inpainting call `t2i generate` makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from t2i.errors import check
from t2i.formats.images import to_rgb
from t2i.sampling.config import RESIZE_MODES

FILL_MODES = {0: "fill", 1: "original"}  # A1111's 2 (latent noise) and 3 (latent nothing) act on latents


def binary_mask(image: Image.Image) -> Image.Image:
    """An L mask, white repainted: from the alpha channel when the image has transparency (a brush
    stroke on a clear layer, as A1111's sketch sends it), else from its brightness."""
    lowest_alpha: Any = image.getchannel("A").getextrema()[0] if image.mode in ("RGBA", "LA") else 255
    if lowest_alpha < 255:
        return image.getchannel("A").point(lambda a: 255 if a > 128 else 0)
    return to_rgb(image).convert("L")


def resize_image(image: Image.Image, mode: int, width: int, height: int) -> Image.Image:
    """A1111's resize modes: 0 stretch, 1 fill the frame and crop the overflow, 2 fit inside and
    extend the edge rows or columns into the empty bands."""
    if image.size == (width, height):
        return image
    if mode == 0:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == 1:
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    inner = image.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new(image.mode, (width, height))
    left, top = (width - inner.width) // 2, (height - inner.height) // 2
    if top > 0:
        canvas.paste(inner.crop((0, 0, inner.width, 1)).resize((inner.width, top)), (left, 0))
        bottom = height - top - inner.height
        if bottom > 0:
            edge = inner.crop((0, inner.height - 1, inner.width, inner.height)).resize((inner.width, bottom))
            canvas.paste(edge, (left, top + inner.height))
    if left > 0:
        canvas.paste(inner.crop((0, 0, 1, inner.height)).resize((left, inner.height)), (0, top))
        right = width - left - inner.width
        if right > 0:
            edge = inner.crop((inner.width - 1, 0, inner.width, inner.height)).resize((right, inner.height))
            canvas.paste(edge, (left + inner.width, top))
    canvas.paste(inner, (left, top))
    return canvas


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: the masked area painted with the colours around it.

    Normalised blurring (blur of the kept pixels / blur of the kept weight) at growing radii fills
    each masked pixel from the nearest kept ones; a hole no radius reaches gets the mean colour.
    """
    from scipy.ndimage import gaussian_filter

    pixels = np.asarray(image, dtype=np.float64)
    keep = (np.asarray(mask) < 128).astype(np.float64)
    result, todo = pixels.copy(), keep == 0
    for radius in (2, 8, 32, 128):
        weight = gaussian_filter(keep, radius)
        reached = todo & (weight > 1e-3)
        for channel in range(pixels.shape[2]):
            blurred = gaussian_filter(pixels[..., channel] * keep, radius)
            result[..., channel][reached] = blurred[reached] / weight[reached]
        todo &= ~reached
    if todo.any():
        result[todo] = pixels[keep > 0].mean(axis=0) if keep.any() else 127.5
    return Image.fromarray(np.clip(result + 0.5, 0, 255).astype(np.uint8))


def _masked_box(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The masked area's bounding box plus `padding`, grown to the output's aspect ratio and kept
    inside the image: the region "only masked" inpainting repaints at full resolution."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    assert box is not None  # callers pass a mask with something painted
    x1, y1, x2, y2 = box
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, mask.width), min(y2 + padding, mask.height)
    box_w, box_h = x2 - x1, y2 - y1
    if box_w / box_h < width / height:
        box_w = min(round(box_h * width / height), mask.width)
    else:
        box_h = min(round(box_w * height / width), mask.height)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    x1 = min(max(cx - box_w // 2, 0), mask.width - box_w)
    y1 = min(max(cy - box_h // 2, 0), mask.height - box_h)
    return x1, y1, x1 + box_w, y1 + box_h


@dataclass(frozen=True)
class Img2ImgInputs:
    image: Image.Image  # what generation starts from, at the output size
    mask: Image.Image | None  # L, white repainted, at the output size
    finish: Callable[[Image.Image], Image.Image]  # a generated image -> the image A1111 returns


def prepare(init: Image.Image, mask: Image.Image | None, *, width: int, height: int, resize_mode: int,
            mask_blur: int, invert: bool, fill: int, only_masked: bool, padding: int) -> Img2ImgInputs:
    """The init image and mask as A1111 prepares them, and what it does to each result."""
    check(resize_mode in RESIZE_MODES, "resize_mode", resize_mode, "not a resize mode t2i has",
          choices=[f"{k} ({v})" for k, v in RESIZE_MODES.items()])
    init = to_rgb(init)
    if mask is None:
        return Img2ImgInputs(resize_image(init, resize_mode, width, height), None, lambda image: image)
    check(fill in FILL_MODES, "inpainting_fill", fill, "not a masked-content mode t2i has",
          choices=[f"{k} ({v})" for k, v in FILL_MODES.items()])
    mask = binary_mask(mask)
    check(mask.size == init.size, "mask", f"{mask.width}x{mask.height}",
          f"must be the init image's size, {init.width}x{init.height}")
    if invert:
        mask = ImageOps.invert(mask)
    check(mask.getbbox() is not None, "mask", None, "is empty: nothing is marked for repainting")
    if mask_blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(mask_blur))
    if only_masked:
        box = _masked_box(mask, padding, width, height)
        region, region_mask = init.crop(box), mask.crop(box)
        start, start_mask = resize_image(region, 2, width, height), resize_image(region_mask, 2, width, height)
        overlay_base = init
    else:
        box = None
        start = resize_image(init, resize_mode, width, height)
        start_mask = resize_image(mask, resize_mode, width, height)
        overlay_base = start
    if fill == 0:
        start = fill_masked(start, start_mask)
    overlay_mask = mask if box else start_mask

    def finish(image: Image.Image) -> Image.Image:
        # unmasked pixels stay exactly as they were; masked ones come from the result
        if box is not None:
            canvas = overlay_base.copy()
            canvas.paste(image.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS), box[:2])
            image = canvas
        return Image.composite(image, overlay_base, overlay_mask)

    return Img2ImgInputs(start, start_mask, finish)
