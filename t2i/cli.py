"""The `t2i` command line: parse, build a config, call one library function, print the result.

No torch or diffusers import at module level: `t2i --help` and `t2i samplers` answer instantly,
and `--offline` can set HF_HUB_OFFLINE before huggingface_hub is first imported.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

import typer

from t2i.config import (DEFAULT_MODEL, DEVICES, DTYPE_NAMES, LORA_TARGETS, LR_SCHEDULERS, MIXED_PRECISION,
                        FinetuneConfig, GenerationConfig, ModelConfig)
from t2i.errors import T2IError, UsageError
from t2i.schedulers import SAMPLERS, SCHEDULES

app = typer.Typer(name="t2i", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Text-to-image with Stable Diffusion 1.x models: generate, fine-tune, inspect.")
log = logging.getLogger("t2i")


def _default(name: str, config_class=GenerationConfig):
    """A config dataclass's default for a field: the CLI never restates a default."""
    return next(f.default for f in fields(config_class) if f.name == name)


def _tuning(name: str):
    return _default(name, FinetuneConfig)


def _prepare_environment(offline: bool) -> None:
    # read once when huggingface_hub is imported, so it must be set before the first heavy import
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed this option (typer vendors click, so compare the source by name)."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")


def _read_prompts(prompts: list[str], prompts_file: Path | None) -> tuple[str, ...]:
    found = list(prompts or [])
    if prompts_file is not None:
        try:
            lines = prompts_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompts-file {prompts_file}: cannot read it ({exc})") from exc
        found += [line.strip() for line in lines if line.strip()]
    return tuple(found)


@app.command()
def generate(
    ctx: typer.Context,
    prompts: Optional[List[str]] = typer.Argument(None, help="One or more prompts.", show_default=False),
    prompts_file: Optional[Path] = typer.Option(None, help="A text file with one prompt per line."),
    negative_prompt: str = typer.Option(_default("negative_prompt"), help="What the images should not show."),
    model: str = typer.Option(DEFAULT_MODEL, help="Hub id, diffusers folder, .safetensors file, or a preset: "
                              "'demo' (shapes, offline) or 'tiny' (noise, for tests)."),
    vae: Optional[str] = typer.Option(None, help="Use this VAE (folder or .safetensors) instead of the model's."),
    sampler: str = typer.Option(_default("sampler"), help="See `t2i samplers`; A1111/ComfyUI names work."),
    schedule: Optional[str] = typer.Option(None, help=f"ComfyUI-style schedule: {', '.join(SCHEDULES)}."),
    steps: int = typer.Option(_default("steps")),
    guidance_scale: float = typer.Option(_default("guidance_scale"), help="Classifier-free guidance (CFG) scale."),
    seed: Optional[int] = typer.Option(None, help="Image i of the run uses seed+i. Default: random."),
    num_images: int = typer.Option(_default("num_images"), help="Images per prompt."),
    batch_size: int = typer.Option(_default("batch_size")),
    width: Optional[int] = typer.Option(None, help="Multiple of 8. Default: the model's native size."),
    height: Optional[int] = typer.Option(None, help="Multiple of 8. Default: the model's native size."),
    lora: Optional[List[str]] = typer.Option(None, help="PATH[:SCALE] of a LoRA file or training folder; repeatable."),
    clip_skip: Optional[int] = typer.Option(None, help="A1111 convention: 2 = penultimate CLIP layer."),
    init_image: Optional[str] = typer.Option(None, help="img2img: start from this image."),
    strength: Optional[float] = typer.Option(None, help="img2img/inpaint: how much to change, in (0, 1]."),
    mask: Optional[str] = typer.Option(None, help="Inpainting mask for --init-image: white is repainted."),
    out: str = typer.Option(_default("out_dir"), help="Output folder; existing files are never overwritten."),
    from_image: Optional[str] = typer.Option(None, help="Re-make a t2i PNG from its settings; flags given override."),
    dtype: str = typer.Option(_default("dtype", ModelConfig), help=f"{', '.join(DTYPE_NAMES)}; auto = fp16 on CUDA."),
    device: str = typer.Option(_default("device", ModelConfig), help=", ".join(DEVICES)),
    offline: bool = typer.Option(False, help="Never touch the network (same as HF_HUB_OFFLINE=1)."),
    allow_pickle: bool = typer.Option(False, help="Allow pickled .ckpt/.bin/.pt checkpoints (they can run code)."),
):
    """Generate images: txt2img, img2img (--init-image) or inpainting (--init-image --mask)."""
    _prepare_environment(offline)
    given = {name: value for name, value in ctx.params.items() if _given(ctx, name)}
    settings = {**_settings_from_image(from_image), **given} if from_image else given
    model_config = ModelConfig(**{key: settings[key] for key in
                                  ("model", "vae", "dtype", "device", "offline", "allow_pickle") if key in settings})
    renamed = {"out": "out_dir", "lora": "loras"}
    wanted = {f.name for f in fields(GenerationConfig)}
    gen_args = {renamed.get(k, k): v for k, v in settings.items() if renamed.get(k, k) in wanted and v is not None}
    gen_args["prompts"] = _read_prompts(settings.get("prompts"), settings.get("prompts_file"))
    gen_args["loras"] = tuple(gen_args.get("loras", ()))
    config = GenerationConfig(**gen_args)  # checks every value before the slow imports

    from t2i.generate import generate as run
    from t2i.pipelines import load_model

    loaded = load_model(model_config)
    paths = run(loaded, config, on_saved=lambda path: print(path, flush=True))
    log.info("wrote %d image(s) to %s", len(paths), config.out_dir)


def _settings_from_image(path: str) -> dict:
    """The CLI settings recorded in a t2i PNG, to re-make it alone (one image, batch of one)."""
    from t2i.metadata import read_metadata

    _, recorded = read_metadata(path)
    if recorded is None:
        raise UsageError(f"--from-image {path}: no t2i settings in this image (was it made by t2i?)")
    settings = {key: recorded[key] for key in ("negative_prompt", "steps", "guidance_scale", "seed", "width",
                                               "height", "sampler", "clip_skip", "init_image", "mask", "model",
                                               "vae", "dtype", "device")}
    settings["prompts"] = [recorded["prompt"]]
    settings["lora"] = [f"{lora['path']}:{lora['scale']}" for lora in recorded["loras"]]
    if recorded["mode"] != "txt2img":
        settings["strength"] = recorded["strength"]
    return settings


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
    mixed_precision: Optional[str] = typer.Option(None, help=" | ".join(MIXED_PRECISION) + "; default: the launcher's."),
    gradient_checkpointing: bool = typer.Option(_tuning("gradient_checkpointing")),
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
    export: Optional[List[str]] = typer.Option(None, help="'kohya': also write an A1111/ComfyUI LoRA file."),
    offline: bool = typer.Option(False, help="Never touch the network."),
    allow_pickle: bool = typer.Option(False, help="Allow a pickled base checkpoint (it can run code)."),
):
    """Fine-tune on captioned images: a LoRA (default) or the whole UNet. Works under accelerate launch."""
    _prepare_environment(offline)
    exports = set(export or [])
    if exports - {"kohya"}:
        raise UsageError(f"--export {', '.join(sorted(exports - {'kohya'}))}: the only extra format is kohya")
    settings = {name: value for name, value in ctx.params.items() if _given(ctx, name)}
    settings.pop("validation_prompt", None), settings.pop("export", None)
    config = FinetuneConfig(**settings, validation_prompts=tuple(validation_prompt or ()),
                            export_kohya="kohya" in exports)

    from t2i.finetune_lora import finetune as run

    out = run(config)
    log.info("done: %s", out)


shapes_app = typer.Typer(no_args_is_help=True, help="The shapes world: a dataset and a demo model you can measure.")
app.add_typer(shapes_app, name="shapes")


@shapes_app.command("make-dataset")
def make_shapes_dataset(
    out: Path = typer.Argument(..., help="Folder to write (an imagefolder with metadata.jsonl)."),
    count: int = typer.Option(2000, help="Number of images."),
    seed: int = typer.Option(0),
    colour: Optional[List[str]] = typer.Option(
        None, help="NAME[:WEIGHT] or 'known' (the 8 training colours), repeatable; default: known."),
    size: int = typer.Option(32, help="Image side in pixels."),
):
    """Write captioned images of coloured shapes in a layout `t2i finetune` reads."""
    from t2i.shapes import colour_mix, make_dataset

    colours = colour_mix(colour or ["known"])
    if count < 1 or size < 16:
        raise UsageError("--count must be at least 1 and --size at least 16")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: choose a new folder")
    print(make_dataset(out, count, seed, colours, image_size=size))


@shapes_app.command("train-demo")
def train_demo_model(out: Path = typer.Argument(..., help="Working folder; the model lands in OUT/model.")):
    """Train the `demo` model from scratch with the recorded recipe (about 30 minutes on 2 CPU cores)."""
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: choose a new folder")
    from t2i.demo import train_demo

    print(train_demo(out))


@app.command()
def samplers():
    """List the samplers with their A1111 and ComfyUI names."""
    rows = [("name", "A1111", "ComfyUI", "summary")]
    for name, spec in SAMPLERS.items():
        a1111 = spec.a1111 + (" Karras" if spec.schedule == "Karras" else "")
        comfy = (spec.comfy or "-") + (" + karras" if spec.schedule == "Karras" and spec.comfy else "")
        rows.append((name, a1111, comfy, spec.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])


@app.command()
def info(image: str = typer.Argument(..., help="A PNG written by t2i (or A1111).")):
    """Print the generation settings stored in a PNG."""
    from t2i.metadata import read_metadata

    text, settings = read_metadata(image)
    if text is None and settings is None:
        raise UsageError(f"{image}: no generation settings stored in this image")
    if text:
        print(text)
    if settings:
        print(json.dumps(settings, indent=2, ensure_ascii=False))


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (it is replaced under test runners)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def main() -> None:
    if not log.handlers:  # t2i's own messages only; libraries keep their own verbosity
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("t2i: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        app()
    except T2IError as exc:
        if os.environ.get("T2I_DEBUG"):
            raise
        print(f"t2i: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("t2i: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug or an environment failure: still one line unless debugging
        if os.environ.get("T2I_DEBUG"):
            raise
        from t2i.errors import first_line

        print(f"t2i: error: {type(exc).__name__}: {first_line(exc)} (T2I_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(1)
