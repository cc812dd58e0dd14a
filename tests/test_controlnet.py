"""ControlNet: units that change nothing when they should not, the same pixels as diffusers' ControlNet
pipeline, A1111's control modes against a hand-written reference, every way a ControlNet file arrives,
and the record that re-makes an image."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import pixels
from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from t2i.errors import InvalidInput, NotFound
from t2i.models.config import ModelConfig
from t2i.models.controlnet import load_controlnet, save_single_file
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.control import ControlUnit, block_scales
from t2i.sampling.control_run import UnitNet
from t2i.sampling.generate import generate
from t2i.sampling.settings import ImageSettings


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


def _controlnet(unet, seed: int, zero: bool = False) -> ControlNetModel:
    """A ControlNet for `unet` (the tiny VAE halves once: one stride-2 conv), its outputs random unless `zero`."""
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    if not zero:
        with torch.no_grad():
            for name, parameter in net.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                    parameter.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
    return net.eval()


@pytest.fixture(scope="module")
def nets(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnets")
    for name, seed, zero in (("zero", 0, True), ("a", 1, False), ("b", 2, False)):
        _controlnet(tiny.pipe.unet, seed, zero).save_pretrained(root / name)
    rng = np.random.default_rng(0)
    for name in ("one", "two"):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
    return root


BASE = GenerationConfig(prompts=("a cat",), steps=4, seed=3, width=32, height=32, sampler="euler")


def _image(model, **changes):
    return pixels(generate(model, dataclasses.replace(BASE, **changes), progress=False)[0])


def _unit(nets, name, image="one", **options):
    return ControlUnit(str(nets / name), str(nets / f"{image}.png"), **options)


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_units_that_add_nothing_change_nothing(tiny, nets, init_image, mask_image, mode):
    inputs = {"txt2img": {}, "img2img": {"init_image": str(init_image)},
              "inpaint": {"init_image": str(init_image), "mask": str(mask_image)}}[mode]
    plain = _image(tiny, **inputs)
    for unit in (_unit(nets, "zero"), _unit(nets, "a", weight=0.0),
                 # 4 steps: step i acts if i/4 >= start and (i+1)/4 <= end; no step fits in 0.9-0.95
                 _unit(nets, "a", guidance_start=0.9, guidance_end=0.95)):
        assert np.array_equal(_image(tiny, controls=(unit,), **inputs), plain), unit
    assert np.abs(_image(tiny, controls=(_unit(nets, "a"),), **inputs) - plain).max() > 10


def test_second_unit_at_weight_zero_leaves_the_first_alone(tiny, nets):
    first = _image(tiny, controls=(_unit(nets, "a"),))
    both = _image(tiny, controls=(_unit(nets, "a"), _unit(nets, "b", "two", weight=0.0)))
    assert np.array_equal(first, both)
    assert not np.array_equal(first, _image(tiny, controls=(_unit(nets, "a"), _unit(nets, "b", "two"))))


def test_same_pixels_as_diffusers_controlnet_pipeline(tiny, nets):
    control = Image.open(nets / "one.png").convert("RGB")
    pipe = StableDiffusionControlNetPipeline(
        **{k: v for k, v in tiny.pipe.components.items() if k != "scheduler"},
        scheduler=EulerDiscreteScheduler.from_config(tiny.scheduler_config),
        controlnet=ControlNetModel.from_pretrained(nets / "a"), requires_safety_checker=False)
    theirs = pipe("a cat", image=control, num_inference_steps=4, guidance_scale=7.5, controlnet_conditioning_scale=0.7,
                  control_guidance_start=0.25, generator=torch.Generator().manual_seed(3), height=32, width=32).images[0]
    ours = _image(tiny, controls=(_unit(nets, "a", weight=0.7, guidance_start=0.25),))
    assert np.array_equal(ours, pixels(theirs))


def test_control_modes_scale_residuals_as_a1111(tiny, nets):
    """Hand-written reference: A1111's scales 0.825^(12-i) over SD 1.x's 13 residuals; cfg injection zeroes the
    unconditional half; Balanced is diffusers' own output."""
    assert block_scales(13, "My prompt is more important") == pytest.approx([0.825 ** (12 - i) for i in range(13)])
    assert block_scales(13, "Balanced") == [1.0] * 13
    net = ControlNetModel.from_pretrained(nets / "a")
    torch.manual_seed(0)
    sample, hidden = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    control, weight = torch.rand(2, 3, 32, 32), 0.6
    with torch.no_grad():
        down, mid = net(sample, 10, encoder_hidden_states=hidden, controlnet_cond=control, return_dict=False)
        plain = [r * weight for r in [*down, mid]]
        count = len(plain)
        soft = [r * weight * 0.825 ** (count - 1 - i) for i, r in enumerate([*down, mid])]
        cases = {("Balanced", True): plain, ("My prompt is more important", True): soft,
                 ("ControlNet is more important", True): [torch.cat([torch.zeros_like(r[:1]), r[1:]]) for r in soft],
                 ("ControlNet is more important", False): soft}
        for (mode, cfg), expected in cases.items():
            got_down, got_mid = UnitNet(net, mode, cfg)(sample, 10, hidden, control, conditioning_scale=weight)
            for got, want in zip([*got_down, got_mid], expected):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    balanced = _image(tiny, controls=(_unit(nets, "a"),))
    assert not np.array_equal(balanced, _image(tiny, controls=(_unit(nets, "a", control_mode="prompt"),)))
    assert not np.array_equal(_image(tiny, controls=(_unit(nets, "a", control_mode="prompt"),)),
                              _image(tiny, controls=(_unit(nets, "a", control_mode="controlnet"),)))


def test_single_files_load_as_the_folder(tiny, nets, tmp_path):
    folder = ControlNetModel.from_pretrained(nets / "a")
    reference = folder.state_dict()
    save_single_file(folder, tmp_path / "with-config.safetensors")
    bare = tmp_path / "diffusers_keys.safetensors"  # as A1111 users keep diffusers-trained ones: no metadata
    save_file(load_file(tmp_path / "with-config.safetensors"), bare)
    for path in (tmp_path / "with-config.safetensors", bare):
        loaded = load_controlnet(str(path), tiny.pipe.unet, tiny.config)
        assert loaded.hash is not None and len(loaded.hash) == 8
        for key, value in loaded.net.state_dict().items():
            assert torch.equal(value, reference[key]), key
    assert np.array_equal(_image(tiny, controls=(ControlUnit(str(bare), str(nets / "one.png")),)),
                          _image(tiny, controls=(_unit(nets, "a"),)))


def test_original_release_files_load(tiny, tmp_path):
    """The layout of control_v11p_sd15_*.pth/.safetensors, converted by diffusers' own converter on load."""
    from ldm_checkpoint import controlnet_to_ldm

    torch.manual_seed(4)
    net = ControlNetModel.from_unet(tiny.pipe.unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0, 0.1)
    save_file(controlnet_to_ldm(net), tmp_path / "control_v11p_sd15_tiny.safetensors")
    loaded = load_controlnet(str(tmp_path / "control_v11p_sd15_tiny.safetensors"), tiny.pipe.unet, tiny.config)
    assert loaded.name == "control_v11p_sd15_tiny"
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key


def test_pickles_need_opting_in(tiny, nets, tmp_path):
    path = tmp_path / "control.pth"
    torch.save(ControlNetModel.from_pretrained(nets / "a").state_dict(), path)
    with pytest.raises(InvalidInput, match="pickle"):
        load_controlnet(str(path), tiny.pipe.unet, tiny.config)
    allowed = dataclasses.replace(tiny.config, allow_pickle=True)
    assert load_controlnet(str(path), tiny.pipe.unet, allowed).net.config.cross_attention_dim == 32


def test_a_controlnet_for_another_base_is_refused_by_name(tiny, tmp_path):
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=1024,
                                 norm_num_groups=8)
    net = ControlNetModel.from_unet(other, conditioning_embedding_out_channels=(16, 32))
    save_single_file(net, tmp_path / "sd2.safetensors")
    net.save_pretrained(tmp_path / "sd2")
    for source in (tmp_path / "sd2.safetensors", tmp_path / "sd2"):
        with pytest.raises(InvalidInput) as caught:
            load_controlnet(str(source), tiny.pipe.unet, tiny.config)
        assert "SD 2.x (cross-attention width 1024" in str(caught.value) and "this model has width 32" in str(caught.value)


def test_files_that_are_not_controlnets(tiny, tmp_path):
    save_file({"weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(InvalidInput, match="not a ControlNet"):
        load_controlnet(str(tmp_path / "lora.safetensors"), tiny.pipe.unet, tiny.config)
    (tmp_path / "picture.png").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="expected a .safetensors"):
        load_controlnet(str(tmp_path / "picture.png"), tiny.pipe.unet, tiny.config)
    config = dataclasses.replace(BASE, controls=(ControlUnit("missing-net", str(tmp_path / "picture.png")),),
                                 controlnet_dir=str(tmp_path))
    with pytest.raises(InvalidInput, match="not a readable image") as caught:  # the image is read first
        generate(tiny, config, progress=False)
    assert caught.value.field == "control"
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.png")
    with pytest.raises(NotFound, match="no such ControlNet"):
        generate(tiny, config, progress=False)


def test_names_are_found_in_the_controlnet_folder(tiny, nets, tmp_path):
    save_single_file(ControlNetModel.from_pretrained(nets / "a"), tmp_path / "mine.safetensors")
    by_name = dataclasses.replace(BASE, controls=(ControlUnit("mine", str(nets / "one.png")),),
                                  controlnet_dir=str(tmp_path))
    result = generate(tiny, by_name, progress=False)[0]
    assert np.array_equal(pixels(result), _image(tiny, controls=(_unit(nets, "a"),)))
    assert result.settings.controls[0].title.startswith("mine [")


@pytest.mark.parametrize("text, model, image, weight", [
    ("canny=edges.png", "canny", "edges.png", 1.0),
    ("canny=edges.png:0.5", "canny", "edges.png", 0.5),
    ("nets/x.safetensors=C:\\maps\\a.png", "nets/x.safetensors", "C:\\maps\\a.png", 1.0),
    ("x=C:\\maps\\a.png:1.5", "x", "C:\\maps\\a.png", 1.5),
])
def test_unit_parsing(text, model, image, weight):
    unit = ControlUnit.parse(text)
    assert (unit.model, unit.image, unit.weight) == (model, image, weight)


@pytest.mark.parametrize("options, field, words", [
    ({"weight": float("inf")}, "control", "finite"),
    ({"weight": 2.5}, "control", "from 0 to 2"),
    ({"guidance_start": 0.5, "guidance_end": 0.5}, "control_start", "less than the end"),
    ({"guidance_end": 1.5}, "control_end", "from 0 to 1"),
    ({"module": "depth_midas"}, "control_module", "not a weight-free preprocessor"),
    ({"control_mode": "loud"}, "control_mode", "unknown control mode"),
    ({"resize_mode": "stretch"}, "control_resize", "unknown ControlNet resize mode"),
    ({"module": "canny", "threshold_a": 300}, "control_threshold_a", "from 1 to 255"),
])
def test_bad_units_are_refused_by_name(options, field, words):
    with pytest.raises(InvalidInput) as caught:
        ControlUnit("m", "i.png", **options)
    assert caught.value.field == field and words in str(caught.value)


def test_too_many_units_and_no_combination_with_feature_reuse():
    unit = ControlUnit("m", "i.png")
    with pytest.raises(InvalidInput, match="at most 8"):
        dataclasses.replace(BASE, controls=(unit,) * 9)
    with pytest.raises(InvalidInput, match="does not combine with ControlNet"):
        dataclasses.replace(BASE, controls=(unit,), cache_interval=2)


def test_record_and_infotext_remake_the_image(tiny, nets, tmp_path):
    from t2i.formats.infotext import parse_infotext
    from t2i.formats.png import save_png
    from t2i.sampling.settings import configs_from_png

    unit = _unit(nets, "a", weight=0.8, module="invert", guidance_end=0.75, control_mode="prompt",
                 resize_mode="Resize and Fill")
    result = generate(tiny, dataclasses.replace(BASE, controls=(unit,)), progress=False)[0]
    fields = parse_infotext(result.settings.infotext())
    assert fields["ControlNet 0"] == ("Module: invert, Model: a, Weight: 0.8, Resize Mode: Resize and Fill, "
                                      "Processor Res: 512, Guidance Start: 0, Guidance End: 0.75, "
                                      "Pixel Perfect: False, Control Mode: My prompt is more important")
    path = save_png(result.image, result.settings, tmp_path)
    model_config, config = configs_from_png(path)
    assert config.controls == (unit,)
    assert np.array_equal(pixels(generate(tiny, config, progress=False)[0]), pixels(result))
    record = ImageSettings.from_record(result.settings.to_record(), "x")
    assert record.controls == result.settings.controls


def test_an_image_given_in_memory_must_be_given_again(tiny, nets):
    picture = Image.open(nets / "one.png")
    result = generate(tiny, dataclasses.replace(BASE, controls=(ControlUnit(str(nets / "a"), picture),)),
                      progress=False)[0]
    assert result.settings.controls[0].image is None and len(result.settings.controls[0].image_hash) == 10
    with pytest.raises(InvalidInput, match="given in memory"):
        result.settings.configs()
    _, config = result.settings.configs(controls=(ControlUnit(str(nets / "a"), str(nets / "one.png")),))
    assert np.array_equal(pixels(generate(tiny, config, progress=False)[0]), pixels(result))


def test_control_image_of_another_aspect_is_fitted_not_refused(tiny, nets, tmp_path):
    Image.new("RGB", (90, 20), (200, 10, 10)).save(tmp_path / "wide.png")
    for mode in ("Just Resize", "Crop and Resize", "Resize and Fill"):
        result = generate(tiny, dataclasses.replace(BASE, controls=(
            ControlUnit(str(nets / "a"), str(tmp_path / "wide.png"), resize_mode=mode),)), progress=False)[0]
        assert result.image.size == (32, 32)


@pytest.mark.parametrize("sampler", ["euler-a", "dpmpp-2m-karras", "ddim", "unipc", "dpmpp-sde", "heun", "lcm"])
def test_every_sampler_runs_a_unit_and_a_zero_unit_changes_nothing(tiny, nets, sampler):
    plain = _image(tiny, sampler=sampler, schedule="automatic")
    assert np.array_equal(_image(tiny, sampler=sampler, schedule="automatic", controls=(_unit(nets, "zero"),)), plain)
    assert not np.array_equal(_image(tiny, sampler=sampler, schedule="automatic", controls=(_unit(nets, "a"),)), plain)


def test_units_combine_with_loras_and_long_prompts(tiny, nets, tmp_path):
    from conftest import make_lora

    lora = make_lora(tmp_path / "lora", 3, ["attn2.to_k", "attn2.to_v"])
    long_prompt = " ".join(["a red circle on a white background"] * 12)  # past 75 tokens: several chunks
    for changes in ({"loras": (lora,)}, {"prompts": (long_prompt,)}):
        plain = _image(tiny, **changes)
        assert np.array_equal(_image(tiny, controls=(_unit(nets, "zero"),), **changes), plain)
        controlled = _image(tiny, controls=(_unit(nets, "a"),), **changes)
        assert not np.array_equal(controlled, plain)
    assert not np.array_equal(_image(tiny, loras=(lora,), controls=(_unit(nets, "a"),)),
                              _image(tiny, controls=(_unit(nets, "a"),)))  # the LoRA still acts beside the unit


def test_two_threads_with_other_units_on_one_model(tiny, nets):
    """Each call wraps the shared ControlNets in its own modules: concurrent generations keep their units."""
    import threading

    alone = {name: _image(tiny, controls=(_unit(nets, name),)) for name in ("a", "b")}
    found, errors = {}, []

    def run(name):
        try:
            for _ in range(3):
                found.setdefault(name, []).append(_image(tiny, controls=(_unit(nets, name),)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(np.array_equal(image, alone[name]) for name, images in found.items() for image in images)


def test_the_command_line(run_cli, nets, tmp_path):
    out = tmp_path / "images"
    code, stdout, err = run_cli("generate", "a cat", "--model", "tiny", "--steps", "2", "--seed", "1", "--out", out,
                                "--control", f"a={nets / 'one.png'}:0.7", "--control", f"b={nets / 'two.png'}",
                                "--control-module", "canny", "--control-module", "none", "--control-end", "0.5",
                                "--controlnet-dir", nets)
    assert code == 0, err
    from t2i.sampling.settings import settings_from_png

    settings = settings_from_png(stdout.split()[0])
    assert [(c.module, c.weight, c.guidance_end) for c in settings.controls] == [("canny", 0.7, 0.5), ("none", 1, 0.5)]
    code, stdout, err = run_cli("control", "detect", nets / "one.png", "--module", "canny", "--res", "64",
                                "--out", tmp_path / "map.png")
    assert code == 0 and Image.open(tmp_path / "map.png").size == (64, 64)
    code, _, err = run_cli("control", "detect", nets / "one.png", "--out", tmp_path / "map.png")
    assert code == 2 and "exists already" in err  # never overwritten


@pytest.mark.parametrize("args, words", [
    (["--control", "a=one.png:inf"], "--control inf: must be a finite number"),
    (["--control", "a"], "--control a: must be MODEL=IMAGE[:WEIGHT]"),
    (["--control-module", "canny"], "--control-module is a setting of a ControlNet unit"),
    (["--control", "a=one.png", "--control-mode", "balanced", "--control-mode", "prompt"],
     "--control-mode: given 2 times for 1 ControlNet units"),
    (["--control", "a=one.png", "--control-start", "0.6", "--control-end", "0.4"], "--control-start 0.6: must be less"),
    (["--control", "nope=one.png"], "--control nope: no such ControlNet"),
    (["--control", "a=missing.png"], "--control"),
    (["--control", "a=one.png", "--hires-scale", "2"], "--hires-scale 2.0: does not combine with ControlNet"),
])
def test_bad_command_lines_are_one_line_usage_errors(run_cli, nets, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(nets)
    code, _, err = run_cli("generate", "x", "--model", "tiny", "--steps", "2", "--controlnet-dir", nets,
                           "--out", tmp_path / "o", *args)
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_hub_id_offline_never_touches_the_network(tiny):
    from t2i.errors import LoadError
    from t2i.models.controlnet import find

    assert find("lllyasviel/control_v11p_sd15_canny", None) == "lllyasviel/control_v11p_sd15_canny"
    offline = dataclasses.replace(tiny.config, offline=True)
    with pytest.raises(LoadError, match="not in the local Hugging Face cache, and t2i is offline") as caught:
        load_controlnet("lllyasviel/control_v11p_sd15_canny", tiny.pipe.unet, offline)
    assert caught.value.field == "control"


def test_a_compiled_unet_takes_the_residuals(nets):
    """--compile compiles the shared UNet (and VAE decoder); a unit's residuals go into the compiled graph."""
    from conftest import CountingBackend

    from t2i.models.speed import compile_components

    eager = load_model(ModelConfig(model="tiny", device="cpu"))
    expected = _image(eager, controls=(_unit(nets, "a"),))
    compiled = load_model(ModelConfig(model="tiny", device="cpu"))
    backend = CountingBackend()
    compile_components(compiled.pipe, torch.device("cpu"), backend=backend)
    assert np.array_equal(_image(compiled, controls=(_unit(nets, "a"),)), expected)
    assert backend.graphs >= 2
