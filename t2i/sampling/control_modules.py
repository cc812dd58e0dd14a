"""The ControlNet preprocessors t2i has and their settings, as A1111's ControlNet extension names them:
what a config checks (no numpy, no OpenCV: `t2i --help` and request checks stay light). The image work
is t2i.sampling.control_maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from t2i.errors import check

#: A1111's resize modes for control maps, with the older names its API still accepts
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill",
                  "Envelope (Outer Fit)": "Resize and Fill", "Scale to Fit (Inner Fit)": "Crop and Resize",
                  "just resize": "Just Resize", "crop and resize": "Crop and Resize",
                  "resize and fill": "Resize and Fill", "resize": "Just Resize", "crop": "Crop and Resize",
                  "fill": "Resize and Fill", "0": "Just Resize", "1": "Crop and Resize", "2": "Resize and Fill"}
DEFAULT_PROCESSOR_RES = 512  # A1111's


@dataclass(frozen=True)
class Threshold:
    """A preprocessor's slider, as A1111 names and bounds it."""

    name: str
    default: float
    low: float
    high: float


@dataclass(frozen=True)
class Preprocessor:
    summary: str
    threshold_a: Threshold | None = None
    threshold_b: Threshold | None = None
    uses_resolution: bool = True  # resized to the processor resolution before it runs


PREPROCESSORS = {
    "none": Preprocessor("the image is the map", uses_resolution=False),
    "canny": Preprocessor("OpenCV's Canny edges", Threshold("Canny Low Threshold", 100, 1, 255),
                          Threshold("Canny High Threshold", 200, 1, 255)),
    "invert": Preprocessor("black lines on white become white on black", uses_resolution=False),
    "threshold": Preprocessor("each channel white above the level, else black",
                              Threshold("Binarization Threshold", 127, 0, 255)),
    "blur_gaussian": Preprocessor("Gaussian blur", Threshold("Sigma", 9.0, 0.01, 64.0)),
    "scribble_xdog": Preprocessor("XDoG lines, as a scribble", Threshold("XDoG Threshold", 32, 1, 64)),
    "tile_resample": Preprocessor("down-sampled, for tile ControlNets", Threshold("Down Sampling Rate", 1.0, 1.0, 8.0),
                                  uses_resolution=False),
}
MODULE_ALIASES = {"None": "none", "invert (from white bg & black line)": "invert", "blur": "blur_gaussian",
                  "scribble": "scribble_xdog", "tile": "tile_resample"}


def resolve_module(name: str) -> str:
    name = MODULE_ALIASES.get(name, name)
    check(name in PREPROCESSORS, "control_module", name, "unknown or not a weight-free preprocessor",
          choices=list(PREPROCESSORS))
    return name


def resolve_resize_mode(name: str) -> str:
    name = RESIZE_ALIASES.get(name, name)
    check(name in RESIZE_MODES, "control_resize", name, "unknown ControlNet resize mode", choices=RESIZE_MODES)
    return name


def check_thresholds(module: str, a: float | None, b: float | None) -> None:
    spec = PREPROCESSORS[resolve_module(module)]
    for value, slider, field in ((a, spec.threshold_a, "control_threshold_a"),
                                 (b, spec.threshold_b, "control_threshold_b")):
        if value is None:
            continue
        check(math.isfinite(value), field, value, "must be a finite number")
        if slider is not None:
            check(slider.low <= value <= slider.high, field, value,
                  f"{module}'s {slider.name} goes from {slider.low:g} to {slider.high:g}")


def pixel_perfect_resolution(image_size: tuple[int, int], target: tuple[int, int], resize_mode: str) -> int:
    """A1111's Pixel Perfect: the processor resolution at which the map needs no resizing to fill the output."""
    (width, height), (target_width, target_height) = image_size, target
    scale_h, scale_w = target_height / height, target_width / width
    scale = min(scale_h, scale_w) if resize_mode == "Resize and Fill" else max(scale_h, scale_w)
    return int(round(scale * min(width, height)))
