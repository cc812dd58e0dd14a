"""t2i's infotext as A1111 reads it: parsed by A1111's rules (t2i.formats.infotext's reader, which
`png-info` serves, follows modules/infotext_utils.py: a settings line needs 3 pairs), with the expected
fields written out by hand for prompts that stress the format, and every sampler/schedule pair."""

import pytest
from PIL import Image

from t2i.formats.infotext import parse_infotext as parse_like_a1111
from t2i.formats.png import read_png_text, save_png
from t2i.sampling.record_entries import LoraUse
from t2i.sampling.samplers import SAMPLERS, resolve_sampler
from t2i.sampling.settings import ImageSettings


def settings(**overrides):
    base = dict(version="0.1.0", prompt="a cat", negative_prompt="", steps=20, guidance_scale=7.0, seed=5,
                width=512, height=512, sampler="dpmpp-2m", schedule="karras", model="m", model_name="sd15",
                model_hash="0123456789")
    return ImageSettings(**{**base, **overrides})


CASES = [
    (settings(prompt="a red bicycle, leaning: on a wall", negative_prompt="blurry, low quality"),
     {"Prompt": "a red bicycle, leaning: on a wall", "Negative prompt": "blurry, low quality", "Steps": "20",
      "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "5", "Size": "512x512",
      "Model hash": "0123456789", "Model": "sd15", "Version": "t2i 0.1.0"}),
    (settings(prompt='a "quoted" word', negative_prompt='"ugly", bad', model_name='"quoted model"'),
     {"Prompt": 'a "quoted" word', "Negative prompt": '"ugly", bad', "Model": '"quoted model"'}),
    (settings(prompt="line one\nline two", negative_prompt="neg one\nneg two"),
     {"Prompt": "line one\nline two", "Negative prompt": "neg one\nneg two", "Steps": "20"}),
    (settings(prompt="一只猫, 猫: 可爱", negative_prompt="ぼやけた", model_name="模型, v1"),
     {"Prompt": "一只猫, 猫: 可爱", "Negative prompt": "ぼやけた", "Model": "模型, v1"}),
    (settings(prompt="a dog", loras=(LoraUse("style", "/l/style.safetensors", 0.8, "abcdef123456"),
                                     LoraUse("my lora", "/l/my lora.safetensors", 0.5, "0123456789ab"))),
     {"Prompt": "a dog <lora:style:0.8> <lora:my lora:0.5>",
      "Lora hashes": "style: abcdef123456, my lora: 0123456789ab"}),
    (settings(strength=0.6, clip_skip=2, sampler="euler-a", schedule="normal", guidance_scale=6.5),
     {"Denoising strength": "0.6", "Clip skip": "2", "Sampler": "Euler a", "Schedule type": "Normal",
      "CFG scale": "6.5"}),
    (settings(sampler="ddim", schedule="normal", clip_skip=1, vae="/models/vae-ft-mse.safetensors"),
     {"Sampler": "DDIM", "VAE": "vae-ft-mse.safetensors"}),
]


@pytest.mark.parametrize("recorded, expected", CASES, ids=range(len(CASES)))
def test_a1111_reads_every_field_back(recorded, expected, tmp_path):
    text = recorded.infotext()
    fields = parse_like_a1111(text)
    for key, value in expected.items():
        assert fields.get(key) == value, (key, text)
    assert "Clip skip" not in fields or recorded.clip_skip not in (None, 1)
    assert "Denoising strength" not in fields or recorded.mode != "txt2img"
    # and the same text survives the PNG (iTXt for text that is not Latin-1)
    png = save_png(Image.new("RGB", (8, 8)), recorded, tmp_path)
    assert read_png_text(png) == (text, recorded.to_record())


PAIRS = [(name, schedule) for name, spec in SAMPLERS.items() for schedule in spec.schedules]


@pytest.mark.parametrize("sampler, schedule", PAIRS, ids=[f"{a}:{b}" for a, b in PAIRS])
def test_every_sampler_and_schedule_pair_reads_back(sampler, schedule):
    fields = parse_like_a1111(settings(sampler=sampler, schedule=schedule).infotext())
    if SAMPLERS[sampler].in_a1111:  # A1111's labels name the same pair again
        assert resolve_sampler(fields["Sampler"], fields["Schedule type"]) == (sampler, schedule)
    else:  # A1111 has no such sampler: t2i's own label, which t2i reads back and A1111 reads as DPM++ 2M
        assert fields["Sampler"] == SAMPLERS[sampler].a1111
        assert resolve_sampler(fields["Sampler"], fields["Schedule type"]) == (sampler, schedule)


@pytest.mark.parametrize("text, expected", [
    ("just a prompt", {"Prompt": "just a prompt", "Negative prompt": ""}),
    ("a cat\nNegative prompt: dog\nSteps: 5, Seed: 7, CFG scale: 3",
     {"Prompt": "a cat", "Negative prompt": "dog", "Steps": "5", "Seed": "7", "CFG scale": "3"}),
    # A1111 reads a last line of fewer than 3 pairs as part of the prompt
    ("a cat\nNegative prompt: dog\nSteps: 5, Seed: 7", {"Prompt": "a cat", "Negative prompt": "dog\nSteps: 5, Seed: 7"}),
    ("style: oil, mood: calm", {"Prompt": "style: oil, mood: calm", "Negative prompt": ""}),
    ("  padded prompt  \nSteps: 5, Seed: 7, Size: 8x8", {"Prompt": "padded prompt", "Negative prompt": "",
                                                        "Steps": "5", "Seed": "7", "Size": "8x8"}),
])
def test_infotexts_from_other_tools_parse(text, expected):
    assert parse_like_a1111(text) == expected
