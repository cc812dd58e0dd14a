"""A1111 prompt syntax: weights and chunk boundaries written out by hand, and embeddings that equal a
direct computation from CLIP's hidden states."""

import json

import numpy as np
import pytest
import torch
from conftest import pixels

from t2i.errors import InvalidInput, NotFound
from t2i.models import SD1_CONFIG_DIR
from t2i.sampling.prompts import Segment, parse_prompt
from t2i.sampling.settings import ImageSettings
from t2i.sampling.text import chunk_prompt, encode_chunks, prompt_chunks

R, S = 1.1, 1 / 1.1  # one round bracket, one square bracket

PARSES = [  # prompt -> [(text, weight)], ("BREAK", None) for a break
    ("a cat", [("a cat", 1)]),
    ("", []),
    ("(a cat)", [("a cat", R)]),
    ("((a cat))", [("a cat", R * R)]),
    ("(((a cat)))", [("a cat", R ** 3)]),
    ("[a cat]", [("a cat", S)]),
    ("[[a cat]]", [("a cat", S * S)]),
    ("(a cat:1.5)", [("a cat", 1.5)]),
    ("(a cat: 1.5 )", [("a cat", 1.5)]),
    ("(a cat:0)", [("a cat", 0)]),
    ("(a cat:-1)", [("a cat", -1)]),
    ("(a cat:.5)", [("a cat", 0.5)]),
    ("a (red:1.3) bicycle", [("a ", 1), ("red", 1.3), (" bicycle", 1)]),
    ("a (red:1.4) (blue:0.6) circle", [("a ", 1), ("red", 1.4), (" ", 1), ("blue", 0.6), (" circle", 1)]),
    ("((detailed)), [blurry]", [("detailed", R * R), (", ", 1), ("blurry", S)]),
    ("(a (b) c)", [("a ", R), ("b", R * R), (" c", R)]),
    ("(a (b:2) c:1.5)", [("a ", 1.5), ("b", 3.0), (" c", 1.5)]),
    ("[a (b) c]", [("a ", S), ("b", S * R), (" c", S)]),
    ("((a cat:1.2))", [("a cat", 1.2 * R)]),
    ("(unclosed", [("unclosed", R)]),
    ("a (b [c", [("a ", 1), ("b ", R), ("c", R * S)]),
    ("closed) only]", [("closed) only]", 1)]),
    (r"\(literal\)", [("(literal)", 1)]),
    (r"\[literal\]", [("[literal]", 1)]),
    (r"a \\ b", [("a \\ b", 1)]),
    (r"(\(nested\):2)", [("(nested)", 2)]),
    ("a:b", [("a:b", 1)]),
    ("(time:morning)", [("time:morning", R)]),
    ("(a: b c)", [("a: b c", R)]),
    ("a BREAK b", [("a", 1), ("BREAK", None), ("b", 1)]),
    ("(a BREAK b)", [("a", R), ("BREAK", None), ("b", R)]),
    ("BREAKfast BREAK", [("BREAKfast", 1), ("BREAK", None)]),
    ("a break b", [("a break b", 1)]),
    ("(a)(b)", [("ab", R)]),
]


@pytest.mark.parametrize("prompt, expected", PARSES, ids=[p or "empty" for p, _ in PARSES])
def test_prompt_weights_follow_a1111_rules(prompt, expected):
    got = [("BREAK", None) if s.is_break else (s.text, s.weight) for s in parse_prompt(prompt)]
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got if w is not None] == pytest.approx([w for _, w in expected if w is not None], rel=1e-12)


def test_emphasis_none_keeps_brackets_and_break_as_text():
    assert parse_prompt("a (red:1.3) BREAK [b]", "none") == [Segment("a (red:1.3) BREAK [b]")]


@pytest.mark.parametrize("prompt, message", [
    ("(x:1e9)", "the emphasis weight '1e9' is not a plain number"),
    ("(x:nan)", "the emphasis weight 'nan'"),
    ("(x:inf)", "the emphasis weight 'inf'"),
    ("(x:101)", "the emphasis weight '101'"),
    ("BREAK", "holds nothing but BREAK"),
    (" BREAK  BREAK ", "holds nothing but BREAK"),
])
def test_absurd_weights_and_break_only_prompts_are_refused(prompt, message):
    with pytest.raises(InvalidInput, match=message):
        parse_prompt(prompt)


@pytest.fixture(scope="module")
def sd_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer", model_max_length=77)


def test_chunks_are_77_tokens_with_start_end_and_end_padding(sd_tokenizer):
    cat = sd_tokenizer("cat", add_special_tokens=False).input_ids[0]
    chunk, = chunk_prompt(sd_tokenizer, parse_prompt("(cat:2) cat"))
    assert chunk.ids == (49406, cat, cat) + (49407,) * 74
    assert chunk.weights == (1.0, 2.0, 1.0) + (1.0,) * 74
    empty, = chunk_prompt(sd_tokenizer, [])
    assert empty.ids == (49406,) + (49407,) * 76


@pytest.mark.parametrize("words, comma_after, first_chunk_tokens", [
    (80, None, 75),  # no comma: cut at 75 tokens
    (80, 60, 61),  # a comma 15 tokens from the end: the chunk ends after it
    (80, 55, 56),  # 20 from the end: still moved
    (80, 54, 75),  # 21 from the end: too far back, cut at 75
    (74, 60, 75),  # 74 words and a comma: exactly full, nothing to move
])
def test_a_full_chunk_backs_off_to_a_comma_among_its_last_20_tokens(sd_tokenizer, words, comma_after, first_chunk_tokens):
    tokens = ["cat"] * words
    if comma_after is not None:
        tokens[comma_after - 1] += ","
    chunks = chunk_prompt(sd_tokenizer, parse_prompt(" ".join(tokens)))
    real = [sum(1 for i in c.ids[1:-1] if i != 49407) for c in chunks]
    assert real[0] == first_chunk_tokens
    total = words + (comma_after is not None)  # "cat," is two tokens
    assert sum(real) == total and len(chunks) == (1 if total <= 75 else 2)


def test_break_closes_a_chunk_and_long_prompts_are_capped(sd_tokenizer):
    assert len(chunk_prompt(sd_tokenizer, parse_prompt("a cat BREAK a dog"))) == 2
    assert len(chunk_prompt(sd_tokenizer, parse_prompt("BREAK a dog"))) == 2  # an empty first chunk, as in A1111
    with pytest.raises(InvalidInput, match="chunks of 75 tokens; t2i reads at most 20"):
        prompt_chunks(sd_tokenizer, "cat " * 10_000, "original")


@pytest.fixture(scope="module", params=["tiny", "demo"])
def model(request):
    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model

    return load_model(ModelConfig(model=request.param, device="cpu"))


@pytest.mark.parametrize("emphasis", ["original", "no-norm"])
def test_weighted_long_prompt_embeddings_equal_a_direct_computation(model, emphasis):
    pipe = model.pipe
    prompt = "a (red:1.3) circle, " + "on a white background, " * 20 + "BREAK [small] square"
    chunks = prompt_chunks(pipe.tokenizer, prompt, emphasis)  # 3 with SD's tokenizer, more with tiny's bytes
    assert len(chunks) >= 3
    got = encode_chunks(pipe.text_encoder, chunks, None, emphasis, pad_to=len(chunks) + 1)
    expected = []
    with torch.no_grad():
        for chunk in chunks:
            z = pipe.text_encoder(torch.tensor([chunk.ids])).last_hidden_state
            w = torch.tensor(chunk.weights)[None, :, None]
            if w.eq(1).all():
                expected.append(z)  # nothing weighted: the chunk as CLIP gives it
            else:
                expected.append(z * w * (z.mean() / (z * w).mean()) if emphasis == "original" else z * w)
        empty = [pipe.tokenizer.bos_token_id] + [pipe.tokenizer.eos_token_id] * 76
        expected.append(pipe.text_encoder(torch.tensor([empty])).last_hidden_state)
    assert got.shape == (1, 77 * (len(chunks) + 1), pipe.text_encoder.config.hidden_size)
    assert torch.allclose(got, torch.cat(expected, dim=1), atol=1e-6)
    assert any(w != 1 for c in chunks for w in c.weights)


def test_a_plain_prompt_through_the_chunk_path_equals_the_pipelines_own(model):
    pipe = model.pipe
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = pipe.text_encoder(ids)[0]
    ours = encode_chunks(pipe.text_encoder, prompt_chunks(pipe.tokenizer, "a red circle", "original"), None,
                         "original", pad_to=1)
    assert torch.equal(ours, reference)


def test_images_of_a_batch_with_long_and_short_prompts_are_remade_alone():
    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate

    model = load_model(ModelConfig(model="tiny", device="cpu"))
    long = "a cat " * 50
    batch = generate(model, GenerationConfig(prompts=("a (cat:1.2)", long, "a dog"), seed=5, steps=3,
                                             batch_size=3, sampler="ddim"), progress=False)
    for index, prompt in enumerate(("a (cat:1.2)", long, "a dog")):
        alone, = generate(model, GenerationConfig(prompts=(prompt,), seed=5 + index, steps=3, sampler="ddim"),
                          progress=False)
        assert np.array_equal(pixels(alone), pixels(batch[index])), prompt
    plain, = generate(model, GenerationConfig(prompts=("a cat",), seed=5, steps=3, sampler="ddim"), progress=False)
    assert not np.array_equal(pixels(plain), pixels(batch[0])), "the weight changes the image"


def test_lora_tags_load_from_the_lora_folder_per_prompt(tmp_path):
    from conftest import make_lora

    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate

    folder = tmp_path / "loras"
    make_lora(folder / "cross", 1, ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"])
    (folder / "cross" / "pytorch_lora_weights.safetensors").rename(folder / "cross.safetensors")
    make_lora(folder / "selfish", 2, ["attn1.to_q", "attn1.to_v"])  # a training folder
    model = load_model(ModelConfig(model="tiny", device="cpu"))
    tagged = generate(model, GenerationConfig(prompts=("a cat <lora:cross:0.8>", "a dog <lora:selfish>", "a fox"),
                                              seed=2, steps=3, batch_size=3, sampler="ddim",
                                              lora_dir=str(folder)), progress=False)
    for index, (prompt, loras) in enumerate((("a cat ", (f"{folder}/cross.safetensors:0.8",)),
                                             ("a dog ", (str(folder / "selfish"),)), ("a fox", ()))):
        alone, = generate(model, GenerationConfig(prompts=(prompt,), seed=2 + index, steps=3, sampler="ddim",
                                                  loras=loras), progress=False)
        assert np.array_equal(pixels(alone), pixels(tagged[index])), prompt
        assert tagged[index].settings.prompt == prompt
    assert tagged[0].settings.infotext().startswith("a cat <lora:cross:0.8>\n")  # as written, not moved
    assert 'Lora hashes: "cross: ' in tagged[0].settings.infotext()
    assert tagged[2].settings.loras == ()

    # a tag where the user put it stays there; a LoRA given beside the prompt gets a tag at the end
    mixed, = generate(model, GenerationConfig(prompts=("<lora:cross:0.5> a red circle",), seed=2, steps=2,
                                              lora_dir=str(folder), loras=(str(folder / "selfish"),)), progress=False)
    text = mixed.settings.infotext()
    assert text.startswith("<lora:cross:0.5> a red circle <lora:selfish:1>\n"), text
    assert [(lora.name, lora.from_tag) for lora in mixed.settings.loras] == [("selfish", False), ("cross", True)]
    record = mixed.settings.to_record()
    assert ImageSettings.from_record(json.loads(json.dumps(record)), "x").infotext() == text
    # an older record (no prompt_as_written, no from_tag) reads and words its infotext as before
    del record["prompt_as_written"]
    for lora in record["loras"]:
        del lora["from_tag"]
    older = ImageSettings.from_record(record, "old.png")
    assert older.infotext().startswith(" a red circle <lora:selfish:1> <lora:cross:0.5>\n")

    with pytest.raises(NotFound, match="no LoRA named 'missing'.*choose one of cross, selfish"):
        generate(model, GenerationConfig(prompts=("x <lora:missing:1>",), steps=2, lora_dir=str(folder)))
    with pytest.raises(InvalidInput, match="not a path"):
        generate(model, GenerationConfig(prompts=("x <lora:../cross:1>",), steps=2, lora_dir=str(folder)))
    with pytest.raises(InvalidInput, match="has no usable weight"):
        GenerationConfig(prompts=("x <lora:cross:nan>",))
    for weight in ("1e308", "-101"):  # finite, but far past any LoRA's range: the UNet overflows to black
        with pytest.raises(InvalidInput, match=r"no usable weight \(the scale must lie within -100..100\)"):
            GenerationConfig(prompts=(f"x <lora:cross:{weight}>",))
