"""Generation: txt2img, img2img and inpainting through the stock diffusers pipelines.

t2i adds what the pipelines leave to the caller: one seed per image (seed, seed+1, ... on a CPU
generator, so any image of a batch can be re-made alone), sampler swaps from the original
scheduler config, LoRAs, an fp32 retry for NaN fp16 decodes, and PNGs that carry their settings.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from t2i import __version__
from t2i.config import GenerationConfig, check
from t2i.images import load_image, load_mask, save_png
from t2i.lora_files import apply_loras
from t2i.metadata import png_info
from t2i.pipelines import DTYPES, LoadedModel
from t2i.schedulers import build_scheduler

log = logging.getLogger("t2i")

def _output_size(model: LoadedModel, config: GenerationConfig, init) -> tuple[int, int]:
    if init is not None:
        native = (init.width // 8 * 8, init.height // 8 * 8)
    else:
        side = model.pipe.unet.config.sample_size * model.pipe.vae_scale_factor
        native = (side, side)
    return config.width or native[0], config.height or native[1]


def _check_steps(scheduler, config: GenerationConfig) -> None:
    """SD's 'leading' spacing with steps_offset 1 puts DDPM's 1000th step at t=1000, one past the
    schedule: diffusers then fails mid-run with an IndexError. Say so before any work."""
    scheduler.set_timesteps(config.steps)
    last = int(scheduler.timesteps.max())
    limit = scheduler.config.num_train_timesteps
    check(last < limit, f"--steps {config.steps}: the {config.sampler} sampler on this model's schedule reaches "
                        f"timestep {last} of {limit}; use --steps {config.steps - 1} or fewer")


def _check_clip_skip(model: LoadedModel, clip_skip: int | None) -> None:
    layers = model.pipe.text_encoder.config.num_hidden_layers
    check(clip_skip is None or clip_skip <= layers,
          f"--clip-skip {clip_skip}: this text encoder has only {layers} layers")


@torch.no_grad()
def _clip_skip_embeddings(pipe, texts: list[str], clip_skip: int) -> torch.Tensor:
    """Text context from the clip_skip-th last CLIP layer, through the final layer norm (A1111).

    Done here rather than by the pipeline's `clip_skip=` because diffusers 0.42 reaches for
    `text_encoder.text_model`, which transformers >= 5.6 no longer has; and A1111 applies clip
    skip to the negative prompt too, which the pipeline does not.
    """
    tokens = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(pipe.device)
    hidden = pipe.text_encoder(tokens, output_hidden_states=True).hidden_states[-clip_skip]
    text_model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)  # wrapped before transformers 5.6
    return text_model.final_layer_norm(hidden)


def _text_inputs(pipe, prompts: list[str], negative: str, clip_skip: int | None) -> dict:
    if clip_skip is None or clip_skip == 1:
        return {"prompt": prompts, "negative_prompt": [negative] * len(prompts) if negative else None}
    return {"prompt_embeds": _clip_skip_embeddings(pipe, prompts, clip_skip),
            "negative_prompt_embeds": _clip_skip_embeddings(pipe, [negative] * len(prompts), clip_skip)}


def decode(pipe, latents: torch.Tensor, generators) -> list:
    """Latents -> PIL images, as the pipelines decode them, retrying in fp32 if fp16 gave NaN.

    The SD 1.x VAE overflows in fp16 on some latents and the pipelines never upcast it: the result
    is a black image. Detecting it costs one isfinite over the decoded batch.
    """
    vae = pipe.vae
    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    if not torch.isfinite(images).all() and vae.dtype != torch.float32:
        log.warning("the %s VAE decode gave NaN (a black image): decoding again in fp32", vae.dtype)
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            images = vae.decode(latents.float() / vae.config.scaling_factor, return_dict=False,
                                generator=generators)[0]
        finally:
            vae.to(dtype)
    return pipe.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * len(images))


def generate(model: LoadedModel, config: GenerationConfig,
             on_saved: Callable[[Path], None] | None = None) -> list[Path]:
    """Generate every image `config` asks for; returns the PNG paths written, in order."""
    # read and check every input before any work, so a bad input leaves no output behind
    init = load_image(config.init_image, "--init-image") if config.init_image else None
    mask = load_mask(config.mask, init.size) if config.mask else None
    width, height = _output_size(model, config, init)
    if init is not None and init.size != (width, height):
        init = init.resize((width, height), resample=3)  # bicubic, as diffusers' preprocess
        mask = mask.resize((width, height), resample=0) if mask is not None else None
    _check_clip_skip(model, config.clip_skip)
    strength = config.strength if config.strength is not None else (1.0 if config.mode == "inpaint" else 0.75)
    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    pipe = model.pipeline_for(config.mode)
    pipe.scheduler = build_scheduler(config.sampler, model.scheduler_config)
    _check_steps(pipe.scheduler, config)
    loras = apply_loras(pipe, config.loras)

    jobs = [(prompt, seed + i) for i, prompt in enumerate(p for p in config.prompts for _ in range(config.num_images))]
    batches = [jobs[i:i + config.batch_size] for i in range(0, len(jobs), config.batch_size)]
    mode_args = {"txt2img": {"width": width, "height": height},
                 "img2img": {"image": init, "strength": strength},
                 "inpaint": {"image": init, "mask_image": mask, "strength": strength, "width": width,
                             "height": height}}[config.mode]
    paths = []
    try:
        for number, batch in enumerate(batches, 1):
            pipe.set_progress_bar_config(**{**getattr(pipe, "_progress_bar_config", {}),
                                            "desc": f"batch {number}/{len(batches)}"})
            generators = [torch.Generator("cpu").manual_seed(s) for _, s in batch]
            text = _text_inputs(pipe, [p for p, _ in batch], config.negative_prompt, config.clip_skip)
            latents = pipe(**text, num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
                           generator=generators, output_type="latent", **mode_args).images
            with torch.no_grad():
                images = decode(pipe, latents, generators)
            for (prompt, image_seed), image in zip(batch, images):
                settings = _settings(model, config, prompt, image_seed, width, height, strength, loras)
                path = save_png(image, Path(config.out_dir), image_seed, png_info(settings))
                paths.append(path)
                if on_saved:
                    on_saved(path)
    finally:
        if loras:
            pipe.unload_lora_weights()
    return paths


def _settings(model: LoadedModel, config: GenerationConfig, prompt: str, seed: int, width: int, height: int,
              strength: float, loras: list[dict]) -> dict:
    """Every resolved setting of one image: enough to re-make it exactly."""
    return {
        "version": __version__, "mode": config.mode, "prompt": prompt, "negative_prompt": config.negative_prompt,
        "steps": config.steps, "guidance_scale": config.guidance_scale, "seed": seed, "width": width,
        "height": height, "sampler": config.sampler, "clip_skip": config.clip_skip,
        "strength": strength if config.mode != "txt2img" else None,
        "init_image": config.init_image, "mask": config.mask, "loras": loras,
        "model": model.config.model, "model_name": model.name, "model_hash": model.hash, "vae": model.config.vae,
        "dtype": next(name for name, dtype in DTYPES.items() if dtype == model.pipe.unet.dtype), "device": model.pipe.device.type,
    }
