"""Textual-inversion embeddings: A1111's and diffusers' files, matched by name in prompts, never split
across chunks, encoded as diffusers' own textual-inversion loader encodes them, recorded in `TI hashes`."""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from conftest import pixels, plain_pipeline
from safetensors.torch import save_file

from t2i.errors import InvalidInput, NotFound
from t2i.formats.embeddings import EmbeddingLibrary, load_embedding
from t2i.formats.infotext import parse_infotext
from t2i.formats.png import read_png_text
from t2i.models import SD1_CONFIG_DIR
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.prompts import parse_prompt
from t2i.sampling.text import chunk_prompt

START, END = 49406, 49407


@pytest.fixture(scope="module")
def sd_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer", model_max_length=77)


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


def vectors(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def folder(tmp_path):
    """easyneg: A1111/civitai `emb_params` (3 vectors); shinystyle: diffusers' `{token: vector}` (1 vector)."""
    save_file({"emb_params": vectors(3, 768, 1)}, tmp_path / "easyneg.safetensors")
    save_file({"<shinystyle>": vectors(1, 768, 2)[0]}, tmp_path / "shinystyle.safetensors")
    return tmp_path


def test_the_file_formats_people_have_load_and_bad_ones_say_why(tmp_path):
    save_file({"emb_params": vectors(2, 768)}, tmp_path / "a.safetensors")
    assert load_embedding("a", tmp_path / "a.safetensors", 768).vectors.shape == (2, 768)
    save_file({"<b>": vectors(1, 768)[0]}, tmp_path / "b.safetensors")
    assert load_embedding("b", tmp_path / "b.safetensors", 768).vectors.shape == (1, 768)
    a1111 = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(4, 768)}, "name": "c", "step": 3000}
    torch.save(a1111, tmp_path / "c.pt")
    with pytest.raises(InvalidInput, match=r"c\.pt: is a pickled embedding.*allow_pickle"):
        load_embedding("c", tmp_path / "c.pt", 768)
    loaded = load_embedding("c", tmp_path / "c.pt", 768, allow_pickle=True)
    assert torch.equal(loaded.vectors, a1111["string_to_param"]["*"])

    save_file({"clip_l": vectors(2, 768), "clip_g": vectors(2, 1280)}, tmp_path / "xl.safetensors")
    save_file({"emb_params": vectors(2, 1024)}, tmp_path / "sd2.safetensors")
    save_file({"x": vectors(1, 768), "y": vectors(1, 768)}, tmp_path / "two.safetensors")
    save_file({"emb_params": torch.full((1, 768), float("nan"))}, tmp_path / "nan.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name, message in [("xl", "is an SDXL embedding"), ("sd2", "is for a text encoder of width 1024; this "
                          "model's is 768"), ("two", "holds 2 tensors"), ("nan", "NaN"),
                          ("junk", "is not a readable .safetensors file")]:
        with pytest.raises(InvalidInput, match=message):
            load_embedding(name, tmp_path / f"{name}.safetensors", 768)


def test_names_match_whole_words_on_token_ids_and_become_their_vectors(sd_tokenizer, folder):
    library = EmbeddingLibrary(folder, sd_tokenizer, 768)
    assert set(library.files) == {"easyneg", "shinystyle"} and library.loaded == {}
    ids = sd_tokenizer("a photo", add_special_tokens=False).input_ids
    chunk, = chunk_prompt(sd_tokenizer, parse_prompt("a photo, (EasyNeg:1.2) catfish"), library)
    comma, catfish = (sd_tokenizer(w, add_special_tokens=False).input_ids for w in (",", "catfish"))
    # start, a, photo, comma, 3 vectors, catfish tokens, end padding
    assert len(chunk.vectors) == 3 and [p for p, _ in chunk.vectors] == [4, 5, 6]
    assert chunk.ids[:4] == (START, *ids, *comma) and chunk.ids[7:7 + len(catfish)] == tuple(catfish)
    assert chunk.weights[4:7] == (1.2, 1.2, 1.2) and chunk.weights[3] == 1.0
    easyneg = library.get("easyneg").vectors
    assert all(torch.equal(v, easyneg[i]) for i, (_, v) in enumerate(chunk.vectors))
    assert set(library.loaded) == {"easyneg"}, "only what a prompt names is read"
    plain, = chunk_prompt(sd_tokenizer, parse_prompt("easynegative shiny style"), library)
    assert plain.vectors == (), "a name inside a longer word, or split in two, is text"


def test_an_embedding_that_does_not_fit_opens_the_next_chunk_whole(sd_tokenizer, folder):
    library = EmbeddingLibrary(folder, sd_tokenizer, 768)
    first, second = chunk_prompt(sd_tokenizer, parse_prompt("cat " * 73 + "easyneg dog"), library)
    assert first.vectors == () and first.ids[1:74] == first.ids[1:2] * 73 and first.ids[74:] == (END,) * 3
    assert [p for p, _ in second.vectors] == [1, 2, 3] and second.ids[4] != END
    exact, = chunk_prompt(sd_tokenizer, parse_prompt("cat " * 72 + "easyneg"), library)
    assert [p for p, _ in exact.vectors] == [73, 74, 75], "72 tokens + 3 vectors: exactly one chunk"


def test_images_with_an_embedding_equal_diffusers_own_textual_inversion_loader(tiny, folder):
    width = tiny.pipe.text_encoder.config.hidden_size
    save_file({"emb_params": vectors(2, width, 3)}, folder / "shapestyle.safetensors")
    config = GenerationConfig(prompts=("a shapestyle circle",), negative_prompt="blurry", steps=5, seed=8,
                              sampler="ddim", embeddings_dir=str(folder))
    ours, = generate(tiny, config, progress=False)
    without, = generate(tiny, dataclasses.replace(config, embeddings_dir=None), progress=False)

    plain = plain_pipeline()
    from diffusers import DDIMScheduler

    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.load_textual_inversion(str(folder / "shapestyle.safetensors"), token="shapestyle")
    expected = plain("a shapestyle circle", negative_prompt="blurry", num_inference_steps=5, guidance_scale=7.5,
                     generator=torch.Generator("cpu").manual_seed(8), width=32, height=32).images[0]
    assert np.array_equal(pixels(ours), np.asarray(expected, dtype=np.int16))
    assert np.abs(pixels(ours) - pixels(without)).mean() > 1, "the embedding changed the image"
    digest = hashlib.sha256((folder / "shapestyle.safetensors").read_bytes()).hexdigest()[:12]
    assert ours.settings.to_record()["embeddings"] == [
        {"name": "shapestyle", "path": str(folder / "shapestyle.safetensors"), "hash": digest}]


def test_the_infotext_records_ti_hashes_and_from_image_remakes_it(run_cli, tmp_path, tiny):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"emb_params": vectors(2, tiny.pipe.text_encoder.config.hidden_size, 4)}, folder / "style.safetensors")
    out = tmp_path / "out"
    code, stdout, _ = run_cli("generate", "a style circle", "--negative-prompt", "style", "--model", "tiny",
                              "--device", "cpu", "--steps", "3", "--seed", "2", "--embeddings-dir", str(folder),
                              "--out", str(out))
    assert code == 0
    first = stdout.split()[0]
    text, settings = read_png_text(first)
    digest = hashlib.sha256((folder / "style.safetensors").read_bytes()).hexdigest()[:12]
    assert parse_infotext(text)["TI hashes"] == f"style: {digest}"  # named once for prompt and negative
    assert settings["embeddings_dir"] == str(folder)
    code, again, _ = run_cli("generate", "--from-image", first, "--out", str(tmp_path / "again"))
    assert code == 0 and np.array_equal(pixels(again.split()[0]), pixels(first))


def test_bad_embedding_input_fails_before_any_image(run_cli, tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    torch.save({"string_to_param": {"*": vectors(1, 32)}}, folder / "pickled.pt")
    save_file({"emb_params": vectors(1, 1024)}, folder / "wide.safetensors")
    out = tmp_path / "out"
    base = ("--model", "tiny", "--device", "cpu", "--steps", "2", "--out", str(out))
    for args, message in [
        (("a pickled cat", "--embeddings-dir", str(folder)), "pickled.pt: is a pickled embedding"),
        (("a wide cat", "--embeddings-dir", str(folder)), "wide.safetensors: is for a text encoder of width 1024"),
        (("a cat", "--negative-prompt", "wide", "--embeddings-dir", str(folder)), "width 1024"),
        (("a cat", "--embeddings-dir", str(tmp_path / "nowhere")), "--embeddings-dir"),
    ]:
        code, _, stderr = run_cli("generate", *args, *base)
        errors = [line for line in stderr.splitlines() if "error" in line]
        assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in stderr, stderr
    assert not out.exists()
    code, stdout, _ = run_cli("generate", "a pickled cat", "--embeddings-dir", str(folder), "--allow-pickle", *base)
    assert code == 0 and len(stdout.split()) == 1


def test_a_missing_folder_is_not_found(sd_tokenizer, tmp_path):
    with pytest.raises(NotFound, match="embeddings_dir .*nowhere: is not a folder"):
        EmbeddingLibrary(tmp_path / "nowhere", sd_tokenizer, 768)
