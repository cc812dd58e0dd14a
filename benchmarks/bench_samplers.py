"""Which sampler and schedule follow the prompt with the fewest UNet calls: every registry sampler on `demo`.

    python benchmarks/bench_samplers.py [--images 2] [--steps 5 10 20 50] [--samplers dpmpp-2m euler:karras ...]

Rows are SAMPLER[:SCHEDULE]; by default every sampler on its A1111 Automatic schedule, then Euler
and DPM++ 2M on every schedule they run. For each row and step count: the share of 'a <colour>
<shape>' images (all 8 colours x 4 shapes x images per prompt, seeds 0, 1, ... as `t2i generate
--seed 0` gives them) whose colour and shape the analyser reads back, and seconds per image. DDPM
also runs at 999 steps, its native count less the one SD's schedule offset leaves no room for.
A second table compares guidance scales (dpmpp-2m, 20 steps).
"""

from __future__ import annotations

import argparse

from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.samplers import SAMPLERS
from t2i.shapes.score import grid_accuracy


def default_rows() -> list[str]:
    rows = [f"{name}:{spec.automatic}" for name, spec in SAMPLERS.items()]
    rows += [f"{name}:{schedule}" for name in ("euler", "dpmpp-2m") for schedule in SAMPLERS[name].schedules
             if schedule != SAMPLERS[name].automatic]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="images per prompt")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--samplers", nargs="+", default=default_rows(), help="SAMPLER[:SCHEDULE] rows")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    parser.add_argument("--no-ddpm-1000", action="store_true")
    args = parser.parse_args()
    model = load_model(ModelConfig(model="demo", device="cpu"))
    per_prompt = args.images

    print(f"prompt following of the demo model: colour and shape right, {32 * per_prompt} images per cell, "
          "guidance 7.5; seconds per image in brackets")
    print(f"{'sampler:schedule':<30}" + "".join(f"{f'{n} steps':>18}" for n in args.steps))
    for name in args.samplers:
        sampler, _, schedule = name.partition(":")
        cells = []
        for steps in args.steps:
            score = grid_accuracy(model, images_per_prompt=per_prompt, sampler=sampler, steps=steps,
                                  schedule=schedule or None)
            cells.append(f"{score.accuracy:>9.1%} ({score.seconds_per_image:.2f}s)")
        print(f"{name:<30}" + "".join(f"{c:>18}" for c in cells), flush=True)
    if not args.no_ddpm_1000 and any(row.startswith("ddpm") for row in args.samplers):
        # 999: with SD's "leading" spacing and steps_offset 1, a 1000th step would be t=1000, past the schedule
        score = grid_accuracy(model, images_per_prompt=per_prompt, sampler="ddpm", steps=999)
        print(f"{'ddpm, 999 steps':<30}{score.accuracy:>9.1%} ({score.seconds_per_image:.2f}s)")

    print("\nclassifier-free guidance (dpmpp-2m, 20 steps)")
    print(f"{'guidance':<10}{'both right':>12}{'colour':>10}{'shape':>10}")
    for guidance in args.guidance:
        score = grid_accuracy(model, images_per_prompt=per_prompt, sampler="dpmpp-2m", steps=20, guidance=guidance)
        print(f"{guidance:<10g}{score.accuracy:>12.1%}{score.colour_accuracy:>10.1%}{score.shape_accuracy:>10.1%}")


if __name__ == "__main__":
    main()
