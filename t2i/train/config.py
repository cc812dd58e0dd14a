"""How to fine-tune: `FinetuneConfig`, every default once and every value checked on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from t2i.errors import check
from t2i.models.config import DEFAULT_MODEL
from t2i.train.optimizers import OPTIMIZERS, default_learning_rate, parse_optimizer_args

LORA_TARGETS = {
    # peft target_modules (suffixes of module names) for each lora_targets choice
    "cross": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    # kohya's SD 1 default: every Linear and 1x1 conv of the transformer blocks (192 modules on SD 1.5)
    "full": ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
}
# peft target_modules of CLIP's text encoder with --train-text-encoder: kohya's (every Linear of its
# attention and MLP blocks, 72 modules on SD 1.5's CLIP-L)
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
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
    channels_last: bool = False  # NHWC convolutions (measured in benchmarks/bench_finetune.py)
    compile: bool = False  # torch.compile the UNet: minutes once, faster steps after (bench_finetune.py)
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
    validation_loss_every: int = 0  # optimizer steps; 0: off. A held-out loss on fixed noise (t2i.train.validation)
    validation_split: str = "val"  # the held-out split it reads: the layout's own, or the seeded --val-fraction share
    validation_images: int = 64  # at most this many held-out images (the first by name)
    export_kohya: bool = False
    buckets: bool = False  # kohya's aspect-ratio buckets of area resolution^2 (t2i.data.buckets)
    bucket_min: int = 256
    bucket_max: int = 1024
    bucket_step: int = 64
    bucket_no_upscale: bool = False
    train_text_encoder: bool = False  # a LoRA on CLIP's attention and MLP layers beside the UNet's
    text_encoder_lr: float | None = None  # None: the UNet's learning rate
    optimizer: str = "adamw"
    optimizer_args: tuple[str, ...] = ()  # "key=value", the value a Python literal (kohya's --optimizer_args)
    # ControlNet training (t2i.train.controlnet): a new ControlNet from the UNet, everything else frozen
    controlnet: bool = False
    control_column: str = "conditioning_image"  # an imagefolder's column naming each image's control image
    validation_controls: tuple[str, ...] = ()  # control images for the validation prompts (one, or one each)
    # IP-Adapter training (t2i.train.ip_adapter): the image projection and new key/value layers, all else frozen
    ip_adapter: bool = False
    image_encoder: str | None = None  # what embeds the images: a CLIP vision folder or shape-features
    ip_image_dropout: float = 0.05  # the share of examples trained without their image (h94's)
    validation_ip_images: tuple[str, ...] = ()  # reference pictures for the validation prompts (one, or one each)

    def __post_init__(self):
        for f in fields(self):  # a NaN or infinite hyperparameter would only show as a NaN loss later
            value = getattr(self, f.name)
            check(not isinstance(value, float) or math.isfinite(value), f.name, value, "must be a finite number")
        check(self.lora_targets in LORA_TARGETS, "lora_targets", self.lora_targets, "unknown target set",
              choices=tuple(LORA_TARGETS))
        check(self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", self.lr_scheduler, "unknown schedule",
              choices=LR_SCHEDULERS)
        check(self.mixed_precision in (None, *MIXED_PRECISION), "mixed_precision", self.mixed_precision,
              "unknown precision", choices=MIXED_PRECISION)
        check(self.resolution >= 8 and self.resolution % 8 == 0, "resolution", self.resolution,
              "must be a positive multiple of 8 (512 for SD 1.x)")
        for name in ("rank", "batch_size", "epochs", "gradient_accumulation", "validation_steps", "validation_images"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, "must be at least 1")
        check(self.alpha is None or self.alpha > 0, "alpha", self.alpha, "must be positive")
        check(self.learning_rate is None or self.learning_rate > 0, "learning_rate", self.learning_rate,
              "must be positive")
        check(0 <= self.caption_dropout < 1, "caption_dropout", self.caption_dropout, "must be in [0, 1)")
        check(0 <= self.val_fraction < 1, "val_fraction", self.val_fraction, "must be in [0, 1)")
        check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "must be positive")
        check(self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma", self.snr_gamma, "must be positive")
        for name in ("checkpoint_every", "validate_every", "lr_warmup_steps", "num_workers", "validation_loss_every"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be 0 or more")
        check(self.validation_split in ("val", "test"), "validation_split", self.validation_split,
              "must be a held-out split", choices=("val", "test"))
        check(self.checkpoints_keep >= 1, "checkpoints_keep", self.checkpoints_keep, "must be at least 1")
        check(not (self.cache and self.random_crop), "random_crop", None,
              "gives a new crop every epoch, so its latents cannot be cached", hint="turn {cache} off")
        check(not (self.ema and self.lora), "ema", None, "applies to the whole-UNet fine-tune", hint="turn {lora} off")
        check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, "unknown optimizer", choices=tuple(OPTIMIZERS))
        object.__setattr__(self, "optimizer_args", tuple(self.optimizer_args))
        parse_optimizer_args(self.optimizer_args)  # a malformed pair is refused now, an unknown name at set-up
        check(self.text_encoder_lr is None or self.text_encoder_lr > 0, "text_encoder_lr", self.text_encoder_lr,
              "must be positive")
        check(self.text_encoder_lr is None or self.train_text_encoder, "text_encoder_lr", self.text_encoder_lr,
              "applies only when the text encoder is trained", hint="add {train_text_encoder}")
        check(self.lora or not self.train_text_encoder, "train_text_encoder", None,
              "trains a LoRA on the text encoder beside the UNet's LoRA", hint="turn {lora} on")
        self._check_controlnet()
        self._check_ip_adapter()
        if self.buckets:
            for name in ("bucket_min", "bucket_max", "bucket_step"):
                check(getattr(self, name) >= 1, name, getattr(self, name), "must be positive")
            check(self.bucket_min <= self.bucket_max, "bucket_min", self.bucket_min,
                  f"is more than {{bucket_max}} {self.bucket_max}", hint="the smallest bucket side comes first")
            check(self.bucket_max >= self.resolution, "bucket_max", self.bucket_max,
                  f"is less than {{resolution}} {self.resolution}: the square bucket would not fit",
                  hint="raise {bucket_max} or lower {resolution}")
        else:
            for name in ("bucket_min", "bucket_max", "bucket_step", "bucket_no_upscale"):
                value, default = getattr(self, name), next(f.default for f in fields(self) if f.name == name)
                check(value == default, name, None if isinstance(value, bool) else value,
                      "applies to bucketed training", hint="add {buckets}")

    def _check_controlnet(self) -> None:
        object.__setattr__(self, "validation_controls", tuple(self.validation_controls))
        if not self.controlnet:
            check(not self.validation_controls, "validation_controls", None, "are for ControlNet training",
                  hint="add {controlnet}")
            return
        self._refuse(("train_text_encoder", "ema", "export_kohya"), "ControlNet training")
        self._one_or_each("validation_controls", "a ControlNet's validation needs a control image")

    def _check_ip_adapter(self) -> None:
        object.__setattr__(self, "validation_ip_images", tuple(self.validation_ip_images))
        check(0 <= self.ip_image_dropout < 1, "ip_image_dropout", self.ip_image_dropout, "must be in [0, 1)")
        if not self.ip_adapter:
            for name in ("image_encoder", "validation_ip_images"):
                check(not getattr(self, name), name, None, "is for IP-Adapter training", hint="add {ip_adapter}")
            return
        check(self.image_encoder is not None, "image_encoder", None, "IP-Adapter training needs the image encoder "
              "its adapter will read", hint="give a CLIP vision model's folder, or shape-features for demo")
        self._refuse(("controlnet", "train_text_encoder", "ema", "export_kohya", "buckets"), "IP-Adapter training")
        self._one_or_each("validation_ip_images", "an IP-Adapter's validation needs a reference picture")

    def _refuse(self, names: tuple[str, ...], kind: str) -> None:
        for name in names:
            check(not getattr(self, name), name, None, f"does not apply to {kind}", hint=f"leave {{{name}}} out")

    def _one_or_each(self, name: str, needs: str) -> None:
        """A validation image list: one for every validation prompt, or one a prompt."""
        given, prompts = len(getattr(self, name)), len(self.validation_prompts)
        check(not prompts or given in (1, prompts), name, f"{given} images",
              f"{needs} for its {prompts} prompt(s): one for all, or one each")

    @property
    def trains(self) -> str:
        """What the run trains: "controlnet", "ip-adapter", "lora" or "unet" (the whole UNet)."""
        return ("controlnet" if self.controlnet else "ip-adapter" if self.ip_adapter else
                "lora" if self.lora else "unet")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def lr(self) -> float:
        """The UNet's learning rate: as given, else the optimizer's usual one (1.0 for Prodigy, which
        finds its own step size; 1e-4 for a LoRA and 1e-5 for the whole UNet with the others)."""
        # a ControlNet is a whole network trained from the UNet's weights: the whole UNet's default
        return self.learning_rate if self.learning_rate is not None else default_learning_rate(
            self.optimizer, self.lora and not self.controlnet and not self.ip_adapter)

    @property
    def te_lr(self) -> float:
        return self.text_encoder_lr if self.text_encoder_lr is not None else self.lr
