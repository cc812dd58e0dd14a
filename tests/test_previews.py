"""The denoising strip and live previews: watching changes no pixel, the strip's frames close in on the image
and end with it, the previews' colour map fits the model's own VAE, and bad intervals are refused."""

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
from t2i.sampling.generate import generate, generate_iter

BASE = GenerationConfig(prompts=("a cat",), steps=6, seed=3, width=32, height=32, sampler="euler", guidance_scale=5)


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


@pytest.fixture(scope="module")
def demo():
    return load_model(ModelConfig(model="demo", device="cpu"))


# the samplers whose step gives the clean estimate, and those for which it is computed here
@pytest.mark.parametrize("sampler", ["euler", "ddim", "heun", "dpmpp-2m", "unipc", "pndm", "deis", "dpmpp-2s"])
def test_the_strip_changes_no_pixel_and_ends_with_the_image(tiny, sampler):
    plain = generate(tiny, dataclasses.replace(BASE, sampler=sampler), progress=False)[0]
    watched = generate(tiny, dataclasses.replace(BASE, sampler=sampler, strip=2), progress=False)[0]
    assert np.array_equal(pixels(watched), pixels(plain)) and plain.strip == ()
    assert watched.strip[-1] is watched.image
    calls = 6 if sampler != "heun" else 11  # Heun's second-order steps are counted as the pipeline counts them
    assert len(watched.strip) == calls // 2 + 1 and all(f.size == (32, 32) for f in watched.strip)


def test_a_batch_each_image_its_own_strip(tiny):
    results = generate(tiny, dataclasses.replace(BASE, prompts=("a cat", "a dog"), batch_size=2, strip=3),
                       progress=False)
    alone = generate(tiny, dataclasses.replace(BASE, prompts=("a dog",), seed=4, strip=3), progress=False)[0]
    assert len(results[1].strip) == 3
    assert all(np.abs(pixels(a) - pixels(b)).max() <= 1 for a, b in zip(results[1].strip, alone.strip))
    assert not np.array_equal(pixels(results[0].strip[0]), pixels(results[1].strip[0]))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp-2m"])
def test_on_demo_the_frames_close_in_on_the_image(demo, sampler):
    """Mean squared distance of each frame to the final image, for 6 seeds: it falls frame after frame."""
    for seed in range(6):
        result = generate(demo, GenerationConfig(prompts=("a red circle",), steps=20, seed=seed, sampler=sampler,
                                                 strip=4), progress=False)[0]
        final = pixels(result.image).astype(np.float64)
        distances = [float(((pixels(frame) - final) ** 2).mean()) for frame in result.strip]
        assert all(a >= b for a, b in zip(distances, distances[1:])), (seed, distances)
        assert distances[0] > 10 * max(distances[-2], 1.0) and distances[-1] == 0, (seed, distances)


def test_previews_arrive_every_n_steps_and_the_full_one_is_the_decoded_estimate(demo):
    seen, full = [], []
    config = GenerationConfig(prompts=("a blue square",), steps=20, seed=1, sampler="euler")
    result = next(generate_iter(demo, config, progress=False, on_preview=seen.append, preview_every=5))
    assert len(seen) == 4 and all(p.size == (32, 32) for p in seen)
    assert np.array_equal(pixels(result), pixels(generate(demo, config, progress=False)[0]))  # watching changes nothing
    next(generate_iter(demo, config, progress=False, on_preview=full.append, preview_every=5, preview_mode="full"))
    # Euler's last step lands on its clean estimate: the last full preview is the image itself
    assert np.abs(pixels(full[-1]) - pixels(result)).max() <= 1
    assert np.abs(pixels(full[0]).astype(float) - pixels(result)).mean() > np.abs(
        pixels(full[2]).astype(float) - pixels(result)).mean()


class LinearVAE(torch.nn.Module):
    """A VAE whose latents are exactly linear in colour (4x4 average pool, then a fixed 3->4 map): the
    colour fit must find the inverse map."""

    config = type("Config", (), {"scaling_factor": 0.5})()
    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        super().__init__()
        self.mix = torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.4, -0.3], [-0.2, 0.1, 0.6], [0.3, 0.3, 0.3]])

    def encode(self, images):
        pooled = torch.nn.functional.avg_pool2d(images, 4)
        latents = torch.einsum("cj,bjhw->bchw", self.mix, pooled) + 0.2
        return type("Encoded", (), {"latent_dist": type("Dist", (), {"mean": latents})()})()


def test_the_colour_fit_recovers_a_linear_vae():
    from t2i.sampling.previews import approximate_image, fit_latent_to_rgb

    vae = LinearVAE()
    fit = fit_latent_to_rgb(vae)
    for colour in ((220, 40, 40), (40, 70, 215), (255, 255, 255), (30, 30, 30)):
        image = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 32, 32) / 127.5 - 1
        latents = vae.encode(image).latent_dist.mean * vae.config.scaling_factor
        shown = pixels(approximate_image(latents, fit, (32, 32), vae.config.scaling_factor))
        assert np.abs(shown.mean(axis=(0, 1)) - np.array(colour)).max() <= 1, (colour, shown.mean(axis=(0, 1)))


@pytest.mark.parametrize("strip", [0, -2])
def test_a_strip_interval_below_1_is_refused(strip):
    with pytest.raises(InvalidInput) as error:
        dataclasses.replace(BASE, strip=strip)
    assert error.value.field == "strip" and "1 or more" in str(error.value)
    with pytest.raises(InvalidInput, match="does not combine with hires fix"):
        dataclasses.replace(BASE, strip=2, hires_scale=2.0)


def test_cli_writes_the_strip_beside_the_image(run_cli, tmp_path):
    code, out, err = run_cli("generate", "a cat", "--model", "tiny", "--steps", 4, "--seed", 2, "--strip", 2,
                             "--out", tmp_path)
    assert code == 0, err
    image_path, strip_path = out.split()
    assert strip_path.endswith("-strip.png") and strip_path.startswith(image_path[:-4])
    image, strip = Image.open(image_path), Image.open(strip_path)
    assert strip.size == (image.width * 3, image.height)
    assert np.array_equal(pixels(strip.crop((2 * image.width, 0, 3 * image.width, image.height))), pixels(image))
    code, _, err = run_cli("generate", "a cat", "--model", "tiny", "--strip", 0, "--out", tmp_path / "none")
    assert code == 2 and "--strip 0" in err and not (tmp_path / "none").exists()
