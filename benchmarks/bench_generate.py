"""t2i generate against plain diffusers, and the CLI's start-up time.

    python benchmarks/bench_generate.py [--images 8] [--steps 20] [--repeats 5]

(a) The same work both ways on the tiny model: one image, one seed, 20 DPM++ 2M Karras steps,
    saved as a PNG. t2i's extra work (sampler build, metadata, atomic write, NaN check) is what the
    ratio measures. The two alternate image by image (this CPU's speed drifts), and the median
    per-image time over images x repeats is reported.
(b) Wall time of `t2i --help` and `t2i samplers` in fresh processes, against `import diffusers`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from t2i.formats.png import save_png
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.models.presets import tiny_components
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate


def plain_diffusers(pipe, prompt, seed, steps, out_dir: Path) -> None:
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    image = pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    image.save(out_dir / f"{seed}.png")


def t2i_generate(model, prompt, seed, steps, out_dir: Path) -> None:
    config = GenerationConfig(prompts=(prompt,), seed=seed, steps=steps, sampler="dpmpp-2m-karras")
    for result in generate(model, config, progress=False):
        save_png(result.image, result.settings, out_dir)


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    plain = StableDiffusionPipeline(**tiny_components(), safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    model = load_model(ModelConfig(model="tiny", device="cpu"))
    plain_times, ours_times = [], []
    with tempfile.TemporaryDirectory() as out:
        timed(plain_diffusers, plain, "warm-up", 0, 2, Path(out))
        timed(t2i_generate, model, "warm-up", 0, 2, Path(out))
        for repeat in range(args.repeats):
            for index in range(args.images):
                prompt, seed = f"a photo of object {index}", 1000 + index
                plain_times.append(timed(plain_diffusers, plain, prompt, seed, args.steps, Path(out) / f"p{repeat}"))
                ours_times.append(timed(t2i_generate, model, prompt, seed, args.steps, Path(out) / f"t{repeat}"))
    plain_s, ours_s = statistics.median(plain_times), statistics.median(ours_times)

    python = sys.executable
    help_s = wall([python, "-m", "t2i", "--help"], args.repeats)
    samplers_s = wall([python, "-m", "t2i", "samplers"], args.repeats)
    diffusers_s = wall([python, "-c", "import diffusers.pipelines"], args.repeats)

    print(f"(a) seconds per image, {args.steps} steps, tiny model, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.images} images x {args.repeats} repeats")
    print(f"{'what':<34}{'seconds':>10}{'ratio':>10}")
    print(f"{'plain diffusers':<34}{plain_s:>10.3f}{1:>10.3f}")
    print(f"{'t2i generate (API)':<34}{ours_s:>10.3f}{ours_s / plain_s:>10.3f}")
    print(f"(b) start-up, fresh process, median of {args.repeats}")
    print(f"{'python -c import diffusers':<34}{diffusers_s:>10.3f}{1:>10.3f}")
    print(f"{'t2i --help':<34}{help_s:>10.3f}{help_s / diffusers_s:>10.3f}")
    print(f"{'t2i samplers':<34}{samplers_s:>10.3f}{samplers_s / diffusers_s:>10.3f}")


if __name__ == "__main__":
    main()
