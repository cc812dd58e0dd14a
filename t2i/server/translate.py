"""An A1111 request -> what t2i runs: the GenerationConfig, the checkpoint and VAE, and the img2img
steps around generation. Everything is checked here, before the request joins the queue.

A1111 features t2i does not have are refused by name when a request asks for them (a value other
than A1111's "off" default), never dropped in silence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from t2i.errors import check
from t2i.sampling import img2img_steps
from t2i.sampling.config import GenerationConfig
from t2i.sampling.hires import hires_size
from t2i.sampling.ledits import EditConcept, parse_edit
from t2i.sampling.outpaint import make_canvas, parse_sides
from t2i.server import img2img
from t2i.server.catalog import Catalog, Checkpoint
from t2i.server.controlnet_api import SCRIPT as CONTROLNET_SCRIPT
from t2i.server.controlnet_api import ControlNetFolder, RequestControls, request_controls
from t2i.server.schemas import EditRequest, GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from t2i.server.scripts import script_fields
from t2i.server.settings import ServerSettings

# GenerationConfig field -> the request field that sets it, for error messages
API_FIELDS = {"prompts": "prompt", "guidance_scale": "cfg_scale", "num_images": "n_iter", "sampler": "sampler_name",
              "schedule": "scheduler", "clip_skip": "override_settings.CLIP_stop_at_last_layers",
              "init_image": "init_images", "strength": "denoising_strength", "lora_dir": "the server's --lora-dir",
              "hires_scale": "hr_scale", "hires_upscaler": "hr_upscaler", "hires_steps": "hr_second_pass_steps",
              "hires_resize": "hr_resize_x", "hires_resize_x": "hr_resize_x", "hires_resize_y": "hr_resize_y",
              "hires_denoise": "denoising_strength", "hires_sampler": "hr_sampler_name",
              "hires_schedule": "hr_scheduler", "hires_prompt": "hr_prompt",
              "hires_negative_prompt": "hr_negative_prompt",
              "embeddings_dir": "the server's --embeddings-dir", "edit": "edits.text", "edit_scale": "edits.scale",
              "edit_threshold": "edits.threshold", "edit_warmup": "edits.warmup", "edit_cooldown": "edits.cooldown"}
# option -> the type its value must have; POST options and override_settings take these
# A1111's live previews: the interval (0 off, -1 every step) and how a preview is made
OPTIONS = {"sd_model_checkpoint": str, "sd_vae": str, "CLIP_stop_at_last_layers": int,
           "show_progress_every_n_steps": int, "show_progress_type": str}
# A1111's preview types -> t2i's (t2i.sampling.previews): a VAE decode, or the fitted colour map for the others
PREVIEW_TYPES = {"Full": "full", "Approx NN": "approx", "Approx cheap": "approx", "TAESD": "approx"}


def api_field(field: str) -> str:
    return API_FIELDS.get(field, field)


def _off(value, *off) -> bool:
    return value is None or value in off or (isinstance(value, float) and math.isinf(value) and math.inf in off)


# request field -> (the values that mean "not used", what t2i lacks): refused otherwise
UNSUPPORTED = {
    "restore_faces": ((False,), "face restoration"),
    "tiling": ((False,), "tiling"), "subseed_strength": ((0,), "variation seeds"),
    "seed_resize_from_h": ((-1, 0), "seed resizing"), "seed_resize_from_w": ((-1, 0), "seed resizing"),
    "refiner_checkpoint": (("", "None"), "a refiner"),
    "s_churn": ((0,), "sigma churn"), "s_tmin": ((0,), "sigma tmin"), "s_tmax": ((0, math.inf), "sigma tmax"),
    "s_noise": ((1,), "sigma noise"), "initial_noise_multiplier": ((1,), "a noise multiplier"),
}


def refuse_unsupported(request: GenerationRequest) -> None:
    for name, (off, feature) in UNSUPPORTED.items():
        value = getattr(request, name, None)
        check(_off(value, *off), name, value, f"t2i has no {feature}", hint="leave it out or at its default")
    check(not request.styles, "styles", request.styles, "t2i has no saved styles", hint="put the text in the prompt")
    scripts = [name for name, value in request.alwayson_scripts.items()
               if _script_enabled(value) and name.lower() != CONTROLNET_SCRIPT]
    check(not scripts, "alwayson_scripts", ", ".join(scripts), "t2i runs no A1111 extension but ControlNet")


def _script_enabled(value) -> bool:
    """Clients send {"args": []} or {"args": [False]} for an extension they leave off."""
    args = value.get("args") if isinstance(value, dict) else value
    return args not in ([], [False], None, {})


def check_options(options: dict, field: str) -> None:
    for key, value in options.items():
        check(key in OPTIONS, f"{field}.{key}", None, "not an option t2i has", choices=list(OPTIONS))
        check(isinstance(value, OPTIONS[key]) and not isinstance(value, bool), f"{field}.{key}", value,
              f"must be a {OPTIONS[key].__name__}")
        check(key != "show_progress_type" or value in PREVIEW_TYPES, f"{field}.{key}", value,
              "unknown live preview type", choices=list(PREVIEW_TYPES))


@dataclass(frozen=True)
class Plan:
    config: GenerationConfig
    checkpoint: Checkpoint
    vae: str | None
    finish: Callable[[Image.Image], Image.Image]  # A1111's step after generation (the inpaint overlay)
    controls: RequestControls = RequestControls()  # ControlNet units, and those whose maps the answer shows
    preview_every: int = 0  # steps between live previews (/progress's current_image); 0: none
    preview_mode: str = "approx"


def plan(request: GenerationRequest, options: dict, catalog: Catalog, settings: ServerSettings,
         controlnets: ControlNetFolder | None = None) -> Plan:
    """What the request asks t2i to do, every value checked against the server's limits first."""
    refuse_unsupported(request)
    check(not request.script_name or isinstance(request, Img2ImgRequest), "script_name", request.script_name,
          "t2i runs no txt2img scripts")
    overrides = request.override_settings or {}
    check_options(overrides, "override_settings")
    options = {**options, **overrides}
    check(request.steps <= settings.max_steps, "steps", request.steps,
          f"over this server's limit of {settings.max_steps}")
    for name in ("batch_size", "n_iter"):  # each named by itself: 0 x 4 is not "n_iter 0"
        check(getattr(request, name) >= 1, name, getattr(request, name), "must be at least 1")
    images = request.batch_size * request.n_iter
    check(images <= settings.max_images, "batch_size", f"{request.batch_size} x n_iter {request.n_iter}",
          f"asks for {images} images; this server's limit is {settings.max_images} a request")
    if request.width and request.height:
        check(request.width * request.height <= settings.max_pixels, "width", f"{request.width}x{request.height}",
              f"over this server's limit of {settings.max_pixels:,} pixels an image")
    check(request.seed >= -1, "seed", request.seed, "must be -1 (random) or a seed of 0 or more")
    clip_skip = options.get("CLIP_stop_at_last_layers", 1)
    fields: dict[str, Any] = dict(
                  prompts=(request.prompt,), negative_prompt=request.negative_prompt, steps=request.steps,
                  guidance_scale=request.cfg_scale, seed=None if request.seed == -1 else request.seed,
                  num_images=images, batch_size=request.batch_size, width=request.width, height=request.height,
                  sampler=request.sampler_name or request.sampler_index, schedule=request.scheduler,
                  clip_skip=None if clip_skip == 1 else clip_skip, lora_dir=settings.lora_dir,
                  embeddings_dir=settings.embeddings_dir)
    finish = _identity
    if isinstance(request, Txt2ImgRequest) and request.enable_hr:
        fields.update(_hires_fields(request))
    if isinstance(request, EditRequest):
        fields = _edit_fields(request, fields)
    elif isinstance(request, Img2ImgRequest):
        fields, finish = _img2img_fields(request, fields)
    if isinstance(request, Img2ImgRequest):
        check(fields["width"] * fields["height"] <= settings.max_pixels, "init_images",
              f"{fields['width']}x{fields['height']}", f"over this server's limit of {settings.max_pixels:,} pixels",
              hint="send width and height")
    checkpoint = catalog.checkpoint(options["sd_model_checkpoint"],
                                    "override_settings.sd_model_checkpoint" if "sd_model_checkpoint" in overrides
                                    else "sd_model_checkpoint")
    vae = catalog.vae(options.get("sd_vae"), "override_settings.sd_vae" if "sd_vae" in overrides else "sd_vae")
    controls = RequestControls()
    if controlnets is not None:
        init = fields.get("init_image") if isinstance(fields.get("init_image"), Image.Image) else None
        controls = request_controls(request.alwayson_scripts, controlnets, init)
        fields["controls"] = controls.units
        fields["ip_adapters"] = controls.ip_adapters
        if controls.ip_adapters and settings.image_encoder:
            fields["image_encoder"] = settings.image_encoder
    if request.t2i_attention_maps:
        fields["attention_maps"] = True
    config = GenerationConfig(**fields)
    if config.hires and config.width and config.height:  # the second pass's size, before any work
        final = hires_size(config.width, config.height, config.hires_scale or 1, config.hires_resize_x,
                           config.hires_resize_y).final
        check(final[0] * final[1] <= settings.max_pixels, "hr_scale", f"{final[0]}x{final[1]}",
              f"over this server's limit of {settings.max_pixels:,} pixels an image")
    every = options.get("show_progress_every_n_steps", 0)
    kind = options.get("show_progress_type", "Approx cheap")
    return Plan(config, checkpoint, vae, finish, controls, 1 if every == -1 else max(every, 0), PREVIEW_TYPES[kind])


def _hires_fields(request: Txt2ImgRequest) -> dict:
    """A1111's hires fix fields as GenerationConfig's: an empty hr prompt means the prompt, no upscaler
    Latent, and denoising_strength (A1111's API default 0.75) is the second pass's."""
    resize = bool(request.hr_resize_x or request.hr_resize_y)
    return dict(hires_scale=None if resize else request.hr_scale, hires_resize_x=request.hr_resize_x,
                hires_resize_y=request.hr_resize_y, hires_upscaler=request.hr_upscaler or "Latent",
                hires_steps=request.hr_second_pass_steps,
                hires_denoise=0.75 if request.denoising_strength is None else request.denoising_strength,
                hires_sampler=request.hr_sampler_name or None, hires_schedule=request.hr_scheduler or None,
                hires_prompt=request.hr_prompt or None, hires_negative_prompt=request.hr_negative_prompt or None)


def _identity(image: Image.Image) -> Image.Image:
    return image


def _edit_fields(request: EditRequest, fields: dict) -> dict:
    """A LEDITS++ edit's fields: the one init image, the edits ("+WORDS", "-WORDS" or objects), the size the
    image's own rounded down to 32 unless given."""
    check(len(request.init_images) == 1, "init_images", f"{len(request.init_images)} images",
          "an edit takes one image")
    check(bool(request.edits), "edits", None, "give at least one edit", hint='e.g. ["+blue", "-red"]')
    for name in ("mask", "script_name"):
        check(not getattr(request, name), name, None, "does not combine with an edit")
    check(request.denoising_strength is None, "denoising_strength", request.denoising_strength,
          "an edit samples back its whole inversion; leave it out")
    init = img2img.decode_image(request.init_images[0], "init_images")
    check(min(init.size) >= 32, "init_images", f"{init.width}x{init.height}", "LEDITS++ needs at least 32x32 pixels")
    edits = []
    for item in request.edits:
        if isinstance(item, str):
            edits.append(EditConcept(*parse_edit(item)))
        else:
            edits.append(EditConcept(**item.model_dump()))
    return {**fields, "init_image": init, "edits": tuple(edits), "edit_skip": request.edit_skip,
            "edit_mask": request.edit_mask, "embeddings_dir": None,  # LEDITS++ reads no embeddings
            "width": fields["width"] or init.width // 32 * 32, "height": fields["height"] or init.height // 32 * 32}


def _img2img_fields(request: Img2ImgRequest, fields: dict) -> tuple[dict, Callable]:
    check(len(request.init_images) >= 1, "init_images", None, "img2img needs an init image")
    check(len(request.init_images) == 1, "init_images", f"{len(request.init_images)} images",
          "t2i takes one init image a request")
    init = img2img.decode_image(request.init_images[0], "init_images")
    check(request.denoising_strength is not None, "denoising_strength", None, "img2img needs a denoising strength")
    if request.script_name:  # the script makes the canvas from the image as sent (A1111's scripts do)
        check(not request.mask, "mask", None, f"does not combine with the {request.script_name} script")
        script = script_fields(request.script_name, request.script_args)
        if "img2img_alt" in script:  # txt2img from the image's noise, at the request's size or the image's own
            script.setdefault("strength", request.denoising_strength)
            return {**fields, "width": fields["width"] or init.width // 8 * 8,
                    "height": fields["height"] or init.height // 8 * 8, **script, "init_image": init}, _identity
        sides = parse_sides(script["outpaint"])
        if script["outpaint_mode"] == "mk2":  # its image grows by exactly the pixels
            size = (init.width + sides["left"] + sides["right"], init.height + sides["up"] + sides["down"])
        else:
            size = make_canvas(init, sides, script["outpaint_mode"], script["mask_blur"]).image.size
        return {**fields, **script, "width": size[0], "height": size[1], "init_image": init,
                "strength": request.denoising_strength}, _identity
    mask = img2img.decode_image(request.mask, "mask") if request.mask else None
    width = fields["width"] or init.width // 8 * 8
    height = fields["height"] or init.height // 8 * 8
    check(width >= 8 and height >= 8, "init_images", f"{init.width}x{init.height}", "must be at least 8x8 pixels")
    check(request.inpainting_mask_invert in (0, 1), "inpainting_mask_invert", request.inpainting_mask_invert,
          "must be 0 (repaint white) or 1 (repaint black)")
    blur = request.mask_blur if request.mask_blur is not None else max(request.mask_blur_x, request.mask_blur_y)
    check(blur >= 0, "mask_blur", blur, "must be 0 or more")
    check(request.inpaint_full_res_padding >= 0, "inpaint_full_res_padding", request.inpaint_full_res_padding,
          "must be 0 or more")
    fields = {**fields, "width": width, "height": height, "strength": request.denoising_strength}
    if mask is None:  # img2img: the init image resized as A1111's resize mode says
        inputs = img2img_steps.prepare(init, None, width=width, height=height, resize_mode=request.resize_mode,
                                       mask_blur=0, invert=False, fill=0, only_masked=False, padding=0)
        return {**fields, "init_image": inputs.image}, _identity
    check(mask.size == init.size, "mask", f"{mask.width}x{mask.height}",
          f"must be the init image's size, {init.width}x{init.height}")
    check(request.inpainting_fill in img2img_steps.FILL_MODES, "inpainting_fill", request.inpainting_fill,
          "not a masked-content mode t2i has", choices=[f"{k} ({v})" for k, v in img2img_steps.FILL_MODES.items()])
    # inpainting: t2i.sampling.generate prepares it as A1111 does, as it does for `t2i generate --mask`
    # the mask read as A1111 reads it (a stroke on a clear layer: its alpha) before it leaves the request
    return {**fields, "init_image": init, "mask": img2img_steps.binary_mask(mask), "mask_blur": blur,
            "resize_mode": request.resize_mode, "fill": img2img_steps.FILL_MODES[request.inpainting_fill],
            "mask_invert": request.inpainting_mask_invert == 1,
            "inpaint_area": "masked" if request.inpaint_full_res else "whole",
            "inpaint_padding": request.inpaint_full_res_padding}, _identity
