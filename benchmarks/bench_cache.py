"""What DeepCache-style feature reuse (`--cache-interval N`) costs in prompt following, and saves in time.

    python benchmarks/bench_cache.py [--images 2] [--intervals 1 2 3 5] [--steps 20 50]

On `demo` (offline): for each interval and step count, the share of 'a <colour> <shape>' images
(8 colours x 4 shapes x --images, seeds 0, 1, ...) whose colour and shape the analyser reads back,
seconds per image and the speed-up over interval 1 in the same run. demo's UNet has two levels, so
the outer level it keeps running is most of its work: the speed-up on SD 1.5's four levels is
larger (bench_generate.py's table runs it at --size sd-shaped/full).
"""

from __future__ import annotations

import argparse

import torch

from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.shapes.score import grid_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="images per prompt")
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--sampler", default="dpmpp-2m")
    args = parser.parse_args()
    model = load_model(ModelConfig(model="demo", device="cpu"))
    grid_accuracy(model, colours=("red",), images_per_prompt=1, steps=2)  # warm-up: first-call costs apart
    print(f"demo, {args.sampler}, {32 * args.images} images a cell, CPU {torch.get_num_threads()} threads")
    print(f"{'steps':>6}{'interval':>10}{'both right':>12}{'colour':>8}{'shape':>8}{'s/image':>9}{'speed-up':>10}")
    for steps in args.steps:
        base = None
        for interval in args.intervals:
            score = grid_accuracy(model, images_per_prompt=args.images, sampler=args.sampler, steps=steps,
                                  cache_interval=interval)
            base = base or score.seconds_per_image
            print(f"{steps:>6}{interval:>10}{score.accuracy:>12.1%}{score.colour_accuracy:>8.1%}"
                  f"{score.shape_accuracy:>8.1%}{score.seconds_per_image:>9.3f}{base / score.seconds_per_image:>10.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
