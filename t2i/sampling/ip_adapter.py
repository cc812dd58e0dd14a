"""IP-Adapter units: "use this picture as the prompt". What one says (`IPAdapterUnit`, checked on
creation, no torch); t2i.sampling.ip_run runs them.

An IP-Adapter (Ye et al. 2023) turns an image encoder's embedding of the reference picture into a few
extra context tokens, and adds a second, decoupled cross-attention over those tokens beside every
cross-attention over the text: out = attn(q, text) + scale * attn(q, image tokens). The UNet and the
text stay as they are, so scale 0 is the model without the adapter. A unit's scale acts only in its
guidance window (start..end of the steps), as A1111's ControlNet extension applies it to its
IP-Adapter units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from t2i.errors import check

MAX_ADAPTERS = 4
MAX_SCALE = 2.0  # A1111's weight slider; ComfyUI allows more, which only burns the image
# A1111's ControlNet extension names its IP-Adapter preprocessors by the image encoder they run
MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter-auto", "ip-adapter_shape_features")


def is_ip_module(module: str) -> bool:
    """Whether an A1111 ControlNet unit's `module` makes it an IP-Adapter unit."""
    return module.lower().startswith("ip-adapter")


@dataclass(frozen=True)
class IPAdapterUnit:
    """One adapter and its reference image. Errors name the command line's flags (ip_adapter, ip_scale...)."""

    model: str  # a file path, or a name in the generation's controlnet_dir (A1111 keeps both kinds there)
    image: Any  # a path or a PIL image: the picture used as a prompt
    scale: float = 1.0  # A1111's unit weight and diffusers' default; h94 suggest ~0.5 beside a text prompt
    start: float = 0.0  # the part of the sampling steps the adapter acts in
    end: float = 1.0

    def __post_init__(self):
        check(bool(str(self.model)), "ip_adapter", self.model, "names no IP-Adapter file")
        check(self.image is not None, "ip_image", None, f"the IP-Adapter {self.model} has no reference image",
              hint="give one with --ip-image")
        check(isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and 0 <= self.scale <= MAX_SCALE,
              "ip_scale", self.scale, f"must be a finite number from 0 to {MAX_SCALE:g}")
        for name in ("start", "end"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1, f"ip_{name}", value,
                  "must be from 0 to 1")
        check(self.start < self.end, "ip_start", self.start,
              f"must be less than the end ({self.end:g}), or the adapter would never act")


def active(start: float, end: float, index: int, count: int) -> bool:
    """Whether a unit with window start..end acts at model call `index` of `count`: diffusers' rule for
    ControlNet's guidance window (a call is left out if it begins before start or ends after end)."""
    return not (index / count < start or (index + 1) / count > end)
