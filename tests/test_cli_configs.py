"""The CLI's own job, with the library replaced: each command builds exactly the config it should.

Fast (no model is loaded, nothing is generated or trained); the end-to-end tests are elsewhere.
"""

import pytest
from PIL import Image

from t2i.errors import InvalidInput
from t2i.formats.lora import LoraRef
from t2i.formats.png import save_png
from t2i.models.config import ModelConfig
from t2i.sampling.config import GenerationConfig
from t2i.sampling.settings import ImageSettings
from t2i.train.config import FinetuneConfig


@pytest.fixture
def captured(monkeypatch):
    """Replace the library calls the commands make; record what they were called with."""
    import t2i.models.loading
    import t2i.sampling.generate
    import t2i.train.trainer

    calls = {}
    monkeypatch.setattr(t2i.models.loading, "load_model", lambda config: calls.setdefault("model", config))
    monkeypatch.setattr(t2i.sampling.generate, "generate_iter",
                        lambda model, config, *args, **kwargs: calls.setdefault("generation", config) and [])
    monkeypatch.setattr(t2i.train.trainer, "finetune", lambda config: calls.setdefault("finetune", config))
    return calls


def test_generate_builds_the_configs_from_its_flags(run_cli, captured, tmp_path):
    code, _, stderr = run_cli("generate", "a cat", "a dog", "--model", "m.safetensors", "--vae", "v", "--dtype", "fp16",
                              "--device", "cpu", "--offline", "--allow-pickle", "--sampler", "Euler a", "--steps", "12",
                              "--guidance-scale", "4.5", "--seed", "9", "--num-images", "3", "--batch-size", "2",
                              "--width", "64", "--height", "48", "--lora", "a.safetensors:0.5", "--lora", "b",
                              "--clip-skip", "2", "--negative-prompt", "blur", "--out", tmp_path / "o")
    assert code == 0, stderr
    assert captured["model"] == ModelConfig(model="m.safetensors", vae="v", dtype="fp16", device="cpu", offline=True,
                                            allow_pickle=True)
    assert captured["generation"] == GenerationConfig(
        prompts=("a cat", "a dog"), negative_prompt="blur", steps=12, guidance_scale=4.5, seed=9, num_images=3,
        batch_size=2, width=64, height=48, sampler="Euler a", loras=(LoraRef("a.safetensors", 0.5), LoraRef("b")),
        clip_skip=2)


def test_generate_defaults_are_the_configs_defaults(run_cli, captured, tmp_path):
    code, _, stderr = run_cli("generate", "x", "--out", tmp_path)
    assert code == 0, stderr
    assert captured["model"] == ModelConfig()
    assert captured["generation"] == GenerationConfig(prompts=("x",))


def test_prompts_file_adds_to_the_prompts(run_cli, captured, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n\n  two  \n", encoding="utf-8")
    assert run_cli("generate", "zero", "--prompts-file", prompts, "--out", tmp_path)[0] == 0
    assert captured["generation"].prompts == ("zero", "one", "two")


def test_from_image_takes_the_recorded_settings_and_typed_flags_override(run_cli, captured, tmp_path):
    record = {"version": "0.1.0", "mode": "img2img", "prompt": "a fox", "negative_prompt": "", "steps": 7,
              "guidance_scale": 3.0, "seed": 41, "width": 32, "height": 32, "sampler": "ddim", "clip_skip": None,
              "strength": 0.5, "init_image": "in.png", "mask": None, "loras": [{"path": "l.safetensors", "scale": 0.7,
                                                                               "name": "l", "hash": "0"}],
              "model": "demo", "model_name": "demo", "model_hash": None, "vae": None, "dtype": "fp32", "device": "cpu"}
    png = save_png(Image.new("RGB", (8, 8)), ImageSettings.from_record(record, "test"), tmp_path)
    assert run_cli("generate", "--from-image", png, "--steps", "9", "--out", tmp_path / "o")[0] == 0
    assert captured["model"] == ModelConfig(model="demo", dtype="fp32", device="cpu")
    assert captured["generation"] == GenerationConfig(
        prompts=("a fox",), steps=9, guidance_scale=3.0, seed=41, width=32, height=32, sampler="ddim",
        schedule="normal", init_image="in.png", strength=0.5, loras=(LoraRef("l.safetensors", 0.7),),
        emphasis="none",  # a record from before emphasis was parsed: its brackets were text
        inpaint_prep="diffusers")  # and from before inpainting was A1111's


def test_finetune_builds_the_config_from_its_flags(run_cli, captured, tmp_path):
    code, _, stderr = run_cli("finetune", "--data", "d", "--output", "o", "--model", "tiny", "--rank", "8",
                              "--alpha", "4", "--lora-targets", "full", "--learning-rate", "2e-3", "--max-steps", "5",
                              "--validation-prompt", "a", "--validation-prompt", "b", "--export", "kohya",
                              "--no-cache", "--flip", "--resume", "latest")
    assert code == 0, stderr
    assert captured["finetune"] == FinetuneConfig(
        data="d", output="o", model="tiny", rank=8, alpha=4.0, lora_targets="full", learning_rate=2e-3, max_steps=5,
        validation_prompts=("a", "b"), export_kohya=True, cache=False, flip=True, resume="latest")


def test_finetune_defaults_are_the_configs_defaults(run_cli, captured):
    assert run_cli("finetune", "--data", "d", "--output", "o")[0] == 0
    assert captured["finetune"] == FinetuneConfig(data="d", output="o")


@pytest.mark.parametrize("make_error, flag_words, library_words", [
    (lambda: GenerationConfig(prompts=("x",), steps=0), "--steps 0: must be at least 1", "steps 0: must be at least 1"),
    (lambda: GenerationConfig(prompts=("x",), strength=0.5), "--strength: needs --init-image",
     "strength: needs init_image"),
    (lambda: GenerationConfig(prompts=("x",), loras=("x.safetensors:inf",)), "--lora x.safetensors:inf:",
     "loras x.safetensors:inf:"),
    (lambda: FinetuneConfig(data="d", output="o", random_crop=True), "turn --cache off", "turn cache off"),
    (lambda: ModelConfig(dtype="fp8"), "--dtype fp8: unknown precision; choose one of auto, fp32",
     "dtype fp8: unknown precision"),
])
def test_library_errors_carry_data_and_each_front_end_names_the_setting(make_error, flag_words, library_words):
    from t2i.cli import flag

    with pytest.raises(InvalidInput) as error:
        make_error()
    assert library_words in str(error.value) and "--" not in str(error.value)
    assert flag_words in error.value.render(flag)
    assert error.value.to_dict()["field"] and error.value.to_dict()["problem"]


def test_a_missing_extra_is_named_in_one_line(monkeypatch):
    import importlib.util

    from t2i.errors import MissingExtra, require_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "tensorboard" else real(name))
    with pytest.raises(MissingExtra, match=r"needs the \[train\] extra \(tensorboard not installed\); "
                                           r"pip install 't2i\[train\]'"):
        require_extra("train", "tensorboard", "matplotlib")
