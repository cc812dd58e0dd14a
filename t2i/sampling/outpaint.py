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

MODES = ("poor-man", "pad")
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
    check(mode in MODES, "outpaint_mode", mode, "unknown outpainting mode", choices=MODES)
    if mode == "poor-man":
        return poor_man_canvas(init, sides, mask_blur)
    return pad_canvas(init, sides, feather=mask_blur)


