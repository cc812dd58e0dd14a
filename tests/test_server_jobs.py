"""Jobs as clients see them: each client's own progress and place in line by its task id, an interrupt
that stops only the job it names (and is seen inside a denoising step), the schedules each sampler runs,
token counts, and a port already in use."""

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from t2i.server.jobs import Job, Stopped, run_watched, watch_blocks

SMALL = {"width": 32, "height": 32}


def progress_of(server, task):
    return requests.post(f"{server.url}/internal/progress", json={"id_task": task}, timeout=10).json()


def wait_until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def post_in_background(server, body, answers, key):
    def post():
        answers[key] = requests.post(f"{server.api}/txt2img", json=body, timeout=300)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_each_client_sees_its_own_job_and_interrupts_only_it(demo_server):
    answers = {}
    long = {"prompt": "a long blue square", "steps": 150, "n_iter": 8, "seed": 1, "force_task_id": "task(long)", **SMALL,
            "width": 96, "height": 96}
    short = {"prompt": "a short red circle", "steps": 3, "seed": 2, "force_task_id": "task(short)", **SMALL}
    waiting = {"prompt": "a cancelled circle", "steps": 3, "seed": 3, "force_task_id": "task(cancelled)", **SMALL}
    threads = [post_in_background(demo_server, long, answers, "long")]
    try:
        wait_until(lambda: progress_of(demo_server, "task(long)")["active"])
        threads.append(post_in_background(demo_server, short, answers, "short"))
        wait_until(lambda: progress_of(demo_server, "task(short)")["queued"])
        threads.append(post_in_background(demo_server, waiting, answers, "cancelled"))
        wait_until(lambda: progress_of(demo_server, "task(cancelled)")["queued"])
        mine = progress_of(demo_server, "task(cancelled)")
        assert mine["queue_position"] == 2 and mine["textinfo"] == "in line: 2 job(s) ahead"
        wait_until(lambda: progress_of(demo_server, "task(long)")["textinfo"].startswith("step "))
        running = progress_of(demo_server, "task(long)")
        assert running["textinfo"].endswith("batch 1/8") and 0 < running["progress"] < 1
        listed = requests.get(f"{demo_server.url}/internal/queue", timeout=10).json()
        assert [(j["id_task"], j["state"]) for j in listed] == [
            ("task(long)", "running"), ("task(short)", "queued"), ("task(cancelled)", "queued")]

        # cancelling a waiting job answers it at once and leaves the others as they were
        requests.post(f"{demo_server.api}/interrupt", json={"id_task": "task(cancelled)"}, timeout=10)
        threads[2].join(30)
        cancelled = answers["cancelled"].json()
        assert cancelled["images"] == [] and json.loads(cancelled["info"])["interrupted"] is True
        assert progress_of(demo_server, "task(long)")["active"] and progress_of(demo_server, "task(short)")["queued"]
        assert progress_of(demo_server, "task(cancelled)") == {**progress_of(demo_server, "task(cancelled)"),
                                                               "completed": True, "textinfo": "interrupted"}
        # a client's interrupt by id stops its own running job only; the next in line then runs to the end
        requests.post(f"{demo_server.api}/interrupt", json={"id_task": "task(long)"}, timeout=10)
    finally:
        requests.post(f"{demo_server.api}/interrupt", json={"id_task": "task(long)"}, timeout=10)
        for thread in threads:
            thread.join(120)
    assert json.loads(answers["long"].json()["info"])["interrupted"] is True
    short_info = json.loads(answers["short"].json()["info"])
    assert short_info["interrupted"] is False and len(answers["short"].json()["images"]) == 1
    assert progress_of(demo_server, "task(short)")["completed"] is True
    assert progress_of(demo_server, "task(never-sent)")["textinfo"] == "not known to this server (yet)"


def test_a1111s_plain_interrupt_still_stops_whatever_runs(demo_server):
    answers = {}
    thread = post_in_background(demo_server, {"prompt": "x", "steps": 150, "n_iter": 8, "seed": 1, "width": 96, "height": 96,
                                              "force_task_id": "task(plain)"}, answers, "job")
    try:
        wait_until(lambda: progress_of(demo_server, "task(plain)")["active"])
        assert requests.post(f"{demo_server.api}/interrupt", timeout=10).status_code == 200  # no body, as A1111
    finally:
        thread.join(60)
    assert json.loads(answers["job"].json()["info"])["interrupted"] is True


def test_an_interrupt_is_seen_inside_a_denoising_step():
    """At 768x768 a CPU step takes minutes: the flag is checked before every ResNet and transformer block,
    so an interrupt raised mid-step stops the step there, before its end-of-step callback."""
    from t2i import GenerationConfig, load_model
    from t2i.models.config import ModelConfig
    from t2i.sampling.generate import generate

    model = load_model(ModelConfig(model="tiny", device="cpu"))
    watch_blocks(model.pipe.unet)
    blocks = [m for m in model.pipe.unet.modules() if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
    job, calls, steps_ended = Job("txt2img"), [], []

    def count(_module, _inputs):  # registered after t2i's check: the 5th block of step 1 raises the flag
        calls.append(1)
        if len(calls) == 5:
            job.interrupted = True

    handles = [b.register_forward_pre_hook(count) for b in blocks]
    try:
        with pytest.raises(Stopped):
            run_watched(job, lambda job: generate(model, GenerationConfig(prompts=("x",), steps=4, seed=0),
                                                  on_step=lambda i, n: steps_ended.append(i), progress=False))
    finally:
        for handle in handles:
            handle.remove()
    assert steps_ended == [] and len(calls) == 5, "stopped at the next block, inside the first step"
    # outside a server job the hooks do nothing: the same model generates on
    images = generate(model, GenerationConfig(prompts=("x",), steps=2, seed=0), progress=False)
    assert len(images) == 1


def test_samplers_list_the_schedules_each_runs(demo_server):
    from t2i.errors import InvalidInput
    from t2i.sampling.samplers import resolve_sampler

    samplers = requests.get(f"{demo_server.api}/samplers", timeout=10).json()
    schedulers = {s["name"] for s in requests.get(f"{demo_server.api}/schedulers", timeout=10).json()}
    refused = 0
    for sampler in samplers:
        assert set(sampler["schedulers"]) <= schedulers and "automatic" in sampler["schedulers"]
        for schedule in schedulers:
            try:
                resolve_sampler(sampler["name"], schedule)
                runs = True
            except InvalidInput:
                runs = False
            assert runs == (schedule in sampler["schedulers"]), (sampler["name"], schedule)
            refused += not runs
    assert refused > 0
    answer = requests.post(f"{demo_server.api}/txt2img", json={"sampler_name": "Euler a", "scheduler": "karras",
                                                                "steps": 2, **SMALL}, timeout=60)
    assert answer.status_code == 422 and "SGM Uniform" in answer.json()["detail"]  # the page's names
    assert "sgm-uniform" not in answer.json()["detail"]


@pytest.mark.parametrize("prompt, expected", [
    ("a red circle", {"tokens": 3, "chunks": 1, "limit": 75}),
    ("a red circle <lora:cross:0.5>", {"tokens": 3, "chunks": 1, "limit": 75}),
    ("(a red:1.2) circle BREAK blue", {"tokens": 4, "chunks": 2, "limit": 150}),
    (" ".join(["red"] * 80), {"tokens": 80, "chunks": 2, "limit": 150}),
    ("", {"tokens": 0, "chunks": 1, "limit": 75}),
])
def test_token_counts(demo_server, prompt, expected):
    answer = requests.post(f"{demo_server.url}/internal/token-count", json={"prompt": prompt}, timeout=10)
    assert answer.json() == expected


def test_a_port_in_use_is_said_before_anything_loads(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        result = subprocess.run([sys.executable, "-m", "t2i", "serve", "--model", "tiny", "--port", str(port)],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        holder.close()
    errors = [line for line in result.stderr.splitlines() if line.startswith("t2i: error:")]
    assert result.returncode == 2 and len(errors) == 1 and f"--port {port}: cannot be listened on" in errors[0]
    assert "serving" not in result.stderr
