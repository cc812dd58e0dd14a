"""What to generate: `GenerationConfig`, every default once and every value checked on creation.

A config holds what the user said: names stay as given ("DPM++ 2M Karras", "automatic") and are
resolved where they are used, so `dataclasses.replace` on a config behaves like building it anew.
Checks are pure: no disk reads (files are read when the work starts) and no torch import, so a
front end can check a request before paying for the heavy imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from t2i.errors import check
from t2i.formats.lora import LoraRef
from t2i.sampling.control import MAX_UNITS, ControlUnit
from t2i.sampling.hires import check_hires, resolve_upscaler
from t2i.sampling.img2img_alt import Img2ImgAlt
from t2i.sampling.ip_adapter import MAX_ADAPTERS, IPAdapterUnit
from t2i.sampling.ledits import MASKS as EDIT_MASKS
from t2i.sampling.ledits import MAX_EDITS, EditConcept
from t2i.sampling.outpaint import FILLS, parse_sides
from t2i.sampling.outpaint import MODES as OUTPAINT_MODES
from t2i.sampling.prompts import EMPHASIS, parse_prompt, split_lora_tags
from t2i.sampling.samplers import resolve_sampler

INPAINT_PREPS = ("a1111", "diffusers")
RESIZE_MODES = {0: "just resize", 1: "crop and resize", 2: "resize and fill"}  # A1111's img2img resize modes
INPAINT_AREAS = ("whole", "masked")
MAX_SEED = 2**63 - 1
MAX_SIDE = 4096  # pixels; checked before any work (SD 1.x is trained at 512, A1111's UI stops at 2048)


@dataclass(frozen=True)
class GenerationConfig:
    prompts: tuple[str, ...]
    negative_prompt: str = ""
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int | None = None  # None: a random one, recorded in each image
    num_images: int = 1  # per prompt
    batch_size: int = 1
    width: int | None = None  # None: the model's native size (or the init image's)
    height: int | None = None
    sampler: str = "dpmpp-2m"  # t2i, A1111 or ComfyUI name (a joined "DPM++ 2M Karras" names the schedule too)
    # A1111's Schedule type or ComfyUI's scheduler; automatic: A1111's default for the sampler; None: the one a
    # joined sampler name carries, else Normal (diffusers' default)
    schedule: str | None = "automatic"
    loras: tuple[LoraRef, ...] = ()
    clip_skip: int | None = None  # A1111 convention: 1 = last layer, 2 = penultimate
    init_image: Any = None  # a path or a PIL image: img2img, or inpainting with `mask`
    mask: Any = None  # a path or a PIL image; white is repainted
    strength: float | None = None  # None: 0.75 for img2img, 1.0 for inpainting
    emphasis: str = "original"  # A1111's emphasis mode: original, no-norm, or none (brackets are text)
    lora_dir: str = "loras"  # where a prompt's <lora:NAME:WEIGHT> tags look for NAME
    embeddings_dir: str | None = None  # textual-inversion embeddings: a file's name in a prompt inserts its vectors
    vae_tiling: bool = False  # decode in overlapping tiles: large images in little memory (seams are blended)
    vae_tile_size: int | None = None  # pixels; None: the VAE's own training size (512 for SD 1.x)
    vae_slicing: bool = False  # decode a batch an image at a time: the same pixels in less memory
    cache_interval: int = 1  # DeepCache-style: the whole UNet every N calls, its outer level alone between
    # outpainting (t2i.sampling.outpaint): the init image on a larger canvas, the new border repainted
    outpaint: str | None = None  # SIDE=PIXELS pairs: "left=128,right=128" (sides left, right, up, down, all)
    outpaint_mode: str = "poor-man"  # A1111's Poor man's outpainting canvas, or "pad" (ComfyUI's)
    mask_blur: int = 4  # A1111's Mask blur in pixels: inpainting's and outpainting's seam (pad: the feathering)
    fill: str = "fill"  # A1111's Masked content: what the repainted area starts from, fill (the colours around
    # it) or original (the image as it is)
    # inpainting with a mask: "a1111" prepares the image and mask as A1111 does (resize mode, mask blur, masked
    # content, only-masked area) and keeps every unmasked pixel of the original (its overlay); "diffusers"
    # hands the mask to diffusers' pipeline as it is and returns its output as it is (t2i's images before)
    inpaint_prep: str = "a1111"
    inpaint_area: str = "whole"  # A1111's Inpaint area: whole (picture) or masked (its box, at full resolution)
    inpaint_padding: int = 32  # pixels around the masked box with inpaint_area masked (A1111's default)
    resize_mode: int = 0  # inpainting's: 0 just resize, 1 crop and resize, 2 resize and fill (A1111's)
    mask_invert: bool = False  # repaint the black of the mask instead of the white
    outpaint_noise_q: float = 1.0  # mk2: the matched noise's fall-off exponent (lower: more detail)
    outpaint_color_variation: float = 0.05  # mk2: how colourful the starting noise is
    # A1111's hires fix (txt2img): upscale the first pass by hires_scale, or to hires_resize_x x hires_resize_y
    # (0 for one side: it follows the aspect), with hires_upscaler, then refine it with an img2img pass
    hires_scale: float | None = None  # None (and no resize): off
    hires_resize_x: int = 0
    hires_resize_y: int = 0
    hires_upscaler: str = "Latent"  # one of t2i.sampling.hires.UPSCALERS (A1111's names)
    hires_steps: int = 0  # 0: as many as steps
    hires_denoise: float = 0.7  # the second pass's denoising strength (A1111's UI default)
    hires_sampler: str | None = None  # None: the first pass's sampler (and then its schedule)
    hires_schedule: str | None = None
    hires_prompt: str | None = None  # None: the prompt
    hires_negative_prompt: str | None = None
    # ControlNet (t2i.sampling.control): units, each a ControlNet and the image it reads
    controls: tuple[ControlUnit, ...] = ()
    controlnet_dir: str = "controlnet"  # where a unit's model name is looked up (A1111's models/ControlNet)
    # Perturbed-Attention Guidance (t2i.sampling.pag): 0 is off; the paper uses 3 with CFG 4 or less
    pag_scale: float = 0.0
    pag_adaptive: float = 0.0  # the scale falls by this much a timestep towards t=0 (diffusers' adaptive scale)
    pag_layers: tuple[str, ...] = ("mid",)  # patterns of the self-attention layers perturbed (diffusers' regexes)
    # IP-Adapter (t2i.sampling.ip_adapter): units, each an adapter file (or a name in controlnet_dir) and the
    # picture it reads as a prompt; image_encoder: what embeds the pictures (None: the one each adapter names,
    # else image_encoder/ beside the adapter file, as h94's repository has it)
    ip_adapters: tuple[IPAdapterUnit, ...] = ()
    image_encoder: str | None = None
    # Self-Attention Guidance (t2i.sampling.sag), any sampler: 0 is off; 0.75 is diffusers' and A1111's
    sag_scale: float = 0.0
    sag_threshold: float = 1.0  # A1111's SAG Mask Threshold: keys attended more than this (1: the average)
    sag_blur_sigma: float = 1.0  # of the blur over the masked parts of the predicted image, in latent pixels
    # the denoising strip (t2i.sampling.previews): the predicted clean image every `strip` steps, then the image
    strip: int | None = None
    # cross-attention maps per word (t2i.sampling.attention_maps), of every word or of the words named
    attention_maps: bool = False
    attention_words: tuple[str, ...] = ()
    # start from inverted noise (t2i.sampling.inversion: `t2i invert`) instead of a seed's: txt2img with DDIM
    from_noise: str | None = None
    # LEDITS++ (t2i.sampling.ledits): edit init_image by words added or taken away; the prompt is the source
    # prompt (what the image shows), guidance_scale the inversion's CFG and steps the inversion's
    edits: tuple[EditConcept, ...] = ()
    edit_skip: float = 0.15  # the share of the noisiest steps left out: less, the more the edit may change
    edit_mask: str = "auto"  # t2i.sampling.ledits.MASKS
    # A1111's img2img alternative test (t2i.sampling.img2img_alt): init_image's noise found by Euler backwards,
    # sampled forwards as txt2img from it (denoising strength 1)
    img2img_alt: Img2ImgAlt | None = None

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        check(len(self.prompts) >= 1, "prompts", None, "give at least one prompt")
        check(self.steps >= 1, "steps", self.steps, "must be at least 1")
        check(math.isfinite(self.guidance_scale) and self.guidance_scale >= 0, "guidance_scale",
              self.guidance_scale, "must be a finite number, 0 or more")
        check(self.num_images >= 1, "num_images", self.num_images, "must be at least 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be at least 1")
        check(self.seed is None or 0 <= self.seed <= MAX_SEED, "seed", self.seed, f"must be in 0..{MAX_SEED}")
        last_seed = (self.seed or 0) + len(self.prompts) * self.num_images - 1
        check(last_seed <= MAX_SEED, "seed", self.seed,
              f"the last image would get seed {last_seed}, past {MAX_SEED}", hint="choose a smaller seed")
        for name in ("width", "height"):
            size = getattr(self, name)
            check(size is None or (size >= 8 and size % 8 == 0), name, size,
                  f"must be a positive multiple of 8 (e.g. {max(8, (size or 0) // 8 * 8)})")
            check(size is None or size <= MAX_SIDE, name, size, f"must be at most {MAX_SIDE}")
        check(self.clip_skip is None or self.clip_skip >= 1, "clip_skip", self.clip_skip, "must be 1 or more")
        check(self.mask is None or self.init_image is not None, "mask", None,
              "needs {init_image} (the image to repaint)")
        check(self.strength is None or self.init_image is not None, "strength", None,
              "needs {init_image} (it says how much of the init image to change)")
        check(self.strength is None or (math.isfinite(self.strength) and 0 < self.strength <= 1), "strength",
              self.strength, "must be in (0, 1]")
        check(self.cache_interval >= 1, "cache_interval", self.cache_interval, "must be at least 1 (1: off)")
        check(self.vae_tile_size is None or self.vae_tiling, "vae_tile_size", self.vae_tile_size,
              "needs {vae_tiling}")
        check(self.vae_tile_size is None or (self.vae_tile_size >= 32 and self.vae_tile_size % 8 == 0),
              "vae_tile_size", self.vae_tile_size,
              f"must be a multiple of 8, at least 32 (e.g. {max(32, (self.vae_tile_size or 0) // 8 * 8)})")
        check(self.emphasis in EMPHASIS, "emphasis", self.emphasis, "unknown emphasis mode", choices=EMPHASIS)
        for prompt in self.prompts:  # weights, tags and BREAKs are checked before any work
            parse_prompt(split_lora_tags(prompt)[0], self.emphasis)
        parse_prompt(self.negative_prompt, self.emphasis, "negative_prompt")
        _ = self.sampling  # resolving checks the sampler, the schedule and that they go together
        self._check_hires()
        self._check_outpaint()
        self._check_controls()
        self._check_pag()
        self._check_ip_adapters()
        self._check_sag()
        self._check_strip()
        self._check_attention_maps()
        self._check_from_noise()
        self._check_edits()
        self._check_img2img_alt()
        object.__setattr__(self, "loras", tuple(LoraRef.parse(r) if isinstance(r, str) else r for r in self.loras))

    @property
    def sampling(self) -> tuple[str, str]:
        """(sampler, schedule) as t2i names: "DPM++ 2M Karras" -> ("dpmpp-2m", "karras")."""
        return resolve_sampler(self.sampler, self.schedule)

    @property
    def hires(self) -> bool:
        return self.hires_scale is not None or bool(self.hires_resize_x or self.hires_resize_y)

    @property
    def hires_sampling(self) -> tuple[str, str]:
        """The second pass's (sampler, schedule): the first pass's unless given."""
        if self.hires_sampler is None and self.hires_schedule is None:
            return self.sampling
        return resolve_sampler(self.hires_sampler or self.sampler, self.hires_schedule or "automatic")

    def _check_outpaint(self) -> None:
        check(self.outpaint_mode in OUTPAINT_MODES, "outpaint_mode", self.outpaint_mode, "unknown outpainting mode",
              choices=OUTPAINT_MODES)
        check(self.fill in FILLS, "fill", self.fill, "unknown masked content", choices=FILLS)
        check(0 <= self.mask_blur <= 64, "mask_blur", self.mask_blur, "must be from 0 to 64 pixels")
        check(self.inpaint_prep in INPAINT_PREPS, "inpaint_prep", self.inpaint_prep, "unknown inpainting preparation",
              choices=INPAINT_PREPS)
        check(self.inpaint_area in INPAINT_AREAS, "inpaint_area", self.inpaint_area, "unknown inpaint area",
              choices=INPAINT_AREAS)
        check(0 <= self.inpaint_padding <= 1024, "inpaint_padding", self.inpaint_padding,
              "must be from 0 to 1024 pixels")
        check(self.resize_mode in RESIZE_MODES, "resize_mode", self.resize_mode, "unknown resize mode",
              choices=[f"{k} ({v})" for k, v in RESIZE_MODES.items()])
        check(math.isfinite(self.outpaint_noise_q) and 0 <= self.outpaint_noise_q <= 4, "outpaint_noise_q",
              self.outpaint_noise_q, "must be from 0 to 4")
        check(math.isfinite(self.outpaint_color_variation) and 0 <= self.outpaint_color_variation <= 1,
              "outpaint_color_variation", self.outpaint_color_variation, "must be from 0 to 1")
        if self.outpaint is None:
            return
        parse_sides(self.outpaint)
        check(self.init_image is not None, "outpaint", self.outpaint, "needs {init_image} (the image to extend)")
        check(self.mask is None, "mask", None, "does not combine with {outpaint}, which makes its own mask")

    def _check_controls(self) -> None:
        object.__setattr__(self, "controls", tuple(self.controls))
        check(len(self.controls) <= MAX_UNITS, "controls", len(self.controls),
              f"at most {MAX_UNITS} ControlNet units at once")
        if not self.controls:
            return
        check(all(isinstance(c, ControlUnit) for c in self.controls), "controls", None,
              "each unit must be a ControlUnit")
        check(self.cache_interval == 1, "cache_interval", self.cache_interval,
              "does not combine with ControlNet (its residuals go into every UNet call)", hint="leave it at 1")
        check(not self.hires, "hires_scale", self.hires_scale, "does not combine with ControlNet yet",
              hint="run the hires pass as img2img with the same --control at the larger size")
        check(self.outpaint is None or self.outpaint_mode != "mk2", "outpaint_mode", self.outpaint_mode,
              "mk2 generates a side at a time and does not combine with ControlNet", hint="use poor-man or pad")

    def _check_pag(self) -> None:
        object.__setattr__(self, "pag_layers", tuple(self.pag_layers))
        for name in ("pag_scale", "pag_adaptive"):
            value = getattr(self, name)
            check(math.isfinite(value) and 0 <= value <= 100, name, value, "must be a finite number from 0 to 100")
        check(len(self.pag_layers) >= 1 and all(isinstance(x, str) and x for x in self.pag_layers), "pag_layers",
              None, "give at least one layer pattern (e.g. mid)")
        if self.pag_scale == 0:
            return
        check(self.cache_interval == 1, "cache_interval", self.cache_interval,
              "does not combine with {pag_scale} (the perturbed pass needs the whole UNet)", hint="leave it at 1")
        check(not (self.controls and self.mode == "img2img"), "pag_scale", self.pag_scale,
              "diffusers has no ControlNet img2img pipeline with PAG", hint="use txt2img or inpainting with PAG")
        check(not self.hires, "pag_scale", self.pag_scale, "does not combine with hires fix yet")
        check(self.outpaint is None or self.outpaint_mode != "mk2", "pag_scale", self.pag_scale,
              "does not combine with Outpainting mk2", hint="use poor-man or pad")

    def _check_attention_maps(self) -> None:
        object.__setattr__(self, "attention_words", tuple(self.attention_words))
        check(not self.attention_words or self.attention_maps, "attention_words", self.attention_words[0]
              if self.attention_words else None, "filters the attention maps", hint="add {attention_maps}")
        if not self.attention_maps:
            return
        check(not self.ip_adapters, "attention_maps", None, "does not combine with IP-Adapter (both replace the "
              "cross-attention processors)", hint="leave one of them out")
        check(self.cache_interval == 1, "cache_interval", self.cache_interval,
              "does not combine with {attention_maps} (every layer must run every step)", hint="leave it at 1")
        check(not self.hires, "attention_maps", None, "does not combine with hires fix yet")
        check(self.outpaint is None or self.outpaint_mode != "mk2", "attention_maps", None,
              "does not combine with Outpainting mk2", hint="use poor-man or pad")

    def _check_from_noise(self) -> None:
        if self.from_noise is None:
            return
        check(self.init_image is None, "from_noise", self.from_noise, "is a txt2img start; it does not combine "
              "with {init_image}", hint="invert the image with `t2i invert` and leave {init_image} out")
        check(not self.hires, "from_noise", self.from_noise, "does not combine with hires fix")

    def _check_edits(self) -> None:
        object.__setattr__(self, "edits", tuple(self.edits))
        check(len(self.edits) <= MAX_EDITS, "edits", len(self.edits), f"at most {MAX_EDITS} edits at once")
        check(all(isinstance(e, EditConcept) for e in self.edits), "edits", None, "each edit must be an EditConcept")
        check(isinstance(self.edit_skip, (int, float)) and math.isfinite(self.edit_skip) and 0 <= self.edit_skip < 1,
              "edit_skip", self.edit_skip, "must be from 0 to below 1 (the share of the noisiest steps left out)")
        check(self.edit_mask in EDIT_MASKS, "edit_mask", self.edit_mask, "unknown LEDITS++ mask", choices=EDIT_MASKS)
        if not self.edits:
            return
        check(self.init_image is not None, "edits", self.edits[0].written, "needs {init_image} (the image to edit)")
        for field, given in (("mask", self.mask is not None), ("outpaint", self.outpaint is not None),
                             ("strength", self.strength is not None), ("hires_scale", self.hires),
                             ("controls", bool(self.controls)), ("ip_adapters", bool(self.ip_adapters)),
                             ("pag_scale", self.pag_scale > 0), ("sag_scale", self.sag_scale > 0),
                             ("strip", self.strip is not None), ("attention_maps", self.attention_maps),
                             ("from_noise", self.from_noise is not None), ("cache_interval", self.cache_interval > 1),
                             ("negative_prompt", bool(self.negative_prompt)), ("clip_skip", self.clip_skip is not None),
                             ("embeddings_dir", self.embeddings_dir is not None),
                             ("vae_tiling", self.vae_tiling)):
            check(not given, field, None, "does not combine with LEDITS++ edits", hint="leave it out of the edit")
        for prompt in self.prompts:
            check(not split_lora_tags(prompt)[1], "prompts", prompt, "LEDITS++ reads its prompt as plain text: LoRA "
                  "tags do not work there", hint="give LoRAs with {loras}")
        for name in ("width", "height"):
            size = getattr(self, name)
            check(size is None or size % 32 == 0, name, size, "LEDITS++ needs a multiple of 32 "
                  f"(e.g. {max(32, (size or 0) // 32 * 32)})")

    def _check_img2img_alt(self) -> None:
        if self.img2img_alt is None:
            return
        check(isinstance(self.img2img_alt, Img2ImgAlt), "img2img_alt", None, "must be an Img2ImgAlt")
        check(self.init_image is not None, "img2img_alt", None, "needs {init_image} (the image whose noise it finds)")
        check(self.strength in (None, 1), "strength", self.strength, "the img2img alternative test samples the "
              "whole schedule from the found noise: denoising strength 1", hint="leave it out or send 1")
        for field, given in (("mask", self.mask is not None), ("outpaint", self.outpaint is not None),
                             ("hires_scale", self.hires), ("controls", bool(self.controls)),
                             ("from_noise", self.from_noise is not None), ("edits", bool(self.edits))):
            check(not given, field, None, "does not combine with the img2img alternative test")

    def _check_strip(self) -> None:
        check(self.strip is None or (isinstance(self.strip, int) and self.strip >= 1), "strip", self.strip,
              "must be a whole number of steps, 1 or more (the strip keeps every Nth step's prediction)")
        check(self.strip is None or self.outpaint_mode != "mk2" or self.outpaint is None, "strip", self.strip,
              "does not combine with Outpainting mk2 (a generation a side)", hint="use poor-man or pad")
        check(self.strip is None or not self.hires, "strip", self.strip, "does not combine with hires fix yet (its "
              "second pass has frames of another size)", hint="make the strip of the first pass alone")

    def _check_sag(self) -> None:
        for name, low, high in (("sag_scale", 0, 10), ("sag_threshold", 0, 10), ("sag_blur_sigma", 0.1, 10)):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high, name, value,
                  f"must be a finite number from {low:g} to {high:g}")
        if self.sag_scale == 0:
            return
        check(self.pag_scale == 0, "sag_scale", self.sag_scale,
              "does not combine with {pag_scale} (both rewrite the mid block's self-attention)", hint="use one")
        check(self.cache_interval == 1, "cache_interval", self.cache_interval,
              "does not combine with {sag_scale} (its degraded pass needs the whole UNet)", hint="leave it at 1")
        check(not self.hires, "sag_scale", self.sag_scale, "does not combine with hires fix yet")
        check(self.outpaint is None or self.outpaint_mode != "mk2", "sag_scale", self.sag_scale,
              "does not combine with Outpainting mk2", hint="use poor-man or pad")

    def _check_ip_adapters(self) -> None:
        object.__setattr__(self, "ip_adapters", tuple(self.ip_adapters))
        check(len(self.ip_adapters) <= MAX_ADAPTERS, "ip_adapters", len(self.ip_adapters),
              f"at most {MAX_ADAPTERS} IP-Adapters at once")
        check(all(isinstance(unit, IPAdapterUnit) for unit in self.ip_adapters), "ip_adapters", None,
              "each unit must be an IPAdapterUnit")
        if not self.ip_adapters:
            check(self.image_encoder is None, "image_encoder", self.image_encoder, "is for IP-Adapters",
                  hint="add --ip-adapter FILE --ip-image IMAGE")
            return
        check(self.cache_interval == 1, "cache_interval", self.cache_interval,
              "does not combine with IP-Adapter (its image tokens go into every cross-attention)", hint="leave it at 1")
        check(not self.hires, "hires_scale", self.hires_scale, "does not combine with IP-Adapter yet",
              hint="run the hires pass as img2img with the same --ip-adapter at the larger size")
        check(self.outpaint is None or self.outpaint_mode != "mk2", "outpaint_mode", self.outpaint_mode,
              "mk2 generates a side at a time and does not combine with IP-Adapter", hint="use poor-man or pad")

    def _check_hires(self) -> None:
        given = [name for name in ("hires_sampler", "hires_schedule", "hires_prompt", "hires_negative_prompt")
                 if getattr(self, name) is not None] + (["hires_steps"] if self.hires_steps else [])
        check(self.hires or not given, given[0] if given else "hires_scale", None,
              "needs {hires_scale} or {hires_resize} (it is a setting of the hires pass)")
        if not self.hires:
            return
        check(self.init_image is None, "hires_scale", self.hires_scale, "hires fix is for txt2img",
              hint="upscale an init image with img2img at a larger width and height")
        check(self.hires_steps >= 0, "hires_steps", self.hires_steps, "must be 0 (as many as steps) or more")
        check_hires(self.width, self.height, 1 if self.hires_scale is None else self.hires_scale,
                    self.hires_resize_x, self.hires_resize_y, self.hires_denoise, MAX_SIDE)
        resolve_upscaler(self.hires_upscaler)
        _ = self.hires_sampling
        for text, field in ((self.hires_prompt, "hires_prompt"), (self.hires_negative_prompt, "hires_negative_prompt")):
            if text is not None:
                check(not split_lora_tags(text)[1], field, text, "LoRA tags work in the prompt only; the first "
                      "pass's LoRAs refine the hires pass too")
                parse_prompt(text, self.emphasis, field)

    @property
    def mode(self) -> str:
        if self.edits:
            return "edit"
        if self.img2img_alt is not None:  # the pipeline samples from the found noise, as txt2img does
            return "txt2img"
        inpaint = self.mask is not None or self.outpaint is not None
        return "inpaint" if inpaint else "img2img" if self.init_image is not None else "txt2img"

    @property
    def effective_strength(self) -> float:
        return self.strength if self.strength is not None else (1.0 if self.mode == "inpaint" else 0.75)
