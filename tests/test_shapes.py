"""The shapes world: captions say what is drawn, and the analyser reads it back."""

import json
import random

import pytest

from t2i.data.sources import read_collection
from t2i.shapes.analyser import analyse
from t2i.shapes.world import ALL_COLOURS, COLOURS, HELD_OUT, SHAPES, caption, make_image, random_shape


def test_analyser_reads_the_generator_s_images_back():
    rng = random.Random(7)
    specs = [random_shape(rng, tuple(ALL_COLOURS)) for _ in range(1500)]
    correct = sum(analyse(make_image(spec)) == (spec.colour, spec.shape) for spec in specs)
    assert correct / len(specs) >= 0.98
    assert {s.shape for s in specs} == set(SHAPES) and {s.colour for s in specs} == set(ALL_COLOURS)


@pytest.mark.parametrize("image_size", [32, 64])
def test_shapes_vary_in_size_and_position_and_stay_inside(image_size):
    rng = random.Random(0)
    specs = [random_shape(rng, image_size=image_size) for _ in range(300)]
    assert len({s.size for s in specs}) > 8 and len({(s.x, s.y) for s in specs}) > 100
    assert all(s.x >= 1 and s.y >= 1 and s.x + s.size < image_size and s.y + s.size < image_size for s in specs)


def test_blank_image_has_no_shape():
    from PIL import Image

    assert analyse(Image.new("RGB", (32, 32), "white")) == (None, None)


def test_captions_name_colour_and_shape_in_natural_phrasing():
    rng = random.Random(1)
    spec = random_shape(rng)
    captions = {caption(spec, rng) for _ in range(200)}
    assert len(captions) >= 3
    assert all(spec.colour in c and spec.shape in c for c in captions)
    assert any(c.endswith("on a white background") for c in captions)


def test_held_out_colour_is_not_a_training_colour():
    assert len(COLOURS) >= 8 and not set(HELD_OUT) & set(COLOURS)


def test_make_dataset_command_writes_a_layout_finetune_reads(tmp_path, run_cli):
    code, stdout, stderr = run_cli("shapes", "make-dataset", tmp_path / "d", "--count", "40", "--colour", "brown")
    assert code == 0, stderr
    layout, samples = read_collection(tmp_path / "d")
    assert layout == "imagefolder-jsonl" and len(samples) == 40
    assert all("brown" in c for s in samples for c in s.captions)
    rows = [json.loads(line) for line in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    from PIL import Image

    assert all(analyse(Image.open(tmp_path / "d" / r["file_name"])) == (r["colour"], r["shape"]) for r in rows)
    code, _, stderr = run_cli("shapes", "make-dataset", tmp_path / "d", "--count", "4")
    assert code == 2 and "is not empty" in stderr
    for bad in ("mauve", "brown:x", "brown:0"):
        code, _, stderr = run_cli("shapes", "make-dataset", tmp_path / "e", "--colour", bad)
        assert code == 2 and f"--colour {bad}:" in stderr and not (tmp_path / "e").exists()


def test_colour_weights_set_each_colours_share(tmp_path, run_cli):
    code, _, stderr = run_cli("shapes", "make-dataset", tmp_path / "d", "--count", "900", "--colour", "brown:8",
                              "--colour", "known")
    assert code == 0, stderr
    rows = [json.loads(line) for line in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    shares = {c: sum(r["colour"] == c for r in rows) / len(rows) for c in ALL_COLOURS}
    assert 0.45 <= shares["brown"] <= 0.55  # 8 of 16 draws
    assert all(0.03 <= shares[c] <= 0.10 for c in COLOURS)  # 1 of 16 each


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: p.write_text("a file"), [], "OUT {out}: is a file, not a folder"),
    (lambda p: None, ["--size", "100000"], "--size 100000: must be from 16 to 1024"),
    (lambda p: None, ["--count", "0"], "--count 0: must be at least 1"),
])
def test_make_dataset_refuses_bad_input_before_any_work(tmp_path, run_cli, make, extra, message):
    out = tmp_path / "out"
    make(out)
    code, stdout, stderr = run_cli("shapes", "make-dataset", out, *extra)
    assert code == 2 and message.format(out=out) in stderr and "Traceback" not in stderr
    assert out.is_file() or not out.exists(), "nothing is left behind"
