"""Prompt-following of the `demo` model with and without Perturbed-Attention and Self-Attention Guidance (the
README's tables).

    python benchmarks/score_guidance.py [--images-per-prompt 8] [--steps 20]

Every colour x shape prompt, images-per-prompt images each (seeds 0, 1, ...), DPM++ 2M (Euler for the rows
that say so: SAG on a sampler diffusers' SAG pipeline refuses); the analyser's reading of colour and shape,
with a 95% bootstrap interval on the share right.
"""

from __future__ import annotations

import argparse

import numpy as np

from t2i.eval.metrics import bootstrap
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.shapes.score import grid_accuracy

SETTINGS = {"CFG 1": {"guidance": 1.0}, "CFG 1 + PAG 1.5": {"guidance": 1.0, "pag_scale": 1.5},
            "CFG 1 + PAG 3": {"guidance": 1.0, "pag_scale": 3.0}, "CFG 4": {"guidance": 4.0},
            "CFG 4 + PAG 3": {"guidance": 4.0, "pag_scale": 3.0},
            "CFG 1 + SAG 0.75": {"guidance": 1.0, "sag_scale": 0.75},
            "CFG 4 + SAG 0.75": {"guidance": 4.0, "sag_scale": 0.75},
            "CFG 1, Euler": {"guidance": 1.0, "sampler": "euler"},
            "CFG 1 + SAG 0.75, Euler": {"guidance": 1.0, "sag_scale": 0.75, "sampler": "euler"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    model = load_model(ModelConfig(model="demo"))
    print(f"{'guidance':<26}{'both right':>28}{'colour':>8}{'shape':>8}{'s/img':>8}")
    for name, settings in SETTINGS.items():
        score = grid_accuracy(model, images_per_prompt=args.images_per_prompt, steps=args.steps, **settings)
        right = np.ones(score.images)
        right[:len(score.misses)] = 0  # the share right is what the interval is of: order does not matter
        print(f"{name:<26}{str(bootstrap(np.mean, right, bounds=(0, 1))):>28}{score.colour_accuracy:>8.3f}"
              f"{score.shape_accuracy:>8.3f}{score.seconds_per_image:>8.3f}")


if __name__ == "__main__":
    main()
