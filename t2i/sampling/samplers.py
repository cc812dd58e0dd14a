"""The sampler registry: every sampler users know from A1111 and ComfyUI, mapped to diffusers.

This module imports neither torch nor diffusers at import time, so `t2i samplers` and the CLI's
argument checks answer instantly. The diffusers class is named by the same string diffusers
itself writes as `_class_name` in a scheduler_config.json, and resolved only when a scheduler is
built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from t2i.errors import InvalidInput, NotFound

KARRAS = {"use_karras_sigmas": True}
SDE = {"algorithm_type": "sde-dpmsolver++"}

#: schedule names accepted beside a sampler name ("Schedule type" in A1111, "scheduler" in ComfyUI)
SCHEDULES = ("normal", "karras")
#: A1111's own sampler labels; an infotext with any other `Sampler:` is read by A1111 as DPM++ 2M
A1111_SAMPLERS = frozenset({
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS",
    "UniPC", "LCM"})


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers scheduler class name
    summary: str
    a1111: str  # A1111's sampler label (infotext "Sampler:")
    comfy: str | None = None  # ComfyUI sampler_name, where ComfyUI has the sampler
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def schedule(self) -> str:
        """A1111's "Schedule type" label for this entry."""
        return "Karras" if self.overrides.get("use_karras_sigmas") else "Normal"

    @property
    def in_a1111(self) -> bool:
        return self.a1111 in A1111_SAMPLERS


def _with_karras(spec: SamplerSpec) -> SamplerSpec:
    return SamplerSpec(spec.scheduler, spec.summary + "; Karras sigmas", spec.a1111, spec.comfy,
                       {**spec.overrides, **KARRAS})


_BASE = {
    "ddpm": SamplerSpec("DDPMScheduler", "DDPM ancestral sampling (Ho et al. 2020); needs hundreds of steps",
                        "DDPM", "ddpm"),
    "ddim": SamplerSpec("DDIMScheduler", "DDIM, deterministic (Song et al. 2020)", "DDIM", "ddim"),
    "pndm": SamplerSpec("PNDMScheduler", "PLMS pseudo linear multistep (Liu et al. 2022); SD 1.x's default",
                        "PLMS", None, {"skip_prk_steps": True}),
    "euler": SamplerSpec("EulerDiscreteScheduler", "Euler method on the k-diffusion ODE (Karras et al. 2022)",
                         "Euler", "euler"),
    "euler-a": SamplerSpec("EulerAncestralDiscreteScheduler", "Euler ancestral: adds fresh noise each step",
                           "Euler a", "euler_ancestral"),
    "heun": SamplerSpec("HeunDiscreteScheduler", "Heun's 2nd-order method (Karras et al. 2022); 2 UNet calls a step",
                        "Heun", "heun"),
    "lms": SamplerSpec("LMSDiscreteScheduler", "linear multistep on the k-diffusion ODE", "LMS", "lms"),
    "dpm2": SamplerSpec("KDPM2DiscreteScheduler", "DPM-Solver-2 (Lu et al. 2022); 2 UNet calls a step",
                        "DPM2", "dpm_2"),
    "dpm2-a": SamplerSpec("KDPM2AncestralDiscreteScheduler", "DPM-Solver-2 ancestral: adds fresh noise each step",
                          "DPM2 a", "dpm_2_ancestral"),
    "dpmpp-2m": SamplerSpec("DPMSolverMultistepScheduler", "DPM-Solver++ 2M (Lu et al. 2022); good at 20-30 steps",
                            "DPM++ 2M", "dpmpp_2m"),
    "dpmpp-2m-sde": SamplerSpec("DPMSolverMultistepScheduler", "DPM-Solver++ 2M, SDE variant (stochastic)",
                                "DPM++ 2M SDE", "dpmpp_2m_sde", SDE),
    "dpmpp-sde": SamplerSpec("DPMSolverSinglestepScheduler",
                             "DPM-Solver++ singlestep: the closest diffusers has to A1111's DPM++ SDE "
                             "(deterministic, no torchsde)", "DPM++ SDE", "dpmpp_sde"),
    "unipc": SamplerSpec("UniPCMultistepScheduler", "UniPC predictor-corrector (Zhao et al. 2023)",
                         "UniPC", "uni_pc"),
    "deis": SamplerSpec("DEISMultistepScheduler", "DEIS exponential integrator (Zhang & Chen 2022)", "DEIS", "deis"),
    "lcm": SamplerSpec("LCMScheduler", "latent consistency sampling: for LCM models or LCM-LoRA, 4-8 steps",
                       "LCM", "lcm"),
}
_KARRAS_VARIANTS = ("euler", "heun", "lms", "dpm2", "dpm2-a", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-sde")
# A1111's "Automatic" schedule is Karras for these samplers (its sampler table says so); Normal elsewhere
AUTOMATIC_KARRAS = frozenset({"dpm2", "dpm2-a", "dpmpp-2m", "dpmpp-sde"})

#: t2i name -> spec; the CLI's choices and `t2i samplers` read it directly
SAMPLERS: dict[str, SamplerSpec] = {
    **_BASE, **{f"{name}-karras": _with_karras(_BASE[name]) for name in _KARRAS_VARIANTS}}


def normalize(name: str) -> str:
    """'DPM++ 2M Karras' -> 'dpmpp-2m-karras', 'euler_ancestral' -> 'euler-ancestral'."""
    name = name.strip().lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def _aliases() -> dict[str, str]:
    table = {}
    for name, spec in SAMPLERS.items():
        suffix = "-karras" if spec.schedule == "Karras" else ""
        for alias in (name, normalize(spec.a1111) + suffix, normalize(spec.comfy or name) + suffix):
            table.setdefault(alias, name)
    return table


def resolve_sampler(name: str, schedule: str | None = None) -> str:
    """Return the t2i name for a t2i, A1111 or ComfyUI sampler name, with an optional schedule."""
    schedule_key = normalize(schedule or "normal")
    aliases = _aliases()
    key = normalize(name)
    if schedule_key in ("automatic", "default"):  # as A1111 picks it for this sampler
        schedule_key = "karras" if aliases.get(key) in AUTOMATIC_KARRAS else "normal"
    if schedule_key not in SCHEDULES:
        raise InvalidInput("unknown schedule", field="schedule", value=schedule, choices=("automatic", *SCHEDULES))
    if schedule_key == "karras" and not key.endswith("-karras"):
        if key in aliases and aliases[key] + "-karras" not in SAMPLERS:
            with_karras = ", ".join(n for n in SAMPLERS if n.endswith("-karras"))
            raise InvalidInput("has no Karras schedule", field="sampler", value=name,
                               hint=f"samplers with one: {with_karras}")
        key += "-karras"
    if key not in aliases:
        raise NotFound("unknown sampler", field="sampler", value=name, choices=tuple(SAMPLERS),
                           hint="A1111 and ComfyUI names work too")
    return aliases[key]


def build_scheduler(name: str, original_config: Mapping[str, Any]):
    """A fresh scheduler for `name`, built from the model's ORIGINAL scheduler config.

    Building from the original (never from the scheduler currently on the pipeline) is what stops
    one sampler's overrides, e.g. Karras sigmas, leaking into the next.
    """
    import diffusers

    spec = SAMPLERS[name]
    scheduler_class = getattr(diffusers, spec.scheduler)
    return scheduler_class.from_config(dict(original_config), **spec.overrides)
