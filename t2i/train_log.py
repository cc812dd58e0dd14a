"""What a training run leaves to look at: loss.csv, loss.png and validation grids."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "clipped_grad_norm", "seconds")


class LossLog:
    """loss.csv, one row per optimizer step; on resume, rows past the checkpoint are dropped."""

    def __init__(self, file: Path, resume_step: int = 0):
        self.file = file
        rows = []
        if resume_step and file.is_file():
            with open(file, newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        with open(file, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def add(self, **row) -> None:
        with open(self.file, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)

    def rows(self) -> list[dict]:
        with open(self.file, newline="") as f:
            return list(csv.DictReader(f))


def plot_loss(log: LossLog, png: Path) -> None:
    """Loss per step and its moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = log.rows()
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(steps, losses, alpha=0.35, label="loss")
    axes.plot(steps, smooth, label=f"mean of {window}")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("MSE loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(png)
    plt.close(figure)


def grid(images: list[Image.Image]) -> Image.Image:
    """Images side by side in a near-square grid."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    return sheet


def validation_grid(pipe, prompts, steps: int, seed: int, resolution: int) -> Image.Image:
    """One image per prompt, each from the same seed, so grids of successive steps compare."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    images = []
    with torch.no_grad():
        for prompt in prompts:
            images += pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
                           height=resolution, width=resolution).images
    return grid(images)
