"""Speed and memory options (t2i.models.speed, VAE tiling/slicing): each keeps the image, or stays
within a measured bound of it, and the shared model is never changed by a generation."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from conftest import CountingBackend, make_lora

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.models.speed import _offload, compile_components
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.settings import configs_from_png

CONFIG = GenerationConfig(prompts=("a red circle", "a blue square"), seed=3, steps=6, num_images=2, batch_size=2)


def pixels(model, config=CONFIG) -> np.ndarray:
    return np.stack([np.asarray(result.image, dtype=int) for result in generate(model, config, progress=False)])


def tiny(**options):
    return load_model(ModelConfig(model="tiny", device="cpu", **options))


@pytest.fixture(scope="module")
def default_pixels():
    return pixels(tiny())


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    make_lora(folder, 1, ["to_q", "to_k", "to_v", "to_out.0"])
    return str(folder)


@pytest.mark.parametrize("option, most_levels", [("channels_last", 1), ("fuse_qkv", 0), ("attention_slicing", 0)])
def test_runtime_option_keeps_the_pixels(option, most_levels, default_pixels):
    # the same maths: NHWC convolutions round differently (1 level in 8 bits, on ~1 pixel in 10,000)
    difference = np.abs(pixels(tiny(**{option: True})) - default_pixels)
    assert difference.max() <= most_levels
    assert (difference > 0).mean() < 1e-3


def test_fused_projections_are_undone_for_a_lora_so_its_adapters_act(lora):
    config = dataclasses.replace(CONFIG, loras=(lora,))
    fused = tiny(fuse_qkv=True)
    with_lora = pixels(fused, config)
    assert np.array_equal(with_lora, pixels(tiny(), config))
    assert np.abs(with_lora - pixels(fused)).mean() > 5  # the LoRA changed the image
    processors = {type(p).__name__ for p in fused.pipe.unet.attn_processors.values()}
    assert processors == {"FusedAttnProcessor2_0"}  # the shared model stays fused


def test_compiled_model_compiles_once_per_shape_and_loras_run_uncompiled(default_pixels, lora):
    model = tiny()
    backend = CountingBackend()
    compile_components(model.pipe, torch.device("cpu"), backend=backend)
    assert np.array_equal(pixels(model), default_pixels)
    compiled = backend.graphs
    assert compiled >= 2  # the UNet and the VAE decoder
    other = GenerationConfig(prompts=("a green star",), seed=11, steps=9, guidance_scale=3, sampler="ddim",
                             num_images=2, batch_size=2)  # the same shapes: the batch is what sets them
    pixels(model, other)
    pixels(model, dataclasses.replace(other, loras=(lora,)))  # the LoRA copy runs eager: no graph for it
    assert backend.graphs == compiled
    # the Euler family's timesteps are floats, the others' integers: a UNet graph for each, made once
    pixels(model, dataclasses.replace(other, sampler="euler-a"))
    pixels(model, dataclasses.replace(other, sampler="euler", seed=12))
    assert backend.graphs == compiled + 1
    pixels(model, dataclasses.replace(other, width=48, height=48))  # a new size: compiled again
    assert backend.graphs > compiled + 1


@pytest.mark.slow
def test_compile_with_inductor_gives_the_same_pixels_and_does_not_recompile(default_pixels):
    from torch._dynamo.utils import counters

    model = tiny(compile=True)
    difference = np.abs(pixels(model) - default_pixels)  # inductor fuses and reorders float sums
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    graphs = counters["stats"]["unique_graphs"]
    other = GenerationConfig(prompts=("a green star",), seed=11, steps=9, guidance_scale=3, num_images=2,
                             batch_size=2)
    pixels(model, other)
    assert counters["stats"]["unique_graphs"] == graphs


def test_model_offload_hooks_on_cpu_keep_the_pixels_and_the_shared_hooks_with_and_without_loras(default_pixels, lora):
    # the hooks are accelerate's; on this machine they move weights CPU -> CPU, which tests the
    # plumbing (LoRA views, the VAE's decode hook), not the memory saved (that needs a GPU)
    reference = tiny()
    with_lora = dataclasses.replace(CONFIG, loras=(lora,))
    expected_lora = pixels(reference, with_lora)
    model = tiny()
    model.config = dataclasses.replace(model.config, offload="model")
    _offload(model.pipe, "model", torch.device("cpu"))
    shared_hooks = {name: module._hf_hook for name, module in model.pipe.components.items()
                    if hasattr(module, "_hf_hook")}
    assert set(shared_hooks) == {"text_encoder", "unet", "vae"}
    assert np.array_equal(pixels(model), default_pixels)
    assert np.array_equal(pixels(model, with_lora), expected_lora)
    assert {name: getattr(model.pipe.components[name], "_hf_hook", None) for name in shared_hooks} == shared_hooks
    assert not any("lora" in name for name, _ in model.pipe.unet.named_modules())


def test_sequential_offload_refuses_loras(lora):
    model = tiny()
    model.config = dataclasses.replace(model.config, offload="sequential")
    with pytest.raises(InvalidInput, match="does not combine with offload sequential"):
        generate(model, dataclasses.replace(CONFIG, loras=(lora,)), progress=False)


def test_vae_slicing_keeps_the_pixels(default_pixels):
    assert np.array_equal(pixels(tiny(), dataclasses.replace(CONFIG, vae_slicing=True)), default_pixels)


BIG = GenerationConfig(prompts=("a red circle",), seed=3, steps=3, width=96, height=96)


def test_vae_tiling_stays_near_the_whole_decode_and_re_makes_from_its_png(tmp_path):
    from t2i.formats.png import save_png

    model = tiny()
    whole = pixels(model, BIG)
    tiled_result = generate(model, dataclasses.replace(BIG, vae_tiling=True, vae_tile_size=64), progress=False)[0]
    tiled = np.asarray(tiled_result.image, dtype=int)
    difference = np.abs(tiled - whole[0])
    # measured on tiny's random VAE: a mean of 1.6 levels, seams blended over 16 pixels
    assert 0.5 < difference.mean() < 3 and difference.max() < 40
    assert tiled_result.settings.vae_tile_size == 64
    path = save_png(tiled_result.image, tiled_result.settings, tmp_path)
    model_config, config = configs_from_png(path)
    assert (config.vae_tiling, config.vae_tile_size) == (True, 64)
    assert np.array_equal(pixels(model, config)[0], tiled)


def test_a_decode_out_of_memory_is_retried_in_tiles(caplog):
    model = tiny()
    tile_latents = model.pipe.vae.tile_sample_min_size // 2  # tiny's VAE halves: its own 32-pixel tiles

    def small_memory(_module, inputs):  # memory runs out above one tile's worth of latents
        if inputs[0].shape[-1] > tile_latents:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = model.pipe.vae.decoder.register_forward_pre_hook(small_memory)
    try:
        with caplog.at_level(logging.WARNING, logger="t2i"):
            result = generate(model, BIG, progress=False)[0]
        assert "ran out of memory: decoding again in 32-pixel tiles" in caplog.text
        assert result.settings.vae_tile_size == 32
        explicit = generate(model, dataclasses.replace(BIG, vae_tiling=True, vae_tile_size=32), progress=False)[0]
        assert np.array_equal(np.asarray(result.image), np.asarray(explicit.image))
        with pytest.raises(torch.OutOfMemoryError):  # nothing left to try: the error is the user's to see
            generate(model, dataclasses.replace(BIG, vae_tiling=True, vae_tile_size=64, vae_slicing=True),
                     progress=False)
    finally:
        handle.remove()


@pytest.mark.parametrize("args, message", [
    (["--offload", "model", "--device", "cpu"], "--offload model: offload keeps weights in CPU memory for a GPU"),
    (["--offload", "disk"], "--offload disk: unknown offload mode; choose one of model, sequential"),
    (["--vae-tiling", "--vae-tile-size", "100"], "--vae-tile-size 100: must be a multiple of 8, at least 32 (e.g. 96)"),
    (["--vae-tile-size", "64"], "--vae-tile-size 64: needs --vae-tiling"),
    (["--fuse-qkv", "--attention-slicing"], "--attention-slicing True: does not combine with --fuse-qkv"),
    (["--compile", "--offload", "sequential"], "--compile True: does not combine with --offload sequential"),
])
def test_options_that_cannot_run_are_one_line_usage_errors(args, message, run_cli, tmp_path):
    code, out, err = run_cli("generate", "x", "--model", "tiny", "--out", tmp_path / "out", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_compile_without_a_compiler_is_refused_before_loading(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    code, out, err = run_cli("generate", "x", "--model", "tiny", "--device", "cpu", "--compile",
                             "--out", tmp_path / "out")
    assert code == 2 and "--compile True: torch.compile on CPU needs a C++ compiler" in err
    assert "install g++" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_finetune_compile_without_a_compiler_is_refused_before_reading_weights(run_cli, tmp_path, monkeypatch):
    code, _, err = run_cli("shapes", "make-dataset", tmp_path / "data", "--count", "8")
    assert code == 0, err
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were read before the compiler check")

    monkeypatch.setattr("t2i.train.components.load_model", no_loading)
    code, out, err = run_cli("finetune", "--lora", "--model", "tiny", "--data", tmp_path / "data", "--output",
                             tmp_path / "run", "--max-steps", "1", "--compile")
    assert code == 2 and "--compile True: torch.compile on CPU needs a C++ compiler" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "train_config.json").exists()


def test_server_settings_check_the_runtime_options():
    from t2i.server.settings import ServerSettings

    assert ServerSettings(channels_last=True).model_config("demo").channels_last
    with pytest.raises(InvalidInput, match="unknown offload mode"):
        ServerSettings(offload="disk")


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_feature_reuse_on_unchanged_inputs_gives_the_whole_unets_output(preset):
    from t2i.sampling.feature_cache import cached_unet

    unet = load_model(ModelConfig(model=preset, device="cpu")).pipe.unet
    wrapped = cached_unet(unet, 3)
    torch.manual_seed(0)
    side = unet.config.sample_size
    sample = torch.randn(2, 4, side, side)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        whole = unet(sample, 500, context).sample
        first = wrapped(sample, 500, context, return_dict=False)[0]  # whole: keeps the deep features
        reused = wrapped(sample, 500, context).sample  # outer level only, on the kept features
        wrapped(sample, 500, context)
        again = wrapped(sample, 300, context).sample  # call 4 of interval 3: whole again
    assert torch.equal(first, whole) and torch.allclose(reused, whole, atol=1e-5)
    assert wrapped.feature_cache.calls == 4
    assert torch.equal(again, unet(sample, 300, context).sample)
    assert not hasattr(unet, "feature_cache") and unet.up_blocks[-1] is not wrapped.up_blocks[-1]
    assert all(a is b for a, b in zip(unet.up_blocks[:-1], wrapped.up_blocks[:-1]))


def test_feature_reuse_stays_near_the_full_image_and_re_makes(tmp_path):
    from t2i.formats.png import save_png

    model = load_model(ModelConfig(model="demo", device="cpu"))
    config = GenerationConfig(prompts=("a red circle",), seed=3, steps=20, num_images=2, batch_size=2)
    full = pixels(model, config)
    results = generate(model, dataclasses.replace(config, cache_interval=3), progress=False)
    cached = np.stack([np.asarray(r.image, dtype=int) for r in results])
    difference = np.abs(cached - full).mean()
    assert 0.5 < difference < 5  # measured on demo: 1.7 levels (its quality cost: benchmarks/bench_cache.py)
    assert results[1].settings.cache_interval == 3
    _, remade = configs_from_png(save_png(results[1].image, results[1].settings, tmp_path))
    assert np.array_equal(pixels(model, remade)[0], cached[1])  # the second of a batch re-makes alone


def test_feature_reuse_refuses_options_that_wrap_the_unet():
    model = tiny()
    model.config = dataclasses.replace(model.config, compile=True)
    with pytest.raises(InvalidInput, match="^cache_interval 2: does not combine with compile; leave one of them off$"):
        generate(model, dataclasses.replace(CONFIG, cache_interval=2), progress=False)


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_is_bf16_on_gpus_that_run_it_and_fp32_on_cpu(bf16, expected, monkeypatch):
    from t2i.models.loading import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert resolve_dtype("auto", torch.device("cuda")) == expected
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("fp16", torch.device("cuda")) == torch.float16
