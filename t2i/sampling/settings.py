"""One image's settings: what generation returns beside each image, what its PNG carries (the `t2i`
JSON record and A1111's infotext) and what re-makes it.

Each setting is declared once, here, with the types a record may hold for it and the config that
owns it (`GenerationConfig` or `ModelConfig`); writing, reading back and routing overrides all
follow from that one declaration. A new capability adds its fields in this file and nowhere else (a unit of
several values, such as a ControlNet unit, has its entry class in t2i.sampling.record_entries).
`t2i.formats` only turns records into bytes and back.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from t2i import __version__
from t2i.errors import InvalidInput, check
from t2i.sampling.img2img_alt import Img2ImgAlt
from t2i.sampling.ledits import EditConcept
from t2i.sampling.record_entries import (
    NONE,
    ControlUse,
    EmbeddingUse,
    IPAdapterUse,
    LoraUse,
    number_text,
    plain_entry,
    unit_entry,
)
from t2i.sampling.samplers import SAMPLERS, SCHEDULES, resolve_sampler


def _setting(types: tuple, owner: str | None = None, default: Any = MISSING, since: Any = MISSING):
    """A recorded setting: the JSON types it may hold, the config field it comes from (owner
    "generation" or "model"; None: recorded for people and other tools only), and for settings added
    after the first records, the value an older record that lacks it stands for (`since`)."""
    return field(default=default, metadata={"types": types, "owner": owner, "since": since})


@dataclass(frozen=True)
class ImageSettings:
    """Every resolved setting of one image: enough to re-make it exactly."""

    prompt: str = _setting((str,), "generation")  # the text the UNet saw, LoRA tags taken out
    seed: int = _setting((int,), "generation")
    width: int = _setting((int,), "generation")
    height: int = _setting((int,), "generation")
    steps: int = _setting((int,), "generation")
    guidance_scale: float = _setting((int, float), "generation")
    sampler: str = _setting((str,), "generation")  # t2i names, as resolved (never "automatic")
    schedule: str = _setting((str, NONE), "generation", since=None)  # older records join it to the sampler
    model: str = _setting((str,), "model")  # the model to load: hub id, folder, file or preset
    negative_prompt: str = _setting((str,), "generation", "")
    # the prompt as the user wrote it, its LoRA tags in place: what the infotext shows (None in older records)
    prompt_as_written: str | None = _setting((str, NONE), None, None, since=None)
    clip_skip: int | None = _setting((int, NONE), "generation", None)
    strength: float | None = _setting((int, float, NONE), "generation", None)  # None for txt2img
    init_image: str | None = _setting((str, NONE), "generation", None)  # a path; None for an image in memory
    mask: str | None = _setting((str, NONE), "generation", None)
    loras: tuple[LoraUse, ...] = _setting((list, tuple), "generation", ())
    emphasis: str = _setting((str,), "generation", "original", since="none")  # older images parsed no syntax
    embeddings_dir: str | None = _setting((str, NONE), "generation", None, since=None)
    embeddings: tuple[EmbeddingUse, ...] = _setting((list, tuple), None, (), since=())
    cache_interval: int = _setting((int,), "generation", 1, since=1)
    vae_tile_size: int | None = _setting((int, NONE), "generation", None, since=None)  # tiles it was decoded in
    # outpainting (t2i.sampling.outpaint): width and height above are the canvas's
    outpaint: str | None = _setting((str, NONE), "generation", None, since=None)
    outpaint_mode: str = _setting((str,), "generation", "poor-man", since="poor-man")
    mask_blur: int = _setting((int,), "generation", 4, since=4)
    fill: str = _setting((str,), "generation", "fill", since="fill")
    # inpainting (t2i.sampling.img2img_steps.prepare); older images handed the mask to diffusers as it was
    inpaint_prep: str = _setting((str,), "generation", "a1111", since="diffusers")
    inpaint_area: str = _setting((str,), "generation", "whole", since="whole")
    inpaint_padding: int = _setting((int,), "generation", 32, since=32)
    resize_mode: int = _setting((int,), "generation", 0, since=0)
    mask_invert: bool = _setting((bool,), "generation", False, since=False)
    outpaint_noise_q: float = _setting((int, float), "generation", 1.0, since=1.0)
    outpaint_color_variation: float = _setting((int, float), "generation", 0.05, since=0.05)
    # the hires fix (t2i.sampling.hires); width and height above are the first pass's, as in A1111's Size
    hires_scale: float | None = _setting((int, float, NONE), "generation", None, since=None)
    hires_resize_x: int = _setting((int,), "generation", 0, since=0)
    hires_resize_y: int = _setting((int,), "generation", 0, since=0)
    hires_upscaler: str = _setting((str,), "generation", "Latent", since="Latent")
    hires_steps: int = _setting((int,), "generation", 0, since=0)
    hires_denoise: float = _setting((int, float), "generation", 0.7, since=0.7)
    hires_sampler: str | None = _setting((str, NONE), "generation", None, since=None)  # resolved, when hires
    hires_schedule: str | None = _setting((str, NONE), "generation", None, since=None)
    hires_prompt: str | None = _setting((str, NONE), "generation", None, since=None)
    hires_negative_prompt: str | None = _setting((str, NONE), "generation", None, since=None)
    # ControlNet units (t2i.sampling.control)
    controls: tuple[ControlUse, ...] = _setting((list, tuple), "generation", (), since=())
    # Perturbed-Attention Guidance (t2i.sampling.pag)
    pag_scale: float = _setting((int, float), "generation", 0.0, since=0.0)
    pag_adaptive: float = _setting((int, float), "generation", 0.0, since=0.0)
    pag_layers: tuple[str, ...] = _setting((list, tuple), "generation", ("mid",), since=("mid",))
    # IP-Adapter units (t2i.sampling.ip_adapter) and the encoder the user named (None: each adapter's own)
    ip_adapters: tuple[IPAdapterUse, ...] = _setting((list, tuple), "generation", (), since=())
    image_encoder: str | None = _setting((str, NONE), "generation", None, since=None)
    # Self-Attention Guidance (t2i.sampling.sag)
    sag_scale: float = _setting((int, float), "generation", 0.0, since=0.0)
    sag_threshold: float = _setting((int, float), "generation", 1.0, since=1.0)
    sag_blur_sigma: float = _setting((int, float), "generation", 1.0, since=1.0)
    from_noise: str | None = _setting((str, NONE), "generation", None, since=None)  # an inverted image's noise file
    # LEDITS++ edits (t2i.sampling.ledits); edit_mask as it ran (auto resolved)
    edits: tuple[EditConcept, ...] = _setting((list, tuple), "generation", (), since=())
    edit_skip: float = _setting((int, float), "generation", 0.15, since=0.15)
    edit_mask: str = _setting((str,), "generation", "auto", since="auto")
    # A1111's img2img alternative test (t2i.sampling.img2img_alt), its settings as a dict
    img2img_alt: Img2ImgAlt | None = _setting((dict, NONE), "generation", None, since=None)
    # the model: what to load, and how other tools name it
    vae: str | None = _setting((str, NONE), "model", None)
    dtype: str = _setting((str,), "model", "fp32")
    device: str = _setting((str,), "model", "cpu")
    model_name: str = _setting((str,), None, "", since="")
    model_hash: str | None = _setting((str, NONE), None, None, since=None)
    version: str = _setting((str,), None, __version__, since="")

    @property
    def mode(self) -> str:
        if self.edits:
            return "edit"
        if self.mask is not None or self.outpaint is not None:
            return "inpaint"
        return "img2img" if self.strength is not None else "txt2img"

    # ---- the record: JSON in the PNG ----------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["loras"] = [asdict(lora) for lora in self.loras]
        record["embeddings"] = [asdict(e) for e in self.embeddings]
        record["controls"] = [asdict(c) for c in self.controls]
        record["ip_adapters"] = [asdict(unit) for unit in self.ip_adapters]
        record["edits"] = [asdict(edit) for edit in self.edits]
        record["img2img_alt"] = asdict(self.img2img_alt) if self.img2img_alt is not None else None
        record["pag_layers"] = list(self.pag_layers)
        record["mode"] = self.mode  # for people and other tools; derived, never read back
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], origin: str) -> ImageSettings:
        """The settings a record holds, each value checked; `origin` (a file) names it in errors."""
        values = {}
        for setting in fields(cls):
            types, since = setting.metadata["types"], setting.metadata["since"]
            if setting.name not in record:
                check(since is not MISSING, "image", origin, f"its t2i settings lack {setting.name!r}")
                values[setting.name] = since
                continue
            value = record[setting.name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise InvalidInput(f"its t2i setting {setting.name!r} holds {value!r}, not a {types[0].__name__}",
                                   field="image", value=origin)
            values[setting.name] = value
        # older records join the schedule to the sampler ("dpmpp-2m-karras"); resolving is the identity otherwise
        values["sampler"], values["schedule"] = resolve_sampler(values["sampler"], values["schedule"])
        values["loras"] = tuple(plain_entry(LoraUse, item, origin) for item in values["loras"])
        values["embeddings"] = tuple(plain_entry(EmbeddingUse, item, origin) for item in values["embeddings"])
        values["controls"] = tuple(ControlUse.from_dict(item, origin) for item in values["controls"])
        values["ip_adapters"] = tuple(IPAdapterUse.from_dict(item, origin) for item in values["ip_adapters"])
        values["edits"] = tuple(unit_entry(EditConcept, item, origin, "LEDITS++ edit") for item in values["edits"])
        if values["img2img_alt"] is not None:
            values["img2img_alt"] = unit_entry(Img2ImgAlt, values["img2img_alt"], origin, "img2img alternative test")
        check(all(isinstance(layer, str) for layer in values["pag_layers"]), "image", origin,
              f"its t2i setting 'pag_layers' holds {values['pag_layers']!r}, not layer names")
        values["pag_layers"] = tuple(values["pag_layers"])
        return cls(**values)

    # ---- back to what made it -------------------------------------------------------------------

    def configs(self, **overrides):
        """(ModelConfig, GenerationConfig) that re-make this image alone. Each override goes to the
        config that owns its name (any field of either: `compile=True`, `steps=30`, `offline=True`);
        a name neither has is an error."""
        from t2i.models.config import ModelConfig
        from t2i.sampling.config import GenerationConfig

        owned = {"model": {f.name for f in fields(ModelConfig)},
                 "generation": {f.name for f in fields(GenerationConfig)}}
        for name in overrides:
            check(name in owned["model"] | owned["generation"], name, None,
                  "is not a setting of ModelConfig or GenerationConfig")
        recorded: dict[str, dict[str, Any]] = {"model": {}, "generation": {}}
        for setting in fields(self):
            owner = setting.metadata["owner"]
            if owner is not None:
                recorded[owner][setting.name] = getattr(self, setting.name)
        generation = recorded["generation"]
        generation["prompts"] = (generation.pop("prompt"),)
        generation["loras"] = tuple(f"{lora.path}:{lora.scale}" for lora in self.loras)
        tagged = [lora for lora in self.loras if lora.from_tag]
        if self.prompt_as_written is not None:  # the prompt with its tags, which name files in their folder again
            generation["prompts"] = (self.prompt_as_written,)
            generation["loras"] = tuple(f"{lora.path}:{lora.scale}" for lora in self.loras if not lora.from_tag)
            if tagged:
                generation["lora_dir"] = str(Path(tagged[0].path).expanduser().parent)
        generation["vae_tiling"] = self.vae_tile_size is not None
        if "controls" not in overrides:  # a unit whose image came in memory must be given again
            generation["controls"] = tuple(control.unit() for control in self.controls)
        if "ip_adapters" not in overrides:
            generation["ip_adapters"] = tuple(unit.unit() for unit in self.ip_adapters)
        if "sampler" in overrides and "schedule" not in overrides:  # another sampler on A1111's default for it
            generation["schedule"] = "automatic"
        for name, value in overrides.items():
            recorded["model" if name in owned["model"] else "generation"][name] = value
        return ModelConfig(**recorded["model"]), GenerationConfig(**recorded["generation"])

    # ---- A1111's infotext ------------------------------------------------------------------------

    def infotext_fields(self) -> dict[str, Any]:
        """The `Key: value` pairs A1111 writes for these settings, in A1111's order (None: left out)."""
        return {
            "Steps": self.steps, "Sampler": SAMPLERS[self.sampler].a1111,
            "Schedule type": SCHEDULES[self.schedule].a1111,
            "CFG scale": number_text(self.guidance_scale), "Seed": self.seed, "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash, "Model": self.model_name or None,
            "VAE": self.vae and Path(self.vae).name,
            "Denoising strength": number_text(self.strength) if self.strength is not None else
            number_text(self.hires_denoise) if self.hires else None,
            "Clip skip": self.clip_skip if (self.clip_skip or 1) > 1 else None,
            "Lora hashes": ", ".join(f"{lora.name}: {lora.hash}" for lora in self.loras) or None,
            "TI hashes": ", ".join(f"{e.name}: {e.hash}" for e in self.embeddings) or None,
            # A1111 writes it only when it is not its default, Original
            "Emphasis": {"no-norm": "No norm", "none": "None"}.get(self.emphasis),
            # t2i's own keys (A1111's outpainting scripts write none): what `--from-image` and people read
            "Outpaint": self.outpaint, "Outpaint mode": self.outpaint_mode if self.outpaint else None,
            "Mask blur": self.mask_blur if self.outpaint or (self._a1111_inpaint and self.mask_blur) else None,
            # A1111 writes its inpainting keys where they are not its defaults (Original, Whole picture, masked)
            "Masked content": self.fill if (self.outpaint and self.outpaint_mode != "mk2") or (
                self._a1111_inpaint and self.fill != "original") else None,
            "Inpaint area": "Only masked" if self._a1111_inpaint and self.inpaint_area == "masked" else None,
            "Masked area padding": self.inpaint_padding
            if self._a1111_inpaint and self.inpaint_area == "masked" else None,
            "Mask mode": "Inpaint not masked" if self._a1111_inpaint and self.mask_invert else None,
            "Fall-off exponent": self.outpaint_noise_q if self.outpaint_mode == "mk2" and self.outpaint else None,
            "Color variation": self.outpaint_color_variation if self.outpaint_mode == "mk2" and self.outpaint else None,
            **self._hires_fields(),
            # A1111's ControlNet extension numbers its IP-Adapter units among the ControlNet ones
            **{f"ControlNet {index}": text for index, text in enumerate(
                [unit.infotext() for unit in self.controls] + [unit.infotext() for unit in self.ip_adapters])},
            # SD.Next's keys (A1111 has no PAG); t2i's own for layers other than the default
            "PAG scale": number_text(self.pag_scale) if self.pag_scale else None,
            "PAG adaptive": number_text(self.pag_adaptive) if self.pag_scale and self.pag_adaptive else None,
            "PAG layers": ", ".join(self.pag_layers) if self.pag_scale and tuple(self.pag_layers) != ("mid",) else None,
            # A1111's SAG extension's keys; t2i's own for a blur other than the extension's fixed one
            "SAG Guidance Scale": number_text(self.sag_scale) if self.sag_scale else None,
            "SAG Mask Threshold": number_text(self.sag_threshold) if self.sag_scale else None,
            "SAG Blur Sigma": number_text(self.sag_blur_sigma) if self.sag_scale and self.sag_blur_sigma != 1 else None,
            "Inverted noise": Path(self.from_noise).name if self.from_noise else None,  # t2i's own key
            # t2i's own keys (A1111 has no LEDITS++): each edit as +WORDS:SCALE:THRESHOLD:WARMUP[:COOLDOWN]
            "LEDITS++": ", ".join(edit.infotext() for edit in self.edits) or None,
            "LEDITS++ skip": number_text(self.edit_skip) if self.edits else None,
            "LEDITS++ mask": self.edit_mask if self.edits else None,
            **(self.img2img_alt.infotext() if self.img2img_alt is not None else {}),  # A1111's script's keys
            "Version": f"t2i {self.version}",
        }

    @property
    def _a1111_inpaint(self) -> bool:
        return self.mask is not None and self.outpaint is None and self.inpaint_prep == "a1111"

    @property
    def hires(self) -> bool:
        return self.hires_scale is not None or bool(self.hires_resize_x or self.hires_resize_y)

    def _hires_fields(self) -> dict[str, Any]:
        """A1111's hires keys: the sampler, schedule and prompts only where they differ from the first pass's."""
        if not self.hires:
            return {}
        resize = bool(self.hires_resize_x or self.hires_resize_y)
        return {"Hires upscale": None if resize else number_text(self.hires_scale or 1),
                "Hires resize": f"{self.hires_resize_x}x{self.hires_resize_y}" if resize else None,
                "Hires steps": self.hires_steps or None, "Hires upscaler": self.hires_upscaler,
                "Hires sampler": SAMPLERS[self.hires_sampler].a1111
                if self.hires_sampler and self.hires_sampler != self.sampler else None,
                "Hires schedule type": SCHEDULES[self.hires_schedule].a1111
                if self.hires_schedule and self.hires_schedule != self.schedule else None,
                "Hires prompt": self.hires_prompt if self.hires_prompt not in (None, self.prompt) else None,
                "Hires negative prompt": self.hires_negative_prompt
                if self.hires_negative_prompt not in (None, self.negative_prompt) else None}

    def infotext(self) -> str:
        from t2i.formats.infotext import format_infotext

        # as written, with a tag added for each LoRA given beside the prompt (A1111 knows LoRAs by tags only)
        written = self.prompt if self.prompt_as_written is None else self.prompt_as_written
        added = [lora for lora in self.loras if self.prompt_as_written is None or not lora.from_tag]
        prompt = written + "".join(f" <lora:{lora.name}:{number_text(lora.scale)}>" for lora in added)
        return format_infotext(prompt, self.negative_prompt, self.infotext_fields())


def settings_from_png(path: str | Path) -> ImageSettings:
    """The recorded settings of a t2i PNG."""
    from t2i.formats.png import read_png_text

    _, record = read_png_text(path)
    if record is None:
        raise InvalidInput("no t2i settings in this image (was it made by t2i?)", field="image", value=path)
    return ImageSettings.from_record(record, str(path))


def configs_from_png(path: str | Path, **overrides):
    """(ModelConfig, GenerationConfig) that re-make a t2i PNG; `overrides` replace recorded fields."""
    return settings_from_png(path).configs(**overrides)
