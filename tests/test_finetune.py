"""Fine-tuning on the tiny model: LoRA files every tool loads, exact resume, real clipping, scale-out."""

import csv
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CountingBackend, pixels, plain_pipeline
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file

from t2i.errors import InvalidInput, LoadError, T2IError, TrainingError
from t2i.formats.png import read_png_text as read_metadata
from t2i.train.config import FinetuneConfig
from t2i.train.trainer import Trainer, finetune

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A kohya folder: 12 circles and squares with two captions each, plus one broken file; each image's
    mask is its control image in conditioning/ (kohya's ControlNet layout)."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "conditioning").mkdir()
    for i in range(12):
        name, rgb = list(COLOURS.items())[i % 4]
        shape = "circle" if i % 2 else "square"
        image, mask = Image.new("RGB", (40, 36), "white"), Image.new("RGB", (40, 36), "black")
        for picture, fill in ((image, rgb), (mask, "white")):
            draw = ImageDraw.Draw(picture)
            (draw.ellipse if shape == "circle" else draw.rectangle)((8 + i % 3, 6, 30, 28), fill=fill)
        image.save(root / f"{i:02d}.png")
        mask.save(root / "conditioning" / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"a {name} {shape}\na {shape} in {name}")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n")
    (root / "broken.txt").write_text("never read")
    return root


def config(shapes, tmp_path, **overrides):
    values = {"data": str(shapes), "output": str(tmp_path / "run"), "model": "tiny", "resolution": 32,
              "batch_size": 2, "max_steps": 4, "learning_rate": 1e-3, "checkpoint_every": 0,
              "cache_dir": str(tmp_path / "cache"), "seed": 0}
    return FinetuneConfig(**{**values, **overrides})


def unet_output(unet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700]), context).sample


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("targets, modules", [("cross", 16), ("full", 48)])
def test_lora_files_load_in_plain_diffusers_and_match_the_trained_unet(shapes, tmp_path, targets, modules):
    run = config(shapes, tmp_path, lora_targets=targets, rank=4, alpha=2, export_kohya=True)
    trainer = Trainer(run, progress=False)
    out = trainer.run()
    trained = unet_output(trainer.trained_unet)
    base = unet_output(plain_pipeline().unet)
    assert not torch.allclose(trained, base, atol=1e-5), "the LoRA must have learned something"
    for file in (out / "pytorch_lora_weights.safetensors", out / "run.safetensors"):
        pipe = plain_pipeline()
        pipe.load_lora_weights(str(file))
        assert sum(name.endswith("lora_A") for name, _ in pipe.unet.named_modules()) == modules
        assert torch.allclose(unet_output(pipe.unet), trained, atol=1e-5), file.name


def test_kohya_file_has_true_alpha_and_a1111_metadata(shapes, tmp_path):
    out = finetune(config(shapes, tmp_path, lora_targets="full", rank=4, alpha=2, export_kohya=True), progress=False)
    tensors = load_file(out / "run.safetensors")
    alphas = [v for k, v in tensors.items() if k.endswith(".alpha")]
    assert len(alphas) == 48 and all(float(a) == 2.0 for a in alphas)
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 32, 1, 1)
    with safe_open(out / "run.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    # kohya's sshs hashes: of the file the tensors make with only the ss_ metadata, as its scripts compute them
    from safetensors.torch import save

    ss_only = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    data_start = 8 + int.from_bytes(ss_only[:8], "little")
    assert metadata["sshs_model_hash"] == hashlib.sha256(ss_only[data_start:]).hexdigest()
    assert metadata["sshs_legacy_hash"] == hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    with safe_open(out / "pytorch_lora_weights.safetensors", "pt") as f:
        assert '"unet.lora_alpha": 2.0' in f.metadata()["lora_adapter_metadata"]


def test_generate_uses_both_lora_formats(shapes, tmp_path, run_cli):
    out = finetune(config(shapes, tmp_path, export_kohya=True, max_steps=3, learning_rate=5e-2), progress=False)
    images, texts = {}, {}
    for name, lora in (("none", None), ("diffusers", out), ("kohya", out / "run.safetensors")):
        args = ["generate", "a red circle", "--model", "tiny", "--steps", "4", "--seed", "1", "--sampler", "ddim",
                "--out", tmp_path / name] + (["--lora", lora] if lora else [])
        code, stdout, stderr = run_cli(*args)
        assert code == 0, stderr
        images[name] = pixels(stdout.split()[0])
        texts[name] = read_metadata(stdout.split()[0])[0]
    assert not np.array_equal(images["none"], images["diffusers"])
    assert np.abs(images["diffusers"] - images["kohya"]).max() <= 1  # same weights, two file formats
    # A1111 names the LoRA by the addnet hash of the file its users have: the kohya export, for both refs
    kohya_file = (out / "run.safetensors").read_bytes()
    header = 8 + int.from_bytes(kohya_file[:8], "little")
    expected = hashlib.sha256(kohya_file[header:]).hexdigest()[:12]
    assert f'Lora hashes: "run: {expected}"' in texts["diffusers"] and f'"run: {expected}"' in texts["kohya"]
    assert hashlib.sha256(kohya_file).hexdigest()[:12] != expected


def test_a_file_without_kohya_hashes_is_named_by_its_addnet_hash(tmp_path):
    from safetensors.torch import save_file

    from t2i.formats.hashes import lora_hash

    file = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(6.0)}, file, metadata={"note": "edited later"})
    data = file.read_bytes()
    assert lora_hash(file) == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
    save_file({"a": torch.arange(6.0)}, file, metadata={"sshs_model_hash": "f" * 64})
    assert lora_hash(file) == "f" * 12  # the stored hash takes precedence, as in A1111


def test_outputs_logs_and_config_are_written(shapes, tmp_path):
    out = finetune(config(shapes, tmp_path, validation_prompts=("a red circle", "a blue square"), validate_every=2),
                   progress=False)
    record = json.loads((out / "train_config.json").read_text())
    assert record["rank"] == 4 and record["layout"] == "kohya"
    assert record["images"] == 12 and record["skipped_images"] == 1
    rows = read_csv(out / "loss.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(np.isfinite(float(r["loss"])) for r in rows)
    assert (out / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert Image.open(out / "validation" / "step-000004.png").size == (64, 32)  # 2 prompts side by side
    assert list((out / "t2i-finetune").rglob("events.out.tfevents*")), "TensorBoard events"


def test_the_validation_loss_is_held_out_fixed_and_logged(shapes, tmp_path):
    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model
    from t2i.train.validation import held_out_set, validation_loss

    settings = config(shapes, tmp_path, val_fraction=0.25, validation_loss_every=2, max_steps=5)
    out = finetune(settings, progress=False)
    rows = read_csv(out / "loss.csv")
    held_out = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert sorted(held_out) == [0, 2, 4, 5], "before training, every 2 steps, and at the end"
    assert rows[0]["loss"] == "" and all(np.isfinite(list(held_out.values())))
    assert len({round(v, 9) for v in held_out.values()}) == 4, "the weights changed, so the loss did"
    # the logged number is the held-out MSE of the saved LoRA on the fixed noise: recomputed, it is the same
    model = load_model(ModelConfig(model="tiny", device="cpu"))
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    held = held_out_set(settings, model.pipe, scheduler, "cpu")
    assert len(held) == 3 and held.groups[0].timesteps.tolist() == [166, 500, 833]  # 3 of 12 held out, t spread evenly
    from contextlib import nullcontext

    assert validation_loss(model.pipe.unet, held, scheduler, nullcontext) == pytest.approx(held_out[0], rel=1e-5)
    model.pipe.load_lora_weights(str(out))
    assert validation_loss(model.pipe.unet, held, scheduler, nullcontext) == pytest.approx(held_out[5], rel=1e-4)
    # another run, other learning rate, same data and split: the same starting point, then its own curve
    other = finetune(config(shapes, tmp_path / "b", val_fraction=0.25, validation_loss_every=2, max_steps=2,
                            learning_rate=1e-2), progress=False)
    other_rows = {int(r["step"]): r["val_loss"] for r in read_csv(other / "loss.csv") if r["val_loss"]}
    assert float(other_rows[0]) == held_out[0] and float(other_rows[2]) != held_out[2]
    assert (out / "loss.png").stat().st_size > 1000


def test_a_validation_loss_needs_held_out_images(shapes, tmp_path):
    with pytest.raises(InvalidInput, match="no readable 'val' images for the validation loss.*val_fraction"):
        finetune(config(shapes, tmp_path, validation_loss_every=2), progress=False)
    with pytest.raises(InvalidInput, match="must be a held-out split"):
        config(shapes, tmp_path, validation_split="train")


def test_gradient_clipping_really_clips(shapes, tmp_path):
    out = finetune(config(shapes, tmp_path, max_grad_norm=1e-4), progress=False)
    for row in read_csv(out / "loss.csv"):
        assert float(row["grad_norm"]) > 1e-3  # the raw gradient is far larger...
        assert float(row["clipped_grad_norm"]) <= 1e-4 * 1.001  # ...and what the optimizer saw is clipped


def test_cached_and_uncached_training_agree(shapes, tmp_path):
    cached = finetune(config(shapes, tmp_path / "a"), progress=False)
    uncached = finetune(config(shapes, tmp_path / "b", cache=False), progress=False)
    assert np.allclose([float(r["loss"]) for r in read_csv(cached / "loss.csv")],
                       [float(r["loss"]) for r in read_csv(uncached / "loss.csv")], rtol=1e-4)
    a, b = load_file(cached / "pytorch_lora_weights.safetensors"), load_file(uncached / "pytorch_lora_weights.safetensors")
    # Adam divides each update by the gradient's running RMS, so a weight whose gradient is near zero moves by
    # ~lr whatever the gradient's last digits (the VAE encodes 12 images at once for the cache, 2 per step
    # without): bound by 1e-4, against 4 steps x lr 1e-3 = 4e-3 of possible movement
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_an_existing_run_is_never_overwritten(shapes, tmp_path):
    finetune(config(shapes, tmp_path, max_steps=1), progress=False)
    with pytest.raises(InvalidInput, match="already holds a training run"):
        finetune(config(shapes, tmp_path, max_steps=1), progress=False)


def test_resume_with_other_settings_is_refused(shapes, tmp_path):
    finetune(config(shapes, tmp_path, max_steps=4, checkpoint_every=2), progress=False)
    with pytest.raises(InvalidInput, match="made with other rank"):
        finetune(config(shapes, tmp_path, max_steps=6, rank=8, resume="latest"), progress=False)


def test_resume_with_a_changed_learning_rate_is_refused_not_silently_ignored(shapes, tmp_path):
    finetune(config(shapes, tmp_path, max_steps=4, checkpoint_every=2), progress=False)
    with pytest.raises(InvalidInput, match="made with other learning_rate"):
        finetune(config(shapes, tmp_path, max_steps=6, learning_rate=0.5, resume="latest"), progress=False)


def test_resume_before_any_checkpoint_starts_from_step_0_in_the_same_folder(shapes, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}")  # a run killed before its first checkpoint
    finetune(config(shapes, tmp_path, max_steps=2, resume="latest"), progress=False)
    assert "starting from step 0 in the same folder" in caplog.text
    assert [int(r["step"]) for r in read_csv(out / "loss.csv")] == [1, 2]
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_a_damaged_checkpoint_is_named_and_resume_falls_back_to_the_one_before(shapes, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="t2i")
    out = finetune(config(shapes, tmp_path, max_steps=6, checkpoint_every=2), progress=False)
    uninterrupted = load_file(out / "pytorch_lora_weights.safetensors")
    newest = out / "checkpoints" / "checkpoint-000004"
    optimizer = newest / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(LoadError, match="checkpoint-000004: the checkpoint is damaged"):
        finetune(config(shapes, tmp_path, max_steps=6, checkpoint_every=2, resume=str(newest)), progress=False)
    finetune(config(shapes, tmp_path, max_steps=6, checkpoint_every=2, resume="latest"), progress=False)
    assert "checkpoint-000004 is damaged" in caplog.text and "checkpoint-000002 at step 2" in caplog.text
    resumed = load_file(out / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert [int(r["step"]) for r in read_csv(out / "loss.csv")] == [1, 2, 3, 4, 5, 6]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(shapes, tmp_path):
    with pytest.raises(T2IError, match="the loss became .* training stopped"):
        finetune(config(shapes, tmp_path, learning_rate=1e12, max_steps=30, checkpoint_every=1,
                        checkpoints_keep=2, max_grad_norm=1e9), progress=False)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, "a checkpoint from before the failure is kept"
    weights = load_file(checkpoints[-1] / "pytorch_lora_weights.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_isolated_ranks_are_refused(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what `accelerate launch --multi_gpu` sets on a machine without GPUs
    with pytest.raises(T2IError, match="did not form one group"):
        Trainer(config(shapes, tmp_path))


def test_whole_unet_finetune_with_ema_saves_a_model_t2i_loads(shapes, tmp_path):
    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model

    out = finetune(config(shapes, tmp_path, lora=False, ema=True, max_steps=2, learning_rate=1e-3), progress=False)
    model = load_model(ModelConfig(model=str(out), device="cpu"))
    assert not torch.allclose(unet_output(model.pipe.unet), unet_output(plain_pipeline().unet), atol=1e-6)
    assert model.scheduler_config["beta_schedule"] == "scaled_linear"


def _cli(shapes, tmp_path, *extra):
    return [sys.executable, "-m", "t2i", "finetune", "--data", str(shapes), "--output", str(tmp_path / "run"),
            "--model", "tiny", "--resolution", "32", "--batch-size", "2", "--learning-rate", "1e-3",
            "--cache-dir", str(tmp_path / "cache"), "--seed", "5", *extra]


@pytest.mark.slow
def test_run_killed_mid_way_resumes_to_the_same_weights(shapes, tmp_path):
    steps = ["--max-steps", "40", "--checkpoint-every", "5", "--gradient-accumulation", "2"]
    reference = finetune(config(shapes, tmp_path / "ref", max_steps=40, gradient_accumulation=2, seed=5,
                                checkpoint_every=5), progress=False)

    process = subprocess.Popen(_cli(shapes, tmp_path / "killed", *steps), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    target = tmp_path / "killed" / "run" / "checkpoints" / "checkpoint-000010"
    deadline = time.monotonic() + 240
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    out = tmp_path / "killed" / "run"
    assert target.exists() and not (out / "pytorch_lora_weights.safetensors").exists(), "killed before the end"

    result = subprocess.run(_cli(shapes, tmp_path / "killed", *steps, "--resume", "latest"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed, expected = load_file(out / "pytorch_lora_weights.safetensors"), load_file(
        reference / "pytorch_lora_weights.safetensors")
    assert max((resumed[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
    assert [int(r["step"]) for r in read_csv(out / "loss.csv")] == list(range(1, 41))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--buckets", "--bucket-min", "16", "--bucket-max", "64", "--bucket-step", "8",
                                         "--train-text-encoder", "--optimizer", "lion"], ["--controlnet"]],
                         ids=["plain", "kohya", "controlnet"])
def test_two_cpu_processes_train_in_sync_and_only_rank_0_writes(shapes, tmp_path, extra):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "t2i",
               *_cli(shapes, tmp_path)[3:], "--max-steps", "3", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d) of 2: trained weights sha256 ([0-9a-f]{16})", result.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    out = tmp_path / "run"
    assert [int(r["step"]) for r in read_csv(out / "loss.csv")] == [1, 2, 3]  # one writer, no doubled rows
    assert json.loads((out / "train_config.json").read_text())["processes"] == 2


def test_precision_set_on_the_launcher_only_keeps_trainable_weights_in_fp32(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    trainer = Trainer(config(shapes, tmp_path, max_steps=2), progress=False)
    trainer.run()
    unet = trainer.trained_unet
    lora = {p.dtype for n, p in unet.named_parameters() if "lora" in n}
    frozen = {p.dtype for n, p in unet.named_parameters() if "lora" not in n}
    assert lora == {torch.float32} and frozen == {torch.bfloat16}
    assert all(np.isfinite(float(r["loss"])) for r in read_csv(tmp_path / "run" / "loss.csv"))


def _losses(out):
    return np.array([float(r["loss"]) for r in read_csv(out / "loss.csv")])


@pytest.fixture
def v_prediction_model(tmp_path, tiny_folder):
    import shutil

    folder = tmp_path / "tiny-v"
    shutil.copytree(tiny_folder, folder)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**scheduler,
                                                                            "prediction_type": "v_prediction"}))
    return str(folder)


@pytest.mark.parametrize("option, same_as_baseline", [
    ({"gradient_checkpointing": True}, True),  # recomputes activations: same numbers
    ({"channels_last": True}, True),  # another memory layout: the same sums, to rounding
    ({"lr_scheduler": "cosine", "lr_warmup_steps": 2}, False),
    ({"snr_gamma": 0.5}, False),  # below most timesteps' SNR, so nearly every sample is re-weighted
    ({"noise_offset": 0.1}, False),
    ({"model": "v"}, False),
])
def test_training_options_take_effect(shapes, tmp_path, option, same_as_baseline, v_prediction_model):
    option = {**option, "model": v_prediction_model} if option.get("model") == "v" else option
    baseline = _losses(finetune(config(shapes, tmp_path / "base", max_steps=3), progress=False))
    varied = finetune(config(shapes, tmp_path / "varied", max_steps=3, **option), progress=False)
    assert np.allclose(_losses(varied), baseline, rtol=1e-5) == same_as_baseline
    if "lr_scheduler" in option:
        assert [float(r["lr"]) for r in read_csv(varied / "loss.csv")][:2] == [5e-4, 1e-3]  # linear warm-up


def test_a_compiled_unet_trains_the_same_curve_and_compiles_once(shapes, tmp_path, monkeypatch):
    backend = CountingBackend()
    monkeypatch.setattr("t2i.train.components.COMPILE_BACKEND", backend)
    baseline = _losses(finetune(config(shapes, tmp_path / "base", max_steps=4), progress=False))
    compiled = finetune(config(shapes, tmp_path / "compiled", max_steps=4, compile=True), progress=False)
    assert np.allclose(_losses(compiled), baseline, rtol=1e-5)
    assert 1 <= backend.graphs <= 2  # one UNet graph for all 4 steps (two if dynamo splits it at a peft call)
    weights = load_file(compiled / "pytorch_lora_weights.safetensors")
    assert weights and all("_orig_mod" not in key for key in weights)  # compiled in place: the usual keys


def test_only_the_newest_checkpoints_are_kept(shapes, tmp_path):
    finetune(config(shapes, tmp_path, max_steps=6, checkpoint_every=1, checkpoints_keep=2), progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["checkpoint-000004", "checkpoint-000005"]  # step 6 is the final output itself


@pytest.mark.parametrize("extra, message", [
    (["--lora-targets", "everything"], "--lora-targets everything: unknown target set; choose one of cross, attention"),
    (["--random-crop"], "--random-crop: gives a new crop every epoch, so its latents cannot be cached; turn --cache off"),
    (["--resume", "nowhere"], "--resume nowhere: no such checkpoint folder"),
    (["--noise-offset", "nan"], "--noise-offset nan: must be a finite number"),
    (["--export", "ckpt"], "--export ckpt: the only extra format is kohya"),
    (["--mixed-precision", "fp8"], "--mixed-precision fp8"),
    (["--rank", "0"], "--rank 0: must be at least 1"),
    (["--optimizer", "sgd"], "--optimizer sgd: unknown optimizer; choose one of adamw, adamw8bit, prodigy"),
    (["--optimizer-args", "weight_decay"], "--optimizer-args weight_decay: must be key=value"),
    (["--optimizer-args", "momentum=0.9"], "--optimizer-args momentum=0.9: AdamW takes no argument 'momentum'"),
    (["--optimizer", "adamw8bit"], "--optimizer adamw8bit: bitsandbytes's 8-bit optimizers run on CUDA GPUs only"),
    (["--buckets", "--bucket-min", "512", "--bucket-max", "256"], "--bucket-min 512: is more than --bucket-max 256"),
    (["--buckets", "--bucket-step", "6", "--bucket-min", "16", "--bucket-max", "64"],
     "--bucket-step 6: this model's downsampling needs bucket sides in multiples of 4"),
    (["--bucket-no-upscale"], "--bucket-no-upscale: applies to bucketed training; add --buckets"),
    (["--train-text-encoder", "--text-encoder-lr", "inf"], "--text-encoder-lr inf: must be a finite number"),
    (["--text-encoder-lr", "1e-4"], "--text-encoder-lr 0.0001: applies only when the text encoder is trained; "
                                    "add --train-text-encoder"),
])
def test_bad_finetune_input_is_one_line_exit_2(shapes, tmp_path, run_cli, extra, message):
    code, _, stderr = run_cli("finetune", "--data", shapes, "--output", tmp_path / "run", "--model", "tiny",
                              "--resolution", "32", "--max-steps", "1", "--cache-dir", tmp_path / "cache", *extra)
    errors = [line for line in stderr.splitlines() if line.startswith("t2i: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], stderr
    assert not (tmp_path / "run" / "pytorch_lora_weights.safetensors").exists()


def test_missing_data_folder_is_a_usage_error(tmp_path, run_cli):
    code, _, stderr = run_cli("finetune", "--data", tmp_path / "nope", "--output", tmp_path / "run", "--model", "tiny")
    assert code == 2 and "--data" in stderr and "no such folder" in stderr


# ---- the loss's formulas against the diffusers example's computation, on fixed tensors ------------


def _example_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma):
    """The diffusers text-to-image example's loss, transcribed: its target, and its Min-SNR weighting
    (stack [snr, gamma] and take the min, then / snr or / (snr + 1)); SNR from the closed form."""
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = alphas.sqrt()[:, None, None, None] * noise - (1 - alphas).sqrt()[:, None, None, None] * latents
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    if snr_gamma:
        weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
        weights = weights / snr if scheduler.config.prediction_type == "epsilon" else weights / (snr + 1)
        loss = loss * weights
    return loss.mean()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("snr_gamma", [0, 0.5, 5.0])
def test_the_loss_equals_the_diffusers_example_on_fixed_tensors(prediction_type, snr_gamma):
    from diffusers import DDPMScheduler

    from t2i.train.step import min_snr_weights, prediction_target, weighted_mse

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    latents, noise, prediction = (torch.randn(6, 4, 8, 8, generator=generator) for _ in range(3))
    timesteps = torch.tensor([0, 10, 250, 500, 900, 999])
    weights = min_snr_weights(scheduler, timesteps, snr_gamma) if snr_gamma else None
    ours = weighted_mse(prediction, prediction_target(scheduler, latents, noise, timesteps), weights)
    expected = _example_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma)
    assert torch.allclose(ours, expected, rtol=1e-6, atol=0), (float(ours), float(expected))
    if snr_gamma == 0.5:  # the weighting really acts at these timesteps
        assert not torch.allclose(ours, weighted_mse(prediction, prediction_target(scheduler, latents, noise,
                                                                                   timesteps), None))


def test_noise_offset_adds_a_per_channel_constant_as_the_example_does():
    from t2i.train.step import draw_noise

    shape = torch.Size((3, 4, 8, 8))
    ours = draw_noise(torch.Generator().manual_seed(7), shape, 0.1)
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(shape, generator=generator)
    expected = noise + 0.1 * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    assert torch.equal(ours, expected)
    assert torch.equal(draw_noise(torch.Generator().manual_seed(7), shape, 0), noise)
    per_channel = (ours - noise).flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-6)


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 41472 vs 41364"),  # torch.save's
    OSError(28, "No space left on device"),
])
def test_a_full_disk_during_a_checkpoint_is_said_and_leaves_no_partial_folder(shapes, tmp_path, monkeypatch, failure):
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = []

    def filling_up(self, output_dir, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint finds the disk full half-way through its files
            (Path(output_dir) / "optimizer.bin").write_bytes(b"half")
            raise failure
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", filling_up)
    with pytest.raises(TrainingError) as error:
        finetune(config(shapes, tmp_path, max_steps=4, checkpoint_every=1), progress=False)
    folder = tmp_path / "run" / "checkpoints"
    assert f"the disk holding {folder} is full: checkpoint 2 was not written" in str(error.value)
    assert "checkpoint-000001 is intact" in str(error.value) and "resume latest" in str(error.value)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-000001"], "no partial folder is left"
