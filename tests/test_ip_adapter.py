"""IP-Adapter: scale 0 is no adapter, t2i's embeddings equal diffusers' own path, the same pixels as diffusers'
pipeline with `load_ip_adapter`, the guidance window, h94's file layout both ways, the record, and bad input."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import pixels
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

from t2i.errors import InvalidInput, NotFound
from t2i.models.config import ModelConfig
from t2i.models.ip_adapter import ENCODER_METADATA, cross_attention_layers
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.ip_adapter import IPAdapterUnit, active


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


def tiny_vision_encoder(folder, projection_dim=16):
    """A random CLIP vision model with projection, saved as a local folder (h94's models/image_encoder layout)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=projection_dim, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=4, intermediate_size=37)).save_pretrained(folder)
    return folder


def adapter_tensors(unet, embed_dim=16, seed=1, std=0.5) -> dict:
    """An adapter in h94's flat layout with a visible effect: N over the UNet's processors, odd N cross-attention."""
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    tensors = {"image_proj.proj.weight": torch.randn(4 * cross, embed_dim, generator=generator) * std,
               "image_proj.proj.bias": torch.zeros(4 * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            module = unet.get_submodule(name[:-len(".processor")])
            for kind in ("k", "v"):
                out = getattr(module, f"to_{kind}").out_features
                tensors[f"ip_adapter.{index}.to_{kind}_ip.weight"] = torch.randn(out, cross, generator=generator) * std
    return tensors


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """h94's repository layout: models/ip-adapter.safetensors beside models/image_encoder/, and a reference."""
    root = tmp_path_factory.mktemp("ip")
    (root / "models").mkdir()
    tiny_vision_encoder(root / "models" / "image_encoder")
    save_file(adapter_tensors(tiny.pipe.unet), root / "models" / "ip-adapter.safetensors")
    rows, cols = np.mgrid[0:40, 0:48]
    reference = np.stack([rows * 6, cols * 5, np.full_like(rows, 200)], axis=-1).astype(np.uint8)
    Image.fromarray(reference).save(root / "reference.png")
    return root


BASE = GenerationConfig(prompts=("a cat",), steps=4, seed=3, width=32, height=32, sampler="euler", guidance_scale=5)


def _image(model, **changes):
    return pixels(generate(model, dataclasses.replace(BASE, **changes), progress=False)[0])


def _unit(files, **fields):
    given = {"model": str(files / "models" / "ip-adapter.safetensors"), "image": str(files / "reference.png")}
    return IPAdapterUnit(**{**given, **fields})


def test_scale_0_is_no_adapter_and_scale_1_changes_the_image(tiny, files):
    plain = _image(tiny)
    assert np.array_equal(_image(tiny, ip_adapters=(_unit(files, scale=0.0),)), plain)
    assert np.abs(_image(tiny, ip_adapters=(_unit(files),)) - plain).max() > 5
    assert np.array_equal(_image(tiny), plain)  # the shared UNet is unchanged afterwards
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in tiny.pipe.unet.attn_processors.values())
    assert tiny.pipe.unet.encoder_hid_proj is None and tiny.pipe.unet.config.encoder_hid_dim_type is None


def test_same_pixels_as_diffusers_load_ip_adapter_with_its_own_image_encoding(tiny, files):
    """diffusers' pipeline loads the same file and encoder and embeds the picture itself (`ip_adapter_image`)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(files / "models" / "image_encoder")
    components = {k: v for k, v in tiny.pipe.components.items()
                  if k not in ("scheduler", "image_encoder", "feature_extractor")}
    pipe = StableDiffusionPipeline(**components, scheduler=EulerDiscreteScheduler.from_config(tiny.scheduler_config),
                                   image_encoder=encoder, requires_safety_checker=False,
                                   feature_extractor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                           crop_size={"height": 32, "width": 32}))
    pipe.unet = type(pipe.unet).from_config(pipe.unet.config)
    pipe.unet.load_state_dict(tiny.pipe.unet.state_dict())
    pipe.load_ip_adapter(str(files / "models"), subfolder="", weight_name="ip-adapter.safetensors",
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.7)
    expected = pipe("a cat", num_inference_steps=4, guidance_scale=5, height=32, width=32,
                    ip_adapter_image=Image.open(files / "reference.png"),
                    generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(_image(tiny, ip_adapters=(_unit(files, scale=0.7),)), pixels(expected))


def test_a_batch_and_two_adapters_each_image_as_made_alone(tiny, files):
    units = (_unit(files, scale=0.8), _unit(files, scale=0.3))
    batch = generate(tiny, dataclasses.replace(BASE, prompts=("a cat", "a dog"), batch_size=2, ip_adapters=units),
                     progress=False)
    alone = _image(tiny, prompts=("a dog",), seed=4, ip_adapters=units)
    assert np.abs(pixels(batch[1]) - alone).max() <= 1
    assert not np.array_equal(pixels(batch[0]), _image(tiny, ip_adapters=units[:1]))


def test_guidance_window_follows_diffusers_controlnet_rule_and_acts(tiny, files):
    assert [active(0.25, 1.0, i, 4) for i in range(4)] == [False, True, True, True]
    assert [active(0.0, 0.5, i, 4) for i in range(4)] == [True, True, False, False]
    plain = _image(tiny)
    full = _image(tiny, ip_adapters=(_unit(files),))
    late = _image(tiny, ip_adapters=(_unit(files, start=0.5),))
    assert not np.array_equal(late, plain) and not np.array_equal(late, full)
    # a window that holds no step is no adapter (one step of four is 0.25 wide)
    assert np.array_equal(_image(tiny, ip_adapters=(_unit(files, start=0.9),)), plain)


def test_record_infotext_and_remake(tiny, files, tmp_path):
    from t2i.formats.png import save_png
    from t2i.sampling.settings import configs_from_png

    result = generate(tiny, dataclasses.replace(BASE, ip_adapters=(_unit(files, scale=0.6, end=0.8),)),
                      progress=False)[0]
    unit = result.settings.ip_adapters[0]
    assert (unit.scale, unit.start, unit.end, unit.module) == (0.6, 0.0, 0.8, "ip-adapter_clip_sd15")
    assert unit.encoder == str(files / "models" / "image_encoder")
    assert "ControlNet 0: \"Module: ip-adapter_clip_sd15, Model: ip-adapter [" in result.settings.infotext()
    assert "Weight: 0.6, Guidance Start: 0, Guidance End: 0.8\"" in result.settings.infotext()
    path = save_png(result.image, result.settings, tmp_path)
    _, config = configs_from_png(path)
    assert config.ip_adapters == (_unit(files, scale=0.6, end=0.8),)
    assert np.array_equal(pixels(generate(tiny, config, progress=False)[0]), pixels(result))


def test_h94_layout_round_trip_through_diffusers(tiny, files, tmp_path):
    """What t2i saves from a UNet holding an adapter is what it was loaded from, key for key."""
    from safetensors.torch import load_file

    from t2i.models.ip_adapter import save_ip_adapter
    from t2i.sampling.view import lora_copy

    original = load_file(files / "models" / "ip-adapter.safetensors")
    unet = lora_copy(tiny.pipe.unet)
    unet._load_ip_adapter_weights({"image_proj": {k[11:]: v for k, v in original.items() if k.startswith("image_")},
                                   "ip_adapter": {k[11:]: v for k, v in original.items() if k.startswith("ip_")}})
    save_ip_adapter(unet, tmp_path / "again.safetensors", "image_encoder")
    again = load_file(tmp_path / "again.safetensors")
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "again.safetensors"), framework="pt") as handle:
        assert handle.metadata()[ENCODER_METADATA] == "image_encoder"
    assert len(cross_attention_layers(tiny.pipe.unet)) == sum(k.endswith("to_k_ip.weight") for k in original)


@pytest.mark.parametrize("change, field, words", [
    ({"model": "missing.safetensors"}, "ip_adapter", "no such IP-Adapter file"),
    ({"image": "missing.png"}, "ip_image", "missing.png"),
])
def test_missing_files_are_named(tiny, files, change, field, words):
    unit = dataclasses.replace(_unit(files), **change)
    with pytest.raises((InvalidInput, NotFound)) as error:
        generate(tiny, dataclasses.replace(BASE, ip_adapters=(unit,)), progress=False)
    assert error.value.field == field and words in str(error.value)


def test_another_base_another_encoder_width_and_no_encoder_are_refused(tiny, files, tmp_path):
    # SD 2.x: 1024-wide context
    wide = {k: (torch.zeros(v.shape[0], 1024) if "_ip." in k else v)
            for k, v in adapter_tensors(tiny.pipe.unet).items()}
    save_file(wide, tmp_path / "sd2.safetensors")
    with pytest.raises(InvalidInput, match=r"made for SD 2.x \(context width 1024.*this model has width 32"):
        generate(tiny, dataclasses.replace(BASE, ip_adapters=(_unit(files, model=str(tmp_path / "sd2.safetensors")),)),
                 progress=False)
    # an encoder 24 wide for an adapter that reads 16
    tiny_vision_encoder(tmp_path / "narrow", projection_dim=24)
    with pytest.raises(InvalidInput, match="reads an image embedding 16 wide; the image encoder narrow gives 24"):
        generate(tiny, dataclasses.replace(BASE, ip_adapters=(_unit(files),), image_encoder=str(tmp_path / "narrow")),
                 progress=False)
    # no encoder named and none beside the file
    lonely = tmp_path / "lonely" / "deeper"
    lonely.mkdir(parents=True)
    save_file(adapter_tensors(tiny.pipe.unet), lonely / "ip.safetensors")
    with pytest.raises(NotFound, match=r"no image encoder for this IP-Adapter \(looked in .*deeper/image_encoder and"):
        generate(tiny, dataclasses.replace(BASE, ip_adapters=(_unit(files, model=str(lonely / "ip.safetensors")),)),
                 progress=False)
    # a pickle needs the opt-in; a file without the two groups is not an adapter
    torch.save({"image_proj": {}, "ip_adapter": {}}, tmp_path / "ip.bin")
    with pytest.raises(InvalidInput, match="pickled"):
        generate(tiny, dataclasses.replace(BASE, ip_adapters=(_unit(files, model=str(tmp_path / "ip.bin")),)),
                 progress=False)
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(InvalidInput, match="not an IP-Adapter"):
        generate(tiny, dataclasses.replace(BASE, ip_adapters=(_unit(files, model=str(tmp_path / "other.safetensors")),)),
                 progress=False)


@pytest.mark.parametrize("fields, field", [
    ({"scale": float("nan")}, "ip_scale"), ({"scale": 3.0}, "ip_scale"), ({"start": 0.6, "end": 0.5}, "ip_start"),
    ({"end": float("inf")}, "ip_end"), ({"image": None}, "ip_image"),
])
def test_unit_values_are_checked_on_creation(fields, field):
    with pytest.raises(InvalidInput) as error:
        IPAdapterUnit("a.safetensors", fields.pop("image", "x.png"), **fields)
    assert error.value.field == field


def test_config_checks():
    with pytest.raises(InvalidInput, match="is for IP-Adapters"):
        GenerationConfig(prompts=("a",), image_encoder="enc")
    unit = IPAdapterUnit("a.safetensors", "x.png")
    with pytest.raises(InvalidInput, match="at most 4"):
        GenerationConfig(prompts=("a",), ip_adapters=(unit,) * 5)
    with pytest.raises(InvalidInput, match="does not combine with IP-Adapter"):
        GenerationConfig(prompts=("a",), ip_adapters=(unit,), cache_interval=2)


def test_the_window_counts_steps_not_unet_passes_under_sag(tiny, files):
    """SAG runs the UNet twice a step inside one call: a window that holds no step is still no adapter."""
    sag = _image(tiny, sag_scale=0.75)
    assert np.array_equal(_image(tiny, sag_scale=0.75, ip_adapters=(_unit(files, start=0.9),)), sag)
    assert not np.array_equal(_image(tiny, sag_scale=0.75, ip_adapters=(_unit(files),)), sag)


@pytest.mark.parametrize("flags, words", [
    (["--ip-image", "x.png"], "--ip-image is a setting of an IP-Adapter"),
    (["--ip-scale", "0.5"], "--ip-scale is a setting of an IP-Adapter"),
    (["--ip-adapter", "a.safetensors"], "given 0 time(s) for 1 IP-Adapter(s)"),
    (["--ip-adapter", "a.safetensors", "--ip-image", "x.png", "--ip-scale", "nan"], "ip-scale"),
    (["--ip-adapter", "a", "--ip-adapter", "b", "--ip-image", "x", "--ip-image", "y", "--ip-end", "1", "--ip-end",
      "1", "--ip-end", "1"], "given 3 times for 2 IP-Adapters"),
    (["--image-encoder", "enc"], "is for IP-Adapters"),
    (["--sag-scale", "inf"], "sag-scale"),
])
def test_cli_usage_errors_are_one_line_exit_2(run_cli, tmp_path, flags, words):
    code, out, err = run_cli("generate", "a cat", "--model", "tiny", "--out", tmp_path / "out", *flags)
    assert code == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "out").exists()


def test_cli_a_picture_that_is_not_an_image_or_is_a_bomb(run_cli, files, tmp_path):
    (tmp_path / "text.png").write_text("not a picture")
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # a few hundred KB that decode to 400 Mpixels
    for picture, words in ((tmp_path / "text.png", "--ip-image"), (tmp_path / "bomb.png", "more pixels than t2i")):
        code, _, err = run_cli("generate", "a cat", "--model", "tiny", "--out", tmp_path / "out", "--ip-adapter",
                               files / "models" / "ip-adapter.safetensors", "--ip-image", picture)
        assert code == 2 and words in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_generates_with_an_adapter_and_sag(run_cli, files, tmp_path):
    code, out, err = run_cli("generate", "a cat", "--model", "tiny", "--out", tmp_path / "out", "--steps", 3,
                             "--seed", 1, "--width", 32, "--height", 32, "--sampler", "euler", "--ip-adapter",
                             files / "models" / "ip-adapter.safetensors", "--ip-image", files / "reference.png",
                             "--ip-scale", 0.5, "--sag-scale", 0.75)
    assert code == 0, err
    from t2i.sampling.settings import settings_from_png

    recorded = settings_from_png(out.strip())
    assert recorded.ip_adapters[0].scale == 0.5 and recorded.sag_scale == 0.75
