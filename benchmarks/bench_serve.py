"""`t2i serve` against the same work through t2i's Python API, in one run.

    python benchmarks/bench_serve.py [--requests 12] [--steps 20] [--sizes 32 128] [--threads 2]

(a) Latency, one request at a time: POST /sdapi/v1/txt2img to a `t2i serve --model demo` process
    (HTTP, JSON, base64 PNG, queue) against `generate()` + the same PNG bytes + base64 in this
    process. The two alternate request by request, both with the same torch thread count; the
    median of each is reported, and their ratio (goal: <= 1.05).
(b) Throughput: the same number of requests sent by 4 client threads at once (they queue: one
    generation at a time), as images/s against the sequential Python API's images/s.
(c) Load: 20 clients at once against a server that queues 8; a client answered 429 waits its own
    0.5 s backoff (shorter than the Retry-After hint, to keep the run short) and tries again. All must
    be served, each image with its own seed; wall time against the same 20 images by the Python API.
(d) Abandoned waiters: 8 clients join the line behind a long job and leave (their HTTP timeout);
    the time until the server's `queued` count is back to 0, while the long job still runs.
(e) Interrupt latency at 512x512: a job's first step is timed from /progress, then an interrupt is
    sent mid-step; the time until its answer arrives, against the step time (the flag is checked at
    every UNet block, not only between steps).
"""

from __future__ import annotations

import argparse
import base64
import json
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


def load_row(api: str, model, steps: int, clients: int = 20) -> tuple[float, float, int]:
    """(HTTP wall s, Python API s, 429s seen) for `clients` clients with retry against the same images."""
    body = {"prompt": "a red circle", "steps": steps, "cfg_scale": 7.0, "width": 32, "height": 32,
            "sampler_name": "Euler a"}
    refused = []

    def client(seed: int) -> int:
        while True:
            response = requests.post(f"{api}/txt2img", json={**body, "seed": seed}, timeout=600)
            if response.status_code != 429:
                response.raise_for_status()
                return json.loads(response.json()["info"])["all_seeds"][0]
            refused.append(seed)
            time.sleep(0.5)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        seeds = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    assert seeds == list(range(clients)), "every client got its own seed"
    direct = sum(timed(python_api, model, {**body, "seed": seed}) for seed in range(clients))
    return wall, direct, len(refused)


def long_job(api: str, task: str, size: int, steps: int = 150, batches: int = 8):
    """A long job in a background thread (interrupted by the caller)."""
    import threading

    body = {"prompt": "a slow square", "steps": steps, "n_iter": batches, "width": size, "height": size,
            "seed": 1, "force_task_id": task}
    thread = threading.Thread(target=lambda: requests.post(f"{api}/txt2img", json=body, timeout=900))
    thread.start()
    return thread


def task_state(url: str, task: str) -> dict:
    return requests.post(f"{url}/internal/progress", json={"id_task": task}, timeout=10).json()


def abandoned_row(server) -> float:
    """Seconds until 8 clients that left the line no longer hold places in it."""
    job = long_job(server.api, "task(bench-long)", 64)
    while not task_state(server.url, "task(bench-long)")["active"]:
        time.sleep(0.05)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _leave_early(server.api, i), range(8)))
    left = time.perf_counter()
    while requests.get(f"{server.api}/progress", timeout=10).json()["state"]["queued"] > 0:
        time.sleep(0.02)
    freed = time.perf_counter() - left
    assert task_state(server.url, "task(bench-long)")["active"], "the long job runs on"
    requests.post(f"{server.api}/interrupt", json={"id_task": "task(bench-long)"}, timeout=10)
    job.join()
    return freed


def _leave_early(api: str, seed: int) -> None:
    try:
        requests.post(f"{api}/txt2img", json={"prompt": "x", "steps": 4, "width": 32, "height": 32, "seed": seed},
                      timeout=1.0)
    except requests.Timeout:
        pass  # the client gave up: its place in line must be freed


def interrupt_row(server, size: int = 512) -> tuple[float, float]:
    """(step seconds, interrupt-to-answer seconds) of a job at size x size."""
    import threading

    answered = threading.Event()
    body = {"prompt": "a slow square", "steps": 20, "width": size, "height": size, "seed": 1,
            "force_task_id": "task(bench-interrupt)"}
    thread = threading.Thread(target=lambda: (requests.post(f"{server.api}/txt2img", json=body, timeout=900),
                                              answered.set()))
    thread.start()
    while "step 1/" not in (task_state(server.url, "task(bench-interrupt)")["textinfo"] or ""):
        time.sleep(0.01)
    first = time.perf_counter()
    while "step 2/" not in (task_state(server.url, "task(bench-interrupt)")["textinfo"] or ""):
        time.sleep(0.01)
    step = time.perf_counter() - first
    time.sleep(step / 2)  # mid-step
    sent = time.perf_counter()
    requests.post(f"{server.api}/interrupt", json={"id_task": "task(bench-interrupt)"}, timeout=10)
    answered.wait()
    latency = time.perf_counter() - sent
    thread.join()
    return step, latency


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
        server = start_server(Path(workdir), "--model", "demo", "--device", "cpu", "--max-queue", "8")
        try:
            wall, alone, refused = load_row(server.api, model, args.steps)
            freed = abandoned_row(server)
            step, latency = interrupt_row(server)
        finally:
            server.stop()
    print(f"\n(c) 20 clients at once, a queue of 8, retry 0.5 s after a 429: all served with their own seeds in "
          f"{wall:.2f} s ({refused} 429s on the way); the Python API alone: {alone:.2f} s, ratio {wall / alone:.2f}")
    print(f"(d) 8 clients that left the line: their places freed in {freed:.2f} s, the running job untouched")
    print(f"(e) interrupt at 512x512: a step takes {step:.2f} s; an interrupt sent mid-step answered in "
          f"{latency:.2f} s ({latency / step:.2f} of a step)")
    print(f"\ndemo model, {args.steps} Euler a steps, {args.requests} requests, {args.threads} torch threads each side")
    print(f"{'size':>7} {'python API s':>13} {'HTTP s':>8} {'ratio':>6} {'HTTP 4 clients img/s':>21} "
          f"{'python img/s':>13}")
    for size, direct, http, concurrent, sequential in rows:
        print(f"{size:>4}px {direct:>13.3f} {http:>8.3f} {http / direct:>6.3f} {concurrent:>21.2f} {sequential:>13.2f}")


if __name__ == "__main__":
    main()
