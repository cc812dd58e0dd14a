"""Run settings as typed, validated dataclasses: every default lives here, once.

The CLI and the tests build these; the library functions take them. Nothing here imports torch,
so the CLI can build and check a config before paying for the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2i.errors import UsageError
from t2i.lora_files import LoraRef
from t2i.schedulers import resolve_sampler

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PRESETS = ("tiny", "demo")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")  # auto: fp16 on CUDA, fp32 elsewhere


@dataclass(frozen=True)
class ModelConfig:
    model: str = DEFAULT_MODEL  # hub id, diffusers folder, single .safetensors file or preset
    vae: str | None = None  # swap in another VAE (folder, .safetensors file or hub id)
    dtype: str = "auto"
    device: str = "auto"
    offline: bool = False
    allow_pickle: bool = False  # pickled checkpoints can run code when loaded: opt-in only
    single_file_config: str | None = None  # configs for a single-file model (default: SD 1.x's)

    def __post_init__(self):
        check(self.dtype in DTYPE_NAMES, f"--dtype {self.dtype}: choose one of {', '.join(DTYPE_NAMES)}")
        check(self.device in DEVICES, f"--device {self.device}: choose one of {', '.join(DEVICES)}")


MAX_SEED = 2**63 - 1


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
    sampler: str = "dpmpp-2m-karras"  # t2i, A1111 or ComfyUI name; stored resolved to the t2i name
    schedule: str | None = None  # "karras" or "normal", as in ComfyUI's scheduler field
    loras: tuple[LoraRef, ...] = ()
    clip_skip: int | None = None  # A1111 convention: 1 = last layer, 2 = penultimate
    init_image: str | None = None  # img2img, or inpainting with `mask`
    mask: str | None = None
    strength: float | None = None  # None: 0.75 for img2img, 1.0 for inpainting
    out_dir: str = "outputs"

    def __post_init__(self):
        check(len(self.prompts) >= 1, "give at least one prompt (argument or --prompts-file)")
        check(self.steps >= 1, f"--steps {self.steps}: must be at least 1")
        check(self.guidance_scale >= 0, f"--guidance-scale {self.guidance_scale}: must be 0 or more")
        check(self.num_images >= 1, f"--num-images {self.num_images}: must be at least 1")
        check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1")
        check(self.seed is None or 0 <= self.seed <= MAX_SEED, f"--seed {self.seed}: must be in 0..{MAX_SEED}")
        for flag, size in (("--width", self.width), ("--height", self.height)):
            check(size is None or (size >= 8 and size % 8 == 0),
                  f"{flag} {size}: must be a positive multiple of 8 (e.g. {max(8, (size or 0) // 8 * 8)})")
        check(self.clip_skip is None or self.clip_skip >= 1, f"--clip-skip {self.clip_skip}: must be 1 or more")
        check(self.mask is None or self.init_image is not None, "--mask needs --init-image (the image to repaint)")
        check(self.strength is None or self.init_image is not None,
              "--strength needs --init-image (it says how much of the init image to change)")
        check(self.strength is None or 0 < self.strength <= 1, f"--strength {self.strength}: must be in (0, 1]")
        check(self.strength is None or self.steps * self.strength >= 1,
              f"--strength {self.strength} with --steps {self.steps} leaves no denoising step: raise either")
        object.__setattr__(self, "sampler", resolve_sampler(self.sampler, self.schedule))
        object.__setattr__(self, "schedule", None)
        object.__setattr__(self, "loras", tuple(LoraRef.parse(r) if isinstance(r, str) else r for r in self.loras))

    @property
    def mode(self) -> str:
        return "inpaint" if self.mask else "img2img" if self.init_image else "txt2img"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


LORA_TARGETS = {
    # peft target_modules (suffixes of module names) for each --lora-targets choice
    "cross": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    # kohya's SD 1 default: every Linear and 1x1 conv of the transformer blocks (192 modules on SD 1.5)
    "full": ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
}
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class FinetuneConfig:
    data: str
    output: str
    model: str = DEFAULT_MODEL
    offline: bool = False
    allow_pickle: bool = False
    data_format: str | None = None  # None: detect the layout
    val_fraction: float = 0.0  # used only when the layout has no split of its own
    resolution: int = 512
    random_crop: bool = False
    flip: bool = False
    caption_dropout: float = 0.1
    lora: bool = True  # False: fine-tune the whole UNet
    lora_targets: str = "cross"
    rank: int = 4
    alpha: float | None = None  # None: equal to rank (scale 1)
    learning_rate: float | None = None  # None: 1e-4 for LoRA, 1e-5 for the whole UNet
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    batch_size: int = 1
    gradient_accumulation: int = 1
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # None: what `accelerate launch --mixed_precision` said, else "no"
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None  # Min-SNR weighting (Hang et al. 2023); 5.0 is the paper's value
    noise_offset: float = 0.0
    ema: bool = False  # whole-UNet fine-tune only
    seed: int = 0
    cache: bool = True
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/t2i (or ~/.cache/t2i)
    num_workers: int = 0
    checkpoint_every: int = 500  # optimizer steps; 0: only the final weights
    checkpoints_keep: int = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    validate_every: int = 0  # optimizer steps; 0: only at the end (when prompts are given)
    validation_prompts: tuple[str, ...] = ()
    validation_steps: int = 20
    export_kohya: bool = False

    def __post_init__(self):
        check(self.lora_targets in LORA_TARGETS,
              f"--lora-targets {self.lora_targets}: choose one of {', '.join(LORA_TARGETS)}")
        check(self.lr_scheduler in LR_SCHEDULERS,
              f"--lr-scheduler {self.lr_scheduler}: choose one of {', '.join(LR_SCHEDULERS)}")
        check(self.mixed_precision in (None, *MIXED_PRECISION),
              f"--mixed-precision {self.mixed_precision}: choose one of {', '.join(MIXED_PRECISION)}")
        check(self.resolution >= 8 and self.resolution % 8 == 0,
              f"--resolution {self.resolution}: must be a positive multiple of 8 (512 for SD 1.x)")
        for flag, value in (("--rank", self.rank), ("--batch-size", self.batch_size), ("--epochs", self.epochs),
                            ("--gradient-accumulation", self.gradient_accumulation),
                            ("--validation-steps", self.validation_steps)):
            check(value >= 1, f"{flag} {value}: must be at least 1")
        check(self.max_steps is None or self.max_steps >= 1, f"--max-steps {self.max_steps}: must be at least 1")
        check(self.alpha is None or self.alpha > 0, f"--alpha {self.alpha}: must be positive")
        check(self.learning_rate is None or self.learning_rate > 0,
              f"--learning-rate {self.learning_rate}: must be positive")
        check(0 <= self.caption_dropout < 1, f"--caption-dropout {self.caption_dropout}: must be in [0, 1)")
        check(0 <= self.val_fraction < 1, f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        check(self.max_grad_norm > 0, f"--max-grad-norm {self.max_grad_norm}: must be positive")
        check(self.snr_gamma is None or self.snr_gamma > 0, f"--snr-gamma {self.snr_gamma}: must be positive")
        check(self.checkpoint_every >= 0 and self.validate_every >= 0 and self.checkpoints_keep >= 1,
              "--checkpoint-every and --validate-every must be 0 or more, --checkpoints-keep at least 1")
        check(not (self.cache and self.random_crop),
              "--random-crop gives a new crop every epoch, so its latents cannot be cached: add --no-cache")
        check(not (self.ema and self.lora), "--ema applies to the whole-UNet fine-tune: drop --lora to use it")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else (1e-4 if self.lora else 1e-5)
