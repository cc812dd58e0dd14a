"""ControlNet preprocessors that need no weights, and fitting a detected map to the output, as A1111's
ControlNet extension does them (the preprocessors' names and settings: t2i.sampling.control_modules).

A preprocessor ("module") turns the user's image into the map a ControlNet reads: canny edges, a
threshold, a blur, an XDoG scribble, a tile resample, an inversion, or the image as it is ("none").
The edge and line detectors run on the image resized so its short side is the processor resolution
(padded to a multiple of 64 with its edge pixels, as A1111 pads, then unpadded); the map is then
fitted to the output size by the unit's resize mode. OpenCV does the image work, so `canny` is
OpenCV's Canny on the same thresholds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from t2i.sampling.control_modules import (
    DEFAULT_PROCESSOR_RES,
    PREPROCESSORS,
    check_thresholds,
    pixel_perfect_resolution,
    resolve_module,
    resolve_resize_mode,
)


def _cv2():
    import cv2  # imported on use: `t2i --help` and config checks stay light

    return cv2


def _three(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2) if gray.ndim == 2 else gray


def _canny(image: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    return _three(_cv2().Canny(image, int(low or 100), int(high or 200)))


def _threshold(image: np.ndarray, level: float | None, _: float | None) -> np.ndarray:
    return ((image > (127 if level is None else level)) * 255).astype(np.uint8)


def _blur(image: np.ndarray, sigma: float | None, _: float | None) -> np.ndarray:
    return _cv2().GaussianBlur(image, (0, 0), float(sigma or 9.0))


def _xdog(image: np.ndarray, level: float | None, _: float | None) -> np.ndarray:
    """Difference of Gaussians (sigma 0.5 and 5): dark-going detail marked where it passes the threshold."""
    cv2, pixels = _cv2(), image.astype(np.float32)
    fine, coarse = cv2.GaussianBlur(pixels, (0, 0), 0.5), cv2.GaussianBlur(pixels, (0, 0), 5.0)
    darkening = np.clip(np.min(coarse - fine, axis=2), 0, 255)  # how much darker than its surroundings
    return _three(((2 * darkening > (32 if level is None else level)) * 255).astype(np.uint8))


def _invert(image: np.ndarray, _a: float | None, _b: float | None) -> np.ndarray:
    return 255 - image


def _tile(image: np.ndarray, rate: float | None, _: float | None) -> np.ndarray:
    """Down-sampled by `rate` (detail the tile ControlNet fills back in); below 1.1, unchanged."""
    rate = 1.0 if rate is None else rate
    if rate < 1.1:
        return image
    height, width = image.shape[:2]
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return _cv2().resize(image, size, interpolation=_cv2().INTER_AREA)


RUNS = {"none": lambda image, _a, _b: image, "canny": _canny, "invert": _invert, "threshold": _threshold,
        "blur_gaussian": _blur, "scribble_xdog": _xdog, "tile_resample": _tile}  # (HxWx3 uint8, a, b) -> map


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map to (width, height): few-colour maps (segmentations) by nearest neighbour, others by area
    down and cubic up; a black-and-white map is made black and white again afterwards (Otsu's threshold)."""
    cv2 = _cv2()
    if pixels.shape[1::-1] == size:
        return pixels
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    binary = colours == 2 and pixels.min() < 16 and pixels.max() > 240
    smaller = size[0] * size[1] < pixels.shape[0] * pixels.shape[1]
    interpolation = (cv2.INTER_NEAREST if 2 < colours < 200 else cv2.INTER_AREA if smaller else cv2.INTER_CUBIC)
    resized = cv2.resize(pixels, size, interpolation=interpolation)
    if binary:
        gray = resized.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
        _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = _three(gray)
    return resized


def fit_map(pixels: np.ndarray, size: tuple[int, int], resize_mode: str) -> np.ndarray:
    """The map at the output's (width, height): stretched (Just Resize), scaled to cover and centre-cropped
    (Crop and Resize), or scaled to fit and centred on its border's median colour (Resize and Fill)."""
    width, height = size
    if resize_mode == "Just Resize":
        return _resize(pixels, size)
    old_height, old_width = pixels.shape[:2]
    scales = (height / old_height, width / old_width)
    scale = min(scales) if resize_mode == "Resize and Fill" else max(scales)
    inner = _resize(pixels, (max(1, round(old_width * scale)), max(1, round(old_height * scale))))
    new_height, new_width = inner.shape[:2]
    if resize_mode == "Resize and Fill":
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        canvas = np.tile(np.median(border, axis=0).astype(np.uint8), (height, width, 1))
        top, left = max(0, (height - new_height) // 2), max(0, (width - new_width) // 2)
        canvas[top:top + new_height, left:left + new_width] = inner
        return canvas
    top, left = max(0, (new_height - height) // 2), max(0, (new_width - width) // 2)
    return np.ascontiguousarray(inner[top:top + height, left:left + width])


def _at_resolution(pixels: np.ndarray, resolution: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`run` on the image scaled so its short side is `resolution`, padded to multiples of 64 by
    repeating its edges (detectors see whole blocks), the padding cut off afterwards."""
    cv2 = _cv2()
    height, width = pixels.shape[:2]
    scale = resolution / min(height, width)
    size = (int(round(width * scale)), int(round(height * scale)))
    if size != (width, height):
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    pad = [(0, -size[1] % 64), (0, -size[0] % 64), (0, 0)]
    return run(np.pad(pixels, pad, mode="edge"))[:size[1], :size[0]]


def detect(image: Image.Image, module: str, processor_res: int = DEFAULT_PROCESSOR_RES,
           threshold_a: float | None = None, threshold_b: float | None = None) -> Image.Image:
    """The map `module` makes of `image` (RGB), at the processor resolution (or the image's size when
    the module works on the image as it is)."""
    module = resolve_module(module)
    spec, work = PREPROCESSORS[module], RUNS[module]
    check_thresholds(module, threshold_a, threshold_b)
    pixels = np.asarray(image.convert("RGB"))
    def run(p):
        return work(p, threshold_a, threshold_b)

    detected = _at_resolution(pixels, processor_res, run) if spec.uses_resolution else run(pixels)
    return Image.fromarray(np.ascontiguousarray(detected))


def control_map(image: Image.Image, module: str, size: tuple[int, int], resize_mode: str,
                processor_res: int = DEFAULT_PROCESSOR_RES, threshold_a: float | None = None,
                threshold_b: float | None = None, pixel_perfect: bool = False) -> Image.Image:
    """What the ControlNet reads for an output of `size`: the detected map, fitted by `resize_mode`."""
    resize_mode = resolve_resize_mode(resize_mode)
    if pixel_perfect:
        processor_res = pixel_perfect_resolution(image.size, size, resize_mode)
    detected = detect(image, module, processor_res, threshold_a, threshold_b)
    return Image.fromarray(fit_map(np.asarray(detected), size, resize_mode))
