"""How well a model follows shape prompts: generate every colour x shape, read each image back.

Images are made by t2i's own generation function, so the score measures what a user gets from
`t2i generate "a red circle" --seed S` (per-image seeds, the sampler registry, the fp16 retry).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from t2i.formats.lora import LoraRef
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate_iter
from t2i.shapes.analyser import analyse
from t2i.shapes.world import COLOURS, SHAPES


@dataclass(frozen=True)
class GridScore:
    accuracy: float  # colour and shape both right
    colour_accuracy: float
    shape_accuracy: float
    images: int
    seconds_per_image: float
    misses: tuple[tuple[str, str, str | None, str | None], ...]  # (asked colour, shape, seen colour, shape)


def grid_accuracy(model, colours=tuple(COLOURS), shapes=SHAPES, images_per_prompt: int = 4, seed: int = 0,
                  sampler: str = "dpmpp-2m", steps: int = 20, guidance: float = 7.5, batch_size: int = 16,
                  loras: tuple[LoraRef, ...] = (), schedule: str | None = None,
                  cache_interval: int = 1, **generation) -> GridScore:
    """Generate 'a <colour> <shape>' for every combination, `images_per_prompt` each (seeds seed, seed+1, ...);
    `generation`: other GenerationConfig fields (pag_scale=3.0)."""
    asked = [(c, s) for c in colours for s in shapes]
    config = GenerationConfig(prompts=tuple(f"a {c} {s}" for c, s in asked), num_images=images_per_prompt,
                              seed=seed, sampler=sampler, schedule=schedule, steps=steps, guidance_scale=guidance,
                              batch_size=batch_size, loras=loras, cache_interval=cache_interval, **generation)
    started = time.perf_counter()
    seen = [analyse(result.image) for result in generate_iter(model, config, progress=False)]
    seconds = (time.perf_counter() - started) / len(seen)
    results = [(*pair, *reading) for pair, reading in zip((p for p in asked for _ in range(images_per_prompt)), seen)]
    colour_ok = [c == seen_c for c, _, seen_c, _ in results]
    shape_ok = [s == seen_s for _, s, _, seen_s in results]
    both = [a and b for a, b in zip(colour_ok, shape_ok)]
    return GridScore(float(np.mean(both)), float(np.mean(colour_ok)), float(np.mean(shape_ok)), len(results),
                     seconds, tuple(r for r, ok in zip(results, both) if not ok))
