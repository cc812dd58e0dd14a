"""`t2i finetune`."""

from __future__ import annotations

import shlex
import sys
from functools import partial
from pathlib import Path
from typing import List, Optional

import typer

from t2i.cli import Interrupted, app, default_of, given, log, prepare_environment
from t2i.errors import InvalidInput
from t2i.models.config import DEFAULT_MODEL
from t2i.train.config import LORA_TARGETS, LR_SCHEDULERS, MIXED_PRECISION, FinetuneConfig
from t2i.train.optimizers import OPTIMIZERS

_tuning = partial(default_of, FinetuneConfig)


def build_config(options: dict) -> FinetuneConfig:
    """The config `t2i finetune` runs, from the options the user typed."""
    exports = set(options.pop("export", None) or [])
    if exports - {"kohya"}:
        raise InvalidInput("the only extra format is kohya", field="export_kohya",
                           value=", ".join(sorted(exports - {"kohya"})))
    prompts = tuple(options.pop("validation_prompt", None) or ())
    options["validation_controls"] = tuple(options.pop("validation_control", None) or ())
    options["validation_ip_images"] = tuple(options.pop("validation_ip_image", None) or ())
    optimizer_args = tuple(options.pop("optimizer_arg", None) or ())
    return FinetuneConfig(**options, validation_prompts=prompts, export_kohya="kohya" in exports,
                          optimizer_args=optimizer_args)


@app.command()
def finetune(
    ctx: typer.Context,
    data: str = typer.Option(..., help="Flickr30k (any of its 4 layouts), an imagefolder or a kohya folder."),
    output: str = typer.Option(..., help="Folder for the LoRA (or model), checkpoints, logs and plots."),
    lora: bool = typer.Option(_tuning("lora"), help="Train a LoRA (default) or, with --no-lora, the whole UNet."),
    model: str = typer.Option(DEFAULT_MODEL, help="Base model: hub id, diffusers folder, .safetensors, a preset."),
    data_format: Optional[str] = typer.Option(None, help="Skip detection: flickr-token, kaggle, karpathy, ..."),
    val_fraction: float = typer.Option(_tuning("val_fraction"), help="Held out when the data has no split."),
    resolution: int = typer.Option(_tuning("resolution")),
    random_crop: bool = typer.Option(_tuning("random_crop"), help="Random instead of center crops (needs --no-cache)."),
    flip: bool = typer.Option(_tuning("flip"), help="Random horizontal flips."),
    caption_dropout: float = typer.Option(_tuning("caption_dropout"), help="Share of empty captions (for CFG)."),
    lora_targets: str = typer.Option(_tuning("lora_targets"), help=" | ".join(LORA_TARGETS)),
    rank: int = typer.Option(_tuning("rank")),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha. Default: the rank."),
    learning_rate: Optional[float] = typer.Option(None, help="Default: 1e-4 for LoRA, 1e-5 for the whole UNet."),
    lr_scheduler: str = typer.Option(_tuning("lr_scheduler"), help=" | ".join(LR_SCHEDULERS)),
    lr_warmup_steps: int = typer.Option(_tuning("lr_warmup_steps")),
    batch_size: int = typer.Option(_tuning("batch_size")),
    gradient_accumulation: int = typer.Option(_tuning("gradient_accumulation")),
    epochs: int = typer.Option(_tuning("epochs")),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps; overrides --epochs."),
    max_grad_norm: float = typer.Option(_tuning("max_grad_norm"), help="Gradient clipping norm."),
    mixed_precision: Optional[str] = typer.Option(None, help=" | ".join(MIXED_PRECISION) + "; default: launcher's."),
    gradient_checkpointing: bool = typer.Option(_tuning("gradient_checkpointing")),
    channels_last: bool = typer.Option(_tuning("channels_last"), "--channels-last",
                                       help="NHWC convolutions (faster training steps on CPU)."),
    compile: bool = typer.Option(_tuning("compile"), "--compile", help="torch.compile the UNet: minutes once, "
                                 "faster steps after."),
    snr_gamma: Optional[float] = typer.Option(None, help="Min-SNR loss weighting gamma (5 is usual)."),
    noise_offset: float = typer.Option(_tuning("noise_offset")),
    ema: bool = typer.Option(_tuning("ema"), help="EMA weights (whole-UNet fine-tune)."),
    seed: int = typer.Option(_tuning("seed")),
    cache: bool = typer.Option(_tuning("cache"), help="Cache VAE latents and text embeddings on disk."),
    cache_dir: Optional[str] = typer.Option(None, help="Default: ~/.cache/t2i/train-cache."),
    num_workers: int = typer.Option(_tuning("num_workers"), help="DataLoader worker processes."),
    checkpoint_every: int = typer.Option(_tuning("checkpoint_every")),
    checkpoints_keep: int = typer.Option(_tuning("checkpoints_keep")),
    resume: Optional[str] = typer.Option(None, help="'latest' or a checkpoint folder."),
    validate_every: int = typer.Option(_tuning("validate_every")),
    validation_prompt: Optional[List[str]] = typer.Option(None, help="Sampled into validation/ grids; repeatable."),
    validation_loss_every: int = typer.Option(_tuning("validation_loss_every"), help="Held-out loss on fixed noise "
                                              "every N steps (loss.csv, TensorBoard, loss.png); 0: off."),
    validation_split: str = typer.Option(_tuning("validation_split"), help="Its held-out split: val or test."),
    validation_images: int = typer.Option(_tuning("validation_images"), help="Held-out images it uses, at most."),
    export: Optional[List[str]] = typer.Option(None, help="'kohya': also write an A1111/ComfyUI LoRA file."),
    buckets: bool = typer.Option(_tuning("buckets"), "--buckets", help="kohya's aspect-ratio buckets of area "
                                 "resolution^2 instead of square crops."),
    bucket_min: int = typer.Option(_tuning("bucket_min"), help="Smallest bucket side (pixels)."),
    bucket_max: int = typer.Option(_tuning("bucket_max"), help="Largest bucket side (pixels)."),
    bucket_step: int = typer.Option(_tuning("bucket_step"), help="Bucket sides are multiples of this (64 for SD 1.x)."),
    bucket_no_upscale: bool = typer.Option(_tuning("bucket_no_upscale"), "--bucket-no-upscale",
                                           help="Never enlarge an image: its bucket is its own size, cropped to "
                                                "the step (min/max then do not apply)."),
    train_text_encoder: bool = typer.Option(_tuning("train_text_encoder"), "--train-text-encoder",
                                            help="A LoRA on CLIP too (its embeddings are then not cached)."),
    text_encoder_lr: Optional[float] = typer.Option(None, help="The text encoder's learning rate. Default: the "
                                                    "UNet's."),
    optimizer: str = typer.Option(_tuning("optimizer"), help=" | ".join(OPTIMIZERS)),
    optimizer_arg: Optional[List[str]] = typer.Option(None, "--optimizer-args", "--optimizer-arg",
                                                      help="key=value for the optimizer, e.g. weight_decay=0.01; "
                                                           "repeatable."),
    controlnet: bool = typer.Option(_tuning("controlnet"), "--controlnet", help="Train a ControlNet (from the UNet; "
                                    "UNet, VAE and CLIP frozen) on images and their control images."),
    control_column: str = typer.Option(_tuning("control_column"), help="The imagefolder column naming each image's "
                                       "control image (else: a twin in DATA/conditioning/)."),
    validation_control: Optional[List[str]] = typer.Option(None, help="A control image for the validation prompts "
                                                           "(one for all, or one each); repeatable."),
    ip_adapter: bool = typer.Option(_tuning("ip_adapter"), "--ip-adapter", help="Train an IP-Adapter (its image "
                                    "projection and key/value layers; UNet, VAE, CLIP and the image encoder frozen)."),
    image_encoder: Optional[str] = typer.Option(None, help="The image encoder an --ip-adapter reads: a CLIP vision "
                                                "model's folder, or shape-features (for demo)."),
    ip_image_dropout: float = typer.Option(_tuning("ip_image_dropout"), help="Share of examples trained without "
                                           "their image (with --caption-dropout: guidance keeps working)."),
    validation_ip_image: Optional[List[str]] = typer.Option(None, help="A reference picture for the validation "
                                                            "prompts (one for all, or one each); repeatable."),
    offline: bool = typer.Option(False, help="Never touch the network."),
    allow_pickle: bool = typer.Option(False, help="Allow a pickled base checkpoint (it can run code)."),
):
    """Fine-tune on captioned images: a LoRA (default), the whole UNet, a ControlNet or an IP-Adapter. Works
    under accelerate launch."""
    prepare_environment(offline)
    config = build_config(given(ctx))

    from t2i.train import trainer

    try:
        log.info("done: %s", trainer.finetune(config))
    except Interrupted as exc:
        raise Interrupted(resume_advice(Path(config.output).expanduser())) from exc


def resume_advice(output: Path) -> str:
    """Which checkpoint survived an interrupted run, and the command that goes on from it."""
    from t2i.train.checkpoints import checkpoints

    intact = checkpoints(output / "checkpoints")
    if not intact:
        return "no checkpoint was written yet (see --checkpoint-every); run the same command again to start over"
    words = sys.argv[1:]
    if "--resume" in words:  # the same command, resuming from the newest intact checkpoint
        at = words.index("--resume")
        words = words[:at] + words[at + 2:]
    words = [w for w in words if not w.startswith("--resume=")]
    command = " ".join(shlex.quote(w) for w in ["t2i", *words, "--resume", "latest"])
    return f"{intact[-1]} is intact; go on with: {command}"
