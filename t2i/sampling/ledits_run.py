"""Running LEDITS++ edits (t2i.sampling.ledits) with diffusers' own pipeline over a loaded model's components.

Each image is one inversion and one edited sampling pass of `LEditsPPPipelineStableDiffusion`, built per call
around this call's own copy of the UNet (the pipeline swaps the UNet's attention processors, which the shared
model must never see) and its own scheduler (the pipeline rewrites the scheduler's spacing). Its prompts are
plain text: diffusers' LEDITS++ encodes them with the tokenizer alone, so no emphasis and no LoRA tags.
"""

from __future__ import annotations

import logging
import secrets
from typing import Iterator

import torch
from diffusers import DDIMScheduler, LEditsPPPipelineStableDiffusion
from PIL import Image

from t2i.errors import check
from t2i.formats.images import describe, load_image
from t2i.sampling.ledits import SAMPLERS, SCHEDULE, has_quarter_attention

log = logging.getLogger("t2i")

SIDE = 32  # diffusers' LEDITS++ refuses images whose sides are not multiples of 32


def edit_sampling(config) -> tuple[str, str]:
    """(sampler, schedule) the edit runs with: the config's sampler where LEDITS++ supports it, else DPM++ 2M SDE,
    always on the Normal schedule, with one line saying so when that is not what was asked."""
    sampler, schedule = config.sampling
    if sampler not in SAMPLERS:
        log.warning("LEDITS++ inverts with DPM++ 2M SDE or DDIM only: using DPM++ 2M SDE instead of %s", sampler)
        sampler = SAMPLERS[0]
    if schedule != SCHEDULE and config.schedule not in (None, "automatic"):
        log.warning("LEDITS++ sets its own timesteps: the %s schedule is left out (Normal)", schedule)
    return sampler, SCHEDULE


def edit_mask(asked: str, unet_config) -> str:
    """The mask the edit uses: `asked`, with auto resolved; one line refuses what the UNet cannot give."""
    quarter = has_quarter_attention(unet_config)
    if asked == "auto":
        if not quarter:
            log.info("this UNet has no cross-attention at 1/4 of the latent size: LEDITS++ masks by the noise "
                     "estimate alone")
        return "intersect" if quarter else "noise"
    check(quarter or asked == "noise", "edit_mask", asked, "needs cross-attention at 1/4 of the latent size "
          f"(SD 1.x's third down block); this UNet's down blocks are {list(unet_config['down_block_types'])}",
          hint="use noise (or auto)")
    return asked


class WholeTimestepsDDIM(DDIMScheduler):
    """diffusers' DDIMScheduler, with timesteps cast to whole numbers before noise is added: LEDITS++'s DDIM
    inversion hands `add_noise` a float tensor as an index, which fails in diffusers 0.42."""

    def add_noise(self, original_samples, noise, timesteps):
        return super().add_noise(original_samples, noise, timesteps.long())


def ledits_pipeline(model, sampler: str, loras, progress: bool):
    """(LEDITS++ pipeline over `model`'s components for one call, LoRAs as recorded)."""
    from t2i.sampling.view import call_view, lora_copy

    view, applied = call_view(model, "txt2img", sampler, SCHEDULE, loras, progress)
    components = {name: view.components[name] for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    if not loras:  # with LoRAs the UNet already is this call's own copy
        components["unet"] = lora_copy(components["unet"])
    if sampler == "ddim":
        components["scheduler"] = WholeTimestepsDDIM.from_config(components["scheduler"].config)
    pipe = LEditsPPPipelineStableDiffusion(**components, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipe.set_progress_bar_config(leave=False, disable=not progress)
    return pipe, applied


def edit_size(config, image: Image.Image) -> tuple[int, int]:
    """The edit's size: the config's, else the image's own rounded down to 32 pixels."""
    width, height = config.width or image.width // SIDE * SIDE, config.height or image.height // SIDE * SIDE
    check(width >= SIDE and height >= SIDE, "init_image", describe(config.init_image),
          f"is {image.width}x{image.height} pixels; LEDITS++ needs at least {SIDE}x{SIDE}")
    return width, height


def edit_images(model, config, on_step=None, progress: bool = True) -> Iterator:
    """Each image `config` asks for (a prompt, each `num_images` times with seed+i): the init image inverted under
    the prompt (the source prompt; guidance_scale is the inversion's CFG) and sampled back with `config.edits`."""
    from t2i.sampling.decoding import decode
    from t2i.sampling.generate import GeneratedImage, image_settings

    image = load_image(config.init_image, "init_image")
    width, height = edit_size(config, image)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    sampler, schedule = edit_sampling(config)
    mask = edit_mask(config.edit_mask, model.pipe.unet.config)
    timesteps = model.scheduler_config["num_train_timesteps"]
    total = int(config.steps * (1 + config.edit_skip))
    check(total <= timesteps, "steps", config.steps, f"with the skip of {config.edit_skip:g} makes {total} steps; "
          f"this model's noise schedule has {timesteps}")
    pipe, applied = ledits_pipeline(model, sampler, config.loras, progress)
    edits = config.edits
    callback = None
    if on_step is not None:
        def callback(_pipe, index, _timestep, tensors):
            on_step(index + 1, config.steps)
            return tensors

    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    jobs = [(prompt, seed + index) for index, prompt in
            enumerate(p for p in config.prompts for _ in range(config.num_images))]
    for prompt, image_seed in jobs:
        generator = torch.Generator("cpu").manual_seed(image_seed)
        pipe.invert(image=image, source_prompt=prompt, source_guidance_scale=config.guidance_scale,
                    num_inversion_steps=config.steps, skip=config.edit_skip, generator=generator,
                    height=height, width=width)
        latents = pipe(editing_prompt=[e.text for e in edits], reverse_editing_direction=[e.remove for e in edits],
                       edit_guidance_scale=[float(e.scale) for e in edits],
                       edit_threshold=[float(e.threshold) for e in edits], edit_warmup_steps=[e.warmup for e in edits],
                       edit_cooldown_steps=[config.steps if e.cooldown is None else e.cooldown for e in edits],
                       use_cross_attn_mask=mask == "attention", use_intersect_mask=mask == "intersect",
                       output_type="latent", callback_on_step_end=callback).images
        with torch.no_grad():
            pictures, tile_size = decode(pipe, latents, [generator], None, config.vae_slicing)
        settings = image_settings(model, config, prompt, image_seed, (width, height), applied, [], tile_size, prompt,
                                  sampling=(sampler, schedule), edit_mask=mask)
        yield GeneratedImage(pictures[0], settings)
