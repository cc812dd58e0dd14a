"""DDIM inversion: the noise a real image comes from, so that it can be regenerated, and edited by its prompt.

The image is encoded by the VAE and walked up the noise schedule by diffusers' `DDIMInverseScheduler`, each
step's noise predicted by the UNet at the timestep it steps to (so that sampling back down with DDIM uses the
very same prediction at every step: for a noise model that does not depend on the sample the round trip is
exact, and for a real one its error falls with the number of steps). The result is saved as a safetensors file
with the settings that made it; `t2i generate --from-noise` samples from it with DDIM (t2i.sampling.generate),
with the same prompt to reconstruct the image, or an edited one to change it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMInverseScheduler
from PIL import Image

from t2i.errors import InvalidInput, check

METADATA = "t2i_inversion"  # the settings, as JSON, in the noise file's metadata
SAMPLER, SCHEDULE = "ddim", "normal"  # what sampling back must use: the inversion's mirror image


@dataclass(frozen=True)
class InvertedNoise:
    noise: torch.Tensor  # (1, 4, h, w): the latent at the schedule's top
    settings: dict  # prompt, steps, guidance_scale, width, height, model, model_name, model_hash


def ddim_invert(unet, scheduler_config, latents: torch.Tensor, text: torch.Tensor, steps: int,
                guidance_scale: float = 1.0, uncond: torch.Tensor | None = None, progress=None) -> torch.Tensor:
    """`latents` (scaled as the UNet sees them) walked up `steps` DDIM steps under the text context `text`
    (with `uncond` and a scale above 1, classifier-free guidance, which makes the walk less exact)."""
    scheduler = DDIMInverseScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    for index, timestep in enumerate(scheduler.timesteps):
        with torch.no_grad():
            if guidance_scale > 1 and uncond is not None:
                both = unet(torch.cat([latents] * 2), timestep, torch.cat([uncond, text])).sample
                negative, positive = both.chunk(2)
                noise = negative + guidance_scale * (positive - negative)
            else:
                noise = unet(latents, timestep, text).sample
        latents = scheduler.step(noise, timestep, latents).prev_sample
        if progress is not None:
            progress(index + 1, steps)
    return latents


def invert(model, image: Image.Image, prompt: str, steps: int, guidance_scale: float = 1.0,
           size: tuple[int, int] | None = None, progress=None) -> InvertedNoise:
    """The noise `image` comes from under `prompt` (the image resized to `size`, else to its own size rounded
    down to the model's multiple of 8)."""
    pipe = model.pipe
    width, height = size or (image.width // 8 * 8, image.height // 8 * 8)
    check(min(width, height) >= 8, "image", f"{image.width}x{image.height}", "is too small to invert (at least 8x8)")
    check(1 <= steps <= model.scheduler_config["num_train_timesteps"], "steps", steps,
          f"must be from 1 to {model.scheduler_config['num_train_timesteps']}")
    pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels.to(model.device, pipe.vae.dtype)).latent_dist.mean
        latents = latents * pipe.vae.config.scaling_factor
        text, uncond = pipe.encode_prompt(prompt, model.device, 1, guidance_scale > 1, "")
    noise = ddim_invert(pipe.unet, model.scheduler_config, latents.to(pipe.unet.dtype), text, steps,
                        guidance_scale, uncond, progress)
    settings = {"prompt": prompt, "steps": steps, "guidance_scale": guidance_scale, "width": width, "height": height,
                "model": model.config.model, "model_name": model.name, "model_hash": model.hash,
                "sampler": SAMPLER, "schedule": SCHEDULE}
    return InvertedNoise(noise.float().cpu(), settings)


def save_noise(inverted: InvertedNoise, path: Path) -> None:
    """The noise file (callers write it through t2i.files, which makes it appear whole)."""
    from safetensors.torch import save_file

    save_file({"noise": inverted.noise.contiguous()}, str(path), metadata={METADATA: json.dumps(inverted.settings)})


def load_noise(source: str) -> InvertedNoise:
    """A noise file `t2i invert` wrote: its tensor and settings, or one line saying why not."""
    from safetensors import safe_open

    path = Path(source).expanduser()
    check(path.is_file(), "from_noise", source, "no such file", hint="give a file `t2i invert` wrote")
    check(path.suffix.lower() == ".safetensors", "from_noise", source, "expected the .safetensors file `t2i "
          "invert` writes")
    try:
        with safe_open(str(path), framework="pt") as handle:
            settings = json.loads((handle.metadata() or {})[METADATA])
            noise = handle.get_tensor("noise")
    except Exception as exc:  # not safetensors, no settings, no tensor: all "not a noise file"
        raise InvalidInput("not a noise file `t2i invert` wrote", field="from_noise", value=source) from exc
    return InvertedNoise(noise, settings)


def check_fits(inverted: InvertedNoise, model, size: tuple[int, int], steps: int, sampling: tuple[str, str],
               source: str) -> None:
    """Sampling from inverted noise mirrors the inversion: the same model, size, steps and DDIM."""
    settings = inverted.settings
    theirs, ours = settings.get("model_hash") or settings.get("model_name"), model.hash or model.name
    check(theirs == ours, "from_noise", source, f"was inverted with the model {settings.get('model_name')} "
          f"({theirs}); this is {model.name} ({ours})", hint=f"use --model {settings.get('model')}")
    wanted = (settings["width"], settings["height"])
    check(tuple(size) == wanted, "from_noise", source, f"is noise for {wanted[0]}x{wanted[1]} images; this "
          f"generation is {size[0]}x{size[1]}", hint=f"use --width {wanted[0]} --height {wanted[1]}")
    check(steps == settings["steps"], "from_noise", source, f"was inverted in {settings['steps']} steps; this "
          f"generation has {steps}", hint=f"use --steps {settings['steps']}")
    check(sampling == (SAMPLER, SCHEDULE), "from_noise", source, "sampling back from inverted noise needs DDIM on "
          f"the Normal schedule, not {sampling[0]} on {sampling[1]}", hint="use --sampler ddim --schedule normal")
