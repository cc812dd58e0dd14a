"""A1111's "img2img alternative test" script: the noise an image comes from, found by running the Euler sampler
backwards from the image's latent under a "decode" prompt, then sampled forwards under the prompt (the same
one reconstructs the image; another edits it), optionally blended with a seed's noise ("randomness").

What the script says is `Img2ImgAlt` (checked on creation, no torch at import). `find_noise` follows A1111's
arithmetic (scripts/img2imgalt.py): k-diffusion's sigmas for the model (t evenly spaced from 999 to 0, log sigma
interpolated), the model evaluated at the next sigma up (or, with sigma adjustment, at the current one, with an
optional second evaluation to correct the step), and the result divided by its own standard deviation (or,
with sigma adjustment, by a blend of it and the largest sigma). Two choices differ from A1111: the image's
latent is the VAE's mean (A1111 draws a sample from the VAE's distribution), and the found noise is sampled
from by diffusers' pipeline, which scales a start latent by the sampler's own initial sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from t2i.errors import check

TITLE = "img2img alternative test"


@dataclass(frozen=True)
class Img2ImgAlt:
    """The script's settings (A1111's labels in the comments). Errors name a field img2img_alt.NAME."""

    decode_prompt: str = ""  # Original prompt: what the image shows
    decode_negative_prompt: str = ""  # Original negative prompt
    decode_cfg: float = 1.0  # Decode CFG scale (A1111: 2 or lower)
    decode_steps: int = 50  # Decode steps
    randomness: float = 0.0  # how much of the seed's noise is blended in
    sigma_adjustment: bool = False  # Sigma adjustment for finding noise for image
    second_order_correction: float = 0.5  # Correct noise by running model again (with sigma adjustment)
    noise_sigma_intensity: float = 0.5  # Weight scaling std vs sigma based (with sigma adjustment)

    _TYPES = {"decode_prompt": (str,), "decode_negative_prompt": (str,), "decode_cfg": (int, float),
              "decode_steps": (int,), "randomness": (int, float), "sigma_adjustment": (bool,),
              "second_order_correction": (int, float), "noise_sigma_intensity": (int, float)}

    def __post_init__(self):
        for name, low, high in (("decode_cfg", 0, 15), ("randomness", 0, 1), ("second_order_correction", 0, 1),
                                ("noise_sigma_intensity", -1, 2)):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and low <= value <= high, f"img2img_alt.{name}", value, f"must be a number from {low} to {high}")
        check(isinstance(self.decode_steps, int) and not isinstance(self.decode_steps, bool)
              and 1 <= self.decode_steps <= 150, "img2img_alt.decode_steps", self.decode_steps,
              "must be a whole number from 1 to 150")

    def infotext(self) -> dict:
        """A1111's keys for it."""
        return {"Decode prompt": self.decode_prompt, "Decode negative prompt": self.decode_negative_prompt,
                "Decode CFG scale": f"{self.decode_cfg:g}", "Decode steps": self.decode_steps,
                "Randomness": f"{self.randomness:g}", "Sigma Adjustment": self.sigma_adjustment}


def sigmas_and_times(alphas_cumprod, steps: int):
    """k-diffusion's `get_sigmas(steps)` for a discrete-time model, ascending from 0 (sigmas[0] = 0), and the
    continuous timestep of each sigma after it: t evenly spaced from the last timestep to 0, log sigma
    interpolated between whole timesteps."""
    import torch

    log_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().log()
    times = torch.linspace(len(alphas_cumprod) - 1, 0, steps, dtype=torch.float64)
    low, high = times.floor().long(), times.ceil().long()
    weight = times - low
    sigmas = ((1 - weight) * log_sigmas[low].double() + weight * log_sigmas[high].double()).exp()
    return torch.cat([sigmas.new_zeros(1), sigmas.flip(0)]).float(), times.flip(0).float()


def find_noise(unet, alphas_cumprod, latents, text, uncond, settings: Img2ImgAlt, progress=None):
    """The unit-scale noise `latents` (scaled as the UNet sees them) come from, by A1111's script."""
    import torch

    sigmas, times = sigmas_and_times(alphas_cumprod, settings.decode_steps)  # sigmas[0] = 0

    def model_step(x, sigma, time, dt):
        """-denoised(x) * dt as the script writes it: the model's noise at `sigma`, CFG over the decode prompts."""
        scaled = x / (sigma ** 2 + 1) ** 0.5
        with torch.no_grad():
            if settings.decode_cfg == 1:
                noise = unet(scaled, time, text).sample
            else:
                both = unet(torch.cat([scaled] * 2), time, torch.cat([uncond, text])).sample
                negative, positive = both.chunk(2)
                noise = negative + settings.decode_cfg * (positive - negative)
        return sigma * noise * dt

    x = latents.clone()
    for index in range(1, len(sigmas)):
        if not settings.sigma_adjustment:  # the model at the sigma it steps to; d = the noise itself
            x = x + model_step(x, sigmas[index], times[index - 1], (sigmas[index] - sigmas[index - 1]) / sigmas[index])
        else:  # at the sigma it stands at (the first step at the next one, half as far)
            first = index == 1
            time = times[0] if first else times[index - 2]
            dt = (sigmas[index] - sigmas[index - 1]) / (2 * sigmas[index] if first else sigmas[index - 1])
            step = model_step(x, sigmas[index - 1], time, dt)
            if settings.second_order_correction > 0:  # the model again where the step lands, blended in
                again = model_step(x + step, sigmas[index - 1], time, dt)
                step = again * settings.second_order_correction + step * (1 - settings.second_order_correction)
            x = x + step
        if progress is not None:
            progress(index, len(sigmas) - 1)
    if not settings.sigma_adjustment:
        return x / x.std()
    weight = settings.noise_sigma_intensity
    return x / (x.std() * (1 - weight) + sigmas[-1] * weight)


def found_noise(model, init, settings: Img2ImgAlt, clip_skip: int | None, emphasis: str):
    """The noise `init` (a PIL image at the generation's size) comes from on `model` (a LoadedModel), under the
    script's decode prompts written in A1111's prompt syntax."""
    import torch

    from t2i.sampling.samplers import build_scheduler
    from t2i.sampling.text import contexts

    prediction = model.scheduler_config.get("prediction_type", "epsilon")
    check(prediction == "epsilon", "script_name", TITLE, f"finds noise for models that predict the noise; this one "
          f"predicts {prediction}")
    pipe = model.pipe
    pixels = pipe.image_processor.preprocess(init.convert("RGB"))
    with torch.no_grad():
        latents = pipe.vae.encode(pixels.to(model.device, pipe.vae.dtype)).latent_dist.mean
        latents = latents * pipe.vae.config.scaling_factor
        text, uncond = contexts(pipe, [settings.decode_prompt], settings.decode_negative_prompt, clip_skip, emphasis)
    alphas = build_scheduler("euler", "normal", model.scheduler_config).alphas_cumprod
    return find_noise(pipe.unet, alphas.to(model.device), latents.to(pipe.unet.dtype), text, uncond, settings)


def blend(found, seeds: list[int], randomness: float, dtype):
    """Each image's start: the found noise blended with its seed's noise, at unit variance (A1111's formula)."""
    import torch

    images = []
    for seed in seeds:
        own = torch.randn(found.shape[1:], generator=torch.Generator("cpu").manual_seed(seed))[None]
        mixed = ((1 - randomness) * found.cpu().float() + randomness * own) / math.hypot(randomness, 1 - randomness)
        images.append(mixed)
    return torch.cat(images).to(found.device, dtype)
