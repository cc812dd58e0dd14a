"""One image's settings have one typed home (t2i.sampling.settings.ImageSettings): generation returns
them, the PNG carries them, and reading them back gives the configs that re-make the image.

The property: for settings of every kind, settings -> PNG -> settings is the identity; for images
really generated, record -> PNG -> configs -> generate -> record is the identity and the pixels repeat.
"""

import dataclasses

import numpy as np
import pytest
from conftest import make_lora, pixels
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from t2i.errors import InvalidInput
from t2i.formats.png import read_png_text, save_png
from t2i.models.config import ModelConfig
from t2i.sampling.config import GenerationConfig
from t2i.sampling.record_entries import EmbeddingUse, LoraUse
from t2i.sampling.samplers import SAMPLERS
from t2i.sampling.settings import ImageSettings, configs_from_png, settings_from_png

PAIRS = [(name, schedule) for name, spec in SAMPLERS.items() for schedule in spec.schedules]
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
maybe_path = st.none() | st.text("abc/ .", min_size=1, max_size=12)
loras = st.builds(LoraUse, name=text, path=text, scale=st.floats(-4, 4, allow_nan=False), hash=st.text("0123abc"))
embeddings = st.builds(EmbeddingUse, name=text, path=text, hash=st.text("0123abc"))


@st.composite
def image_settings(draw):
    sampler, schedule = draw(st.sampled_from(PAIRS))
    init = draw(maybe_path)
    return ImageSettings(
        prompt=draw(text), negative_prompt=draw(text), seed=draw(st.integers(0, 2**63 - 1)),
        width=draw(st.integers(1, 512)) * 8, height=draw(st.integers(1, 512)) * 8, steps=draw(st.integers(1, 150)),
        guidance_scale=draw(st.floats(0, 30, allow_nan=False)), sampler=sampler, schedule=schedule,
        model=draw(text), clip_skip=draw(st.none() | st.integers(1, 12)),
        strength=draw(st.floats(0.01, 1)) if init else None, init_image=init,
        mask=draw(maybe_path) if init else None, loras=tuple(draw(st.lists(loras, max_size=3))),
        emphasis=draw(st.sampled_from(("original", "no-norm", "none"))), embeddings_dir=draw(maybe_path),
        embeddings=tuple(draw(st.lists(embeddings, max_size=2))), cache_interval=draw(st.integers(1, 5)),
        vae_tile_size=draw(st.none() | st.integers(4, 128).map(lambda n: n * 8)), vae=draw(maybe_path),
        dtype=draw(st.sampled_from(("fp32", "fp16", "bf16"))), device=draw(st.sampled_from(("cpu", "cuda"))),
        model_name=draw(text), model_hash=draw(st.none() | st.text("0123456789abcdef", min_size=10, max_size=10)))


@hypothesis_settings(max_examples=150, deadline=None)
@given(image_settings())
def test_settings_survive_the_png_unchanged(tmp_path_factory, recorded):
    png = save_png(Image.new("RGB", (8, 8)), recorded, tmp_path_factory.mktemp("png"))
    assert settings_from_png(png) == recorded
    text, record = read_png_text(png)
    assert text == recorded.infotext() and record["mode"] == recorded.mode


@pytest.fixture(scope="module")
def tiny_model():
    from t2i.models.loading import load_model

    return load_model(ModelConfig(model="tiny", device="cpu"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files the generated kinds read: an init image, a mask, a LoRA folder and an embeddings folder."""
    import torch

    root = tmp_path_factory.mktemp("inputs")
    rows, cols = np.mgrid[0:32, 0:32]
    Image.fromarray(np.stack([rows * 8, cols * 8, np.full_like(rows, 90)], -1).astype(np.uint8)).save(
        root / "init.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[4:20, 4:20] = 255
    Image.fromarray(mask).save(root / "mask.png")
    make_lora(root / "loras" / "cross", 1, ["attn2.to_q", "attn2.to_k"])
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
              root / "embeddings" / "shapestyle.safetensors")
    return root


KINDS = {
    "txt2img": dict(prompts=("a red circle",)),
    "sampler and schedule": dict(prompts=("a cat",), sampler="Euler a", schedule="SGM Uniform", guidance_scale=3),
    "joined name": dict(prompts=("a cat",), sampler="DPM++ 2M SDE Karras"),
    "syntax": dict(prompts=("a (red:1.3) [circle], BREAK on white",), negative_prompt="blur", clip_skip=2,
                   emphasis="no-norm"),
    "img2img": dict(prompts=("a dog",), init_image="{root}/init.png", strength=0.6),
    "inpaint": dict(prompts=("a dog",), init_image="{root}/init.png", mask="{root}/mask.png"),
    "loras": dict(prompts=("a fox <lora:cross:0.7>",), loras=("{root}/loras/cross:0.5",), lora_dir="{root}/loras"),
    "embeddings": dict(prompts=("a shapestyle fox",), embeddings_dir="{root}/embeddings"),
    "decoding": dict(prompts=("a fox",), vae_tiling=True, vae_tile_size=32, cache_interval=2),
    "outpaint": dict(prompts=("a dog",), init_image="{root}/init.png", outpaint="left=8,down=16", mask_blur=1,
                     fill="original", width=None, height=None),
    "hires": dict(prompts=("a fox",), hires_scale=1.5, hires_upscaler="Lanczos", hires_steps=2, hires_denoise=0.4,
                  hires_sampler="Euler a", hires_negative_prompt="blur"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_generated_settings_remake_the_image_through_the_png(kind, tiny_model, inputs, tmp_path):
    from t2i.sampling.generate import generate

    def filled(value):
        if isinstance(value, str):
            return value.format(root=inputs)
        return tuple(map(filled, value)) if isinstance(value, tuple) else value

    fields = {"width": 32, "height": 32, **{k: filled(v) for k, v in KINDS[kind].items()}}
    config = GenerationConfig(steps=4, seed=11, **fields)
    first, = generate(tiny_model, config, progress=False)
    png = save_png(first.image, first.settings, tmp_path)
    model_config, remade_config = configs_from_png(png)
    assert model_config == ModelConfig(model="tiny", dtype="fp32", device="cpu")
    again, = generate(tiny_model, remade_config, progress=False)
    assert again.settings == first.settings
    assert np.array_equal(pixels(again), pixels(first))


def test_overrides_go_to_the_config_that_owns_them(tiny_model, tmp_path):
    from t2i.sampling.generate import generate

    first, = generate(tiny_model, GenerationConfig(prompts=("x",), steps=3, seed=1, width=32, height=32,
                                                  sampler="ddim"), progress=False)
    png = save_png(first.image, first.settings, tmp_path)
    model_config, config = configs_from_png(png, compile=True, offload="model", offline=True, steps=7)
    assert (model_config.compile, model_config.offload, model_config.offline) == (True, "model", True)
    assert (config.steps, config.sampling) == (7, ("ddim", "normal"))
    # another sampler brings A1111's default schedule for it, not the recorded one
    assert configs_from_png(png, sampler="dpmpp-2m")[1].sampling == ("dpmpp-2m", "karras")
    with pytest.raises(InvalidInput, match="colour: is not a setting of ModelConfig or GenerationConfig"):
        configs_from_png(png, colour="red")


def test_a_config_is_what_the_user_said():
    config = GenerationConfig(prompts=("x",))
    assert (config.sampler, config.schedule, config.sampling) == ("dpmpp-2m", "automatic", ("dpmpp-2m", "karras"))
    ddim = dataclasses.replace(config, sampler="ddim")
    assert ddim.sampling == ("ddim", "normal")
    joined = GenerationConfig(prompts=("x",), sampler="DPM++ 2M Karras")
    assert joined.sampler == "DPM++ 2M Karras" and joined.sampling == ("dpmpp-2m", "karras")
    # no disk reads in a config: a missing embeddings folder is found when the work starts
    assert GenerationConfig(prompts=("x",), embeddings_dir="/no/such/folder").embeddings_dir == "/no/such/folder"


def test_a_missing_embeddings_folder_fails_before_any_image(tiny_model):
    from t2i.sampling.generate import generate

    with pytest.raises(InvalidInput, match="embeddings_dir /no/such/folder: is not a folder"):
        generate(tiny_model, GenerationConfig(prompts=("x",), embeddings_dir="/no/such/folder"), progress=False)


def test_records_from_before_schedules_and_emphasis_still_read():
    old = {"version": "0.1.0", "mode": "txt2img", "prompt": "a (cat)", "negative_prompt": "", "steps": 5,
           "guidance_scale": 7.0, "seed": 3, "width": 64, "height": 64, "sampler": "dpmpp-2m-karras",
           "clip_skip": None, "strength": None, "init_image": None, "mask": None, "loras": [], "model": "demo",
           "model_name": "demo", "model_hash": None, "vae": None, "dtype": "fp32", "device": "cpu"}
    recorded = ImageSettings.from_record(old, "old.png")
    assert (recorded.sampler, recorded.schedule, recorded.emphasis) == ("dpmpp-2m", "karras", "none")
    _, config = recorded.configs()
    assert config.sampling == ("dpmpp-2m", "karras") and config.emphasis == "none"
