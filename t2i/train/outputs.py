"""What a training run leaves: the weights, loss.csv, loss.png and validation grids."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
from PIL import Image

from t2i.files import atomic_write, write_text
from t2i.formats.lora import save_diffusers_lora, save_kohya_lora

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "clipped_grad_norm", "seconds", "val_loss")


class LossLog:
    """loss.csv, one row per optimizer step; on resume, rows past the checkpoint are dropped."""

    def __init__(self, file: Path, resume_step: int = 0):
        self.file = file
        rows = []
        if resume_step and file.is_file():
            with open(file, newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(file, text.getvalue())

    def add(self, **row) -> None:
        with open(self.file, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS, lineterminator="\n").writerow(row)

    def rows(self) -> list[dict]:
        with open(self.file, newline="") as f:
            return list(csv.DictReader(f))


def plot_loss(log: LossLog, png: Path) -> None:
    """Loss per step, its moving average, and the held-out loss where it was computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = log.rows()
    rows = [r for r in every if r["loss"]]  # step 0 holds only the validation loss before training
    held_out = [(int(r["step"]), float(r["val_loss"])) for r in every if r.get("val_loss")]
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(steps, losses, alpha=0.35, label="loss")
    axes.plot(steps, smooth, label=f"mean of {window}")
    if held_out:
        axes.plot(*zip(*held_out), marker="o", label="held-out loss (fixed noise)")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("MSE loss")
    axes.legend()
    figure.tight_layout()
    atomic_write(png, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def image_grid(images: list[Image.Image]) -> Image.Image:
    """Images in a near-square grid, the last row filled with white."""
    from diffusers.utils import make_image_grid

    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    blank = Image.new("RGB", images[0].size, "white")
    return make_image_grid(images + [blank] * (rows * columns - len(images)), rows, columns)


IP_ADAPTER_FILE = "ip_adapter.safetensors"  # an IP-Adapter run's checkpoint (and final) weights, h94's layout
TRAINING_CONTROLNET = "(the ControlNet being trained)"  # its key in the model's ControlNet cache


def validation_grid(model, prompts, steps: int, seed: int, resolution: int, controlnet=None,
                    controls: tuple[str, ...] = (), ip_units: tuple = ()) -> Image.Image:
    """One image per prompt through t2i's own generation (prompt i always gets seed+i, so the grids
    of successive steps compare). With a ControlNet in training, prompt i reads control image i (or the
    only one), with an IP-Adapter in training, IP-Adapter unit i (or the only one); the grid then shows
    each control image or reference picture beside its output."""
    import dataclasses

    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.control import ControlUnit
    from t2i.sampling.generate import generate

    config = GenerationConfig(prompts=tuple(prompts), steps=steps, seed=seed, width=resolution, height=resolution,
                              sampler="dpmpp-2m")
    if controlnet is None and not ip_units:
        return image_grid([result.image for result in generate(model, config, progress=False)])
    if controlnet is not None:
        from t2i.models.controlnet import LoadedControlNet

        model.controlnets.put(TRAINING_CONTROLNET, LoadedControlNet(controlnet, "training", TRAINING_CONTROLNET, None))
    cells = []
    for index, prompt in enumerate(prompts):
        one = dataclasses.replace(config, prompts=(prompt,), seed=seed + index)
        if controlnet is not None:
            unit = ControlUnit(TRAINING_CONTROLNET, controls[index if len(controls) > 1 else 0])
            one = dataclasses.replace(one, controls=(unit,))
        else:
            unit = ip_units[index if len(ip_units) > 1 else 0]
            one = dataclasses.replace(one, ip_adapters=(unit,))
        result = generate(model, one, progress=False)[0]
        cells += [Image.open(unit.image).convert("RGB").resize(result.image.size), result.image]
    from diffusers.utils import make_image_grid

    return make_image_grid(cells, len(prompts), 2)


def save_weights(folder: Path, parts, ema=None) -> None:
    """A checkpoint's weights: the ControlNet, the LoRA file (UNet and text encoder), or the whole UNet
    (and its EMA)."""
    unet = parts.model.pipe.unet
    if parts.controlnet is not None:
        parts.controlnet.save_pretrained(folder / "controlnet")
    elif parts.ip_adapter is not None:
        from t2i.models.ip_adapter import save_ip_adapter

        save_ip_adapter(unet, folder / IP_ADAPTER_FILE, parts.image_encoder.reference)
    elif parts.lora_config is not None:
        save_diffusers_lora(unet, folder, parts.lora_config.to_dict(), *_text_encoder_parts(parts))
    else:
        unet.save_pretrained(folder / "unet")
        if ema is not None:
            atomic_write(folder / "ema.pt", lambda tmp: torch.save(ema.state_dict(), tmp))


def load_weights(folder: Path, parts, ema=None) -> None:
    """Put a checkpoint's weights back (the inverse of `save_weights`)."""
    from t2i.formats.lora import DIFFUSERS_LORA_FILE, load_diffusers_lora_into

    unet = parts.model.pipe.unet
    if parts.controlnet is not None:
        from diffusers import ControlNetModel

        parts.controlnet.load_state_dict(ControlNetModel.from_pretrained(folder / "controlnet").state_dict())
        return
    if parts.ip_adapter is not None:
        from safetensors.torch import load_file

        from t2i.train.ip_adapter import load_adapter_into

        load_adapter_into(unet, load_file(str(folder / IP_ADAPTER_FILE)))
        return
    if parts.lora_config is not None:
        load_diffusers_lora_into(unet, folder / DIFFUSERS_LORA_FILE, _text_encoder_parts(parts)[0])
        return
    from diffusers import UNet2DConditionModel

    unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").state_dict())
    if ema is not None:
        ema.load_state_dict(torch.load(folder / "ema.pt", weights_only=True))


def _text_encoder_parts(parts) -> tuple:
    """(text encoder, its LoraConfig dict) when it is trained, else (None, None)."""
    if parts.text_lora_config is None:
        return None, None
    return parts.model.pipe.text_encoder, parts.text_lora_config.to_dict()


def kohya_training_metadata(config, bucket_placements: list | None, kohya_optimizer: str) -> dict[str, str]:
    """kohya's `ss_*` record of how a LoRA was trained, as its train_network.py writes them (str values)."""
    import json

    from t2i.data.buckets import bucket_info

    bucketed = bucket_placements is not None
    info = json.dumps(bucket_info(bucket_placements)) if bucket_placements is not None else "null"
    return {"ss_resolution": str((config.resolution, config.resolution)), "ss_enable_bucket": str(bucketed),
            "ss_bucket_no_upscale": str(bucketed and config.bucket_no_upscale),
            "ss_min_bucket_reso": str(config.bucket_min), "ss_max_bucket_reso": str(config.bucket_max),
            "ss_bucket_info": info,
            "ss_optimizer": kohya_optimizer, "ss_learning_rate": str(config.lr), "ss_unet_lr": str(config.lr),
            "ss_text_encoder_lr": str(config.te_lr if config.train_text_encoder else None),
            "ss_max_grad_norm": str(config.max_grad_norm), "ss_seed": str(config.seed),
            "ss_lr_scheduler": config.lr_scheduler, "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
            "ss_caption_dropout_rate": str(config.caption_dropout), "ss_noise_offset": str(config.noise_offset),
            "ss_min_snr_gamma": str(config.snr_gamma), "ss_flip_aug": str(config.flip),
            "ss_random_crop": str(config.random_crop), "ss_cache_latents": str(config.cache)}


def save_final(out: Path, parts, config, training_metadata: dict[str, str]) -> None:
    """The run's result: a ControlNet (a diffusers folder, and one .safetensors file A1111's extension and
    ComfyUI load), a LoRA (diffusers, and kohya for A1111/ComfyUI on request) or a whole model."""
    model = parts.model
    if config.ip_adapter:
        save_weights(out, parts)
    elif config.controlnet:
        from t2i.models.controlnet import save_single_file

        parts.controlnet.save_pretrained(out)
        save_single_file(parts.controlnet, out / f"{out.name}.safetensors")
    elif config.lora:
        save_weights(out, parts)
        if config.export_kohya:
            save_kohya_lora(model.pipe.unet, out / f"{out.name}.safetensors", config.rank, config.lora_alpha,
                            config.model, _text_encoder_parts(parts)[0], training_metadata)
    else:
        model.pipe.to(torch.float32).save_pretrained(out)
