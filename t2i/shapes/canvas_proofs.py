"""The shapes world's proofs of hires fix and outpainting, measured with the analyser and bootstrap
intervals (t2i.eval.metrics), on a model that follows shape prompts (`demo`).

- Hires fix: does a 32 -> 64 px hires image keep prompt following (colour and shape both right) within
  the base's interval, and is it sharper than the base image upscaled by Lanczos? Sharpness is the mean
  gradient magnitude (finite differences of the luminance, 0-255 a pixel) over the object's boundary
  band (2 pixels either side of the analyser's mask edge), paired image by image.
- Outpainting: an object cut by the image's right border, outpainted back to the full width with
  its prompt: is it read whole (its colour and shape) and does its mask match the uncut render (IoU)?
  The baseline is the canvas the generation starts from (the new border filled with the colours
  around it, no model).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from PIL import Image

from t2i.eval.metrics import Estimate, bootstrap
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.shapes.analyser import analyse, foreground
from t2i.shapes.world import COLOURS, SHAPES, Shape, make_image


def boundary_sharpness(image: Image.Image) -> float:
    from scipy import ndimage

    luminance = np.asarray(image.convert("L"), dtype=np.float64)
    magnitude = np.hypot(np.diff(luminance, axis=1)[:-1], np.diff(luminance, axis=0)[:, :-1])
    mask = foreground(image)
    band = (ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2))[:-1, :-1]
    return float(magnitude[band].mean()) if band.any() else 0.0


def _both_right(images, asked) -> np.ndarray:
    return np.array([analyse(image) == pair for image, pair in zip(images, asked)], dtype=np.float64)


def hires_proof(model, seeds_per_prompt: int = 4, steps: int = 20, denoise: float = 0.2,
                upscaler: str = "Lanczos") -> dict[str, Estimate]:
    asked = [(c, s) for c in COLOURS for s in SHAPES for _ in range(seeds_per_prompt)]
    prompts = tuple(f"a {c} {s}" for c in COLOURS for s in SHAPES)
    common: dict[str, Any] = dict(prompts=prompts, num_images=seeds_per_prompt, seed=0, steps=steps, batch_size=16,
                  schedule="normal")
    base = [r.image for r in generate(model, GenerationConfig(**common), progress=False)]
    hires = [r.image for r in generate(model, GenerationConfig(**common, hires_scale=2, hires_denoise=denoise,
                                                               hires_upscaler=upscaler), progress=False)]
    lanczos = [image.resize(hires[0].size, Image.Resampling.LANCZOS) for image in base]
    gain = np.array([boundary_sharpness(h) - boundary_sharpness(b) for h, b in zip(hires, lanczos)])
    return {"base_accuracy": bootstrap(np.mean, _both_right(base, asked), bounds=(0, 1)),
            "hires_accuracy": bootstrap(np.mean, _both_right(hires, asked), bounds=(0, 1)),
            "hires_sharpness": bootstrap(np.mean, np.array([boundary_sharpness(h) for h in hires])),
            "lanczos_sharpness": bootstrap(np.mean, np.array([boundary_sharpness(b) for b in lanczos])),
            "sharpness_gain": bootstrap(np.mean, gain)}


def cut_shapes(count: int, seed: int = 0, keep: int = 24) -> list[tuple[Shape, Image.Image, Image.Image]]:
    """(shape, uncut 32 px render, its left `keep` columns): each object straddles the cut, a third to
    a half of it beyond."""
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        size = rng.randint(12, 16)
        spec = Shape(colour=rng.choice(tuple(COLOURS)), shape=rng.choice(SHAPES), size=size,
                     x=keep - size + rng.randint(size // 3, size // 2), y=rng.randint(2, 32 - size - 2))
        truth = make_image(spec)
        made.append((spec, truth, truth.crop((0, 0, keep, truth.height))))
    return made


def _iou(image: Image.Image, truth: Image.Image) -> float:
    a, b = foreground(image), foreground(truth)
    return float((a & b).sum() / max((a | b).sum(), 1))


def outpaint_proof(model, count: int = 128, steps: int = 20) -> dict[str, Estimate]:
    from t2i.sampling.generate import _outpaint_inputs

    outpainted, filled, truths, asked = [], [], [], []
    for index, (spec, truth, cut) in enumerate(cut_shapes(count)):
        config = GenerationConfig(prompts=(f"a {spec.colour} {spec.shape}",), steps=steps, seed=index,
                                  init_image=cut, outpaint=f"right={truth.width - cut.width}", outpaint_mode="pad",
                                  schedule="normal")
        outpainted.append(generate(model, config, progress=False)[0].image)
        filled.append(_outpaint_inputs(cut, config)[0])  # what the generation starts from
        truths.append(truth)
        asked.append((spec.colour, spec.shape))
    return {"outpaint_read_whole": bootstrap(np.mean, _both_right(outpainted, asked), bounds=(0, 1)),
            "fill_read_whole": bootstrap(np.mean, _both_right(filled, asked), bounds=(0, 1)),
            "outpaint_iou": bootstrap(np.mean, np.array([_iou(o, t) for o, t in zip(outpainted, truths)]),
                                      bounds=(0, 1)),
            "fill_iou": bootstrap(np.mean, np.array([_iou(f, t) for f, t in zip(filled, truths)]), bounds=(0, 1))}
