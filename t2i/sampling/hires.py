"""A1111's hires fix: generate small, upscale, then refine with a second, img2img pass.

The arithmetic is A1111's (modules/processing.py): the target size from a scale or a resize (fit to
the first pass's aspect, the excess cut off in latent units, centred), the six latent upscale modes,
the pixel upscalers that need no model, and the second pass from the same seeds at the new shape,
running exactly the hires steps (A1111 slices a longer schedule; see `second_pass_schedule`).
No torch import at module level: configs check hires settings before the heavy imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from t2i.errors import check

VAE_FACTOR = 8  # SD 1.x latents are an eighth of the image's side (A1111's opt_f; tiny test models use less)

#: A1111's latent upscale modes: name -> (torch interpolate mode, antialias)
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
#: pixel upscalers that need no model: decode, resize, encode again. A1111's "None" upscaler leaves the
#: image as it is and its final resize is Lanczos, so it equals "Lanczos"
PIXEL_UPSCALERS = {"None": "LANCZOS", "Lanczos": "LANCZOS", "Nearest": "NEAREST"}
UPSCALERS = (*LATENT_MODES, *PIXEL_UPSCALERS)
#: diffusers' upscaler pipelines a folder may hold (model_index.json's _class_name) -> their scale
MODEL_UPSCALERS = {"StableDiffusionUpscalePipeline": 4, "StableDiffusionLatentUpscalePipeline": 2}
MODEL_UPSCALER_WORDS = ("esrgan", "swinir", "scunet", "ldsr", "dat", "4x", "2x")


def _pipeline_class(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def resolve_upscaler(name: str) -> str:
    """A1111's upscaler name, matched case-insensitively, or a folder holding diffusers' SD x4 upscaler or
    latent (x2) upscaler pipeline; model files of other kinds (ESRGAN and kin) are refused by name."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        kind = _pipeline_class(folder) or "no model_index.json"
        check(kind in MODEL_UPSCALERS, "hires_upscaler", name, f"holds no upscaler pipeline t2i runs ({kind})",
              choices=tuple(MODEL_UPSCALERS))
        return name
    if folder.suffix.lower() in (".pth", ".pt", ".safetensors", ".ckpt", ".bin"):
        check(False, "hires_upscaler", name, "model upscaler files (ESRGAN and the like) are not supported: t2i runs "
              "diffusers' upscaler pipelines, given as a folder", choices=UPSCALERS)
    found = {u.lower(): u for u in UPSCALERS}.get(name.strip().lower())
    if found is None and any(word in name.lower() for word in MODEL_UPSCALER_WORDS):
        check(False, "hires_upscaler", name, "model upscalers (ESRGAN and the like) are not supported: t2i uses "
              "no upscaler weights", choices=UPSCALERS)
    check(found is not None, "hires_upscaler", name, "unknown upscaler", choices=UPSCALERS)
    return found  # type: ignore[return-value]


@dataclass(frozen=True)
class HiresSize:
    upscale_width: int  # what the first pass is upscaled to
    upscale_height: int
    truncate_x: int  # latent columns cut off after upscaling (a resize to another aspect), split at both sides
    truncate_y: int
    factor: int = VAE_FACTOR  # pixels a latent

    @property
    def latent(self) -> tuple[int, int]:
        """(width, height) of the upscaled latents, before the cut."""
        return self.upscale_width // self.factor, self.upscale_height // self.factor

    @property
    def final(self) -> tuple[int, int]:
        """The image's size after the second pass (latent units, whole)."""
        width, height = self.latent
        return (width - self.truncate_x) * self.factor, (height - self.truncate_y) * self.factor


def hires_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0,
               factor: int = VAE_FACTOR) -> HiresSize:
    """A1111's target for a first pass of `width` x `height`: `scale` times it, or with a resize,
    the resize fitted to the first pass's aspect (one side given: the other follows; both given: the
    upscale covers them and the excess is cut off, centred, in whole latent units)."""
    if not resize_x and not resize_y:
        return HiresSize(int(width * scale), int(height * scale), 0, 0, factor)
    if not resize_y:
        return HiresSize(resize_x, resize_x * height // width, 0, 0, factor)
    if not resize_x:
        return HiresSize(resize_y * width // height, resize_y, 0, 0, factor)
    if width / height < resize_x / resize_y:
        upscale = (resize_x, resize_x * height // width)
    else:
        upscale = (resize_y * width // height, resize_y)
    return HiresSize(*upscale, (upscale[0] - resize_x) // factor, (upscale[1] - resize_y) // factor, factor)


def second_pass_schedule(steps: int, denoise: float) -> tuple[int, float]:
    """(num_inference_steps, strength) that make diffusers' img2img run exactly `steps` steps, the last
    `steps` of a schedule of int(steps / denoise) as A1111's second pass does. (Asking diffusers for
    int(steps / denoise) steps at strength `denoise` would run int(int(steps / denoise) * denoise)
    steps: one fewer for most pairs, e.g. 19 for 20 steps at 0.7.)"""
    total = int(steps / min(denoise, 0.999))
    return total, denoising_strength(steps, total)


def img2img_steps(steps: int, strength: float) -> int:
    """How many steps A1111's img2img runs for `steps` at denoising `strength`: int(strength * steps) + 1
    (it starts one step earlier on the schedule than diffusers, which runs int(strength * steps))."""
    return min(int(min(strength, 0.999) * steps) + 1, steps)


def denoising_strength(run: int, total: int) -> float:
    """The strength diffusers' img2img needs to run the last `run` of `total` steps (its count is
    int(total * strength), so aim half a step past the whole number; all of them: exactly 1)."""
    return 1.0 if run >= total else (run + 0.5) / total


def check_hires(width: int | None, height: int | None, scale: float, resize_x: int, resize_y: int, denoise: float,
                max_side: int) -> None:
    """Hires settings, checked before the first pass (a target past the limits fails now, not after it)."""
    check(math.isfinite(scale) and 1 <= scale <= 8, "hires_scale", scale, "must be a number from 1 to 8")
    check(math.isfinite(denoise) and 0 < denoise <= 1, "hires_denoise", denoise, "must be in (0, 1]")
    for name, value in (("hires_resize", resize_x), ("hires_resize", resize_y)):
        check(value == 0 or 8 <= value <= max_side, name, f"{resize_x}x{resize_y}",
              f"each side must be 0 (follow the other) or from 8 to {max_side}")
    if width and height:
        final = hires_size(width, height, scale, resize_x, resize_y).final
        check(max(final) <= max_side and min(final) >= 8, "hires_scale", scale,
              f"gives a {final[0]}x{final[1]} image from {width}x{height}; each side must be from 8 to {max_side}")


# ---- the second pass (torch from here on, imported when a hires image is made) ---------------------


def _upscaler_pipeline(model, folder: str):
    """diffusers' upscaler pipeline in `folder`, loaded once per model (safetensors only, never online)."""
    if folder not in model.upscalers:
        import diffusers

        cls = getattr(diffusers, _pipeline_class(Path(folder).expanduser()) or "")
        pipe = cls.from_pretrained(str(Path(folder).expanduser()), local_files_only=True, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        model.upscalers[folder] = pipe.to(model.device, model.pipe.unet.dtype)
    return model.upscalers[folder]


def upscale_latents(pipe, latents, size: HiresSize, upscaler: str, model_upscale=None):
    """First-pass latents at the hires size: interpolated in latent space, or decoded, resized (by PIL,
    or first by an upscaler pipeline: `model_upscale`) and encoded again (the posterior's mean: no
    random draw to collide with the second pass's noise); then the resize's excess cut off, centred,
    as A1111 cuts it."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    width, height = size.latent
    factor = size.factor
    if upscaler in LATENT_MODES:
        mode, antialias = LATENT_MODES[upscaler]
        upscaled = F.interpolate(latents, size=(height, width), mode=mode, antialias=antialias)
    else:
        from t2i.sampling.decoding import decode

        resample = getattr(Image.Resampling, PIXEL_UPSCALERS.get(upscaler, "LANCZOS"))
        with torch.no_grad():
            images, _ = decode(pipe, latents, None)
            if model_upscale is not None:  # a model's 2x or 4x, then PIL's exact size
                images = model_upscale(images)
            pixels = pipe.image_processor.preprocess([im.resize((width * factor, height * factor), resample)
                                                      for im in images]).to(pipe.vae.device, pipe.vae.dtype)
            encoded = [pipe.vae.encode(pixels[i:i + 1]).latent_dist.mode() for i in range(len(pixels))]
        upscaled = torch.cat(encoded) * pipe.vae.config.scaling_factor
    ty, tx = size.truncate_y, size.truncate_x
    return upscaled[:, :, ty // 2:upscaled.shape[2] - (ty + 1) // 2, tx // 2:upscaled.shape[3] - (tx + 1) // 2]


def second_pass(model, config, loras, prompts: list[str], seeds: list[int], latents, embeddings, progress: bool,
                callback=None):
    """The hires pass for one batch: upscale, then img2img from the same seeds at the new shape, the
    hires prompt (or the prompt), sampler and steps; returns its latents."""
    import torch

    from t2i.sampling.samplers import SAMPLERS, schedule_arguments
    from t2i.sampling.text import text_inputs
    from t2i.sampling.view import call_view

    sampler, schedule = config.hires_sampling
    pipe, _ = call_view(model, "img2img", sampler, schedule, loras, progress)
    factor = pipe.vae_scale_factor
    size = hires_size(latents.shape[3] * factor, latents.shape[2] * factor, config.hires_scale or 1,
                      config.hires_resize_x, config.hires_resize_y, factor)
    upscaler = resolve_upscaler(config.hires_upscaler)
    steps = config.hires_steps or config.steps
    model_upscale = None
    if upscaler not in UPSCALERS:  # an upscaler pipeline's folder: it runs the hires steps too
        pipeline = _upscaler_pipeline(model, upscaler)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]

        def model_upscale(images):
            return pipeline(prompt=[config.hires_prompt or p for p in prompts], image=images, num_inference_steps=steps,
                            generator=generators, output_type="pil").images
    upscaled = upscale_latents(pipe, latents, size, upscaler, model_upscale)
    total, strength = second_pass_schedule(steps, config.hires_denoise)
    negative = config.negative_prompt if config.hires_negative_prompt is None else config.hires_negative_prompt
    text = text_inputs(pipe, [config.hires_prompt or p for p in prompts], negative, config.clip_skip,
                       config.emphasis, embeddings)
    if SAMPLERS[sampler].brownian:
        pipe.scheduler.noise_sampler_seed = list(seeds)
    extra = {"callback_on_step_end": callback} if callback is not None else {}
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # the same seeds, at the new shape
    return pipe(**text, **schedule_arguments(pipe.scheduler, schedule, total), image=upscaled, strength=strength,
                guidance_scale=config.guidance_scale, generator=generators, output_type="latent", **extra).images
