"""Outpainting: the image on a larger canvas, the new border masked and filled by the inpainting path.

Two canvases, both made here with no model:
- "poor-man": A1111's "Poor man's outpainting" geometry. The canvas grows to whole multiples of 64
  (the padding split between opposite sides in the asked proportion), the new border is black, and
  the mask keeps the original inset by twice the mask blur on each side that grows; the mask is then
  blurred by twice the blur, as A1111 sets its mask blur.
- "pad": ComfyUI's ImagePadForOutpaint. The canvas grows by what is asked, rounded up to whole
  latents (8 pixels) on a side that grows, the border is mid grey, and the mask fades into the
  original over `feather` pixels (squared).
Generation then repaints the mask as inpainting does, and the original pixels outside the mask are
pasted back byte for byte (A1111's overlay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from t2i.errors import check

if TYPE_CHECKING:
    from PIL import Image

MODES = ("poor-man", "mk2", "pad")
SIDES = ("left", "right", "up", "down")
FILLS = ("fill", "original")  # A1111's masked content 0 and 1 (its latent noise and nothing act on latents)


@dataclass(frozen=True)
class Canvas:
    image: Image.Image  # the original on the larger canvas
    mask: Image.Image  # L: white is repainted
    box: tuple[int, int, int, int]  # where the original sits (left, top, right, bottom)


def parse_sides(text: str, field: str = "outpaint") -> dict[str, int]:
    """'left=128,right=64' -> {'left': 128, 'right': 64, 'up': 0, 'down': 0}; 'all=64' grows every side."""
    sides = dict.fromkeys(SIDES, 0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        check(sep == "=" and (name in SIDES or name == "all"), field, text,
              "must be SIDE=PIXELS pairs, e.g. left=128,right=128 (sides: left, right, up, down, all)")
        check(value.strip().isdigit(), field, text,
              f"{name}={value.strip()}: the pixels must be a whole number, 0 or more")
        for side in (SIDES if name == "all" else (name,)):
            sides[side] = int(value)
    check(any(sides.values()), field, text, "grows no side", hint="e.g. left=128")
    return sides


# numpy and PIL are imported where a canvas is made: GenerationConfig checks the sides with no heavy import


def poor_man_canvas(init: Image.Image, sides: dict[str, int], mask_blur: int) -> Canvas:
    """A1111's "Poor man's outpainting" canvas and mask (its script's arithmetic, one tile)."""
    from PIL import Image, ImageDraw

    left, right, up, down = (sides[s] for s in SIDES)
    width = math.ceil((init.width + left + right) / 64) * 64
    height = math.ceil((init.height + up + down) / 64) * 64
    if left:
        left = left * (width - init.width) // (left + right)
    if right:
        right = width - init.width - left
    if up:
        up = up * (height - init.height) // (up + down)
    if down:
        down = height - init.height - up
    if not left and not right:  # the rounding to 64 still grows it: the original stays at the left
        right = width - init.width
    if not up and not down:
        down = height - init.height
    canvas = Image.new("RGB", (width, height))
    canvas.paste(init, (left, up))
    mask = Image.new("L", canvas.size, 255)
    inset = 2 * mask_blur
    ImageDraw.Draw(mask).rectangle((left + (inset if left else 0), up + (inset if up else 0),
                                    width - right - (inset if right else 0), height - down - (inset if down else 0)),
                                   fill=0)
    return Canvas(canvas, mask, (left, up, left + init.width, up + init.height))


def pad_canvas(init: Image.Image, sides: dict[str, int], feather: int) -> Canvas:
    """ComfyUI's ImagePadForOutpaint: grey border, and a mask that fades into the original."""
    import numpy as np
    from PIL import Image

    left, right, up, down = (sides[s] for s in SIDES)
    # the canvas a whole number of latents: what is missing goes to a side that grows
    if (extra := -(init.width + left + right) % 8):
        left, right = (left + extra, right) if left and not right else (left, right + extra)
    if (extra := -(init.height + up + down) % 8):
        up, down = (up + extra, down) if up and not down else (up, down + extra)
    width, height = init.width + left + right, init.height + up + down
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    canvas.paste(init, (left, up))
    mask = np.ones((height, width), dtype=np.float64)
    rows, cols = np.mgrid[0:init.height, 0:init.width]
    # distance to each edge that grows (an edge that does not grow is never near a new pixel)
    near = [d for d, grows in ((cols, left), (init.width - 1 - cols, right), (rows, up),
                               (init.height - 1 - rows, down)) if grows]
    distance = np.minimum.reduce(near) if near else np.full(rows.shape, np.inf)
    fade = np.where(distance < feather, ((feather - distance) / max(feather, 1)) ** 2, 0.0) if feather else 0 * rows
    mask[up:up + init.height, left:left + init.width] = fade
    image_mask = Image.fromarray(np.clip(mask * 255 + 0.5, 0, 255).astype(np.uint8))
    return Canvas(canvas, image_mask, (left, up, left + init.width, up + init.height))


def make_canvas(init: Image.Image, sides: dict[str, int], mode: str, mask_blur: int) -> Canvas:
    check(mode in ("poor-man", "pad"), "outpaint_mode", mode, "makes its canvas a side at a time (mk2_step)")
    if mode == "poor-man":
        return poor_man_canvas(init, sides, mask_blur)
    return pad_canvas(init, sides, feather=mask_blur)




# ---- "Outpainting mk2": one side at a time, the new border started from noise shaped like the image ----


def _centred_fft(data):
    import numpy as np

    return np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(data, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))


def _centred_ifft(data):
    import numpy as np

    return np.fft.ifftshift(np.fft.ifft2(np.fft.fftshift(data, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))


def match_histogram(source, reference):
    """`source`'s values mapped so that their distribution is `reference`'s (quantile matching)."""
    import numpy as np

    values, index, counts = np.unique(source, return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(reference, return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    ref_quantiles = np.cumsum(ref_counts) / reference.size
    return np.interp(quantiles, ref_quantiles, ref_values)[index].reshape(source.shape)


def matched_noise(image, mask, noise_q: float = 1.0, color_variation: float = 0.05):
    """The masked part of `image` (H x W x 3 in [0, 1]; `mask` H x W, 1 = new) replaced by noise whose
    spectrum follows the kept part's (raised to `noise_q`: lower keeps more detail) and whose colours
    follow the kept part's histograms; `color_variation` is how colourful the starting noise is. A
    fixed generator: the result depends on the image alone, as in A1111's script (from g-diffuser)."""
    import numpy as np

    rgb_mask = mask[..., None]
    windowed = image * (1 - rgb_mask)
    windowed = windowed / max(float(windowed.max()), 1e-12) + image.mean() * rgb_mask  # masked: the mean colour
    source = _centred_fft(windowed)
    magnitude = np.abs(source)
    phase = np.divide(source, magnitude, out=np.zeros_like(source), where=magnitude > 0)
    noise = np.random.default_rng(0).random(image.shape)
    noise = noise * color_variation + (1 - color_variation) * noise.mean(axis=2, keepdims=True)
    height, width = mask.shape
    scale = min(height, width)
    ys = (np.arange(height) / height * 2 - 1) * (height / scale)
    xs = (np.arange(width) / width * 2 - 1) * (width / scale)
    falloff = 1 / ((ys[:, None] ** 2 + 1) * (xs[None, :] ** 2 + 1))  # low frequencies first
    noise = np.real(_centred_ifft(_centred_fft(noise) * falloff[..., None]))
    shaped = np.real(_centred_ifft(np.abs(_centred_fft(noise)) ** 2 * magnitude ** noise_q * phase))
    shaped = (shaped - shaped.min()) / max(float(np.ptp(shaped)), 1e-12)
    new, kept = mask > 1e-6, mask < 1e-3
    if new.any() and kept.any():
        for channel in range(image.shape[2]):
            shaped[..., channel][new] = match_histogram(shaped[..., channel][new], image[..., channel][kept])
    return np.clip(image * (1 - rgb_mask) + shaped * rgb_mask, 0, 1)


@dataclass(frozen=True)
class Mk2Step:
    canvas: Image.Image  # the image so far, grown on one side, the new part matched noise (processing size)
    mask: Image.Image  # L: white is repainted (before the 4 x blur A1111's script sets)
    size: tuple[int, int]  # what the result is cut to: the image so far plus the pixels


def mk2_step(image: Image.Image, side: str, pixels: int, mask_blur: int, noise_q: float,
             color_variation: float) -> Mk2Step:
    """One side of A1111's "Outpainting mk2": a canvas of whole multiples of 64, the image at the far
    side, a mask inset by the blur, the new part started from matched noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    horizontal = side in ("left", "right")
    size = (image.width + (pixels if horizontal else 0), image.height + (0 if horizontal else pixels))
    process = (math.ceil(size[0] / 64) * 64, math.ceil(size[1] / 64) * 64)
    canvas = Image.new("RGB", process)
    canvas.paste(image, (pixels if side == "left" else 0, pixels if side == "up" else 0))
    mask = Image.new("L", process, 255)
    # A1111's rectangle, measured from the grown image's edge: A1111 measures it from the canvas's, the
    # same when the image is a whole number of 64s (else part of a right or bottom border stays noise)
    ImageDraw.Draw(mask).rectangle((pixels + mask_blur if side == "left" else 0,
                                    pixels + mask_blur if side == "up" else 0,
                                    size[0] - pixels - mask_blur - 1 if side == "right" else size[0] - 1,
                                    size[1] - pixels - mask_blur - 1 if side == "down" else size[1] - 1), fill=0)
    noised = matched_noise(np.asarray(canvas, dtype=np.float64) / 255, np.asarray(mask, dtype=np.float64) / 255,
                           noise_q, color_variation)
    return Mk2Step(Image.fromarray(np.rint(noised * 255).astype(np.uint8)), mask, size)
