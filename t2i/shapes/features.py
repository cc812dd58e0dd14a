"""The shapes world's image feature network: what Shapes-FID, Shapes-KID and precision/recall are
computed on, as Inception-v3's pool features are for photographs.

A small CNN trained to name the colour (all 9, brown included) and shape of renders with jittered
colours, noise and blur (generated images have soft edges and off colours); its 64-d pooled
activations are the features. It ships with the package beside the `demo` model, with its recipe
and its measured accuracy (`t2i shapes train-features` re-makes it).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from t2i.files import atomic_write, write_text
from t2i.models import SHAPE_FEATURES_DIR
from t2i.shapes.world import ALL_COLOURS, SHAPES, SIZE, make_image, random_shape

COLOUR_NAMES = tuple(ALL_COLOURS)
WEIGHTS_FILE = "model.safetensors"


class ShapeFeatures(nn.Module):
    """32x32 RGB in [0, 1] -> 64 features; two linear heads name the colour and the shape. The last
    layer sees the 4x4 layout (a global average would blur shapes together)."""

    feature_scale: torch.Tensor  # a buffer: see __init__

    def __init__(self, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, width), nn.GELU())
        self.colour = nn.Linear(width, len(COLOUR_NAMES))
        self.shape = nn.Linear(width, len(SHAPES))
        # features are scaled to RMS 1 on renders (set after training), so that FID and KID come out at
        # the sizes people know from Inception features rather than in the millions
        self.register_buffer("feature_scale", torch.ones(()))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels) * self.feature_scale

    def classify(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(colour logits, shape logits): what the network was trained on."""
        hidden = self.body(pixels)
        return self.colour(hidden), self.shape(hidden)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, 32, 32) in [0, 1], resized as the evaluation resizes real images."""
    arrays = [np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
              for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0


@torch.no_grad()
def extract(model: ShapeFeatures, images: list[Image.Image], batch_size: int = 256) -> np.ndarray:
    model.eval()
    parts = [model(to_tensor(images[i:i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, model.colour.in_features))


def _jittered_render(rng: random.Random) -> tuple[Image.Image, int, int]:
    spec = random_shape(rng, COLOUR_NAMES, SHAPES)
    r, g, b = (int(np.clip(c + rng.gauss(0, 12), 0, 255)) for c in ALL_COLOURS[spec.colour])
    rgb = (r, g, b)
    image = make_image(spec, rgb=rgb)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    noisy = np.asarray(image, dtype=np.float32) + np.random.default_rng(rng.randrange(2**32)).normal(
        0, rng.uniform(0, 8), (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), COLOUR_NAMES.index(spec.colour), \
        SHAPES.index(spec.shape)


def _batch(rng: random.Random, size: int):
    renders = [_jittered_render(rng) for _ in range(size)]
    return (to_tensor([r[0] for r in renders]), torch.tensor([r[1] for r in renders]),
            torch.tensor([r[2] for r in renders]))


@dataclass(frozen=True)
class FeatureRecipe:
    steps: int = 1200
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0
    test_images: int = 2000


def train_features(out: Path, recipe: FeatureRecipe = FeatureRecipe()) -> dict:
    """Train the network, measure it on fresh renders, and write weights + recipe.json into `out`."""
    from safetensors.torch import save_file

    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    model = ShapeFeatures()
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, total_steps=recipe.steps)
    started = time.perf_counter()
    model.train()
    for _ in range(recipe.steps):
        pixels, colours, shapes = _batch(rng, recipe.batch_size)
        colour_logits, shape_logits = model.classify(pixels)
        loss = nn.functional.cross_entropy(colour_logits, colours) + nn.functional.cross_entropy(shape_logits, shapes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    seconds = time.perf_counter() - started
    pixels, colours, shapes = _batch(random.Random(recipe.seed + 1), recipe.test_images)
    model.eval()
    with torch.no_grad():
        colour_logits, shape_logits = model.classify(pixels)
        colour_ok = (colour_logits.argmax(1) == colours).float().mean().item()
        shape_ok = (shape_logits.argmax(1) == shapes).float().mean().item()
        model.feature_scale.fill_(1 / model.body(pixels).pow(2).mean().sqrt().item())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(model.state_dict(), str(tmp)))
    record = {"recipe": asdict(recipe), "train_seconds": round(seconds, 1), "final_loss": round(loss.item(), 4),
              "test_colour_accuracy": round(colour_ok, 4), "test_shape_accuracy": round(shape_ok, 4),
              "feature_scale": model.feature_scale.item(),
              "colours": list(COLOUR_NAMES), "shapes": list(SHAPES)}
    write_text(out / "recipe.json", json.dumps(record, indent=2) + "\n")
    return record


def load_features(folder: Path = SHAPE_FEATURES_DIR) -> ShapeFeatures:
    from safetensors.torch import load_file

    model = ShapeFeatures()
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval()
