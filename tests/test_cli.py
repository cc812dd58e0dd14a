"""`t2i` as a user runs it: outputs, metadata, re-runs, and one clear line for every bad input."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import pixels
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from t2i.errors import InvalidInput
from t2i.formats.png import read_png_text as read_metadata

TINY = ("--model", "tiny", "--steps", "4", "--device", "cpu")


def outputs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_generate_writes_named_pngs_with_a1111_infotext_and_prints_their_paths(run_cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli("generate", "a red bicycle, leaning: on a wall", *TINY, "--seed", "5", "--num-images",
                              "2", "--negative-prompt", "blurry", "--sampler", "DPM++ 2M", "--schedule", "karras",
                              "--guidance-scale", "6", "--clip-skip", "2", "--out", out)
    assert code == 0
    assert outputs(out) == ["00001-5.png", "00002-6.png"]
    assert stdout.split() == [str(out / "00001-5.png"), str(out / "00002-6.png")]
    text, settings = read_metadata(out / "00002-6.png")
    assert text == ("a red bicycle, leaning: on a wall\nNegative prompt: blurry\n"
                    "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 6, Size: 32x32, "
                    "Model: tiny, Clip skip: 2, Version: t2i 0.1.0")
    assert (settings["sampler"], settings["schedule"], settings["clip_skip"]) == ("dpmpp-2m", "karras", 2)


def test_prompt_names_never_become_paths_and_files_are_never_overwritten(run_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00001-1.png").write_bytes(b"precious")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("../../escape\n\n/etc/passwd\n", encoding="utf-8")
    code, _, _ = run_cli("generate", "--prompts-file", prompts, *TINY, "--seed", "1", "--out", out)
    assert code == 0
    assert outputs(out) == ["00001-1.png", "00002-1.png", "00003-2.png"]
    assert (out / "00001-1.png").read_bytes() == b"precious"
    assert not list(tmp_path.parent.glob("escape*"))


def test_from_image_remakes_the_image_exactly(run_cli, tmp_path, init_image):
    first = tmp_path / "first"
    code, _, _ = run_cli("generate", "a cat", "a dog", *TINY, "--seed", "77", "--batch-size", "2",
                         "--sampler", "euler_ancestral", "--init-image", init_image, "--strength", "0.7",
                         "--out", first)
    assert code == 0
    code, _, _ = run_cli("generate", "--from-image", first / "00002-78.png", "--out", tmp_path / "again")
    assert code == 0
    again = tmp_path / "again" / "00001-78.png"
    assert np.array_equal(pixels(again), pixels(first / "00002-78.png"))
    assert read_metadata(again)[1]["prompt"] == "a dog"
    # flags given beside --from-image override the recorded settings
    code, _, _ = run_cli("generate", "--from-image", first / "00002-78.png", "--seed", "3", "--out", tmp_path / "x")
    assert code == 0 and outputs(tmp_path / "x") == ["00001-3.png"]


@pytest.mark.parametrize("sampler, label", [("ddpm", "DDPM"), ("deis", "DEIS")])
def test_samplers_a1111_lacks_are_remade_exactly_from_the_png(run_cli, tmp_path, sampler, label):
    code, stdout, stderr = run_cli("generate", "a cat", *TINY, "--seed", "3", "--sampler", sampler, "--out", tmp_path / "a")
    assert code == 0, stderr
    first = stdout.split()[0]
    assert f"Sampler: {label}," in read_metadata(first)[0]  # A1111 would read DPM++ 2M: t2i's JSON keeps it
    code, stdout, stderr = run_cli("generate", "--from-image", first, "--out", tmp_path / "b")
    assert code == 0, stderr
    assert read_metadata(stdout.split()[0])[1]["sampler"] == sampler
    assert np.array_equal(pixels(stdout.split()[0]), pixels(first))


@pytest.mark.parametrize("emphasis, label", [("original", None), ("no-norm", "No norm"), ("none", "None")])
def test_emphasised_and_long_prompts_are_recorded_and_remade_exactly(run_cli, tmp_path, emphasis, label):
    prompt = "a (red:1.3) [cat], " + "on a mat, " * 30 + "BREAK a dog"
    code, stdout, stderr = run_cli("generate", prompt, *TINY, "--seed", "4", "--emphasis", emphasis,
                                   "--clip-skip", "2", "--out", tmp_path / "a")
    assert code == 0, stderr
    first = stdout.split()[0]
    text = read_metadata(first)[0]
    assert text.startswith(prompt + "\n") and (f"Emphasis: {label}," in text if label else "Emphasis" not in text)
    code, stdout, stderr = run_cli("generate", "--from-image", first, "--out", tmp_path / "b")
    assert code == 0, stderr
    assert np.array_equal(pixels(stdout.split()[0]), pixels(first))


def test_info_prints_infotext_and_settings(run_cli, tmp_path):
    run_cli("generate", "a fox", *TINY, "--seed", "2", "--out", tmp_path)
    code, stdout, _ = run_cli("info", tmp_path / "00001-2.png")
    assert code == 0
    assert stdout.startswith("a fox\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras")
    assert json.loads(stdout[stdout.index("{"):])["seed"] == 2


def test_non_latin1_prompt_is_stored_as_itxt(run_cli, tmp_path):
    run_cli("generate", "一只猫 on a mat", *TINY, "--seed", "2", "--out", tmp_path)
    assert read_metadata(tmp_path / "00001-2.png")[0].startswith("一只猫 on a mat\n")


def test_lora_tags_and_hashes_are_recorded(run_cli, tmp_path):
    """A LoRA applied by --lora shows in the infotext as A1111 writes it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from t2i.models.presets import tiny_components

    unet = tiny_components()["unet"]
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights="gaussian"))
    folder = tmp_path / "style"
    StableDiffusionPipeline.save_lora_weights(folder, convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    code, _, err = run_cli("generate", "a fox", *TINY, "--seed", "2", "--lora", f"{folder}:0.5", "--out", tmp_path / "o")
    assert code == 0, err
    text = read_metadata(tmp_path / "o" / "00001-2.png")[0]
    assert text.startswith("a fox <lora:style:0.5>\n") and 'Lora hashes: "style: ' in text


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    files = tmp_path_factory.mktemp("files")
    (files / "corrupt.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    (files / "model.ckpt").write_bytes(b"pickle")
    (files / "lora.safetensors").write_bytes(b"garbage")
    (files / "lora.bin").write_bytes(b"pickle")
    from safetensors.torch import save_file  # a rank-4 LoRA whose header claims rank 1,000,000
    lying = {"unet.r": 1_000_000, "unet.lora_alpha": 4, "unet.target_modules": ["to_q"]}
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.zeros(4, 32),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.zeros(32, 4)},
              str(files / "lying-rank.safetensors"), metadata={"lora_adapter_metadata": json.dumps(lying)})
    (files / "notes.txt").write_text("hello")
    (files / "image.png").write_text("not an image")
    (files / "no-metadata.png").write_bytes(b"")
    Image.new("RGB", (32, 32)).save(files / "plain.png")
    Image.new("RGB", (32, 32)).save(files / "init.png")
    Image.new("L", (16, 16)).save(files / "small-mask.png")
    Image.new("RGB", (1, 1)).save(files / "one-pixel.png")
    Image.new("1", (20000, 20000)).save(files / "bomb.png")  # a few hundred KB that decode to 400 Mpixels
    inflating = PngInfo()
    inflating.add_text("note", "x" * 50_000_000, zip=True)  # zTXt: ~50 KB in the file, 50 MB inflated
    Image.new("RGB", (32, 32)).save(files / "text-bomb.png", pnginfo=inflating)
    (files / "empty-folder").mkdir()
    (files / "lora-tag.txt").write_text("a cat <lora:nowhere:0.5>\n")
    for name, chunk in (("lacks-keys.png", '{"prompt": "x"}'), ("string-steps.png", json.dumps({**RECORD, "steps": "9"})),
                        ("bad-json.png", "{not json")):
        info = PngInfo()
        info.add_text("t2i", chunk)
        Image.new("RGB", (32, 32)).save(files / name, pnginfo=info)
    return files


RECORD = {"version": "0.1.0", "mode": "txt2img", "prompt": "x", "negative_prompt": "", "steps": 4,
          "guidance_scale": 7.5, "seed": 1, "width": 32, "height": 32, "sampler": "ddim", "clip_skip": None,
          "strength": None, "init_image": None, "mask": None, "loras": [], "model": "tiny", "model_name": "tiny",
          "model_hash": None, "vae": None, "dtype": "fp32", "device": "cpu"}


BAD_INPUTS = [  # (arguments, exit code, what the message must say)
    (["--sampler", "bogus"], 2, "--sampler bogus: unknown sampler; choose one of ddpm"),
    (["--sampler", "ddim", "--schedule", "karras"], 2, "has no Karras schedule"),
    (["--schedule", "weird"], 2, "--schedule weird: unknown schedule"),
    (["--steps", "0"], 2, "--steps 0: must be at least 1"),
    (["--width", "100"], 2, "--width 100: must be a positive multiple of 8"),
    (["--height", "-8"], 2, "--height -8"),
    (["--guidance-scale", "-1"], 2, "--guidance-scale -1.0"),
    (["--num-images", "0"], 2, "--num-images 0"),
    (["--batch-size", "0"], 2, "--batch-size 0"),
    (["--seed", "-1"], 2, "--seed -1"),
    (["--clip-skip", "5"], 2, "--clip-skip 5: this text encoder has only 2 layers"),
    (["--strength", "0.5"], 2, "--strength: needs --init-image"),
    (["--init-image", "{f}/init.png", "--strength", "1.5"], 2, "--strength 1.5: must be in (0, 1]"),
    (["--init-image", "{f}/init.png", "--strength", "0"], 2, "--strength 0.0"),
    (["--mask", "{f}/init.png"], 2, "--mask: needs --init-image"),
    (["--init-image", "{f}/missing.png"], 2, "--init-image {f}/missing.png: no such file"),
    (["--init-image", "{f}/image.png"], 2, "not a readable image"),
    (["--init-image", "{f}/init.png", "--mask", "{f}/small-mask.png"], 2, "is 16x16 but the init image is 32x32"),
    (["--model", "{f}/missing.safetensors"], 2, "no such file or folder"),
    (["--model", "{f}/corrupt.safetensors"], 1, "could not load this model"),
    (["--model", "{f}/model.ckpt"], 2, "pickled checkpoint"),
    (["--model", "{f}/notes.txt"], 2, "expected a .safetensors checkpoint"),
    (["--model", "{f}/empty-folder"], 2, "not a diffusers model folder"),
    (["--model", "no-such/model", "--offline"], 1, "not in the local Hugging Face cache"),
    (["--lora", "{f}/lora.safetensors"], 1, "not a LoRA file t2i can load"),
    (["--lora", "{f}/lying-rank.safetensors"], 1, "its header claims rank 1000000 but its tensors have rank at most 4"),
    (["--lora", "{f}/missing.safetensors"], 2, "no such LoRA file"),
    (["--lora", "{f}/lora.bin"], 2, "only .safetensors LoRA files"),
    (["--dtype", "fp8"], 2, "--dtype fp8: unknown precision; choose one of auto"),
    (["--device", "tpu"], 2, "--device tpu: unknown device; choose one of auto"),
    (["--prompts-file", "{f}/missing.txt"], 2, "--prompts-file"),
    (["--from-image", "{f}/plain.png"], 2, "no t2i settings in this image"),
    (["--vae", "{f}/missing-vae"], 2, "--vae"),
    (["--sampler", "ddpm", "--steps", "1000"], 2, "--steps 1000: the ddpm sampler on this model's schedule"),
    (["--model", "{f}/model.ckpt"], 2, "set --allow-pickle if you trust its source"),
    (["--guidance-scale", "inf"], 2, "--guidance-scale inf: must be a finite number"),
    (["--guidance-scale", "nan"], 2, "--guidance-scale nan: must be a finite number"),
    (["--lora", "{f}/lora.safetensors:nan"], 2, "--lora {f}/lora.safetensors:nan: the scale must be a finite number"),
    (["--lora", "{f}/lora.safetensors:1e308"], 2, "--lora {f}/lora.safetensors:1e+308: the scale must lie within "
     "-100..100"),
    (["--seed", "9223372036854775807", "--num-images", "2"], 2, "the last image would get seed 9223372036854775808"),
    (["--out", "{f}/notes.txt"], 2, "notes.txt is a file, not a folder"),
    (["--out", "{f}/notes.txt/sub"], 2, "notes.txt is a file, not a folder"),
    (["--init-image", "{f}/one-pixel.png"], 2, "--init-image {f}/one-pixel.png: is 1x1 pixels; it must be at least 8x8"),
    (["--init-image", "{f}/bomb.png"], 2, "--init-image {f}/bomb.png: has more pixels than t2i reads"),
    (["--control", "{f}/empty-folder={f}/bomb.png"], 2, "--control {f}/bomb.png: has more pixels than t2i reads"),
    (["--control", "{f}/empty-folder={f}/image.png"], 2, "--control {f}/image.png: not a readable image"),
    (["--control", "{f}/empty-folder={f}/plain.png"], 2, "--control {f}/empty-folder: not a diffusers ControlNet folder"),
    (["--control", "{f}/model.ckpt={f}/plain.png"], 2, "set --allow-pickle if you trust its source"),
    (["--init-image", "{f}/text-bomb.png"], 2, "--init-image {f}/text-bomb.png: a text chunk inflates past the"),
    (["--from-image", "{f}/text-bomb.png"], 2, "--from-image {f}/text-bomb.png: a text chunk inflates past the"),
    (["--steps", "1000000000"], 2, "--steps 1000000000: must be at most 1000: this model's noise schedule"),
    (["--sampler", "ddim", "--steps", "5000"], 2, "--steps 5000: must be at most 1000"),
    (["--width", "100000", "--height", "100000"], 2, "--width 100000: must be at most 4096"),
    (["--negative-prompt", "(x:1e9)"], 2, "the emphasis weight '1e9' is not a plain number"),
    (["--negative-prompt", "(x:nan)"], 2, "the emphasis weight 'nan'"),
    (["--negative-prompt", "BREAK"], 2, "--negative-prompt BREAK: holds nothing but BREAK"),
    (["--negative-prompt", "cat " * 10_000], 2, "--negative-prompt cat cat"),
    (["cat " * 10_000], 2, "t2i reads at most 20 (1500 tokens)"),
    (["--emphasis", "strong"], 2, "--emphasis strong: unknown emphasis mode; choose one of original, no-norm, none"),
    (["--prompts-file", "{f}/lora-tag.txt", "--lora-dir", "{f}"], 2, "PROMPTS <lora:nowhere>: no LoRA named"),
    (["--from-image", "{f}/lacks-keys.png"], 2, "--from-image {f}/lacks-keys.png: its t2i settings lack 'seed'"),
    (["--from-image", "{f}/string-steps.png"], 2, "its t2i setting 'steps' holds '9', not a int"),
    (["--from-image", "{f}/bad-json.png"], 2, "--from-image {f}/bad-json.png: its 't2i' settings chunk is not valid JSON"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["--device", "cuda"], 2, "--device cuda: no such device is available"))


@pytest.mark.parametrize("arguments, code, message", BAD_INPUTS, ids=[" ".join(a[0]) for a in BAD_INPUTS])
def test_bad_input_gets_one_clear_line_and_no_output(run_cli, bad_files, tmp_path, arguments, code, message):
    out = tmp_path / "out"
    fill = [a.format(f=bad_files) for a in arguments]
    has_model = "--model" in fill
    base = ["generate", "a prompt", "--steps", "4", "--out", out] + ([] if has_model else ["--model", "tiny"])
    exit_code, stdout, stderr = run_cli(*base, *fill)
    errors = [line for line in stderr.splitlines() if line.startswith("t2i: error:")]
    assert exit_code == code, stderr
    assert len(errors) == 1 and message.format(f=bad_files) in errors[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert outputs(out) == []


def test_info_on_a_malformed_settings_chunk_is_one_line(run_cli, bad_files):
    code, stdout, stderr = run_cli("info", bad_files / "bad-json.png")
    assert code == 2 and stdout == "" and "IMAGE" in stderr and "not valid JSON" in stderr and "Traceback" not in stderr


def test_a_16_bit_init_image_gives_the_picture_of_its_8_bit_twin(run_cli, tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "8.png")
    made = {}
    for bits in ("16", "8"):
        code, stdout, stderr = run_cli("generate", "x", *TINY, "--seed", "1", "--init-image", tmp_path / f"{bits}.png",
                                       "--out", tmp_path / bits)
        assert code == 0, stderr
        made[bits] = pixels(stdout.split()[0])
    assert np.abs(made["16"] - made["8"]).max() <= 1


def test_no_prompt_is_a_usage_error(run_cli, tmp_path):
    code, _, stderr = run_cli("generate", "--model", "tiny", "--out", tmp_path)
    assert code == 2 and "give at least one prompt" in stderr


def test_non_integer_option_is_a_usage_error(run_cli, tmp_path):
    code, _, stderr = run_cli("generate", "x", "--steps", "many", "--out", tmp_path)
    assert code == 2 and "Invalid value for '--steps'" in stderr and "Traceback" not in stderr


def test_t2i_debug_shows_the_traceback(monkeypatch, tmp_path):
    from t2i.cli import main

    monkeypatch.setattr(sys, "argv", ["t2i", "generate", "x", "--steps", "0", "--out", str(tmp_path)])
    monkeypatch.setenv("T2I_DEBUG", "1")
    with pytest.raises(InvalidInput, match="steps 0: must be at least 1"):
        main()


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys; from t2i.cli import main; sys.argv = ['t2i', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported for --help'")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout and "samplers" in result.stdout
    assert elapsed < 5, f"t2i --help took {elapsed:.1f} s"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "t2i", "samplers"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0 and "euler-a" in result.stdout


@pytest.mark.slow
def test_generate_under_a_launcher_makes_every_image_once_with_single_process_pixels(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\na (green:1.2) star, " + "detail, " * 40)
    args = ["-m", "t2i", "generate", "--prompts-file", str(tmp_path / "prompts.txt"), "--model", "demo",
            "--seed", "7", "--num-images", "2", "--batch-size", "2", "--steps", "4"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                              timeout=600)
    assert launched.returncode == 0, launched.stderr

    def by_seed(folder):
        found = {}
        for path in sorted(folder.glob("*.png")):
            settings = read_metadata(path)[1]
            assert settings["seed"] not in found, "every image made once"
            found[settings["seed"]] = (settings["prompt"], pixels(path))
        return found

    one, two = by_seed(tmp_path / "one"), by_seed(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(7, 13))
    for seed in one:
        assert one[seed][0] == two[seed][0] and np.array_equal(one[seed][1], two[seed][1]), seed
    # each process printed the paths it wrote (two processes' lines can interleave on one pipe: count the paths)
    assert launched.stdout.count(".png") == 6


@pytest.mark.parametrize("name, size, reduced", [
    ("phone.jpg", (8000, 6000), "4000x3000"),  # a 48 MP phone photo: the JPEG decoder reads it at 1/2
    ("scan.png", (10000, 10000), "3333x3333"),  # 100 MP: decoded, then reduced by 3
])
def test_large_photos_are_read_reduced_with_a_warning(run_cli, tmp_path, name, size, reduced):
    rows = np.linspace(0, 255, size[1], dtype=np.uint8)[:, None].repeat(size[0], axis=1)
    Image.fromarray(np.stack([rows, rows[::-1], np.full_like(rows, 90)], axis=-1)).save(tmp_path / name)
    code, out, err = run_cli("generate", "a cat", *TINY, "--seed", "1", "--init-image", tmp_path / name,
                             "--width", "32", "--height", "32", "--out", tmp_path / "o")
    assert code == 0, err
    assert f"init_image is {size[0]}x{size[1]} pixels: read reduced to {reduced}" in err
    assert Image.open(out.split()[0]).size == (32, 32)
