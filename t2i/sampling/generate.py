"""Generation: txt2img, img2img and inpainting through the stock diffusers pipelines, images in memory.

t2i adds what the pipelines leave to the caller: one seed per image (seed, seed+1, ... on a CPU
generator, so any image of a batch can be re-made alone), samplers built from the original
scheduler config, LoRAs, decoding with retries (t2i.sampling.decoding), and a record of every setting with
each image. Writing files is not done here (t2i.formats.png): a server sends the same images.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image

from t2i.errors import check
from t2i.formats.embeddings import EmbeddingLibrary
from t2i.formats.images import describe, load_image, load_mask
from t2i.formats.lora import LoraRef
from t2i.models.loading import LoadedModel
from t2i.processes import share
from t2i.sampling.config import MAX_SIDE, GenerationConfig
from t2i.sampling.decoding import decode
from t2i.sampling.hires import check_hires, denoising_strength, img2img_steps, resolve_upscaler, second_pass
from t2i.sampling.img2img_alt import blend, found_noise
from t2i.sampling.img2img_steps import prepare
from t2i.sampling.outpaint import FILLS, make_canvas, parse_sides
from t2i.sampling.prompts import split_lora_tags
from t2i.sampling.record_entries import EmbeddingUse, LoraUse
from t2i.sampling.samplers import SAMPLERS, schedule_arguments
from t2i.sampling.settings import ImageSettings
from t2i.sampling.text import context_length, embeddings_used, text_inputs
from t2i.sampling.view import call_view, serialised_tokenizer

# torchsde compares diffusers' float32 sigmas with its float64 interval ends and warns when one
# rounds past the end by 1e-7; the query is clamped and the noise is right (parity-tested)
warnings.filterwarnings("ignore", message=r"Should have tb<=t1", category=UserWarning)

#: called after each denoising step with (step, steps) of the current batch; it may raise
#: `SkipBatch` to drop that batch, or any other exception to stop the whole run
StepCallback = Callable[[int, int], None]


class SkipBatch(Exception):
    """Raised by a step callback: drop the current batch and go on with the next (A1111's Skip)."""


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    settings: ImageSettings  # every resolved setting: enough to re-make it
    # with `strip`: the predicted clean image every `strip` steps, then the image itself (t2i.sampling.previews)
    strip: tuple[Image.Image, ...] = ()
    attention: Any = None  # with `attention_maps`: its t2i.sampling.attention_maps.AttentionMaps


#: called with a preview image (the current step's predicted clean image, approximated) during sampling
PreviewCallback = Callable[[Image.Image], None]


def _output_size(model: LoadedModel, config: GenerationConfig, init) -> tuple[int, int]:
    if init is not None:
        native = (init.width // 8 * 8, init.height // 8 * 8)
    else:
        side = model.pipe.unet.config.sample_size * model.pipe.vae_scale_factor
        native = (side, side)
    return config.width or native[0], config.height or native[1]


def _check_steps(scheduler, schedule_args: dict, config: GenerationConfig) -> None:
    """SD's 'leading' spacing with steps_offset 1 puts DDPM's 1000th step at t=1000, one past the
    schedule: diffusers then fails mid-run with an IndexError. Say so before any work."""
    scheduler.set_timesteps(**schedule_args)
    last = int(scheduler.timesteps.max())
    limit = scheduler.config.num_train_timesteps
    check(last < limit, "steps", config.steps,
          f"the {config.sampling[0]} sampler on this model's schedule reaches timestep {last} of {limit}",
          hint=f"use {config.steps - 1} or fewer")


def _lora_tags(prompt: str, config: GenerationConfig) -> tuple[str, tuple[LoraRef, ...]]:
    """(prompt text without its <lora:...> tags, the config's LoRAs and the tags' ones)."""
    text, tags = split_lora_tags(prompt)
    return text, config.loras + tuple(LoraRef.from_tag(name, scale, config.lora_dir) for name, scale in tags)


def _batches(jobs: list, config: GenerationConfig, tokenizer, embeddings) -> list[list]:
    """Jobs in batches of up to batch_size. A batch shares one LoRA set and one context length
    (padding one prompt's context to another's would change its image: each must re-make alone)."""
    lengths = {text: context_length(tokenizer, text, config.negative_prompt, config.emphasis, embeddings)
               for text, _, _, _ in jobs}
    batches: list[list] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if last and len(last) < config.batch_size and (lengths[last[0][0]], last[0][1]) == (lengths[job[0]], job[1]):
            last.append(job)
        else:
            batches.append([job])
    return batches


def image_settings(model: LoadedModel, config: GenerationConfig, prompt: str, seed: int, size: tuple[int, int],
                   loras: list[dict], embeddings: list, vae_tile_size: int | None,
                   written: str | None = None, controls: list | tuple = (), ip_adapters: list | tuple = (),
                   sampling: tuple[str, str] | None = None, edit_mask: str | None = None) -> ImageSettings:
    """One image's resolved settings (`prompt`: its text without LoRA tags, `written`: as the user
    wrote it; `vae_tile_size`: the tiles it was decoded in, asked for or after running out of memory;
    `controls`: its ControlNet units, t2i.sampling.control_run.PreparedControl; `ip_adapters`: its
    IP-Adapter units, t2i.sampling.ip_run.PreparedIPAdapter; `sampling`: the (sampler, schedule) that ran where
    it is not the config's, and `edit_mask` the mask an edit ran with: t2i.sampling.ledits_run)."""
    def source(value):
        return value if isinstance(value, (str, type(None))) else None  # an image given in memory has no path

    sampler, schedule = sampling or config.sampling
    return ImageSettings(
        prompt=prompt, prompt_as_written=written, seed=seed, width=size[0], height=size[1], steps=config.steps,
        guidance_scale=config.guidance_scale, sampler=sampler, schedule=schedule, model=model.config.model,
        negative_prompt=config.negative_prompt, clip_skip=config.clip_skip,
        strength=1.0 if config.img2img_alt else config.effective_strength if config.mode not in ("txt2img", "edit")
        else None,
        init_image=source(config.init_image), mask=source(config.mask),
        # the config's LoRAs come first (t2i.sampling.generate._lora_tags); the rest were named by tags
        loras=tuple(LoraUse(**lora, from_tag=index >= len(config.loras)) for index, lora in enumerate(loras)),
        emphasis="none" if config.edits else config.emphasis,  # LEDITS++ reads its prompt as plain text
        embeddings_dir=config.embeddings_dir,
        embeddings=tuple(EmbeddingUse(e.name, str(e.path), e.hash) for e in embeddings),
        outpaint=config.outpaint, outpaint_mode=config.outpaint_mode, mask_blur=config.mask_blur, fill=config.fill,
        inpaint_prep=config.inpaint_prep, inpaint_area=config.inpaint_area, inpaint_padding=config.inpaint_padding,
        resize_mode=config.resize_mode, mask_invert=config.mask_invert,
        outpaint_noise_q=config.outpaint_noise_q, outpaint_color_variation=config.outpaint_color_variation,
        cache_interval=config.cache_interval, vae_tile_size=vae_tile_size, vae=model.config.vae,
        **_hires_settings(config), controls=tuple(c.record() for c in controls),
        pag_scale=config.pag_scale, pag_adaptive=config.pag_adaptive, pag_layers=config.pag_layers,
        ip_adapters=tuple(unit.record() for unit in ip_adapters), image_encoder=config.image_encoder,
        sag_scale=config.sag_scale, sag_threshold=config.sag_threshold, sag_blur_sigma=config.sag_blur_sigma,
        from_noise=config.from_noise, edits=config.edits, edit_skip=config.edit_skip, img2img_alt=config.img2img_alt,
        edit_mask=edit_mask or config.edit_mask,
        dtype=model.dtype_name, device=model.device.type, model_name=model.name, model_hash=model.hash)


def _outpaint_inputs(init: Image.Image, config: GenerationConfig):
    """(canvas, mask, overlay) for outpainting: the canvas and mask as t2i.sampling.outpaint makes them,
    then A1111's img2img steps (poor-man's mask blurred by twice the blur, as A1111's script sets it;
    the masked content; the overlay that keeps the original's pixels as they were)."""
    canvas = make_canvas(init, parse_sides(config.outpaint or ""), config.outpaint_mode, config.mask_blur)
    width, height = canvas.image.size
    check(max(width, height) <= MAX_SIDE, "outpaint", config.outpaint,
          f"makes a {width}x{height} canvas from {init.width}x{init.height}; each side must be at most {MAX_SIDE}")
    check((config.width in (None, width)) and (config.height in (None, height)), "width",
          f"{config.width}x{config.height}", f"outpainting makes a {width}x{height} canvas; leave width and height out")
    blur = 2 * config.mask_blur if config.outpaint_mode == "poor-man" else 0  # pad's mask is feathered already
    inputs = prepare(canvas.image, canvas.mask, width=width, height=height, resize_mode=0, mask_blur=blur,
                     invert=False, fill=FILLS.index(config.fill), only_masked=False, padding=0)
    return inputs.image, inputs.mask, inputs.finish


def _inpaint_inputs(init: Image.Image, mask: Image.Image, size: tuple[int, int], config: GenerationConfig):
    """(start image, mask, overlay) for inpainting as A1111 prepares it, the same for every front end."""
    inputs = prepare(init, mask, width=size[0], height=size[1], resize_mode=config.resize_mode,
                     mask_blur=config.mask_blur, invert=config.mask_invert, fill=FILLS.index(config.fill),
                     only_masked=config.inpaint_area == "masked", padding=config.inpaint_padding)
    return inputs.image, inputs.mask, inputs.finish


def _hires_settings(config: GenerationConfig) -> dict:
    if not config.hires:
        return {}
    sampler, schedule = config.hires_sampling
    return dict(hires_scale=config.hires_scale, hires_resize_x=config.hires_resize_x,
                hires_resize_y=config.hires_resize_y, hires_upscaler=resolve_upscaler(config.hires_upscaler),
                hires_steps=config.hires_steps, hires_denoise=config.hires_denoise, hires_sampler=sampler,
                hires_schedule=schedule, hires_prompt=config.hires_prompt,
                hires_negative_prompt=config.hires_negative_prompt)


def generate_iter(model: LoadedModel, config: GenerationConfig, on_step: StepCallback | None = None,
                  progress: bool = True, rank: int = 0, world: int = 1, on_preview: PreviewCallback | None = None,
                  preview_every: int = 0, preview_mode: str = "approx") -> Iterator[GeneratedImage]:
    """Yield every image `config` asks for, batch by batch, each with its settings.

    With `on_preview` and `preview_every` > 0, every `preview_every`-th step hands it the batch's first
    image as the sampler predicts it will end (A1111's live preview; `preview_mode` approx or full: see
    t2i.sampling.previews).

    With `world` > 1 (processes started by a launcher), only process `rank`'s contiguous block of
    the batches: every image is made once, by one process, in the batch one process puts it in,
    so it has the pixels a single-process run gives it.
    """
    if config.outpaint is not None and config.outpaint_mode == "mk2":  # a generation a side, t2i.sampling.outpaint_mk2
        from t2i.sampling.outpaint_mk2 import mk2_images

        yield from mk2_images(model, config, on_step, progress)
        return
    if config.edits:  # LEDITS++: an inversion and an edited pass an image, t2i.sampling.ledits_run
        from t2i.sampling.ledits_run import edit_images

        yield from edit_images(model, config, on_step, progress)
        return
    # read and check every input before any work, so a bad input fails before the first image
    init = load_image(config.init_image, "init_image") if config.init_image is not None else None
    if init is not None:
        check(min(init.size) >= 8, "init_image", describe(config.init_image),
              f"is {init.width}x{init.height} pixels; it must be at least 8x8")
    mask = load_mask(config.mask, init.size) if config.mask is not None and init is not None else None
    finish = None  # what a result goes through before it is returned: A1111's overlay
    if config.outpaint is not None and init is not None:
        init, mask, finish = _outpaint_inputs(init, config)
    elif mask is not None and init is not None and config.inpaint_prep == "a1111":
        init, mask, finish = _inpaint_inputs(init, mask, _output_size(model, config, init), config)
    width, height = _output_size(model, config, init)
    if config.hires:  # the target checked against the native size too, before the first pass
        check_hires(width, height, config.hires_scale or 1, config.hires_resize_x, config.hires_resize_y,
                    config.hires_denoise, MAX_SIDE)
    if init is not None and init.size != (width, height):
        init = init.resize((width, height), resample=Image.Resampling.BICUBIC)  # as diffusers' preprocess
        mask = mask.resize((width, height), resample=Image.Resampling.NEAREST) if mask is not None else None
    controls = []
    if config.controls:  # every ControlNet loaded and checked, every map made, before any sampling
        from t2i.sampling.control_run import prepare_controls

        controls = prepare_controls(model, config.controls, (width, height), config.controlnet_dir)
    ip_adapters = []
    if config.ip_adapters:  # every adapter and encoder loaded and checked, every picture embedded, before sampling
        from t2i.sampling.ip_run import batch_embeds, prepare_ip_adapters

        ip_adapters = prepare_ip_adapters(model, config.ip_adapters, config.controlnet_dir, config.image_encoder)
    if config.pag_scale > 0:
        from t2i.sampling.pag import check_layers

        check_layers(model.pipe.unet, config.pag_layers)
    if config.sag_scale > 0:
        from t2i.sampling.sag import check_model

        check_model(model.pipe.unet)
    inverted = None
    if config.from_noise is not None:  # the noise file read and checked against this generation before any work
        from t2i.sampling.inversion import check_fits, load_noise

        inverted = load_noise(config.from_noise)
        check_fits(inverted, model, (width, height), config.steps, config.sampling, config.from_noise)
    found, alt = None, config.img2img_alt
    if alt is not None and init is not None:  # the noise the init image comes from, found once for every image
        found = found_noise(model, init, alt, config.clip_skip, config.emphasis)
    layers = model.pipe.text_encoder.config.num_hidden_layers
    check(config.clip_skip is None or config.clip_skip <= layers, "clip_skip", config.clip_skip,
          f"this text encoder has only {layers} layers")
    timesteps = model.scheduler_config["num_train_timesteps"]
    check(config.steps <= timesteps, "steps", config.steps,
          f"must be at most {timesteps}: this model's noise schedule has {timesteps} timesteps")
    for option in ("compile", "offload"):  # both wrap the shared UNet's forward, which feature reuse replaces
        check(config.cache_interval == 1 or not getattr(model.config, option), "cache_interval",
              config.cache_interval, f"does not combine with {{{option}}}", hint="leave one of them off")
    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    tagged = {prompt: _lora_tags(prompt, config) for prompt in config.prompts}  # files resolved before work
    tokenizer = serialised_tokenizer(model.pipe.tokenizer)  # other threads encode with it too
    embeddings = None
    if config.embeddings_dir is not None:  # every embedding the prompts name is read and checked now
        check(Path(config.embeddings_dir).expanduser().is_dir(), "embeddings_dir", config.embeddings_dir,
              "is not a folder", hint="give the folder holding your .safetensors embeddings")
        embeddings = EmbeddingLibrary(config.embeddings_dir, tokenizer, model.pipe.text_encoder.config.hidden_size,
                                      model.config.allow_pickle)
        embeddings_used(tokenizer, [text for text, _ in tagged.values()] + [config.negative_prompt],
                        config.emphasis, embeddings)
    views = {}  # LoRA set -> (pipeline, LoRAs as recorded): prompts with other tags get their own view
    watched = {}  # LoRA set -> its view's clean-image estimates (t2i.sampling.previews), with a strip or previews
    preview_every = preview_every if on_preview is not None else 0

    def view(loras):
        if loras not in views:
            views[loras] = call_view(model, config.mode, *config.sampling, loras, progress,
                                     config.cache_interval, controls, config.guidance_scale > 1,
                                     config.pag_layers if config.pag_scale > 0 else None, ip_adapters,
                                     (config.sag_scale, config.sag_threshold, config.sag_blur_sigma)
                                     if config.sag_scale > 0 else None, config.attention_maps)
            if config.strip or preview_every:
                from t2i.sampling.previews import Previews

                watched[loras] = Previews(views[loras][0].scheduler, config.strip or 0)
        return views[loras]

    scheduler = view(config.loras)[0].scheduler
    schedule_args = schedule_arguments(scheduler, config.sampling[1], config.steps)
    _check_steps(scheduler, schedule_args, config)
    words: dict[str, tuple] = {}  # prompt text -> its words, for the attention maps
    if config.attention_maps:  # every prompt's words known, and the filter's words checked, before any work
        from t2i.sampling.attention_maps import check_filter, prompt_words

        words = {text: prompt_words(tokenizer, text, config.emphasis, embeddings) for text, _ in tagged.values()}
        check_filter(config.attention_words, words)
    prompts = (p for p in config.prompts for _ in range(config.num_images))
    jobs = [(*tagged[prompt], seed + i, prompt) for i, prompt in enumerate(prompts)]  # (text, LoRAs, seed, written)
    batches = _batches(jobs, config, tokenizer, embeddings)
    batches = batches[share(len(batches), rank, world)]
    # A1111's step count: int(strength * steps) + 1 (diffusers runs one fewer); the same everywhere
    strength = denoising_strength(img2img_steps(config.steps, config.effective_strength), config.steps)
    modes: dict[str, dict[str, Any]] = {
        "txt2img": {"width": width, "height": height},
        "img2img": {"image": init, "strength": strength},
        "inpaint": {"image": init, "mask_image": mask, "strength": strength, "width": width, "height": height}}
    mode_args = modes[config.mode]
    if controls:
        from t2i.sampling.control_run import pipeline_arguments

        mode_args.update(pipeline_arguments(controls, config.mode))
    if config.pag_scale > 0:
        mode_args.update(pag_scale=config.pag_scale, pag_adaptive_scale=config.pag_adaptive)
    current: list = []  # the batch's Previews, for the step callback
    if on_step is not None or preview_every:
        def step_end(_pipe, index, _timestep, tensors):
            if on_preview is not None and preview_every and (index + 1) % preview_every == 0 \
                    and current[0].latest is not None:
                from t2i.sampling.previews import preview_image

                on_preview(preview_image(model, _pipe, current[0].latest, (width, height), preview_mode))
            if on_step is not None:
                on_step(index + 1, _pipe.num_timesteps)
            return tensors

        mode_args["callback_on_step_end"] = step_end
    used: dict[str, list] = {}  # prompt text -> the embeddings its images record
    requested_tile = (config.vae_tile_size or model.pipe.vae.tile_sample_min_size) if config.vae_tiling else None
    for number, batch in enumerate(batches, 1):
        pipe, loras = view(batch[0][1])
        pipe.set_progress_bar_config(leave=False, disable=not progress, desc=f"batch {number}/{len(batches)}")
        generators = [torch.Generator("cpu").manual_seed(s) for _, _, s, _ in batch]
        if config.cache_interval > 1:  # each batch denoises from its own noise: nothing kept carries over
            pipe.unet.feature_cache.reset()
        if batch[0][1] in watched:  # the strip and previews start again
            watched[batch[0][1]].reset()
            current[:] = [watched[batch[0][1]]]
        if inverted is not None:  # every image of the batch starts from the inverted noise
            mode_args["latents"] = inverted.noise.repeat(len(batch), 1, 1, 1).to(model.device, pipe.unet.dtype)
        if found is not None and alt is not None:  # each starts from the found noise, blended with its seed's
            mode_args["latents"] = blend(found, [s for _, _, s, _ in batch], alt.randomness, pipe.unet.dtype)
        if config.attention_maps:
            pipe.unet.attention_store.reset()
        if ip_adapters:  # each image of the batch reads the same pictures; the scale window starts again
            mode_args["ip_adapter_image_embeds"] = batch_embeds(ip_adapters, len(batch), config.guidance_scale > 1)
            pipe.unet.ip_window.reset()
        if SAMPLERS[config.sampling[0]].brownian:  # one Brownian tree an image: each re-makes alone
            pipe.scheduler.noise_sampler_seed = [s for _, _, s, _ in batch]
        text = text_inputs(pipe, [p for p, _, _, _ in batch], config.negative_prompt, config.clip_skip, config.emphasis,
                           embeddings)
        try:
            latents = pipe(**text, **schedule_args, guidance_scale=config.guidance_scale,
                           generator=generators, output_type="latent", **mode_args).images
            if config.hires:
                latents = second_pass(model, config, batch[0][1], [p for p, _, _, _ in batch],
                                      [s for _, _, s, _ in batch],
                                      latents, embeddings, progress, mode_args.get("callback_on_step_end"))
        except SkipBatch:
            continue
        with torch.no_grad():
            images, tile_size = decode(pipe, latents, generators, requested_tile, config.vae_slicing)
        strips: list[tuple] = [()] * len(images)
        if config.strip:
            from t2i.sampling.previews import decode_frames

            frames = decode_frames(pipe, watched[batch[0][1]].frames)
            strips = [tuple(frame[index] for frame in frames) for index in range(len(images))]
        maps: list = [None] * len(images)
        if config.attention_maps:
            from t2i.sampling.attention_maps import image_maps

            maps = [image_maps(pipe.unet.attention_store, index, words[prompt], (width, height),
                               config.attention_words) for index, (prompt, _, _, _) in enumerate(batch)]
        for (prompt, _, image_seed, written), image, strip, attention in zip(batch, images, strips, maps):
            image = finish(image) if finish is not None else image
            if prompt not in used:  # the prompt's own embeddings and the negative prompt's, scanned once a prompt
                used[prompt] = embeddings_used(tokenizer, [prompt, config.negative_prompt], config.emphasis,
                                               embeddings)
            settings = image_settings(model, config, prompt, image_seed, (width, height), loras, used[prompt],
                                      tile_size, written, controls, ip_adapters)
            yield GeneratedImage(image, settings, strip + (image,) if config.strip else (), attention)


def generate(model: LoadedModel, config: GenerationConfig, on_step: StepCallback | None = None,
             progress: bool = True) -> list[GeneratedImage]:
    """Every image `config` asks for, in order, each with its settings (see `generate_iter`)."""
    return list(generate_iter(model, config, on_step, progress))
