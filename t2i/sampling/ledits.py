"""LEDITS++ edits: "more of this word, less of that one" on a real image. What an edit says (`EditConcept`,
checked on creation, no torch); t2i.sampling.ledits_run runs them on diffusers' LEDITS++ pipeline.

LEDITS++ (Brack et al. 2024) inverts the image with edit-friendly DDPM inversion (a noise map per step, so
that sampling back with the same unconditional prediction gives the image again), then samples back with
each edit concept's guidance added: the concept's noise prediction minus the unconditional one, times its
scale, kept only where a mask says the concept acts (the top `threshold` quantile of the guidance itself,
intersected with the concept's cross-attention map when the UNet has cross-attention at a quarter of the
latent size, as SD 1.x has), and only between its warm-up and cool-down steps. A concept with scale 0, or
none, samples back the inverted image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from t2i.errors import check

MAX_EDITS = 4
MAX_SCALE = 30.0  # diffusers' examples go to 15; past this the guidance only burns the image
#: the samplers diffusers' LEDITS++ inverts with (DDIM: its edit-friendly DDPM form), the first the fallback
SAMPLERS = ("dpmpp-2m-sde", "ddim")
SCHEDULE = "normal"  # the pipeline sets its own "leading" spacing: the model's Normal schedule
#: auto: intersect where the UNet can give the attention mask, else noise; intersect: LEDITS++'s default,
#: the guidance's own top quantile within the attention mask; attention: the attention mask alone; noise:
#: the guidance's top quantile alone (what a UNet without cross-attention at 1/4 of the latent size allows)
MASKS = ("auto", "intersect", "attention", "noise")


@dataclass(frozen=True)
class EditConcept:
    """One edit: a word or phrase to add (or, with `remove`, to take away). Errors name the CLI's flags."""

    text: str
    remove: bool = False
    scale: float = 5.0  # diffusers' edit_guidance_scale default
    threshold: float = 0.9  # the mask keeps the top 10% of the latent: a larger threshold, a smaller region
    warmup: int = 0  # steps before the concept starts guiding
    cooldown: int | None = None  # the step it stops guiding at (None: it guides to the end)

    _TYPES = {"text": (str,), "remove": (bool,), "scale": (int, float), "threshold": (int, float),
              "warmup": (int,), "cooldown": (int, type(None))}

    def __post_init__(self):
        check(isinstance(self.text, str) and bool(self.text.strip()), "edit", self.text,
              "names no words to edit by", hint='write +WORDS to add them or -WORDS to take them away, e.g. "+blue"')
        check(isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and 0 <= self.scale <= MAX_SCALE,
              "edit_scale", self.scale, f"must be a finite number from 0 to {MAX_SCALE:g}")
        check(isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
              and 0 <= self.threshold < 1, "edit_threshold", self.threshold,
              "must be from 0 to below 1 (the share of the latent the mask leaves out)")
        check(isinstance(self.warmup, int) and self.warmup >= 0, "edit_warmup", self.warmup,
              "must be a whole number of steps, 0 or more")
        check(self.cooldown is None or (isinstance(self.cooldown, int) and self.cooldown > self.warmup),
              "edit_cooldown", self.cooldown, f"must be a step after the warm-up ({self.warmup})")

    @property
    def written(self) -> str:
        """As the command line takes it: "+blue" or "-red"."""
        return ("-" if self.remove else "+") + self.text

    def infotext(self) -> str:
        cooldown = "" if self.cooldown is None else f":{self.cooldown}"
        return f"{self.written}:{self.scale:g}:{self.threshold:g}:{self.warmup}{cooldown}"


def parse_edit(text: str) -> tuple[str, bool]:
    """'+blue' -> ('blue', False), '-red' -> ('red', True); no sign: add."""
    stripped = text.strip()
    remove = stripped.startswith("-")
    words = stripped[1:] if stripped[:1] in "+-" and stripped else stripped
    check(bool(words.strip()), "edit", text, "names no words to edit by",
          hint='write +WORDS to add them or -WORDS to take them away, e.g. "+blue"')
    return words.strip(), remove


def has_quarter_attention(unet_config) -> bool:
    """Whether the UNet has cross-attention at a quarter of the latent size, where LEDITS++ reads its attention
    masks: its third down block is a cross-attention block (SD 1.x: yes; t2i's small demo UNet: no)."""
    blocks = list(unet_config.get("down_block_types") or ())
    return len(blocks) > 2 and "CrossAttn" in blocks[2]
