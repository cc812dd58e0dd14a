"""A ControlNet for the `demo` model, and the measure of whether images follow their control.

`train_shape_controlnet` trains a ControlNet (t2i.train.controlnet) on shapes whose control image is
the object's mask (or outline) and writes it, with its recipe, timings and measured agreement, as the
single file t2i ships in models/shape-controlnet. `control_agreement` generates one image a control
and reads it back with the analyser: how much the drawn object overlaps the control mask (IoU), how
far its centre is from the mask's (pixels), and whether it still has the prompt's colour and shape,
each with a bootstrap interval. The base model places objects at random: its IoU is the chance level.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from t2i.eval.metrics import Estimate, bootstrap_many
from t2i.files import write_text
from t2i.shapes.analyser import analyse, foreground
from t2i.shapes.world import Shape, caption, control_image, make_image, random_shape

log = logging.getLogger("t2i")


@dataclass(frozen=True)
class ControlRecipe:
    control: str = "mask"  # or "edges"
    images: int = 4000
    steps: int = 1000
    batch: int = 32
    learning_rate: float = 1e-3
    embedding_channels: tuple[int, ...] = (16, 32, 64)  # two halvings: the demo VAE's factor of 4
    caption_dropout: float = 0.1
    seed: int = 0
    test_controls: int = 200  # held-out controls the recorded agreement is measured on


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) / 255 for i in images])).permute(0, 3, 1, 2)


def _training_tensors(pipe, recipe: ControlRecipe, specs: list[Shape], rng: random.Random):
    """(latents, caption embeddings, control images, the empty caption's embedding), all encoded once."""
    def encode_text(texts):
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    generator = torch.Generator().manual_seed(recipe.seed)
    chunks = [specs[i:i + 256] for i in range(0, len(specs), 256)]
    with torch.no_grad():
        latents = torch.cat([pipe.vae.encode(_to_tensor([make_image(s) for s in c]) * 2 - 1).latent_dist.sample(
            generator) for c in chunks]) * pipe.vae.config.scaling_factor
        text = torch.cat([encode_text([caption(s, rng) for s in c]) for c in chunks])
        empty = encode_text([""])[0]
    controls = torch.cat([_to_tensor([control_image(s, recipe.control) for s in c]) for c in chunks])
    return latents, text, controls, empty


def draw_batch(generator: torch.Generator, images: int, batch: int, text: torch.Tensor, empty: torch.Tensor,
               caption_dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of one training batch, their caption embeddings with a share replaced by the empty caption's,
    which keeps classifier-free guidance working)."""
    rows = torch.randint(0, images, (batch,), generator=generator)
    captions = text[rows].clone()
    captions[torch.rand(batch, generator=generator) < caption_dropout] = empty
    return rows, captions


def train_shape_controlnet(out: Path, recipe: ControlRecipe = ControlRecipe(), progress: bool = True) -> Path:
    """Train on `demo` and write `out/model.safetensors` and `out/recipe.json` (recipe, timings, agreement)."""
    from diffusers import DDPMScheduler

    from t2i.models.config import ModelConfig
    from t2i.models.controlnet import save_single_file
    from t2i.models.loading import load_model
    from t2i.train.controlnet import controlnet_loss, new_controlnet

    out.mkdir(parents=True, exist_ok=True)
    model = load_model(ModelConfig(model="demo", device="cpu", dtype="fp32"))
    pipe = model.pipe
    for frozen in (pipe.unet, pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False)
    started = time.perf_counter()
    rng = random.Random(recipe.seed)
    specs = [random_shape(rng) for _ in range(recipe.images)]
    latents, text, controls, empty = _training_tensors(pipe, recipe, specs, rng)
    prepare_s = time.perf_counter() - started

    controlnet = new_controlnet(pipe.unet, recipe.embedding_channels, seed=recipe.seed).train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=recipe.learning_rate, weight_decay=0)
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    generator = torch.Generator().manual_seed(recipe.seed)
    started, losses = time.perf_counter(), []
    for _ in tqdm(range(recipe.steps), desc="training the ControlNet", disable=not progress):
        rows, captions = draw_batch(generator, recipe.images, recipe.batch, text, empty, recipe.caption_dropout)
        loss = controlnet_loss(controlnet, pipe.unet, noise_scheduler, latents[rows], captions, controls[rows],
                               generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - started
    save_single_file(controlnet.eval(), out / "model.safetensors")

    test = held_out_shapes(recipe.test_controls)
    agreement = {name: control_agreement(model, controls_for(test, recipe.control), test, **kwargs)
                 for name, kwargs in (("base", {"controlnet": None}),
                                      ("controlnet", {"controlnet": str(out / "model.safetensors")}))}
    record = {"recipe": asdict(recipe), "seconds": {"prepare": round(prepare_s, 1), "train": round(train_s, 1)},
              "threads": torch.get_num_threads(), "final_loss_mean_last_100": round(float(np.mean(losses[-100:])), 4),
              "agreement": {side: {k: v.as_dict() for k, v in found.items()} for side, found in agreement.items()}}
    write_text(out / "recipe.json", json.dumps(record, indent=2))
    log.info("ControlNet written to %s (%.1f min of training)", out / "model.safetensors", train_s / 60)
    return out / "model.safetensors"


def held_out_shapes(count: int, seed: int = 999) -> list[Shape]:
    """Shapes no training run draws (another seed than any recipe's)."""
    rng = random.Random(seed)
    return [random_shape(rng) for _ in range(count)]


def controls_for(shapes: list[Shape], kind: str = "mask") -> list[Image.Image]:
    return [control_image(s, kind) for s in shapes]


def mask_of(control: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A control image as the mask it stands for (white: the object), at an image's size."""
    return np.asarray(control.convert("L").resize(size, Image.Resampling.NEAREST)) > 127


def placement(image: Image.Image, target: np.ndarray) -> tuple[float, float]:
    """(IoU of the analyser's foreground with `target`, distance in pixels between their centres)."""
    drawn = foreground(image)
    union = (drawn | target).sum()
    iou = float((drawn & target).sum() / union) if union else 0.0
    if drawn.sum() == 0 or target.sum() == 0:
        return iou, float(np.hypot(*image.size))  # nothing to compare: as far off as the image allows
    centre = np.argwhere(drawn).mean(axis=0)
    return iou, float(np.linalg.norm(centre - np.argwhere(target).mean(axis=0)))


def _agreement_rows(image: Image.Image, target: np.ndarray, spec: Shape) -> tuple[float, float, float]:
    """(IoU, centroid distance in pixels, 1 if colour and shape both read right) of one image."""
    colour, shape = analyse(image)
    return (*placement(image, target), float(colour == spec.colour and shape == spec.shape))


def control_agreement(model, masks: list[Image.Image], shapes: list[Shape], controlnet: str | None,
                      weight: float = 1.0, start: float = 0.0, end: float = 1.0, seed: int = 0,
                      steps: int = 20, control_mode: str = "Balanced") -> dict[str, Estimate]:
    """IoU, centroid distance and prompt accuracy of images made for `shapes` ("a red circle"), each
    with its own control (`masks[i]`, also what the IoU is measured against), image i from seed+i.
    `controlnet` None: the base model on the same prompts and seeds (the chance level)."""
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.control import ControlUnit
    from t2i.sampling.generate import generate

    rows = []
    for index, (spec, mask) in enumerate(zip(shapes, masks)):
        config = GenerationConfig(prompts=(f"a {spec.colour} {spec.shape}",), seed=seed + index, steps=steps,
                                  sampler="euler")
        if controlnet is not None:
            unit = ControlUnit(controlnet, mask, weight=weight, guidance_start=start, guidance_end=end,
                               control_mode=control_mode)
            config = dataclasses.replace(config, controls=(unit,))
        image = generate(model, config, progress=False)[0].image
        rows.append(_agreement_rows(image, mask_of(mask, image.size), spec))
    table = np.array(rows)
    return bootstrap_many(lambda t: {"iou": float(t[:, 0].mean()), "centroid_px": float(t[:, 1].mean()),
                                     "accuracy": float(t[:, 2].mean())}, table,
                          bounds={"iou": (0, 1), "centroid_px": (0, np.inf), "accuracy": (0, 1)})
