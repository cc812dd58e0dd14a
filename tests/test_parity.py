"""Same components, sampler, steps and seed: t2i must give plain diffusers' pixels, exactly."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import pixels, plain_pipeline
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
)
from diffusers.schedulers import AysSchedules
from PIL import Image, ImageFilter

from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.samplers import SAMPLERS


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


def generators(*seeds):
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def plain_pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in result.images])


def ours(paths) -> np.ndarray:
    return np.stack([pixels(path) for path in paths])


# the diffusers set-up each sampler must equal, written out here (not read from t2i's registry)
TXT2IMG_CASES = [
    ("dpmpp-2m-karras", None, DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 6),
    ("dpmpp-2m-sde", None, DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, 6),
    ("dpmpp-3m-sde", "automatic", DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "use_exponential_sigmas": True}, 6),
    ("dpmpp-2m-sde-heun", "beta", DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "use_beta_sigmas": True}, 6),
    # one Brownian tree an image, seeded with the image's seed: diffusers given the same seeds agrees
    ("dpmpp-sde", "karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True, "noise_sampler_seed": [42, 43]}, 4),
    ("euler", "sgm-uniform", EulerDiscreteScheduler, {"timestep_spacing": "trailing"}, 6),
    ("euler-a", None, EulerAncestralDiscreteScheduler, {}, 6),
    ("ddim", None, DDIMScheduler, {}, 6),
    ("pndm", None, PNDMScheduler, {"skip_prk_steps": True}, 6),
    ("ddpm", None, "DDPMScheduler", {}, 6),
    ("heun", "karras", "HeunDiscreteScheduler", {"use_karras_sigmas": True}, 4),
    ("lms", None, "LMSDiscreteScheduler", {}, 6),
    ("dpm2", "automatic", "KDPM2DiscreteScheduler", {"use_karras_sigmas": True}, 4),
    ("dpm2-a", "automatic", "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}, 4),
    ("dpmpp-2m", "exponential", DPMSolverMultistepScheduler, {"use_exponential_sigmas": True}, 6),
    ("dpmpp-2s", None, "DPMSolverSinglestepScheduler", {"lower_order_final": True}, 6),
    ("unipc", None, "UniPCMultistepScheduler", {}, 6),
    ("deis", "simple", "DEISMultistepScheduler", {"timestep_spacing": "trailing"}, 6),
    ("lcm", None, "LCMScheduler", {}, 4),
]


@pytest.mark.parametrize("sampler, schedule, scheduler_class, overrides, steps", TXT2IMG_CASES)
def test_txt2img_gives_plain_diffusers_pixels(tiny, tmp_path, sampler, schedule, scheduler_class, overrides, steps):
    import diffusers

    config = GenerationConfig(prompts=("a red circle", "a blue square"), negative_prompt="blurry", steps=steps,
                              seed=42, batch_size=2, sampler=sampler, schedule=schedule)
    paths = generate(tiny, config)
    assert paths[0].settings.sampler == sampler.removesuffix("-karras")

    plain = plain_pipeline()
    scheduler_class = getattr(diffusers, scheduler_class) if isinstance(scheduler_class, str) else scheduler_class
    plain.scheduler = scheduler_class.from_config(plain.scheduler.config, **overrides)
    expected = plain(["a red circle", "a blue square"], negative_prompt=["blurry"] * 2, num_inference_steps=steps,
                     guidance_scale=7.5, generator=generators(42, 43), width=32, height=32)
    assert np.array_equal(ours(paths), plain_pixels(expected))
    assert ours(paths).std() > 1  # not a blank image on both sides


@pytest.mark.parametrize("sampler, scheduler_class, arguments", [
    ("euler", EulerDiscreteScheduler, {"sigmas": AysSchedules["StableDiffusionSigmas"]}),
    ("dpmpp-2m", DPMSolverMultistepScheduler, {"timesteps": [999, 850, 736, 645, 545, 455, 343, 233, 125, 24]}),
])
def test_align_your_steps_gives_plain_diffusers_pixels_with_the_published_schedule(tiny, sampler, scheduler_class,
                                                                                   arguments):
    config = GenerationConfig(prompts=("a red circle",), steps=10, seed=9, sampler=sampler, schedule="ays")
    paths = generate(tiny, config)

    plain = plain_pipeline()
    plain.scheduler = scheduler_class.from_config(plain.scheduler.config)
    expected = plain("a red circle", guidance_scale=7.5, generator=generators(9), width=32, height=32, **arguments)
    assert np.array_equal(ours(paths), plain_pixels(expected))
    assert paths[0].settings.schedule == "align-your-steps"


def test_img2img_gives_plain_diffusers_pixels(tiny, tmp_path, init_image):
    """t2i runs A1111's step count, int(0.6 * 8) + 1 = 5 steps; diffusers runs int(8 * strength), so it
    is asked for 5.5 / 8 to run the same last 5 steps of the same 8-step schedule."""
    config = GenerationConfig(prompts=("a red circle",), steps=8, strength=0.6, seed=7, sampler="ddim",
                              init_image=str(init_image))
    paths = generate(tiny, config)

    plain = plain_pipeline(cls=StableDiffusionImg2ImgPipeline)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    expected = plain("a red circle", image=Image.open(init_image).convert("RGB"), strength=5.5 / 8,
                     num_inference_steps=8, generator=generators(7))
    assert np.array_equal(ours(paths), plain_pixels(expected))
    assert paths[0].settings.strength == 0.6


@pytest.mark.parametrize("in_channels", [4, 9])
def test_inpainting_gives_plain_diffusers_pixels(tmp_path, init_image, mask_image, in_channels, tiny_folder,
                                                 tiny_inpaint_folder):
    folder = tiny_inpaint_folder if in_channels == 9 else tiny_folder
    model = load_model(ModelConfig(model=str(folder), device="cpu"))
    assert model.is_inpainting_model == (in_channels == 9)
    config = GenerationConfig(prompts=("a red circle",), steps=6, seed=3, sampler="euler",
                              init_image=str(init_image), mask=str(mask_image), inpaint_prep="diffusers")
    paths = generate(model, config)

    from diffusers import EulerDiscreteScheduler

    plain = plain_pipeline(unet_in_channels=in_channels, cls=StableDiffusionInpaintPipeline)
    plain.scheduler = EulerDiscreteScheduler.from_config(plain.scheduler.config)
    init, mask = Image.open(init_image).convert("RGB"), Image.open(mask_image).convert("L")
    expected = plain("a red circle", image=init, mask_image=mask, strength=1.0, num_inference_steps=6, width=32,
                     height=32, generator=generators(3))
    assert np.array_equal(ours(paths), plain_pixels(expected))

    # A1111's inpainting (the default): the mask blurred by Mask blur, the pipeline run on it, and the result
    # laid over the original through that mask, so unmasked pixels stay exactly (masked content: original)
    a1111 = generate(model, dataclasses.replace(config, inpaint_prep="a1111", fill="original", mask_blur=4))
    blurred = mask.filter(ImageFilter.GaussianBlur(4))
    raw = plain("a red circle", image=init, mask_image=blurred, strength=1.0, num_inference_steps=6, width=32,
                height=32, generator=generators(3)).images[0]
    assert np.array_equal(ours(a1111)[0], np.asarray(Image.composite(raw, init, blurred), dtype=np.int16))
    assert np.array_equal(ours(a1111)[0][np.asarray(blurred) == 0], np.asarray(init)[np.asarray(blurred) == 0])


def test_the_parity_table_covers_every_sampler():
    assert {case[0].removesuffix("-karras") for case in TXT2IMG_CASES} == set(SAMPLERS)


@pytest.mark.parametrize("sampler", ["euler-a", "dpm2-a", "ddpm", "dpmpp-2m-sde", "dpmpp-3m-sde", "dpmpp-sde"])
def test_each_image_of_a_batch_is_remade_alone_from_its_seed(tiny, tmp_path, sampler):
    batch = generate(tiny, GenerationConfig(prompts=("a cat",), num_images=3, batch_size=3, seed=100, steps=5,
                                            sampler=sampler))
    alone = generate(tiny, GenerationConfig(prompts=("a cat",), seed=102, steps=5, sampler=sampler))
    assert [result.settings.seed for result in batch] == [100, 101, 102]
    # the noise is the image's own; a batch of 3 through the UNet may round one pixel a level apart
    # from a batch of 1 (CPU kernels pick other paths by batch size), never more
    difference = np.abs(pixels(batch[2]) - pixels(alone[0]))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.002
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 5


def test_clip_skip_2_conditions_on_the_penultimate_layer_for_both_prompts(tiny, tmp_path):
    config = GenerationConfig(prompts=("a red circle",), negative_prompt="blur", steps=5, seed=4, sampler="ddim",
                              clip_skip=2)
    path, = generate(tiny, config)

    plain = plain_pipeline()
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)

    def penultimate(text):
        ids = plain.tokenizer([text], padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = plain.text_encoder(ids, output_hidden_states=True).hidden_states
            return plain.text_encoder.final_layer_norm(hidden[-2])

    expected = plain(prompt_embeds=penultimate("a red circle"), negative_prompt_embeds=penultimate("blur"),
                     num_inference_steps=5, generator=generators(4), width=32, height=32)
    assert np.array_equal(ours([path]), plain_pixels(expected))
    last_layer, = generate(tiny, GenerationConfig(prompts=("a red circle",), negative_prompt="blur", steps=5,
                                                  seed=4, sampler="ddim"))
    assert not np.array_equal(pixels(last_layer), pixels(path))


def test_nan_fp16_decode_is_retried_in_fp32(caplog):
    from t2i.sampling.decoding import decode

    pipe = plain_pipeline()
    with torch.no_grad():
        pipe.vae.post_quant_conv.weight.mul_(3e4)  # fp16 overflows (max 65504), fp32 does not
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    pipe.vae.to(torch.float16)
    with torch.no_grad():
        raw = pipe.vae.decode(latents.half() / pipe.vae.config.scaling_factor).sample
        assert not torch.isfinite(raw).all(), "the setup must make fp16 fail"
        (image,), tiles = decode(pipe, latents.half(), None)
        assert pipe.vae.dtype == torch.float16, "the VAE goes back to its dtype after the retry"
        pipe.vae.to(torch.float32)
        (reference,), _ = decode(pipe, latents.half().float(), None)
    assert "decoding again in fp32" in caplog.text and tiles is None
    assert np.array_equal(np.asarray(image), np.asarray(reference))
