"""Reading colour and shape back from any image, with no learning involved, so that generated
images can be scored against their prompts."""

from __future__ import annotations

import numpy as np
from PIL import Image

from t2i.shapes.world import ALL_COLOURS


def foreground(image: Image.Image) -> np.ndarray:
    """Pixels that differ clearly from the background colour (the median of the border)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    return np.linalg.norm(pixels - background, axis=-1) > 80


def colour_name(rgb: np.ndarray, candidates=ALL_COLOURS) -> str:
    names = list(candidates)
    distances = [np.linalg.norm(rgb - np.array(candidates[n], dtype=np.float32)) for n in names]
    return names[int(np.argmin(distances))]


def shape_name(mask: np.ndarray) -> str:
    """From the mask's geometry: fill of its bounding box, and where its mass sits vertically."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    box = mask[top:bottom + 1, left:right + 1].astype(np.float32)
    fill = box.mean()
    height = box.shape[0]
    upper = box[: height // 2].sum() / max(box.sum(), 1)  # an upward triangle keeps ~1/4 of its area on top
    if upper < 0.38:
        return "triangle"
    if fill > 0.87:  # a disc fills pi/4 = 0.79 of its box; a square with softened corners still ~0.9
        return "square"
    if fill > 0.68:
        return "circle"
    return "cross"


def analyse(image: Image.Image, colours=ALL_COLOURS) -> tuple[str | None, str | None]:
    """(colour name, shape name) of the image's foreground; (None, None) when there is none."""
    mask = foreground(image)
    if mask.sum() < 12:
        return None, None
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return colour_name(np.median(pixels[mask], axis=0), colours), shape_name(mask)
