"""`t2i evaluate` on the demo model: how fast it makes images and scores them, and what share each takes.

    python benchmarks/bench_evaluate.py [--num-samples 256] [--steps 20] [--guidance 3 7.5]

Makes a shapes dataset, evaluates the base `demo` model on its held-out split, and prints the
report's timing: images/s for generation (t2i's own generation, as `t2i generate`), images/s for
the metrics (feature extraction, FID/KID/precision-recall with bootstrap intervals, prompt
agreement), and each side's share of the whole.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from t2i.eval.run import EvalConfig, evaluate
from t2i.shapes.world import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 7.5])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        data = make_dataset(Path(workdir) / "shapes", args.num_samples * 11, seed=1)
        config = EvalConfig(model="demo", data=str(data), num_samples=args.num_samples, steps=args.steps,
                            guidance_scales=tuple(args.guidance))
        timing = evaluate(config, Path(workdir) / "report", log=lambda _: None)["timing"]
    total = timing["generation_s"] + timing["metrics_s"]
    print(f"\ndemo, N = {args.num_samples}, {args.steps} steps, guidance {args.guidance}")
    print(f"{'part':<11} {'images':>7} {'seconds':>8} {'images/s':>9} {'share':>6}")
    for part, images, seconds in (("generation", timing["images_made"], timing["generation_s"]),
                                  ("metrics", timing["images_scored"], timing["metrics_s"])):
        print(f"{part:<11} {images:>7} {seconds:>8.1f} {images / seconds:>9.2f} {seconds / total:>6.1%}")


if __name__ == "__main__":
    main()
