"""kohya's training comforts on the tiny model: aspect-ratio buckets, a text-encoder LoRA, the optimizers
kohya users name; each resumed exactly, exported as kohya writes it, read back as the other tools read it."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import plain_pipeline
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file

from t2i.data.buckets import Bucketing
from t2i.errors import InvalidInput, MissingExtra
from t2i.train.config import FinetuneConfig
from t2i.train.trainer import Trainer, finetune

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30)}
# wide, tall and square images: the tiny model's step is 4 (VAE x2, one UNet halving), so 8 is a valid step
SIZES = [(48, 32)] * 4 + [(32, 48)] * 3 + [(32, 32)] * 2
BUCKETS = {"buckets": True, "bucket_min": 16, "bucket_max": 64, "bucket_step": 8}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A kohya folder of 9 images in three aspect ratios, a disc near one long edge of each."""
    root = tmp_path_factory.mktemp("mixed")
    for i, (w, h) in enumerate(SIZES):
        name, rgb = list(COLOURS.items())[i % 3]
        image = Image.new("RGB", (w, h), "white")
        box = (2, 2, 14, 14) if i % 2 else (w - 14, h - 14, w - 2, h - 2)
        ImageDraw.Draw(image).ellipse(box, fill=rgb)
        image.save(root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"a {name} circle")
    return root


def config(data, tmp_path, **overrides):
    values = {"data": str(data), "output": str(tmp_path / "run"), "model": "tiny", "resolution": 32, "batch_size": 2,
              "max_steps": 4, "learning_rate": 1e-3, "checkpoint_every": 0, "cache_dir": str(tmp_path / "cache"),
              "seed": 0}
    return FinetuneConfig(**{**values, **overrides})


def tokens(text="a red circle"):
    tokenizer = plain_pipeline().tokenizer
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def text_output(text_encoder):
    with torch.no_grad():
        return text_encoder(tokens())[0]


# ---- buckets -----------------------------------------------------------------------------------


def test_bucketed_training_draws_one_bucket_a_batch_and_records_kohyas_bucket_metadata(mixed, tmp_path,
                                                                                        monkeypatch):
    from t2i.train import step

    shapes = []
    original = step.training_loss

    def spy(unet, parts, config, batch, *args, **kwargs):
        shapes.append(tuple(batch["latent_mean"].shape))
        return original(unet, parts, config, batch, *args, **kwargs)

    monkeypatch.setattr("t2i.train.trainer.training_loss", spy)
    out = finetune(config(mixed, tmp_path, max_steps=6, export_kohya=True, **BUCKETS), progress=False)
    # kohya's buckets for 32^2 with step 8: 48x32 -> 40x24, 32x48 -> 24x40, 32x32 stays; latents are half size
    assert set(shapes) <= {(2, 4, 12, 20), (1, 4, 12, 20), (2, 4, 20, 12), (1, 4, 20, 12), (2, 4, 16, 16)}
    assert len({s[2:] for s in shapes}) == 3  # every bucket was drawn in 6 steps (one epoch is 2 + 2 + 1 batches)
    record = json.loads((out / "train_config.json").read_text())
    assert record["bucket_info"]["buckets"] == {"0": {"resolution": [24, 40], "count": 3},
                                                "1": {"resolution": [32, 32], "count": 2},
                                                "2": {"resolution": [40, 24], "count": 4}}
    with safe_open(out / "run.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_enable_bucket"] == "True" and metadata["ss_bucket_no_upscale"] == "False"
    assert (metadata["ss_min_bucket_reso"], metadata["ss_max_bucket_reso"]) == ("16", "64")
    assert metadata["ss_resolution"] == "(32, 32)"  # str() of kohya's (width, height) tuple
    info = json.loads(metadata["ss_bucket_info"])
    assert info["buckets"] == record["bucket_info"]["buckets"]
    assert info["mean_img_ar_error"] == pytest.approx((4 * abs(40 / 24 - 1.5) + 3 * abs(24 / 40 - 32 / 48)) / 9)


def test_the_latent_cache_is_keyed_by_bucket(mixed, tmp_path):
    cache = tmp_path / "cache"
    finetune(config(mixed, tmp_path / "square", max_steps=1, cache_dir=str(cache)), progress=False)
    square = {p.name for p in cache.rglob("*.safetensors")}
    finetune(config(mixed, tmp_path / "bucketed", max_steps=1, cache_dir=str(cache), **BUCKETS), progress=False)
    both = {p.name for p in cache.rglob("*.safetensors")}
    latents = [load_file(p)["mean"].shape for p in cache.rglob("*.safetensors") if p.name not in square]
    assert len(latents) == len(SIZES)  # each image encoded again, in its bucket; captions reused
    assert sorted(set(map(tuple, latents))) == [(4, 12, 20), (4, 16, 16), (4, 20, 12)]
    assert square < both


def test_the_held_out_loss_uses_each_images_bucket(mixed, tmp_path):
    from t2i.train.validation import held_out_set

    trainer = Trainer(config(mixed, tmp_path, val_fraction=0.5, validation_loss_every=1, **BUCKETS), progress=False)
    pipe = plain_pipeline()
    bucketing = Bucketing((32, 32), 16, 64, 8)
    from diffusers import DDPMScheduler

    held = held_out_set(trainer.config, pipe, DDPMScheduler(), "cpu", bucketing)
    sizes = sorted(tuple(g.latents.shape[2:]) for g in held.groups)
    assert len(held) >= 3 and len(sizes) >= 2 and set(sizes) <= {(12, 20), (20, 12), (16, 16)}
    spread = sorted(t for g in held.groups for t in g.timesteps.tolist())
    assert spread == sorted(set(spread)) and spread[0] < 1000 / len(held)  # spread evenly over all images


# ---- the text encoder's LoRA -------------------------------------------------------------------


def _merged_like_a1111(text_encoder, tensors: dict) -> torch.nn.Module:
    """Apply a kohya file's `lora_te_*` modules the way A1111's Lora extension and ComfyUI do: name each
    Linear of CLIP `lora_te_` + its transformers-4 path with '_', and add up @ down * alpha / rank to its weight."""
    for path, module in text_encoder.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        canonical = path if path.startswith("text_model.") else "text_model." + path
        name = "lora_te_" + canonical.replace(".", "_")
        if f"{name}.lora_down.weight" in tensors:
            down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
            scale = tensors[f"{name}.alpha"].item() / down.shape[0]
            module.weight.data += (up @ down) * scale
    return text_encoder


def test_a_text_encoder_lora_trains_saves_and_loads_in_diffusers_t2i_and_a1111(mixed, tmp_path):
    trainer = Trainer(config(mixed, tmp_path, train_text_encoder=True, text_encoder_lr=5e-3, rank=4, alpha=2,
                             export_kohya=True, max_steps=3), progress=False)
    out = trainer.run()
    trained = text_output(trainer.parts.model.pipe.text_encoder)
    base = text_output(plain_pipeline().text_encoder)
    assert not torch.allclose(trained, base, atol=1e-4), "the text encoder's LoRA must have learned something"
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 5e-3] and len(groups[1]["params"]) == 2 * 2 * 6  # 2 layers x 6 Linears

    diffusers_file = load_file(out / "pytorch_lora_weights.safetensors")
    te_keys = [k for k in diffusers_file if k.startswith("text_encoder.")]
    assert len(te_keys) == 24 and all(k.startswith("text_encoder.text_model.encoder.layers.") for k in te_keys)
    for file in (out / "pytorch_lora_weights.safetensors", out / "run.safetensors"):
        pipe = plain_pipeline()
        pipe.load_lora_weights(str(file))
        assert torch.allclose(text_output(pipe.text_encoder), trained, atol=1e-5), file.name

    kohya = load_file(out / "run.safetensors")
    te = {k: v for k, v in kohya.items() if k.startswith("lora_te_")}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in te
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2.alpha" in te
    assert len(te) == 2 * 6 * 3 and all(float(v) == 2.0 for k, v in te.items() if k.endswith(".alpha"))
    merged = _merged_like_a1111(plain_pipeline().text_encoder, kohya)
    assert torch.allclose(text_output(merged), trained, atol=1e-5)
    with safe_open(out / "run.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_text_encoder_lr"] == "0.005" and metadata["ss_unet_lr"] == "0.001"


def test_t2i_generates_with_a_text_encoder_lora(mixed, tmp_path, run_cli):
    out = finetune(config(mixed, tmp_path, train_text_encoder=True, text_encoder_lr=5e-2, max_steps=3),
                   progress=False)
    images = {}
    for name, extra in (("none", []), ("lora", ["--lora", str(out)])):
        code, stdout, stderr = run_cli("generate", "a red circle", "--model", "tiny", "--steps", "2", "--seed", "1",
                                       "--width", "32", "--height", "32", "--out", tmp_path / name, *extra)
        assert code == 0, stderr
        images[name] = np.asarray(Image.open(stdout.split()[-1]), dtype=np.float32)
    assert np.abs(images["none"] - images["lora"]).max() > 0


def test_a_text_encoder_lora_does_not_cache_text_embeddings_and_says_so(mixed, tmp_path, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level("INFO", logger="t2i"):
        finetune(config(mixed, tmp_path, train_text_encoder=True, max_steps=1), progress=False)
    entries = [load_file(p) for p in cache.rglob("*.safetensors")]
    assert len(entries) == len(SIZES) and all("text" not in e for e in entries)  # the latents alone
    assert "the text encoder is trained, so its embeddings change every step" in caplog.text


# ---- optimizers and exact resume ---------------------------------------------------------------


@pytest.mark.parametrize("optimizer, args", [
    ("adamw", ("weight_decay=0.05",)),
    ("prodigy", ("d_coef=0.5", "weight_decay=0.01")),
    ("adafactor", ()),
    ("lion", ("betas=(0.9,0.95)",)),
])
def test_each_optimizer_trains_and_resumes_mid_epoch_to_the_same_weights(mixed, tmp_path, optimizer, args):
    """Buckets, a text-encoder LoRA and gradient accumulation together: the hardest resume there is."""
    settings = dict(optimizer=optimizer, optimizer_args=args, train_text_encoder=True, max_steps=6,
                    checkpoint_every=3, checkpoints_keep=5, gradient_accumulation=2,
                    learning_rate=1.0 if optimizer == "prodigy" else 1e-3, **BUCKETS)
    straight = finetune(config(mixed, tmp_path / "straight", **settings), progress=False)
    expected = load_file(straight / "pytorch_lora_weights.safetensors")
    record = json.loads((straight / "train_config.json").read_text())
    assert record["optimizer"] == optimizer and record["optimizer_args"] == list(args)

    resumed_folder = tmp_path / "resumed" / "run"
    shutil.copytree(straight, resumed_folder)
    (resumed_folder / "pytorch_lora_weights.safetensors").unlink()
    checkpoint = resumed_folder / "checkpoints" / "checkpoint-000003"  # 2 micro-batches a step: mid-epoch 2
    finetune(config(mixed, tmp_path / "resumed", resume=str(checkpoint), **settings), progress=False)
    resumed = load_file(resumed_folder / "pytorch_lora_weights.safetensors")
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    first = load_file(checkpoint / "pytorch_lora_weights.safetensors")
    assert any(not torch.equal(first[k], expected[k]) for k in expected), "steps 4-6 must change the weights"


def test_ss_optimizer_is_written_as_kohya_writes_it(mixed, tmp_path):
    out = finetune(config(mixed, tmp_path, optimizer="adamw", optimizer_args=("weight_decay=0.05",), max_steps=1,
                          export_kohya=True), progress=False)
    with safe_open(out / "run.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.05)"
    assert metadata["ss_enable_bucket"] == "False" and metadata["ss_bucket_info"] == "null"


def test_resuming_with_another_optimizer_or_buckets_is_refused(mixed, tmp_path):
    finetune(config(mixed, tmp_path, max_steps=2, checkpoint_every=1), progress=False)
    for change in ({"optimizer": "lion"}, {"optimizer_args": ("weight_decay=0.1",)}, BUCKETS,
                   {"train_text_encoder": True}):
        with pytest.raises(InvalidInput, match=r"the checkpoint was made with other "):
            Trainer(config(mixed, tmp_path, max_steps=3, resume="latest", **change), progress=False).run()


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "sgd"}, "optimizer sgd: unknown optimizer; choose one of adamw, adamw8bit, prodigy, adafactor, lion"),
    ({"optimizer_args": ("weight_decay",)}, "optimizer_args weight_decay: must be key=value"),
    ({"optimizer_args": ("lr=1",)}, "optimizer_args lr=1: lr is set by t2i"),
    ({"text_encoder_lr": float("nan"), "train_text_encoder": True}, "text_encoder_lr nan: must be a finite number"),
    ({"text_encoder_lr": 1e-4}, "text_encoder_lr 0.0001: applies only when the text encoder is trained"),
    ({"bucket_min": 512, "bucket_max": 256, "buckets": True, "resolution": 256}, "bucket_min 512: is more than"),
    ({"bucket_step": 32}, "bucket_step 32: applies to bucketed training; add buckets"),
    ({"train_text_encoder": True, "lora": False}, "train_text_encoder: trains a LoRA on the text encoder"),
])
def test_bad_settings_are_refused_on_creation(mixed, tmp_path, overrides, message):
    with pytest.raises(InvalidInput) as caught:
        config(mixed, tmp_path, **overrides)
    assert message in str(caught.value)


@pytest.mark.parametrize("overrides, error, message", [
    ({"optimizer_args": ("momentum=0.9",)}, InvalidInput, "optimizer_args momentum=0.9: AdamW takes no argument 'momentum'"),
    ({"optimizer": "adamw8bit"}, InvalidInput, "bitsandbytes's 8-bit optimizers run on CUDA GPUs only"),
    ({"bucket_step": 6, **{k: v for k, v in BUCKETS.items() if k != "bucket_step"}}, InvalidInput,
     "bucket_step 6: this model's downsampling needs bucket sides in multiples of 4; use one of 4, 8, 12, 16"),
    ({"optimizer": "adamw", "optimizer_args": ("betas=(2.0,0.9)",)}, InvalidInput, "AdamW refused its arguments"),
])
def test_bad_settings_are_refused_before_anything_is_written(mixed, tmp_path, overrides, error, message):
    with pytest.raises(error) as caught:
        finetune(config(mixed, tmp_path, **overrides), progress=False)
    assert message in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_missing_optimizer_package_is_named_with_its_install_command(mixed, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_lion(name, *args, **kwargs):
        if name.startswith("lion_pytorch"):
            raise ImportError("No module named 'lion_pytorch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_lion)
    monkeypatch.delitem(__import__("sys").modules, "lion_pytorch", raising=False)
    with pytest.raises(MissingExtra, match="pip install lion-pytorch"):
        finetune(config(mixed, tmp_path, optimizer="lion"), progress=False)


def test_no_upscale_refuses_an_image_smaller_than_the_step(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (40, 24), "white").save(data / "big.png")
    Image.new("RGB", (6, 20), "white").save(data / "thin.png")
    for name in ("big", "thin"):
        (data / f"{name}.txt").write_text("a thing")
    with pytest.raises(InvalidInput, match=r"image thin.png is 6x20, smaller than the smallest bucket \(8x8\)"):
        finetune(config(data, tmp_path, bucket_no_upscale=True, **BUCKETS), progress=False)
    assert not (tmp_path / "run").exists()


# ---- the proof in the shapes world ------------------------------------------------------------


@pytest.mark.slow
def test_a_lora_trained_in_buckets_follows_prompts_at_a_wide_size_where_square_crops_fail(tmp_path, run_cli):
    """Two LoRAs from the shipped demo on 1024 wide and tall images (48x32, 32x48) whose shapes sit near a long
    side's end, the same recipe but square crops vs kohya's buckets; `t2i evaluate` at 40x24 (the wide bucket),
    256 held-out prompts, the same seeds. Measured (accuracy, colour and shape both right): base 92.6%
    [89.0, 95.3], crops 68.0% [63.0, 72.7], buckets 93.4% [90.5, 96.4]; at 24x40 96.9 / 73.4 / 94.1, at 32x32
    95.3 / 74.2 / 93.8. The crop-trained LoRA learned objects cut by the frame, as its captions never said."""
    from t2i.eval.run import EvalConfig, evaluate

    for name, count, seed in (("data", 1024, 7), ("eval", 2800, 11)):
        code, _, stderr = run_cli("shapes", "make-dataset", tmp_path / name, "--count", str(count), "--seed",
                                  str(seed), "--frame", "48x32", "--frame", "32x48")
        assert code == 0, stderr
    for kind, extra in (("crop", []), ("bucket", ["--buckets", "--bucket-min", "16", "--bucket-max", "64",
                                                  "--bucket-step", "8"])):
        code, _, stderr = run_cli("finetune", "--lora", "--model", "demo", "--data", tmp_path / "data", "--output",
                                  tmp_path / kind, "--resolution", "32", "--rank", "8", "--batch-size", "32",
                                  "--max-steps", "200", "--learning-rate", "2e-3", "--cache-dir", tmp_path / "cache",
                                  *extra)
        assert code == 0, stderr
    config = EvalConfig(model="demo", data=str(tmp_path / "eval"), loras=(str(tmp_path / "crop"),
                        str(tmp_path / "bucket")), num_samples=256, metrics=("accuracy",), width=40, height=24)
    results = evaluate(config, tmp_path / "report", log=lambda _: None)["results"]
    base, crop, bucket = (results[name]["7.5"]["accuracy"] for name in ("base", "lora-crop", "lora-bucket"))
    assert bucket["ci"][0] > crop["ci"][1], (crop, bucket)  # buckets beat crops, intervals apart
    assert bucket["value"] >= 0.85 and crop["value"] <= 0.8, (crop, bucket)
    assert bucket["ci"][1] >= base["ci"][0], (base, bucket)  # and keep the base's prompt following
