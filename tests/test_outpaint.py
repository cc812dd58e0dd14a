"""Outpainting: A1111's canvas and mask arithmetic, ComfyUI's feathered pad, the original kept byte for
byte, parity with the same inpainting done by hand in diffusers, the CLI and A1111's script API."""

import base64
import io

import numpy as np
import pytest
import requests
import torch
from conftest import pixels, plain_pipeline
from diffusers import DPMSolverMultistepScheduler, StableDiffusionInpaintPipeline
from PIL import Image, ImageFilter

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.img2img_steps import fill_masked
from t2i.sampling.outpaint import pad_canvas, parse_sides, poor_man_canvas


def _picture(width, height, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    array = np.stack([rows * 255 // height, cols * 255 // width, np.full_like(rows, 90)], -1)
    return Image.fromarray((array + rng.integers(0, 20, array.shape)).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("size, sides, canvas, box, keep", [
    # A1111: ceil((500 + 128 + 128) / 64) * 64 = 768; left = 128 * 268 // 256 = 134; right the rest
    ((500, 333), "all=128", (768, 640), (134, 153, 634, 486), (142, 161, 626, 478)),
    ((500, 333), "right=128", (640, 384), (0, 0, 500, 333), (0, 0, 492, 325)),  # the 64-rounding grows down too
    ((512, 512), "left=64,up=32", (576, 576), (64, 64, 576, 576), (72, 72, 576, 576)),  # 32 rounds up to 64
])
def test_poor_mans_canvas_and_mask_are_a1111s(size, sides, canvas, box, keep):
    made = poor_man_canvas(_picture(*size), parse_sides(sides), mask_blur=4)
    assert made.image.size == canvas and made.box == box
    mask = np.asarray(made.mask)
    x1, y1, x2, y2 = keep  # kept (black) inclusive rectangle: the original inset by 2 x blur where it grows
    assert mask[y1:y2 + 1, x1:x2 + 1].max() == 0
    assert mask.sum() == 255 * (mask.size - (min(x2, canvas[0] - 1) - x1 + 1) * (min(y2, canvas[1] - 1) - y1 + 1))
    assert np.array_equal(np.asarray(made.image)[box[1]:box[3], box[0]:box[2]], np.asarray(_picture(*size)))


def test_pad_canvas_is_comfyuis_feathered_pad():
    made = pad_canvas(_picture(40, 32), parse_sides("left=16,down=8"), feather=6)
    assert made.image.size == (56, 40) and made.box == (16, 0, 56, 32)
    mask = np.asarray(made.mask, dtype=np.float64) / 255
    assert (mask[:, :16] == 1).all() and (mask[32:] == 1).all()
    for d in range(8):  # distance d from the left edge of the original, far from the bottom one
        expected = ((6 - d) / 6) ** 2 if d < 6 else 0
        assert abs(mask[10, 16 + d] - expected) <= 0.5 / 255
    assert np.asarray(made.image)[0, 0].tolist() == [128, 128, 128]
    assert pad_canvas(_picture(41, 30), parse_sides("right=3"), feather=0).image.size == (48, 32)  # whole latents


@pytest.mark.parametrize("text, words", [
    ("left=abc", "left=abc: the pixels must be a whole number"), ("sideways=8", "must be SIDE=PIXELS pairs"),
    ("left=0", "grows no side"),
])
def test_bad_outpaint_sides_are_refused(text, words):
    with pytest.raises(InvalidInput, match=words):
        parse_sides(text)


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


def test_outpainting_keeps_the_original_and_equals_inpainting_by_hand(tiny):
    init = _picture(40, 32)
    ours, = generate(tiny, GenerationConfig(prompts=("a red circle",), steps=6, seed=5, init_image=init,
                                            outpaint="right=24", mask_blur=2), progress=False)
    assert ours.image.size == (64, 64) and ours.settings.mode == "inpaint"
    kept = pixels(ours)[:32 - 12, :40 - 12]  # outside the blurred seam: 2 x blur inset plus the blur's reach
    assert np.array_equal(kept, np.asarray(init, dtype=np.int16)[:20, :28]), "the original is byte-identical"

    # by hand: A1111's canvas, its mask blurred by 2 x blur, "fill", diffusers' inpainting, the overlay
    canvas = Image.new("RGB", (64, 64))
    canvas.paste(init, (0, 0))
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (0, 0, 40 - 4 + 1, 32 - 4 + 1))
    mask = mask.filter(ImageFilter.GaussianBlur(4))
    start = fill_masked(canvas, mask)
    plain = plain_pipeline(cls=StableDiffusionInpaintPipeline)
    plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config, use_karras_sigmas=True)
    made = plain("a red circle", image=start, mask_image=mask, strength=1.0, num_inference_steps=6, width=64,
                 height=64, generator=[torch.Generator().manual_seed(5)]).images[0]
    expected = Image.composite(made, canvas, mask)  # the overlay is of the canvas before the fill, as in A1111
    assert np.array_equal(pixels(ours), pixels(expected))


def test_the_record_remakes_an_outpainted_image(tiny, tmp_path):
    from t2i.formats.png import save_png
    from t2i.sampling.settings import configs_from_png

    init = tmp_path / "init.png"
    _picture(40, 32).save(init)
    made, = generate(tiny, GenerationConfig(prompts=("x",), steps=3, seed=2, init_image=str(init), outpaint="all=8",
                                            outpaint_mode="pad", fill="original"), progress=False)
    assert made.image.size == (56, 48)
    assert "Outpaint: all=8" in made.settings.infotext() or "Outpaint: \"all=8\"" in made.settings.infotext()
    _, config = configs_from_png(save_png(made.image, made.settings, tmp_path))
    again, = generate(tiny, config, progress=False)
    assert again.settings == made.settings and np.array_equal(pixels(again), pixels(made))


def test_the_cli_outpaints_and_refuses_bad_input_writing_nothing(run_cli, tmp_path):
    init = tmp_path / "init.png"
    _picture(40, 32).save(init)
    code, out, err = run_cli("generate", "a cat", "--model", "tiny", "--device", "cpu", "--steps", "3", "--seed", "1",
                             "--init-image", init, "--outpaint", "left=16,up=16", "--out", tmp_path / "o")
    assert code == 0, err
    assert Image.open(out.split()[0]).size == (64, 64)
    for flags, words in ((["--outpaint", "left=8"], "--outpaint left=8: needs --init-image"),
                         (["--init-image", init, "--outpaint", "left=x"], "--outpaint left=x: left=x: the pixels"),
                         (["--init-image", init, "--outpaint", "right=5000"], "each side must be at most 4096"),
                         (["--init-image", init, "--outpaint", "left=8", "--mask", init], "--mask: does not combine"),
                         (["--init-image", init, "--outpaint", "left=8", "--fill", "latent noise"],
                          "--fill latent noise: unknown masked content")):
        code, _, err = run_cli("generate", "a cat", "--model", "tiny", "--device", "cpu", *flags, "--out",
                               tmp_path / "bad")
        assert code == 2 and words in err, (flags, err)
    assert not (tmp_path / "bad").exists()


def test_a1111s_poor_mans_outpainting_script_runs_over_the_api(demo_server, run_cli, tmp_path):
    init = tmp_path / "init.png"
    _picture(32, 32).save(init)
    body = {"prompt": "a red circle", "seed": 3, "steps": 5, "sampler_name": "Euler", "denoising_strength": 0.9,
            "init_images": [base64.b64encode(init.read_bytes()).decode()], "script_name": "Poor man's outpainting",
            "script_args": [16, 2, 1, ["left", "right"]]}
    answer = requests.post(f"{demo_server.api}/img2img", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    code, out, err = run_cli("generate", "a red circle", "--model", "demo", "--seed", "3", "--steps", "5",
                             "--sampler", "euler", "--guidance-scale", "7", "--init-image", init, "--strength", "0.9",
                             "--outpaint", "left=16,right=16", "--mask-blur", "2", "--fill", "original", "--out",
                             tmp_path / "cli")
    assert code == 0, err
    expected = Image.open(out.split()[0])
    assert image.size == (64, 64) and np.array_equal(pixels(image), pixels(expected))
    listed = requests.get(f"{demo_server.api}/scripts", timeout=30).json()
    assert listed["img2img"] == ["poor man's outpainting", "outpainting mk2", "img2img alternative test"]
    for script, args, words in (("Poor man's outpainting", [16, 2, 1], "script_args"),
                                ("Poor man's outpainting", [16, 2, 2, ["left"]], "latent noise acts on latents"),
                                ("Outpainting mk2", [16, 8, ["left"], 1.0, 0.05], "Outpainting mk2 takes 6"),
                                ("Outpainting mk2", [None, 16, 8, ["left"], 9, 0.05], "script_args.noise_q 9"),
                                ("SD upscale", [], "not a script t2i runs")):
        bad = requests.post(f"{demo_server.api}/img2img", json={**body, "script_name": script, "script_args": args},
                            timeout=30)
        assert bad.status_code == 422 and words in bad.text, bad.text


def test_histogram_matching_gives_the_reference_distribution():
    from t2i.sampling.outpaint import match_histogram

    rng = np.random.default_rng(0)
    source, reference = rng.random(500), rng.normal(3, 2, 500)
    matched = match_histogram(source, reference)
    assert np.allclose(np.sort(matched), np.sort(reference))
    assert np.array_equal(np.argsort(matched), np.argsort(source)), "the order of the source is kept"


def test_matched_noise_keeps_the_kept_part_and_takes_its_colours():
    from t2i.sampling.outpaint import matched_noise

    image = np.asarray(_picture(48, 40), dtype=np.float64) / 255
    mask = np.zeros((40, 48))
    mask[:, 32:] = 1
    noised = matched_noise(image, mask)
    assert np.array_equal(noised[:, :32], image[:, :32]) and np.array_equal(noised, matched_noise(image, mask))
    for channel in range(3):  # the new part's values are drawn from the kept part's distribution
        kept, new = image[:, :32, channel].ravel(), noised[:, 32:, channel].ravel()
        assert np.allclose(np.quantile(new, [0.1, 0.5, 0.9]), np.quantile(kept, [0.1, 0.5, 0.9]), atol=0.02)
    assert noised[:, 32:].std() > 0.05, "noise, not a flat fill"


@pytest.mark.parametrize("side, size, keep", [
    ("left", (56, 32), (24, 0, 55, 31)), ("right", (56, 32), (0, 0, 31, 31)),
    ("up", (40, 48), (0, 24, 39, 47)), ("down", (40, 48), (0, 0, 39, 23)),
])
def test_mk2_grows_one_side_on_a_canvas_of_64s(side, size, keep):
    from t2i.sampling.outpaint import mk2_step

    step = mk2_step(_picture(40, 32), side, 16, 8, 1.0, 0.05)
    assert step.size == size and step.canvas.size == (64, 64)
    mask = np.asarray(step.mask)
    x1, y1, x2, y2 = keep  # the original inset by the blur on the side that grows
    assert mask[y1:y2 + 1, x1:x2 + 1].max() == 0 and (mask == 0).sum() == (x2 - x1 + 1) * (y2 - y1 + 1)


def test_mk2_outpainting_keeps_the_original_and_remakes(tiny, tmp_path):
    from t2i.formats.png import save_png
    from t2i.sampling.settings import configs_from_png

    init = tmp_path / "init.png"
    _picture(40, 32).save(init)
    made, = generate(tiny, GenerationConfig(prompts=("x",), steps=3, seed=4, init_image=str(init),
                                            outpaint="left=16,down=8", outpaint_mode="mk2", mask_blur=0),
                     progress=False)
    got = pixels(made)
    assert made.image.size == (56, 40) and np.array_equal(got[:32, 16:], np.asarray(_picture(40, 32), dtype=np.int16))
    assert "Outpaint mode: mk2" in made.settings.infotext() and "Fall-off exponent: 1.0" in made.settings.infotext()
    _, config = configs_from_png(save_png(made.image, made.settings, tmp_path))
    assert np.array_equal(pixels(generate(tiny, config, progress=False)[0]), got)


def test_a1111s_outpainting_mk2_script_equals_the_cli(demo_server, run_cli, tmp_path):
    init = tmp_path / "init.png"
    _picture(32, 32).save(init)
    body = {"prompt": "a red circle", "seed": 3, "steps": 4, "sampler_name": "Euler", "denoising_strength": 0.8,
            "init_images": [base64.b64encode(init.read_bytes()).decode()], "script_name": "Outpainting mk2",
            "script_args": ["<p>note</p>", 16, 2, ["right"], 1.5, 0.1]}
    answer = requests.post(f"{demo_server.api}/img2img", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    code, out, err = run_cli("generate", "a red circle", "--model", "demo", "--seed", "3", "--steps", "4",
                             "--sampler", "euler", "--guidance-scale", "7", "--init-image", init, "--strength", "0.8",
                             "--outpaint", "right=16", "--outpaint-mode", "mk2", "--mask-blur", "2",
                             "--outpaint-noise-q", "1.5", "--outpaint-color-variation", "0.1", "--out", tmp_path / "c")
    assert code == 0, err
    assert image.size == (48, 32) and np.array_equal(pixels(image), pixels(Image.open(out.split()[0])))


@pytest.mark.parametrize("mode", ["poor-man", "mk2"])
def test_outpainting_with_an_inpainting_unet_keeps_the_original(tiny_inpaint_folder, mode):
    model = load_model(ModelConfig(model=str(tiny_inpaint_folder), device="cpu"))
    assert model.is_inpainting_model
    init = _picture(40, 32)
    made, = generate(model, GenerationConfig(prompts=("x",), steps=3, seed=2, init_image=init, outpaint="right=24",
                                             outpaint_mode=mode, mask_blur=0), progress=False)
    assert made.image.size == ((64, 64) if mode == "poor-man" else (64, 32))
    assert np.array_equal(pixels(made)[:32, :40], np.asarray(init, dtype=np.int16))
    assert np.abs(pixels(made)[:32, 44:].astype(int)).mean() > 5, "the new border is painted"
