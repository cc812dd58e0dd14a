"""The sampler registry: every sampler users know from A1111 and ComfyUI, mapped to diffusers, and the
schedule types (A1111's "Schedule type", ComfyUI's "scheduler") any of them may run on.

A sampler and a schedule are picked apart, as A1111 1.9+ and ComfyUI do: `dpmpp-2m` on `karras`.
The old joined names (`dpmpp-2m-karras`, A1111's "DPM++ 2M Karras") still resolve to that pair.
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

#: A1111's own sampler labels; an infotext with any other `Sampler:` is read by A1111 as DPM++ 2M
A1111_SAMPLERS = frozenset({
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS",
    "UniPC", "LCM"})


@dataclass(frozen=True)
class ScheduleSpec:
    a1111: str  # A1111's "Schedule type" label
    comfy: str | None  # ComfyUI's scheduler name
    summary: str
    overrides: Mapping[str, Any] = field(default_factory=dict)  # scheduler config entries that select it
    custom: bool = False  # its sigmas are computed here and passed to each call (see `schedule_arguments`)


TRAILING = {"timestep_spacing": "trailing"}
SCHEDULES: dict[str, ScheduleSpec] = {
    "normal": ScheduleSpec("Normal", "normal", "the model's own timestep spacing (SD 1.x: 'leading')"),
    "karras": ScheduleSpec("Karras", "karras", "Karras et al. 2022 sigmas, rho 7: dense near the end",
                           {"use_karras_sigmas": True}),
    "exponential": ScheduleSpec("Exponential", "exponential", "sigmas evenly spaced in log sigma",
                                {"use_exponential_sigmas": True}),
    "beta": ScheduleSpec("Beta", "beta", "sigmas at Beta(0.6, 0.6) quantiles (Lee et al. 2024)",
                         {"use_beta_sigmas": True}),
    # ComfyUI's simple is exactly diffusers' trailing spacing; its sgm_uniform spaces timesteps by
    # 999/steps instead of 1000/steps, less than one timestep apart from it at every step
    "sgm-uniform": ScheduleSpec("SGM Uniform", "sgm_uniform", "timesteps evenly spaced down from the last one "
                                "(diffusers' 'trailing')", TRAILING),
    "simple": ScheduleSpec("Simple", "simple", "the model's sigmas taken at even strides from the end "
                           "(diffusers' 'trailing')", TRAILING),
    "align-your-steps": ScheduleSpec("Align Your Steps", None, "NVIDIA's optimised SD 1.5 schedule "
                                     "(Sabour et al. 2024), log-linearly interpolated to any step count",
                                     custom=True),
}
SCHEDULE_ALIASES = {"ays": "align-your-steps", "trailing": "simple"}

#: the schedules each diffusers scheduler class can run (a test checks this table against the
#: classes themselves: a schedule needs its config entry, Align Your Steps custom sigmas or timesteps;
#: LCM takes custom timesteps but warns off any outside its distilled schedule, so it gets none)
_FLAGS = ("normal", "karras", "exponential", "beta")
_SUPPORT = {
    "EulerDiscreteScheduler": (*_FLAGS, "sgm-uniform", "simple", "align-your-steps"),
    "HeunDiscreteScheduler": (*_FLAGS, "sgm-uniform", "simple", "align-your-steps"),
    "DPMSolverMultistepScheduler": (*_FLAGS, "sgm-uniform", "simple", "align-your-steps"),
    "DPMSolverSinglestepScheduler": (*_FLAGS, "align-your-steps"),
    "LMSDiscreteScheduler": (*_FLAGS, "sgm-uniform", "simple"),
    "KDPM2DiscreteScheduler": (*_FLAGS, "sgm-uniform", "simple"),
    "KDPM2AncestralDiscreteScheduler": (*_FLAGS, "sgm-uniform", "simple"),
    "DPMSolverSDEScheduler": (*_FLAGS, "sgm-uniform", "simple"),
    "UniPCMultistepScheduler": (*_FLAGS, "sgm-uniform", "simple"),
    "DEISMultistepScheduler": (*_FLAGS, "sgm-uniform", "simple"),
    "EulerAncestralDiscreteScheduler": ("normal", "sgm-uniform", "simple"),
    "DDIMScheduler": ("normal", "sgm-uniform", "simple"),
    "PNDMScheduler": ("normal", "sgm-uniform", "simple"),
    "DDPMScheduler": ("normal", "sgm-uniform", "simple", "align-your-steps"),
    "LCMScheduler": ("normal", "sgm-uniform", "simple"),  # custom timesteps off its distilled ones: refused
}


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers scheduler class name
    summary: str
    a1111: str  # A1111's sampler label (infotext "Sampler:")
    comfy: str | None = None  # ComfyUI sampler_name, where ComfyUI has the sampler
    overrides: Mapping[str, Any] = field(default_factory=dict)
    automatic: str = "normal"  # the schedule A1111's "Automatic" picks for it (its sampler table's default)
    brownian: bool = False  # noise from a Brownian tree (torchsde), seeded per image

    @property
    def in_a1111(self) -> bool:
        return self.a1111 in A1111_SAMPLERS

    @property
    def schedules(self) -> tuple[str, ...]:
        return _SUPPORT[self.scheduler]


SDE = {"algorithm_type": "sde-dpmsolver++"}

#: t2i name -> spec; the CLI's choices and `t2i samplers` read it directly
SAMPLERS: dict[str, SamplerSpec] = {
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
                        "DPM2", "dpm_2", automatic="karras"),
    "dpm2-a": SamplerSpec("KDPM2AncestralDiscreteScheduler", "DPM-Solver-2 ancestral: adds fresh noise each step",
                          "DPM2 a", "dpm_2_ancestral", automatic="karras"),
    "dpmpp-2m": SamplerSpec("DPMSolverMultistepScheduler", "DPM-Solver++ 2M (Lu et al. 2022); good at 20-30 steps",
                            "DPM++ 2M", "dpmpp_2m", automatic="karras"),
    "dpmpp-2m-sde": SamplerSpec("DPMSolverMultistepScheduler", "DPM-Solver++ 2M SDE: stochastic, fresh noise "
                                "each step from the image's own generator", "DPM++ 2M SDE", "dpmpp_2m_sde",
                                SDE, automatic="exponential"),
    "dpmpp-2m-sde-heun": SamplerSpec("DPMSolverMultistepScheduler", "DPM-Solver++ 2M SDE with Heun's corrector",
                                     "DPM++ 2M SDE Heun", None, {**SDE, "solver_type": "heun"},
                                     automatic="exponential"),
    "dpmpp-3m-sde": SamplerSpec("DPMSolverMultistepScheduler", "DPM-Solver++ 3M SDE: third order, stochastic",
                                "DPM++ 3M SDE", "dpmpp_3m_sde", {**SDE, "solver_order": 3},
                                automatic="exponential"),
    "dpmpp-sde": SamplerSpec("DPMSolverSDEScheduler", "DPM-Solver++ SDE (stochastic, 2 UNet calls a step): "
                             "Brownian-tree noise seeded per image (torchsde)", "DPM++ SDE", "dpmpp_sde",
                             automatic="karras", brownian=True),
    # lower_order_final: what diffusers switches to anyway at the first set_timesteps, with a warning
    "dpmpp-2s": SamplerSpec("DPMSolverSinglestepScheduler", "DPM-Solver++ 2S singlestep, deterministic "
                            "(no noise: not A1111's DPM++ 2S a)", "DPM++ 2S", None, {"lower_order_final": True}),
    "unipc": SamplerSpec("UniPCMultistepScheduler", "UniPC predictor-corrector (Zhao et al. 2023)",
                         "UniPC", "uni_pc"),
    "deis": SamplerSpec("DEISMultistepScheduler", "DEIS exponential integrator (Zhang & Chen 2022)", "DEIS", "deis"),
    "lcm": SamplerSpec("LCMScheduler", "latent consistency sampling: for LCM models or LCM-LoRA, 4-8 steps",
                       "LCM", "lcm"),
}


def normalize(name: str) -> str:
    """'DPM++ 2M Karras' -> 'dpmpp-2m-karras', 'euler_ancestral' -> 'euler-ancestral'."""
    name = name.strip().lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def _sampler_aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, spec in SAMPLERS.items():
        for alias in (name, normalize(spec.a1111), normalize(spec.comfy or name)):
            table.setdefault(alias, name)
    return table


def _schedule_aliases() -> dict[str, str]:
    table = dict(SCHEDULE_ALIASES)
    for name, spec in SCHEDULES.items():
        for alias in (name, normalize(spec.a1111), normalize(spec.comfy or name)):
            table.setdefault(alias, name)
    return table


def _split_joined(key: str, samplers: dict[str, str]) -> tuple[str, str | None]:
    """'dpmpp-2m-karras' -> ('dpmpp-2m', 'karras'): A1111's old joined labels and t2i's old names."""
    if key in samplers:
        return key, None
    for schedule in sorted(_schedule_aliases(), key=len, reverse=True):
        base = key.removesuffix("-" + schedule)
        if base != key and base in samplers:
            return base, schedule
    return key, None


def resolve_sampler(name: str, schedule: str | None = None) -> tuple[str, str]:
    """(t2i sampler, t2i schedule) for a t2i, A1111 or ComfyUI sampler name and optional schedule.

    No schedule means the one a joined name carries ("DPM++ 2M Karras"), else Normal, as in
    diffusers; "automatic" is A1111's default for the sampler.
    """
    samplers, schedules = _sampler_aliases(), _schedule_aliases()
    key, joined = _split_joined(normalize(name), samplers)
    if key not in samplers:
        raise NotFound("unknown sampler", field="sampler", value=name, choices=tuple(SAMPLERS),
                       hint="A1111 and ComfyUI names work too; pick the schedule with {schedule}")
    sampler = samplers[key]
    spec = SAMPLERS[sampler]
    joined = schedules[joined] if joined else None
    asked = normalize(schedule) if schedule else None
    if asked in ("automatic", "default"):  # a joined name ("DPM++ 2M SDE Karras") says what it wants
        asked = joined or spec.automatic
    if asked is not None and asked not in schedules:
        raise InvalidInput("unknown schedule", field="schedule", value=schedule,
                           choices=("automatic", *SCHEDULES))
    asked = schedules[asked] if asked else None
    if asked and joined and asked != joined:
        raise InvalidInput(f"names the {SCHEDULES[joined].a1111} schedule, and {{schedule}} asks for "
                           f"{SCHEDULES[asked].a1111}", field="sampler", value=name,
                           hint=f"give the sampler as {sampler!r}")
    resolved = asked or joined or "normal"
    if resolved not in spec.schedules:
        raise InvalidInput(f"has no {SCHEDULES[resolved].a1111} schedule in diffusers", field="sampler", value=name,
                           hint="its schedules: " + ", ".join(SCHEDULES[s].a1111 for s in spec.schedules))
    return sampler, resolved


def build_scheduler(name: str, schedule: str, original_config: Mapping[str, Any]):
    """A fresh scheduler for `name` on `schedule`, built from the model's ORIGINAL scheduler config.

    Building from the original (never from the scheduler currently on the pipeline) is what stops
    one sampler's overrides, e.g. Karras sigmas, leaking into the next.
    """
    import diffusers

    spec = SAMPLERS[name]
    scheduler_class = getattr(diffusers, spec.scheduler)
    return scheduler_class.from_config(dict(original_config), **spec.overrides, **SCHEDULES[schedule].overrides)


def align_your_steps_sigmas(steps: int) -> list[float]:
    """SD 1.5's published 10-step Align Your Steps sigmas, log-linearly interpolated to `steps`, then 0.

    Interpolating log sigma over the step fraction is the recipe the paper's authors give for other
    step counts; at 10 steps it returns the published values unchanged.
    """
    import numpy as np
    from diffusers.schedulers import AysSchedules

    published = np.array(AysSchedules["StableDiffusionSigmas"][:-1], dtype=np.float64)  # the last one is 0
    positions = np.linspace(0, 1, len(published))
    sigmas = np.exp(np.interp(np.linspace(0, 1, steps), positions, np.log(published)))
    return [*sigmas.tolist(), 0.0]


def schedule_arguments(scheduler, schedule: str, steps: int) -> dict[str, Any]:
    """The `set_timesteps` (and pipeline) arguments that give `steps` steps on `schedule`.

    Schedules chosen by a config entry need only the step count. Align Your Steps passes its sigmas
    where the scheduler takes them, else the training timesteps nearest to them (rounded in
    log-sigma, as diffusers maps a sigma to a timestep).
    """
    import inspect

    import numpy as np

    if not SCHEDULES[schedule].custom:
        return {"num_inference_steps": steps}
    sigmas = align_your_steps_sigmas(steps)
    if "sigmas" in inspect.signature(scheduler.set_timesteps).parameters:
        return {"sigmas": sigmas}
    alphas = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
    log_train = np.log(((1 - alphas) / alphas) ** 0.5)  # increasing with the timestep
    timesteps = np.rint(np.interp(np.log(sigmas[:-1]), log_train, np.arange(len(log_train)))).astype(int)
    if len(set(timesteps.tolist())) < steps:
        raise InvalidInput(f"is too many for Align Your Steps on the {type(scheduler).__name__}: two steps would "
                           "share a timestep", field="steps", value=steps, hint="use fewer steps or another schedule")
    return {"timesteps": timesteps.tolist()}
