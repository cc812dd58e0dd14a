"""`t2i serve` against the same work through t2i's Python API, in one run.

    python benchmarks/bench_serve.py [--requests 12] [--steps 20] [--sizes 32 128] [--threads 2]

(a) Latency, one request at a time: POST /sdapi/v1/txt2img to a `t2i serve --model demo` process
    (HTTP, JSON, base64 PNG, queue) against `generate()` + the same PNG bytes + base64 in this
    process. The two alternate request by request, both with the same torch thread count; the
    median of each is reported, and their ratio (goal: <= 1.05).
(b) Throughput: the same number of requests sent by 4 client threads at once (they queue: one
    generation at a time), as images/s against the sequential Python API's images/s.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def python_api(model, body) -> None:
    from t2i.formats.png import png_bytes
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate

    config = GenerationConfig(prompts=(body["prompt"],), seed=body["seed"], steps=body["steps"],
                              sampler="euler-a", guidance_scale=body["cfg_scale"], width=body["width"],
                              height=body["height"])
    for result in generate(model, config, progress=False):
        base64.b64encode(png_bytes(result.image, result.settings))


def over_http(api: str, body) -> None:
    response = requests.post(f"{api}/txt2img", json=body, timeout=600)
    response.raise_for_status()


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--threads", type=int, default=2, help="torch threads, on both sides")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server process inherits it

    import torch
    from serving import start_server

    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model

    torch.set_num_threads(args.threads)
    model = load_model(ModelConfig(model="demo", device="cpu"))
    with tempfile.TemporaryDirectory() as workdir:
        server = start_server(Path(workdir), "--model", "demo", "--device", "cpu",
                              "--max-queue", str(args.requests))
        try:
            rows = []
            for size in args.sizes:
                body = {"prompt": "a red circle", "steps": args.steps, "cfg_scale": 7.0, "width": size,
                        "height": size, "sampler_name": "Euler a", "seed": 0}
                over_http(server.api, body), python_api(model, body)  # warm both sides
                http, direct = [], []
                for index in range(args.requests):
                    body["seed"] = index
                    pair = [(http, over_http, server.api), (direct, python_api, model)]
                    for times, fn, target in (pair if index % 2 == 0 else pair[::-1]):
                        times.append(timed(fn, target, dict(body)))
                started = time.perf_counter()
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(lambda i: over_http(server.api, {**body, "seed": i}), range(args.requests)))
                concurrent = args.requests / (time.perf_counter() - started)
                rows.append((size, statistics.median(direct), statistics.median(http), concurrent,
                             1 / statistics.median(direct)))
        finally:
            server.stop()
    print(f"\ndemo model, {args.steps} Euler a steps, {args.requests} requests, {args.threads} torch threads each side")
    print(f"{'size':>7} {'python API s':>13} {'HTTP s':>8} {'ratio':>6} {'HTTP 4 clients img/s':>21} "
          f"{'python img/s':>13}")
    for size, direct, http, concurrent, sequential in rows:
        print(f"{size:>4}px {direct:>13.3f} {http:>8.3f} {http / direct:>6.3f} {concurrent:>21.2f} {sequential:>13.2f}")


if __name__ == "__main__":
    main()
