"""A1111's hires fix and img2img step count: the arithmetic against hand-computed cases, the pixels
against the same chain done by hand with plain diffusers, the record, the CLI and the server."""

import dataclasses

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from conftest import pixels, plain_pipeline
from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from t2i.errors import InvalidInput
from t2i.formats.infotext import parse_infotext
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.hires import (
    HiresSize,
    denoising_strength,
    hires_size,
    img2img_steps,
    resolve_upscaler,
    second_pass_schedule,
)


@pytest.mark.parametrize("first, scale, resize, expected, final", [
    ((512, 512), 2, (0, 0), HiresSize(1024, 1024, 0, 0), (1024, 1024)),
    ((520, 512), 1.5, (0, 0), HiresSize(780, 768, 0, 0), (776, 768)),  # int(520 * 1.5); whole latents
    ((512, 768), 1, (1024, 0), HiresSize(1024, 1536, 0, 0), (1024, 1536)),  # the height follows
    ((512, 768), 1, (0, 1024), HiresSize(682, 1024, 0, 0), (680, 1024)),  # 1024 * 512 // 768
    ((512, 768), 1, (640, 640), HiresSize(640, 960, 0, 40), (640, 640)),  # taller than the target: cut rows
    ((768, 512), 1, (640, 640), HiresSize(960, 640, 40, 0), (640, 640)),  # wider: cut columns
    ((512, 512), 1, (1000, 600), HiresSize(1000, 1000, 0, 50), (1000, 600)),
])
def test_target_sizes_are_a1111s(first, scale, resize, expected, final):
    size = hires_size(*first, scale, *resize)
    assert size == expected and size.final == final


def test_second_pass_runs_exactly_the_hires_steps_where_the_naive_emulation_runs_fewer():
    short = 0
    for steps in range(1, 81):
        for denoise in np.arange(0.05, 1.0001, 0.05):
            total, strength = second_pass_schedule(steps, float(denoise))
            assert total == int(steps / min(denoise, 0.999))
            assert min(int(total * strength), total) == steps  # diffusers' img2img count
            short += int(int(steps / denoise) * denoise) < steps  # asking diffusers naively
    assert short > 500, "the naive emulation runs one step short for most pairs"
    assert second_pass_schedule(20, 0.7) == (28, 20.5 / 28)


@pytest.mark.parametrize("steps, strength, runs", [(20, 0.75, 16), (20, 0.6, 13), (8, 0.6, 5), (10, 1.0, 10),
                                                   (10, 0.01, 1), (25, 0.5, 13), (30, 0.999, 30)])
def test_img2img_runs_a1111s_step_count(steps, strength, runs):
    assert img2img_steps(steps, strength) == runs
    assert min(int(steps * denoising_strength(runs, steps)), steps) == runs


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


def test_img2img_and_the_hires_pass_run_the_counted_steps(tiny, init_image):
    seen = []
    generate(tiny, GenerationConfig(prompts=("x",), steps=20, strength=0.6, seed=1, init_image=str(init_image)),
             on_step=lambda i, n: seen.append(n), progress=False)
    assert len(seen) == 13 and set(seen) == {13}
    seen.clear()
    generate(tiny, GenerationConfig(prompts=("x",), steps=6, seed=1, width=32, height=32, hires_scale=2,
                                    hires_steps=5, hires_denoise=0.45), on_step=lambda i, n: seen.append(n),
             progress=False)
    assert seen == [6] * 6 + [5] * 5


def _by_hand(upscaler_step, steps=6, hires_steps=5, denoise=0.6, seed=3):
    """The hires chain done with plain diffusers: txt2img latents, upscale, img2img from a fresh
    generator of the same seed, the last `hires_steps` of int(hires_steps / denoise) steps, decode."""
    plain = plain_pipeline()
    plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config, use_karras_sigmas=True)
    latents = plain("a red circle", num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                    width=32, height=32, output_type="latent").images
    upscaled = upscaler_step(plain, latents)
    img2img = StableDiffusionImg2ImgPipeline(**plain.components)
    total = int(hires_steps / denoise)
    return img2img("a red circle", image=upscaled, num_inference_steps=total, strength=(hires_steps + 0.5) / total,
                   generator=[torch.Generator().manual_seed(seed)]).images[0]


def _latent(plain, latents):
    return F.interpolate(latents, size=(32, 32), mode="bicubic", antialias=True)


def _lanczos(plain, latents):
    with torch.no_grad():
        image = plain.vae.decode(latents / plain.vae.config.scaling_factor).sample
        small = plain.image_processor.postprocess(image, output_type="pil")[0]
        pixels_ = plain.image_processor.preprocess(small.resize((64, 64), Image.Resampling.LANCZOS))
        return plain.vae.encode(pixels_).latent_dist.mode() * plain.vae.config.scaling_factor


@pytest.mark.parametrize("upscaler, by_hand", [("Latent (bicubic antialiased)", _latent), ("Lanczos", _lanczos)])
def test_hires_fix_equals_the_chain_done_by_hand_in_diffusers(tiny, upscaler, by_hand):
    ours, = generate(tiny, GenerationConfig(prompts=("a red circle",), steps=6, seed=3, width=32, height=32,
                                            hires_scale=2, hires_upscaler=upscaler, hires_steps=5, hires_denoise=0.6),
                     progress=False)
    expected = _by_hand(by_hand)
    assert ours.image.size == (64, 64)
    assert np.array_equal(pixels(ours), np.asarray(expected, dtype=np.int16))
    first, = generate(tiny, GenerationConfig(prompts=("a red circle",), steps=6, seed=3, width=64, height=64),
                      progress=False)
    assert not np.array_equal(pixels(first), pixels(ours)), "not just a bigger first pass"


def test_hires_settings_are_written_as_a1111_writes_them_and_remake_the_image(tiny, tmp_path):
    from t2i.formats.png import save_png
    from t2i.sampling.settings import configs_from_png

    config = GenerationConfig(prompts=("a cat",), negative_prompt="blur", steps=4, seed=2, width=32, height=32,
                              sampler="Euler a", hires_resize_x=48, hires_resize_y=40, hires_upscaler="nearest",
                              hires_steps=3, hires_denoise=0.5, hires_sampler="ddim", hires_prompt="a cat, sharp")
    made, = generate(tiny, config, progress=False)
    fields = parse_infotext(made.settings.infotext())
    assert (fields["Size"], fields["Denoising strength"], fields["Hires resize"], fields["Hires steps"]) == (
        "32x32", "0.5", "48x40", "3")
    assert (fields["Hires upscaler"], fields["Hires sampler"], fields["Hires prompt"]) == ("Nearest", "DDIM",
                                                                                           "a cat, sharp")
    assert "Hires upscale" not in fields and "Hires negative prompt" not in fields
    assert made.image.size == (48, 40)
    _, remade = configs_from_png(save_png(made.image, made.settings, tmp_path))
    again, = generate(tiny, remade, progress=False)
    assert again.settings == made.settings and np.array_equal(pixels(again), pixels(made))


@pytest.mark.parametrize("fields, words", [
    ({"hires_scale": 0.5}, "hires_scale 0.5: must be a number from 1 to 8"),
    ({"hires_scale": float("nan")}, "hires_scale nan: must be a number from 1 to 8"),
    ({"hires_scale": 2, "hires_denoise": 0}, "hires_denoise 0: must be in (0, 1]"),
    ({"hires_scale": 2, "hires_upscaler": "R-ESRGAN 4x+"}, "model upscalers (ESRGAN and the like) are not supported"),
    ({"hires_scale": 2, "hires_upscaler": "bilinear"}, "hires_upscaler bilinear: unknown upscaler; choose one of"),
    ({"hires_steps": 5}, "hires_steps: needs hires_scale or hires_resize"),
    ({"hires_scale": 4, "width": 2048, "height": 512}, "gives a 8192x2048 image from 2048x512; each side must be"),
    ({"hires_scale": 2, "init_image": "x.png"}, "hires fix is for txt2img"),
    ({"hires_scale": 2, "hires_prompt": "a <lora:x:1> cat"}, "LoRA tags work in the prompt only"),
])
def test_bad_hires_settings_are_refused_before_any_work(fields, words):
    with pytest.raises(InvalidInput) as error:
        GenerationConfig(prompts=("x",), **fields)
    assert words in str(error.value)


def test_upscaler_names_are_a1111s_in_any_case():
    assert resolve_upscaler("latent (Bicubic Antialiased)") == "Latent (bicubic antialiased)"
    assert resolve_upscaler("LANCZOS") == "Lanczos"


def test_the_cli_takes_hires_flags_and_refuses_bad_ones_writing_nothing(run_cli, tmp_path):
    code, out, err = run_cli("generate", "a cat", "--model", "tiny", "--device", "cpu", "--steps", "3", "--seed", "1",
                             "--width", "32", "--height", "32", "--hires-resize", "48x0", "--out", tmp_path / "o")
    assert code == 0, err
    assert Image.open(out.split()[0]).size == (48, 48)
    for flags, words in ((["--hires-resize", "48"], "--hires-resize 48: must be WIDTHxHEIGHT"),
                         (["--hires-scale", "2", "--hires-denoise", "1.5"], "--hires-denoise 1.5: must be in (0, 1]"),
                         (["--hires-steps", "4"], "--hires-steps: needs --hires-scale or --hires-resize")):
        code, _, err = run_cli("generate", "a cat", "--model", "tiny", *flags, "--out", tmp_path / "bad")
        assert code == 2 and words in err, err
    assert not (tmp_path / "bad").exists()


SMALL = {"width": 32, "height": 32}


def test_the_server_runs_a1111s_hires_fields_as_t2i_generate_does(demo_server, run_cli, tmp_path):
    body = {"prompt": "a red circle", "seed": 4, "steps": 6, "sampler_name": "Euler", "enable_hr": True,
            "hr_scale": 1.5, "hr_upscaler": "Latent (nearest-exact)", "hr_second_pass_steps": 4,
            "denoising_strength": 0.55, **SMALL}
    answer = requests.post(f"{demo_server.api}/txt2img", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    import base64
    import io

    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    code, out, err = run_cli("generate", "a red circle", "--model", "demo", "--seed", "4", "--steps", "6", "--sampler",
                             "euler", "--width", "32", "--height", "32", "--hires-scale", "1.5", "--hires-upscaler",
                             "Latent (nearest-exact)", "--hires-steps", "4", "--hires-denoise", "0.55",
                             "--guidance-scale", "7", "--out",
                             tmp_path / "cli")
    assert code == 0, err
    expected = Image.open(out.split()[0])
    assert image.size == (48, 48) and np.array_equal(pixels(image), pixels(expected))
    assert image.info["parameters"] == expected.info["parameters"]
    modes = requests.get(f"{demo_server.api}/latent-upscale-modes", timeout=30).json()
    assert [m["name"] for m in modes][:2] == ["Latent", "Latent (antialiased)"] and len(modes) == 6
    assert [u["name"] for u in requests.get(f"{demo_server.api}/upscalers", timeout=30).json()] == [
        "None", "Lanczos", "Nearest"]
    bad = requests.post(f"{demo_server.api}/txt2img", json={**body, "hr_upscaler": "R-ESRGAN 4x+"}, timeout=30)
    assert bad.status_code == 422 and "hr_upscaler" in bad.text


def _text_parts():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from t2i.models import SD1_CONFIG_DIR

    tokenizer = CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer")
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                           projection_dim=32, bos_token_id=tokenizer.bos_token_id,
                                           eos_token_id=tokenizer.eos_token_id))
    return encoder, tokenizer


@pytest.fixture(scope="module")
def upscaler_folders(tmp_path_factory):
    """diffusers' SD x4 upscaler and latent (x2) upscaler pipelines on tiny random configs (diffusers'
    own test shapes), saved as folders: their real weights cannot be had here, so this tests wiring."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionLatentUpscalePipeline,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    root = tmp_path_factory.mktemp("upscalers")
    encoder, tokenizer = _text_parts()
    torch.manual_seed(0)
    x4 = StableDiffusionUpscalePipeline(
        unet=UNet2DConditionModel(block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=32, in_channels=7,
                                  out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                    "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                  cross_attention_dim=32, attention_head_dim=8, use_linear_projection=True,
                                  num_class_embeds=100),
        vae=AutoencoderKL(block_out_channels=[32, 32, 64], down_block_types=["DownEncoderBlock2D"] * 3,
                          up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4),
        text_encoder=encoder, tokenizer=tokenizer, low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350)
    x4.save_pretrained(root / "x4")
    torch.manual_seed(0)
    latent = StableDiffusionLatentUpscalePipeline(
        unet=UNet2DConditionModel(act_fn="gelu", attention_head_dim=8, norm_num_groups=None,
                                  block_out_channels=[32, 32, 64, 64], time_cond_proj_dim=160, conv_in_kernel=1,
                                  conv_out_kernel=1, cross_attention_dim=32, in_channels=8, mid_block_type=None,
                                  only_cross_attention=False, out_channels=5, resnet_time_scale_shift="scale_shift",
                                  time_embedding_type="fourier", timestep_post_act="gelu",
                                  down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D",
                                                    "KCrossAttnDownBlock2D"),
                                  up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D",
                                                  "KUpBlock2D")),
        vae=AutoencoderKL(block_out_channels=[32, 32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 4,
                          up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4),
        text_encoder=encoder, tokenizer=tokenizer, scheduler=EulerDiscreteScheduler(prediction_type="sample"))
    latent.save_pretrained(root / "latent-x2")
    return root


# the latent upscaler's 8x VAE and 3 downsamples need 128 px to keep a latent pixel at the bottom
@pytest.mark.parametrize("name, side", [("x4", 32), pytest.param("latent-x2", 128, marks=pytest.mark.slow)])
def test_an_upscaler_pipeline_folder_upscales_before_the_second_pass(tiny, upscaler_folders, name, side, tmp_path):
    from t2i.formats.png import save_png
    from t2i.sampling.settings import configs_from_png

    folder = str(upscaler_folders / name)
    config = GenerationConfig(prompts=("a cat",), steps=1, seed=6, width=side, height=side, hires_scale=2,
                              hires_upscaler=folder, hires_denoise=0.5)
    made, = generate(tiny, config, progress=False)
    lanczos, = generate(tiny, dataclasses.replace(config, hires_upscaler="Lanczos"), progress=False)
    assert made.image.size == (2 * side, 2 * side) and not np.array_equal(pixels(made), pixels(lanczos))
    assert made.settings.hires_upscaler == folder and folder in tiny.upscalers  # loaded once, kept
    _, remade = configs_from_png(save_png(made.image, made.settings, tmp_path))
    assert np.array_equal(pixels(generate(tiny, remade, progress=False)[0]), pixels(made))


def test_folders_without_an_upscaler_pipeline_and_upscaler_files_are_refused(tmp_path, tiny_folder):
    with pytest.raises(InvalidInput, match="holds no upscaler pipeline t2i runs .StableDiffusionPipeline."):
        resolve_upscaler(str(tiny_folder))
    with pytest.raises(InvalidInput, match="model upscaler files .ESRGAN and the like. are not supported"):
        resolve_upscaler(str(tmp_path / "4x-UltraSharp.pth"))
