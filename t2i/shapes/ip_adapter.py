"""An IP-Adapter for the `demo` model, and the measures of whether images follow their reference picture.

The image encoder is the shipped shapes feature network (t2i.shapes.features), not a CLIP vision model:
its 64 features are trained to tell the 9 colours and 4 shapes apart, which is what a picture prompt has
to carry in this world, and it is already shipped and measured (99.95% colour, 100% shape on renders). A
CLIP trained from scratch on renders would learn the same and add a network to ship. The analyser that
scores the images is hand-written (no learning), so the encoder and the judge share nothing.

`train_shape_ip_adapter` trains the adapter's projection and key/value layers inside the frozen `demo`
UNet (t2i.train.ip_adapter's layers and dropout, on the training image itself as its reference, as h94
train) and writes the h94-layout file t2i ships in models/shape-ip-adapter, with its recipe, timings and
measured agreement. `reference_agreement` generates from an empty prompt with a reference each and reads
colour and shape back; `conflict_curve` gives a prompt of another colour and shape than the reference and
reports which one the image follows as the adapter's scale grows.
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
from tqdm.auto import tqdm

from t2i.eval.metrics import Estimate, bootstrap_many
from t2i.files import write_text
from t2i.shapes.analyser import analyse
from t2i.shapes.world import COLOURS, SHAPES, Shape, caption, make_image, random_shape

log = logging.getLogger("t2i")
SCALES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class IPRecipe:
    images: int = 4000
    steps: int = 1500
    batch: int = 32
    learning_rate: float = 1e-3
    caption_dropout: float = 0.5  # an empty prompt must work: half the steps see no caption
    image_dropout: float = 0.05  # h94's: guidance away from "no picture" keeps working
    seed: int = 0
    test_references: int = 200  # held-out references the recorded agreement is measured on
    test_conflicts: int = 100


def _training_tensors(pipe, encoder, specs: list[Shape], rng: random.Random, seed: int):
    """(latents, caption embeddings, reference embeddings, the empty caption's embedding), encoded once."""
    from t2i.shapes.controlnet import _to_tensor

    def encode_text(texts):
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    generator = torch.Generator().manual_seed(seed)
    chunks = [specs[i:i + 256] for i in range(0, len(specs), 256)]
    latents, text, embeds = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            images = [make_image(s) for s in chunk]
            latents.append(pipe.vae.encode(_to_tensor(images) * 2 - 1).latent_dist.sample(generator))
            text.append(encode_text([caption(s, rng) for s in chunk]))
            embeds.append(encoder.module(encoder.processor(images).pixel_values).image_embeds)
        empty = encode_text([""])[0]
    return torch.cat(latents) * pipe.vae.config.scaling_factor, torch.cat(text), torch.cat(embeds), empty


def train_shape_ip_adapter(out: Path, recipe: IPRecipe = IPRecipe(), progress: bool = True) -> Path:
    """Train on `demo` and write `out/model.safetensors` and `out/recipe.json` (recipe, timings, agreement)."""
    from diffusers import DDPMScheduler

    from t2i.models.config import ModelConfig
    from t2i.models.image_encoder import SHAPE_FEATURES, load_image_encoder
    from t2i.models.ip_adapter import save_ip_adapter
    from t2i.models.loading import load_model
    from t2i.shapes.controlnet import draw_batch
    from t2i.train.ip_adapter import AdapterInUNet, adapter_parameters, drop_images, new_ip_layers
    from t2i.train.step import prediction_target

    out.mkdir(parents=True, exist_ok=True)
    model = load_model(ModelConfig(model="demo", device="cpu", dtype="fp32"))
    training = load_model(ModelConfig(model="demo", device="cpu", dtype="fp32"))  # its UNet gets the layers
    pipe, unet = training.pipe, training.pipe.unet
    encoder = load_image_encoder(SHAPE_FEATURES, model.config)
    for frozen in (unet, pipe.vae, pipe.text_encoder, encoder.module):
        frozen.requires_grad_(False)
    started = time.perf_counter()
    rng = random.Random(recipe.seed)
    specs = [random_shape(rng) for _ in range(recipe.images)]
    latents, text, embeds, empty = _training_tensors(pipe, encoder, specs, rng, recipe.seed)
    prepare_s = time.perf_counter() - started

    new_ip_layers(unet, encoder.width, seed=recipe.seed)
    adapter = AdapterInUNet(unet).train()
    optimizer = torch.optim.AdamW(adapter_parameters(unet), lr=recipe.learning_rate, weight_decay=0)
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    generator = torch.Generator().manual_seed(recipe.seed)
    started, losses = time.perf_counter(), []
    for _ in tqdm(range(recipe.steps), desc="training the IP-Adapter", disable=not progress):
        rows, captions = draw_batch(generator, recipe.images, recipe.batch, text, empty, recipe.caption_dropout)
        noise = torch.randn(latents[rows].shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (recipe.batch,), generator=generator)
        noisy = noise_scheduler.add_noise(latents[rows], noise, timesteps)
        prediction = adapter(unet, noisy, timesteps, captions,
                             drop_images(embeds[rows], generator, recipe.image_dropout))
        loss = torch.nn.functional.mse_loss(prediction, prediction_target(noise_scheduler, latents[rows], noise,
                                                                           timesteps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - started
    save_ip_adapter(unet, out / "model.safetensors", SHAPE_FEATURES)

    adapter_file = str(out / "model.safetensors")
    references = held_out_shapes(recipe.test_references)
    record = {"recipe": asdict(recipe), "seconds": {"prepare": round(prepare_s, 1), "train": round(train_s, 1)},
              "threads": torch.get_num_threads(), "final_loss_mean_last_100": round(float(np.mean(losses[-100:])), 4),
              "empty_prompt": {side: {k: v.as_dict() for k, v in reference_agreement(model, references, path).items()}
                               for side, path in (("base", None), ("ip_adapter", adapter_file))},
              "conflict": conflict_curve(model, conflicts(recipe.test_conflicts), adapter_file)}
    write_text(out / "recipe.json", json.dumps(record, indent=2))
    log.info("IP-Adapter written to %s (%.1f min of training)", adapter_file, train_s / 60)
    return out / "model.safetensors"


def held_out_shapes(count: int, seed: int = 999) -> list[Shape]:
    """References no training run draws (another seed than any recipe's)."""
    rng = random.Random(seed)
    return [random_shape(rng) for _ in range(count)]


def conflicts(count: int, seed: int = 998) -> list[tuple[Shape, Shape]]:
    """(reference, prompt) pairs that differ in both colour and shape."""
    rng, pairs = random.Random(seed), list[tuple[Shape, Shape]]()
    while len(pairs) < count:
        reference = random_shape(rng)
        prompt = Shape(rng.choice([c for c in COLOURS if c != reference.colour]),
                       rng.choice([s for s in SHAPES if s != reference.shape]), reference.size, reference.x,
                       reference.y)
        pairs.append((reference, prompt))
    return pairs


def _generate(model, prompt: str, reference: Shape, adapter: str | None, scale: float, seed: int, steps: int):
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate
    from t2i.sampling.ip_adapter import IPAdapterUnit

    config = GenerationConfig(prompts=(prompt,), seed=seed, steps=steps, sampler="euler")
    if adapter is not None:
        config = dataclasses.replace(config, ip_adapters=(IPAdapterUnit(adapter, make_image(reference), scale),))
    return generate(model, config, progress=False)[0].image


def reference_agreement(model, references: list[Shape], adapter: str | None, scale: float = 1.0, seed: int = 0,
                        steps: int = 20) -> dict[str, Estimate]:
    """With an empty prompt, how often the image has the reference's colour, its shape, and both, image i from
    seed+i. `adapter` None: the base model on the same seeds (the chance level)."""
    rows = []
    for index, reference in enumerate(references):
        colour, shape = analyse(_generate(model, "", reference, adapter, scale, seed + index, steps))
        rows.append((colour == reference.colour, shape == reference.shape))
    table = np.array(rows, dtype=np.float64)
    return bootstrap_many(lambda t: {"colour": float(t[:, 0].mean()), "shape": float(t[:, 1].mean()),
                                     "both": float((t[:, 0] * t[:, 1]).mean())}, table,
                          bounds={"colour": (0, 1), "shape": (0, 1), "both": (0, 1)})


def conflict_curve(model, pairs: list[tuple[Shape, Shape]], adapter: str, scales=SCALES, seed: int = 0,
                   steps: int = 20) -> list[dict]:
    """Per scale, the share of images with the reference's colour and with the prompt's (and the same for
    shape), each with its interval: the image moves from the prompt to the picture as the scale grows."""
    curve = []
    for scale in scales:
        rows = []
        for index, (reference, prompt) in enumerate(pairs):
            image = _generate(model, f"a {prompt.colour} {prompt.shape}", reference, adapter, scale, seed + index,
                              steps)
            colour, shape = analyse(image)
            rows.append((colour == reference.colour, colour == prompt.colour, shape == reference.shape,
                         shape == prompt.shape))
        table = np.array(rows, dtype=np.float64)
        names = ("reference_colour", "prompt_colour", "reference_shape", "prompt_shape")
        found = bootstrap_many(lambda t: {n: float(t[:, i].mean()) for i, n in enumerate(names)}, table,
                               bounds={n: (0, 1) for n in names})
        curve.append({"scale": scale, **{k: v.as_dict() for k, v in found.items()}})
    return curve
