"""DDIM inversion: exact for a noise model that ignores the sample, closer with more steps on random weights,
a noise file that regenerates through `t2i generate --from-noise`, and one-line refusals."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import pixels
from PIL import Image

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.inversion import ddim_invert, invert, load_noise, save_noise
from t2i.sampling.samplers import build_scheduler


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


class SampleBlindNoise(torch.nn.Module):
    """A noise model whose prediction depends on the timestep and the text, never on the sample."""

    def forward(self, sample, timestep, context):
        level = float(timestep) / 1000
        noise = torch.sin(torch.arange(sample[0].numel(), dtype=torch.float32) * 0.37 + level).view(sample.shape[1:])
        return type("Out", (), {"sample": (noise * (1 + context.mean()))[None].expand_as(sample)})()


@torch.no_grad()
def ddim_sample(unet, scheduler_config, noise, text, steps):
    scheduler = build_scheduler("ddim", "normal", scheduler_config)
    scheduler.set_timesteps(steps)
    latents = noise
    for timestep in scheduler.timesteps:
        latents = scheduler.step(unet(latents, timestep, text).sample, timestep, latents).prev_sample
    return latents


@pytest.mark.parametrize("steps", [5, 50])
def test_exact_round_trip_for_a_noise_model_that_ignores_the_sample(tiny, steps):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    unet = SampleBlindNoise()
    noise = ddim_invert(unet, tiny.scheduler_config, latents, text, steps)
    assert (noise - latents).abs().max() > 1  # it did go somewhere
    back = ddim_sample(unet, tiny.scheduler_config, noise, text, steps)
    assert (back - latents).abs().max() < 1e-5


def test_on_random_weights_the_round_trip_error_falls_with_steps(tiny):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text, _ = tiny.pipe.encode_prompt("a cat", "cpu", 1, False)
    errors = []
    for steps in (10, 50, 200):
        noise = ddim_invert(tiny.pipe.unet, tiny.scheduler_config, latents, text, steps)
        back = ddim_sample(tiny.pipe.unet, tiny.scheduler_config, noise, text, steps)
        errors.append(float((back - latents).norm() / latents.norm()))
    assert errors[0] > errors[1] > errors[2], errors


def test_the_noise_file_regenerates_through_from_noise(tiny, init_image, tmp_path):
    inverted = invert(tiny, Image.open(init_image), "a cat", 20)
    assert inverted.noise.shape == (1, 4, 16, 16) and inverted.settings["width"] == 32
    save_noise(inverted, tmp_path / "noise.safetensors")
    loaded = load_noise(str(tmp_path / "noise.safetensors"))
    assert torch.equal(loaded.noise, inverted.noise) and loaded.settings == inverted.settings
    config = GenerationConfig(prompts=("a cat",), steps=20, sampler="ddim", schedule="normal", width=32, height=32,
                              guidance_scale=1.0, from_noise=str(tmp_path / "noise.safetensors"), seed=5)
    result = generate(tiny, config, progress=False)[0]
    again = generate(tiny, dataclasses.replace(config, seed=9), progress=False)[0]
    assert np.array_equal(pixels(result), pixels(again))  # the noise is the file's, not the seed's
    assert result.settings.from_noise == str(tmp_path / "noise.safetensors")
    assert "Inverted noise: noise.safetensors" in result.settings.infotext()
    plain = generate(tiny, dataclasses.replace(config, from_noise=None), progress=False)[0]
    assert not np.array_equal(pixels(result), pixels(plain))


@pytest.mark.parametrize("changes, words", [
    ({"steps": 10}, "was inverted in 20 steps; this generation has 10"),
    ({"width": 48}, "is noise for 32x32 images; this generation is 48x32"),
    ({"sampler": "euler"}, "needs DDIM on the Normal schedule, not euler"),
])
def test_a_noise_file_for_another_generation_is_refused(tiny, init_image, tmp_path, changes, words):
    save_noise(invert(tiny, Image.open(init_image), "a cat", 20), tmp_path / "noise.safetensors")
    config = GenerationConfig(prompts=("a cat",), steps=20, sampler="ddim", schedule="normal", width=32, height=32,
                              from_noise=str(tmp_path / "noise.safetensors"))
    with pytest.raises(InvalidInput) as error:
        generate(tiny, dataclasses.replace(config, **changes), progress=False)
    assert error.value.field == "from_noise" and words in str(error.value)


def test_cli_invert_then_generate_from_the_noise(run_cli, init_image, tmp_path):
    code, out, err = run_cli("invert", init_image, "--prompt", "a cat", "--steps", 10, "--model", "tiny",
                             "--out", tmp_path)
    assert code == 0, err
    noise_path, reconstruction = out.split()
    assert noise_path.endswith("init-noise.safetensors") and Image.open(reconstruction).size == (32, 32)
    code, out, err = run_cli("generate", "a cat", "--from-noise", noise_path, "--out", tmp_path / "again")
    assert code == 0, err
    assert np.array_equal(pixels(out.strip()), pixels(reconstruction))  # the file's settings were taken
    (tmp_path / "junk.safetensors").write_bytes(b"nothing")
    code, _, err = run_cli("generate", "a cat", "--model", "tiny", "--from-noise", tmp_path / "junk.safetensors",
                           "--out", tmp_path / "none")
    assert code == 2 and "not a noise file" in err and not (tmp_path / "none").exists()
    code, _, err = run_cli("invert", tmp_path / "junk.safetensors", "--model", "tiny", "--out", tmp_path / "none")
    assert code == 2 and "Traceback" not in err and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_on_demo_inversion_keeps_the_image_and_a_colour_edit_changes_only_the_colour(tmp_path):
    """Held-out renders (README: N=24, 50 steps: colour and shape 24/24, centre 0.04 px, pixel error 3.3; the edit
    red -> blue at CFG 1: 24/24 blue, shapes kept, centre 0.40 px)."""
    import random

    from t2i.shapes.inversion_proofs import inversion_agreement
    from t2i.shapes.world import Shape, random_shape

    demo = load_model(ModelConfig(model="demo", device="cpu"))
    rng = random.Random(4242)
    specs = [random_shape(rng) for _ in range(12)]
    kept = inversion_agreement(demo, specs, tmp_path, steps=30)
    assert kept["colour"].value == 1 and kept["shape"].value == 1, kept
    assert kept["centroid_px"].high < 1 and kept["pixel_error"].high < 8, kept
    reds = [Shape("red", s.shape, s.size, s.x, s.y) for s in specs]
    edited = inversion_agreement(demo, reds, tmp_path, steps=30, edit_to="blue")
    assert edited["colour"].value >= 0.8 and edited["shape"].value >= 0.8, edited
    assert edited["centroid_px"].high < 2, edited
