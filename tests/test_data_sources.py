"""Every layout users have Flickr30k (or any captioned folder) in reads to the same samples."""

import json
import zipfile

import pytest
from PIL import Image

from t2i.data.sources import FORMATS, clean_caption, read_collection, select_split
from t2i.errors import InvalidInput

IMAGES = {"1000092795.jpg": ["Two young guys with shaggy hair look at their hands .", "Two friends enjoy time spent together ."],
          "2199200615.jpg": ["A dog runs across the grass .", "A brown dog is running ."]}


def _images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        Image.new("RGB", (8, 8), "red").save(folder / name)


def make_token(root):
    _images(root / "flickr30k-images")
    lines = [f"{name}#{i}\t{c}" for name, caps in IMAGES.items() for i, c in enumerate(caps)]
    (root / "results_20130124.token").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_kaggle(root):
    base = root / "flickr30k_images"
    _images(base / "flickr30k_images")
    rows = ["image_name| comment_number| comment", "1000092795.jpg| 0| " + IMAGES["1000092795.jpg"][0],
            "1000092795.jpg| 1| " + IMAGES["1000092795.jpg"][1], "2199200615.jpg| 0| " + IMAGES["2199200615.jpg"][1],
            "2199200615.jpg| 4   A dog runs across the grass ."]  # the known row with a missing pipe
    (base / "results.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def make_karpathy(root):
    _images(root / "flickr30k-images")
    images = [{"filename": name, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in caps]}
              for (name, caps), split in zip(IMAGES.items(), ["train", "test"])]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))


def _nlphuji_csv(root):
    import csv

    with open(root / "flickr_annotations_30k.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["raw", "sentids", "split", "filename", "img_id"])
        for i, ((name, caps), split) in enumerate(zip(IMAGES.items(), ["train", "test"])):
            writer.writerow([json.dumps(caps), json.dumps([0, 1]), split, name, i])


def make_nlphuji_folder(root):
    _images(root / "flickr30k-images")
    _nlphuji_csv(root)


def make_nlphuji_zip(root):
    _images(root / "tmp")
    with zipfile.ZipFile(root / "flickr30k-images.zip", "w") as archive:
        for name in IMAGES:
            archive.write(root / "tmp" / name, f"flickr30k-images/{name}")
    for name in IMAGES:
        (root / "tmp" / name).unlink()
    (root / "tmp").rmdir()
    _nlphuji_csv(root)


def make_jsonl(root):
    _images(root)
    lines = [json.dumps({"file_name": name, "text": caps}) for name, caps in IMAGES.items()]
    (root / "metadata.jsonl").write_text("\n".join(lines))


def make_metadata_csv(root):
    _images(root)
    rows = ["file_name,caption"] + [f'{name},"{caps[0]}"' for name, caps in IMAGES.items()]
    (root / "metadata.csv").write_text("\n".join(rows))


def make_kohya(root):
    _images(root / "10_dogs")
    for name, caps in IMAGES.items():
        (root / "10_dogs" / name).with_suffix(".txt").write_text("\n".join(caps))


CLEAN = {name: tuple(clean_caption(c) for c in caps) for name, caps in IMAGES.items()}


@pytest.mark.parametrize("make, layout, expected", [
    (make_token, "flickr-token", CLEAN),
    (make_kaggle, "kaggle", {"1000092795.jpg": CLEAN["1000092795.jpg"],
                             "2199200615.jpg": (CLEAN["2199200615.jpg"][1], CLEAN["2199200615.jpg"][0])}),
    (make_karpathy, "karpathy", CLEAN),
    (make_nlphuji_folder, "nlphuji", CLEAN),
    (make_nlphuji_zip, "nlphuji", CLEAN),
    (make_jsonl, "imagefolder-jsonl", CLEAN),
    (make_metadata_csv, "imagefolder-csv", {n: c[:1] for n, c in CLEAN.items()}),
    (make_kohya, "kohya", {f"10_dogs/{n}": c for n, c in CLEAN.items()}),
])
def test_each_layout_is_detected_and_read(tmp_path, make, layout, expected):
    make(tmp_path)
    found, samples = read_collection(tmp_path)
    assert found == layout
    assert {s.key: s.captions for s in samples} == expected
    from t2i.data.training_set import read_rgb

    for sample in samples:  # each image is found and decodes (JPEG: red within compression error)
        red, green, blue = read_rgb(sample).getpixel((4, 4))
        assert red > 230 and green < 30 and blue < 30


def test_karpathy_split_is_honoured_and_test_never_trained_on(tmp_path):
    make_karpathy(tmp_path)
    _, samples = read_collection(tmp_path)
    assert [s.key for s in select_split(samples, "train", 0.5, seed=0)] == ["1000092795.jpg"]
    assert [s.key for s in select_split(samples, "test", 0.5, seed=0)] == ["2199200615.jpg"]


def test_seeded_val_split_is_disjoint_and_reproducible(tmp_path):
    samples = read_collection(_many(tmp_path, 50))[1]
    train, val = select_split(samples, "train", 0.2, seed=3), select_split(samples, "val", 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40 and not {s.key for s in train} & {s.key for s in val}
    assert select_split(samples, "val", 0.2, seed=3) == val
    assert select_split(samples, "val", 0.2, seed=4) != val


def _many(root, count):
    root.mkdir(exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"caption {i}")
    return root


def test_data_format_overrides_detection(tmp_path):
    make_token(tmp_path)
    make_jsonl(tmp_path)
    assert read_collection(tmp_path)[0] == "flickr-token"
    assert read_collection(tmp_path, "imagefolder-jsonl")[0] == "imagefolder-jsonl"
    with pytest.raises(InvalidInput, match="data_format nope: unknown layout; choose one of"):
        read_collection(tmp_path, "nope")


def test_unrecognised_folder_says_which_layouts_are_accepted(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")
    with pytest.raises(InvalidInput) as error:
        read_collection(tmp_path)
    assert all(name in str(error.value) for name in FORMATS)


@pytest.mark.parametrize("raw, clean", [
    ("  A dog\truns   across the grass .  ", "A dog runs across the grass."),
    ("Two men , one woman ; a cat !", "Two men, one woman; a cat!"),
    ("a\x00red\x1bcircle\n", "a red circle"),
])
def test_captions_are_lightly_cleaned(raw, clean):
    assert clean_caption(raw) == clean


@pytest.mark.parametrize("marker, content", [
    ("metadata.jsonl", '{"file_name": "a.png", "text": "a cat"}\n{not json\n'),
    ("metadata.jsonl", '{"text": "no file name"}\n'),
    ("dataset_flickr30k.json", '{"images": [{"filename": "a.jpg"}]}'),
    ("results_20130124.token", b"\xff\xfe not utf-8"),
])
def test_a_broken_captions_file_is_named_in_one_line(tmp_path, marker, content):
    path = tmp_path / marker
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InvalidInput, match=f"its {marker} is not a .* captions file"):
        read_collection(tmp_path)
