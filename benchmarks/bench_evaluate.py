"""`t2i evaluate` on the demo model: how fast it makes images and scores them, and what share each takes.

    python benchmarks/bench_evaluate.py [--num-samples 256] [--steps 20] [--guidance 3 7.5]
    python benchmarks/bench_evaluate.py --metrics-only --num-samples 10000 --dims 2048

--metrics-only times each metric on synthetic features (real ~ N(0, I), generated ~ N(0.05, 1.1^2 I),
logits for IS over 1,008 classes), with and without its bootstrap interval, each in a fresh process
whose peak resident memory is read at its end (so one measurement's arrays never count in another's).
The baseline row is the process with the features loaded and nothing computed.

Makes a shapes dataset, evaluates the base `demo` model on its held-out split, and prints the
report's timing: images/s for generation (t2i's own generation, as `t2i generate`), images/s for
the metrics (feature extraction, FID/KID/precision-recall with bootstrap intervals, prompt
agreement), and each side's share of the whole.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from t2i.eval.run import EvalConfig, evaluate
from t2i.shapes.world import make_dataset

MEASURES = ("baseline", "fid", "fid+interval", "kid", "kid+interval", "is", "is+interval", "pr", "pr+interval")


def _measure(name: str, n: int, dims: int) -> dict:
    """One measurement in this (fresh) process: seconds and peak memory."""
    from t2i.eval import metrics

    rng = np.random.default_rng(0)
    real = rng.standard_normal((n, dims), dtype=np.float32)
    fake = (rng.standard_normal((n, dims), dtype=np.float32) * 1.1 + 0.05).astype(np.float32)
    logits = rng.standard_normal((n, 1008), dtype=np.float32) * 3
    work = {"baseline": lambda: None,
            "fid": lambda: metrics.frechet_distance(real, fake),
            "fid+interval": lambda: metrics.fid_estimate(real, fake),
            "kid": lambda: metrics.kernel_distance(real, fake),
            "kid+interval": lambda: metrics.kid_estimate(real, fake),
            "is": lambda: metrics.inception_score(logits),
            "is+interval": lambda: metrics.is_estimate(logits),
            "pr": lambda: metrics.manifold_metrics(real, fake),
            "pr+interval": lambda: metrics.manifold_estimates(real, fake)}[name]
    started = time.perf_counter()
    work()
    return {"seconds": time.perf_counter() - started,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def metrics_only(n: int, dims: int, only: list[str]) -> None:
    print(f"\nmetrics on synthetic features: N = {n} real and {n} generated, D = {dims} "
          f"(IS on {n} x 1008 logits), each row a fresh process")
    print(f"{'metric':<14} {'seconds':>9} {'peak MB':>9}")
    for name in only:
        found = subprocess.run([sys.executable, __file__, "--measure", name, "--num-samples", str(n), "--dims",
                                str(dims)], capture_output=True, text=True, check=True)
        result = json.loads(found.stdout.strip().splitlines()[-1])
        print(f"{name:<14} {result['seconds']:>9.1f} {result['peak_mb']:>9.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 7.5])
    parser.add_argument("--metrics-only", action="store_true", help="time the metrics on synthetic features")
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--only", nargs="+", choices=MEASURES, default=list(MEASURES))
    parser.add_argument("--measure", choices=MEASURES, help=argparse.SUPPRESS)  # one row, in a child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.num_samples, args.dims)))
        return
    if args.metrics_only:
        metrics_only(args.num_samples, args.dims, args.only)
        return
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
