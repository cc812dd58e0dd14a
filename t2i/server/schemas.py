"""A1111's request bodies, with A1111's field names and defaults. Unknown keys are accepted and
ignored, as A1111's own models do, so clients written for A1111 or its extensions keep working."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _no_booleans(value):
    """JSON true is not a number: pydantic's lax mode would read `steps: true` as 1 step."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value, info):
        annotation = cls.model_fields[info.field_name].annotation
        return _no_booleans(value) if annotation in (int, float, Optional[int], Optional[float]) else value

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = None
    sampler_index: str = "Euler"  # A1111's default sampler when a request names none
    scheduler: Optional[str] = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: Optional[int] = None  # None: the model's native size (512 for SD 1.x, A1111's default)
    height: Optional[int] = None
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    eta: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmin: Optional[float] = None
    s_tmax: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Optional[str] = None
    script_name: Optional[str] = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False
    denoising_strength: Optional[float] = None
    force_task_id: Optional[str] = Field(None, max_length=200)  # names the job for /internal/progress, interrupt
    # t2i's own: each word's cross-attention map over each image, in `info` (t2i.sampling.attention_maps)
    t2i_attention_maps: bool = False


class TaskRequest(BaseModel):
    """A1111's `/internal/progress` body, and t2i's interrupt of one task."""
    model_config = ConfigDict(extra="ignore")

    id_task: Optional[str] = Field(None, max_length=200)


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None  # None: Latent
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    mask: Optional[str] = None
    mask_blur: Optional[int] = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: Optional[float] = None
    include_init_images: bool = False
    denoising_strength: Optional[float] = 0.75


class EditItem(BaseModel):
    """One LEDITS++ edit (t2i.sampling.ledits.EditConcept); a plain string "+WORDS" / "-WORDS" also works."""
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: `"scale": true` is not 1

    text: str
    remove: bool = False
    scale: float = 5.0
    threshold: float = 0.9
    warmup: int = 0
    cooldown: Optional[int] = None


class EditRequest(Img2ImgRequest):
    """t2i's `/t2i/v1/edit` (LEDITS++ on `init_images[0]`): an img2img body whose prompt is the source prompt (what
    the image shows), cfg_scale the inversion's CFG and steps the inversion's, with LEDITS++'s defaults."""

    edits: list[EditItem | str] = Field(default_factory=list)
    edit_skip: float = 0.15
    edit_mask: str = "auto"
    sampler_index: str = "DPM++ 2M SDE"
    steps: int = 50
    cfg_scale: float = 3.5
    denoising_strength: Optional[float] = None


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str
