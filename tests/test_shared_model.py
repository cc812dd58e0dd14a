"""One loaded model serves many generations at once: none sees another's sampler or LoRA, and the
loaded model itself never changes (what a server with concurrent requests relies on)."""

import threading

import numpy as np
import pytest
import torch
from conftest import make_lora, pixels

from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return (make_lora(root / "cross", 1, ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]),
            make_lora(root / "self", 2, ["attn1.to_q", "attn1.to_v"]))


def state(module) -> dict:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def test_two_threads_with_other_samplers_and_loras_get_the_pixels_each_gets_alone(loras):
    model = load_model(ModelConfig(model="tiny", device="cpu"))
    before = {name: state(getattr(model.pipe, name)) for name in ("unet", "text_encoder", "vae")}
    jobs = [GenerationConfig(prompts=("a red circle",), steps=6, seed=3, sampler="euler-a", loras=(f"{loras[0]}:0.8",)),
            GenerationConfig(prompts=("a blue square",), steps=6, seed=3, sampler="dpmpp-2m-karras",
                             loras=(loras[1],))]
    alone = [pixels(generate(model, job, progress=False)[0]) for job in jobs]
    plain = pixels(generate(model, GenerationConfig(prompts=("a red circle",), steps=6, seed=3, sampler="euler-a"),
                            progress=False)[0])
    assert not np.array_equal(alone[0], plain), "the LoRA must change the image for this test to mean anything"

    for _ in range(3):  # a race shows up in some runs only
        lockstep = threading.Barrier(2, timeout=60)  # each denoising step of one waits for the other's
        results, errors = [None, None], []

        def run(index):
            try:
                results[index] = pixels(generate(model, jobs[index], on_step=lambda *_: lockstep.wait(),
                                                 progress=False)[0])
            except Exception as exc:  # reported below: a thread's exception would otherwise be lost
                errors.append(exc)
                lockstep.abort()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert np.array_equal(results[0], alone[0]) and np.array_equal(results[1], alone[1])
    for name, weights in before.items():
        after = state(getattr(model.pipe, name))
        assert after.keys() == weights.keys(), f"{name} gained or lost modules (an adapter left behind?)"
        assert all(torch.equal(after[k], weights[k]) for k in weights), f"{name} weights changed"
    assert type(model.pipe.scheduler).__name__ == "PNDMScheduler"
    assert not any("lora" in n for n, _ in model.pipe.unet.named_modules())

