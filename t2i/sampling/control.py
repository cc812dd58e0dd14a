"""ControlNet units: what one says (`ControlUnit`, checked on creation, no torch), and how a unit's
weight, guidance window and control mode act on the ControlNet's residuals during sampling.

The diffusers ControlNet pipelines do the sampling. They take one weight and one start/end window a
ControlNet; A1111's control modes need more, so each unit's ControlNet runs inside a `UnitNet`:
- "Balanced": every residual times the weight, on both halves of the CFG batch (diffusers' own maths);
- "My prompt is more important": residual i of n times weight * 0.825^(n-1-i) (A1111's soft injection:
  the deep residuals count most, the shallow ones far less);
- "ControlNet is more important": soft injection, and the unconditional half of the CFG batch gets no
  control at all (A1111's cfg injection), so guidance pushes towards the control.
Each unit has its own mode, which diffusers' pipeline-wide guess mode cannot give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from t2i.errors import check
from t2i.sampling.control_modules import DEFAULT_PROCESSOR_RES, check_thresholds, resolve_module, resolve_resize_mode

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
MODE_ALIASES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                "controlnet": "ControlNet is more important", "0": "Balanced", "1": "My prompt is more important",
                "2": "ControlNet is more important"}
SOFT_INJECTION = 0.825  # A1111's per-block fall-off for the two modes that are not Balanced
MAX_UNITS = 8
MAX_WEIGHT = 2.0  # A1111's slider; more is allowed by ComfyUI (10) but ruins images long before


def resolve_mode(name: str) -> str:
    name = MODE_ALIASES.get(name.lower(), name)
    check(name in CONTROL_MODES, "control_mode", name, "unknown control mode",
          choices=[*CONTROL_MODES, "or balanced, prompt, controlnet"])
    return name


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet and what it reads; names as A1111's ControlNet extension has them. Errors name
    the command line's unit flags (control, control_module, control_start...), which the server renames."""

    model: str  # a path, a hub id, or a name in the generation's controlnet_dir
    image: Any  # a path or a PIL image: what the preprocessor reads
    weight: float = 1.0
    module: str = "none"  # the preprocessor (t2i.sampling.control_maps.PREPROCESSORS)
    resize_mode: str = "Crop and Resize"
    processor_res: int = DEFAULT_PROCESSOR_RES
    threshold_a: float | None = None  # None: the preprocessor's default
    threshold_b: float | None = None
    guidance_start: float = 0.0  # the part of the sampling steps the unit acts in
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    pixel_perfect: bool = False  # processor resolution from the output size instead of processor_res

    def __post_init__(self):
        object.__setattr__(self, "module", resolve_module(self.module))
        object.__setattr__(self, "resize_mode", resolve_resize_mode(self.resize_mode))
        object.__setattr__(self, "control_mode", resolve_mode(self.control_mode))
        check(bool(str(self.model)), "control", self.model, "names no ControlNet")
        check(self.image is not None, "control", self.model, "has no control image")
        check(math.isfinite(self.weight) and 0 <= self.weight <= MAX_WEIGHT, "control", self.weight,
              f"must be a finite number from 0 to {MAX_WEIGHT:g}")
        for name, field in (("guidance_start", "control_start"), ("guidance_end", "control_end")):
            value = getattr(self, name)
            check(math.isfinite(value) and 0 <= value <= 1, field, value, "must be from 0 to 1")
        check(self.guidance_start < self.guidance_end, "control_start", self.guidance_start,
              f"must be less than the end ({self.guidance_end:g}), or the unit would never act")
        check(64 <= self.processor_res <= 2048, "control_res", self.processor_res, "must be from 64 to 2048")
        check_thresholds(self.module, self.threshold_a, self.threshold_b)

    @classmethod
    def parse(cls, text: str, **options) -> ControlUnit:
        """`MODEL=IMAGE[:WEIGHT]`, the command line's form; other fields from `options`."""
        model, sep, rest = text.partition("=")
        check(bool(sep and model and rest), "control", text, "must be MODEL=IMAGE[:WEIGHT]",
              hint="e.g. --control control_v11p_sd15_canny=edges.png:0.8")
        image, colon, weight = rest.rpartition(":")
        if not colon or not _is_number(weight):  # a colon in the path (C:\...) is not a weight
            image, weight = rest, ""
        if weight:
            options["weight"] = float(weight)
        return cls(model=model, image=image, **options)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def block_scales(count: int, control_mode: str) -> list[float]:
    """Each residual's share of the weight, shallowest first (the mid block's last)."""
    if control_mode == "Balanced":
        return [1.0] * count
    return [SOFT_INJECTION ** (count - 1 - i) for i in range(count)]
