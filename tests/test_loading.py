"""Every --model source ends as the same components; nothing touches the network when local."""

import json
import socket
import time

import numpy as np
import pytest
import torch
from conftest import pixels, plain_pipeline
from ldm_checkpoint import save_ldm_checkpoint

from t2i.errors import InvalidInput, T2IError
from t2i.formats.hashes import file_sha256
from t2i.models import SD1_CONFIG_DIR
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.models.presets import tiny_components
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test loudly."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def render(model, out_dir, **overrides):
    config = GenerationConfig(**{"prompts": ("a red circle",), "steps": 5, "seed": 9, "sampler": "ddim",
                                 **overrides})
    path, = generate(model, config)
    return path


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference_pixels(tmp_path_factory):
    return pixels(render(load_model(ModelConfig(model="tiny", device="cpu")), tmp_path_factory.mktemp("ref")))


def test_local_folder_and_single_file_load_offline_and_give_the_preset_pixels(
        tmp_path, tiny_folder, reference_pixels, no_network):
    checkpoint = tmp_path / "tiny-sd.safetensors"
    save_ldm_checkpoint(plain_pipeline(), checkpoint)
    from_folder = load_model(ModelConfig(model=str(tiny_folder), device="cpu"))
    from_file = load_model(ModelConfig(model=str(checkpoint), single_file_config=str(tiny_folder), device="cpu"))
    assert from_file.hash == file_sha256(checkpoint)[:10] and from_file.name == "tiny-sd"
    for model in (from_folder, from_file):
        assert same_weights(model.pipe.unet, from_folder.pipe.unet)
        assert np.array_equal(pixels(render(model, tmp_path)), reference_pixels)
    assert render(from_file, tmp_path).settings.model_hash == from_file.hash
    assert no_network == []


def test_inpainting_single_file_gets_a_nine_channel_unet(tmp_path, tiny_folder):
    checkpoint = tmp_path / "tiny-inpainting.safetensors"
    save_ldm_checkpoint(plain_pipeline(unet_in_channels=9), checkpoint)
    model = load_model(ModelConfig(model=str(checkpoint), single_file_config=str(tiny_folder), device="cpu"))
    assert model.is_inpainting_model
    assert same_weights(model.pipe.unet, tiny_components(unet_in_channels=9)["unet"])


def test_pickled_checkpoint_is_refused_unless_opted_in(tmp_path, tiny_folder, reference_pixels):
    safe = tmp_path / "tiny.safetensors"
    save_ldm_checkpoint(plain_pipeline(), safe)
    from safetensors.torch import load_file

    pickled = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(safe), "global_step": 1}, pickled)
    with pytest.raises(InvalidInput, match="pickled checkpoint.*allow_pickle"):
        load_model(ModelConfig(model=str(pickled), single_file_config=str(tiny_folder)))
    model = load_model(ModelConfig(model=str(pickled), single_file_config=str(tiny_folder), allow_pickle=True,
                                   device="cpu"))
    assert np.array_equal(pixels(render(model, tmp_path)), reference_pixels)


def test_vae_swap_replaces_only_the_vae(tmp_path, tiny_folder):
    other_vae = tiny_components(seed=5)["vae"]
    other_vae.save_pretrained(tmp_path / "vae")
    model = load_model(ModelConfig(model=str(tiny_folder), vae=str(tmp_path / "vae"), device="cpu"))
    assert same_weights(model.pipe.vae, other_vae)
    assert same_weights(model.pipe.unet, tiny_components()["unet"])
    assert "VAE: vae," in render(model, tmp_path).settings.infotext()


def test_shipped_sd1_configs_describe_sd15():
    """The configs used for single-file loading build SD 1.5's exact architecture (no weights)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD1_CONFIG_DIR, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD1_CONFIG_DIR, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD1_CONFIG_DIR, subfolder="text_encoder"))
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text)) == (859_520_964, 83_653_863, 123_060_480)
    assert vae.config.scaling_factor == 0.18215
    tokenizer = CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer")
    # the well-known CLIP ids of this prompt
    assert tokenizer("a photo of an astronaut riding a horse").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    scheduler = json.loads((SD1_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == (
        "scaled_linear", 0.00085, 0.012)


def test_hub_id_without_network_fails_fast_with_advice(no_network):
    started = time.monotonic()
    with pytest.raises(T2IError, match="cannot reach .* give a local diffusers folder"):
        load_model(ModelConfig(model="someone/not-a-cached-model"))
    assert time.monotonic() - started < 10


def test_hub_id_offline_is_not_attempted(no_network):
    with pytest.raises(T2IError, match="not in the local Hugging Face cache, and t2i is offline"):
        load_model(ModelConfig(model="someone/not-a-cached-model", offline=True))
    assert no_network == []
