"""`t2i finetune --ip-adapter`: only the adapter layers learn, exact resume, an h94-layout file that diffusers'
own `load_ip_adapter` and t2i's generation read back as the trained weights, validation grids, and settings
that do not apply refused."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from test_finetune import config, shapes  # noqa: F401 (the fixture)
from test_ip_adapter import tiny_vision_encoder

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.ip_adapter import ENCODER_METADATA
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.ip_adapter import IPAdapterUnit
from t2i.train.trainer import finetune


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return str(tiny_vision_encoder(tmp_path_factory.mktemp("encoder") / "image_encoder"))


def test_ip_adapter_training_resumes_exactly_and_its_file_is_the_trained_adapter(shapes, encoder, tmp_path):  # noqa
    settings = dict(ip_adapter=True, image_encoder=encoder, max_steps=4, checkpoint_every=2, learning_rate=1e-2,
                    caption_dropout=0.3)
    straight = finetune(config(shapes, tmp_path / "a", **settings), progress=False)
    finetune(config(shapes, tmp_path / "b", **{**settings, "max_steps": 2}), progress=False)
    resumed = finetune(config(shapes, tmp_path / "b", **settings, resume="latest"), progress=False)
    trained, again = load_file(straight / "ip_adapter.safetensors"), load_file(resumed / "ip_adapter.safetensors")
    assert trained.keys() == again.keys() and all(torch.equal(trained[k], again[k]) for k in trained)
    with safe_open(str(straight / "ip_adapter.safetensors"), framework="pt") as handle:
        assert handle.metadata()[ENCODER_METADATA] == encoder
    # the key/value layers started as copies of their cross-attention's to_k/to_v, and moved
    tiny = load_model(ModelConfig(model="tiny"))
    first = next(k for k in trained if k.endswith("to_k_ip.weight"))
    name = list(tiny.pipe.unet.attn_processors)[int(first.split(".")[1])][:-len(".processor")]
    start = tiny.pipe.unet.get_submodule(name).to_k.weight
    assert 0 < (trained[first] - start).abs().max() < 1
    # the base model is untouched: the run's UNet weights are not written anywhere
    assert not (straight / "unet").exists() and json.loads((straight / "train_config.json").read_text())["ip_adapter"]

    # diffusers' own loader reads the file (with the encoder beside it, as h94 lay them out) ...
    reference = Image.open(shapes / "01.png").convert("RGB")
    pipe = StableDiffusionPipeline(**{k: v for k, v in tiny.pipe.components.items()
                                      if k not in ("image_encoder", "feature_extractor")},
                                   image_encoder=None, feature_extractor=None, requires_safety_checker=False)
    pipe.unet = type(pipe.unet).from_config(pipe.unet.config)
    pipe.unet.load_state_dict(tiny.pipe.unet.state_dict())
    pipe.load_ip_adapter(str(straight), subfolder="", weight_name="ip_adapter.safetensors", image_encoder_folder=None)
    from t2i.models.ip_adapter import adapter_state

    loaded = adapter_state(pipe.unet)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    # ... and t2i generates with it, the encoder found from the file's own metadata
    result = generate(tiny, GenerationConfig(prompts=("",), steps=3, seed=1, width=32, height=32, ip_adapters=(
        IPAdapterUnit(str(straight / "ip_adapter.safetensors"), reference),)), progress=False)[0]
    assert result.settings.ip_adapters[0].encoder == encoder


def test_validation_grid_and_the_held_out_loss(shapes, encoder, tmp_path):  # noqa: F811
    out = finetune(config(shapes, tmp_path, ip_adapter=True, image_encoder=encoder, max_steps=2, val_fraction=0.25,
                          validation_loss_every=1, validation_prompts=("a red circle", ""), learning_rate=1e-2,
                          validation_ip_images=(str(shapes / "00.png"), str(shapes / "01.png"))), progress=False)
    losses = [float(r["val_loss"]) for r in __import__("csv").DictReader(open(out / "loss.csv")) if r["val_loss"]]
    assert len(losses) == 3 and losses[0] != losses[-1]  # before training, after each step: the adapter moves it
    grid = Image.open(out / "validation" / "step-000002.png")
    assert grid.size == (64, 64)
    shown = np.asarray(grid.crop((0, 32, 32, 64)).convert("RGB"), dtype=np.int16)
    expected = np.asarray(Image.open(shapes / "01.png").convert("RGB").resize((32, 32)), dtype=np.int16)
    assert np.abs(shown - expected).max() <= 1


@pytest.mark.parametrize("overrides, words", [
    ({"controlnet": True}, "does not apply to IP-Adapter training"),
    ({"train_text_encoder": True}, "does not apply to IP-Adapter training"),
    ({"image_encoder": None}, "needs the image encoder"),
    ({"validation_prompts": ("a", "b"), "validation_ip_images": ("x.png",) * 3}, "one for all, or one each"),
    ({"ip_image_dropout": 1.0}, r"must be in \[0, 1\)"),
])
def test_settings_that_do_not_apply_are_refused(shapes, tmp_path, overrides, words):  # noqa: F811
    with pytest.raises(InvalidInput, match=words):
        config(shapes, tmp_path, **{"ip_adapter": True, "image_encoder": "enc", **overrides})
    with pytest.raises(InvalidInput, match="is for IP-Adapter training"):
        config(shapes, tmp_path, image_encoder="enc")
