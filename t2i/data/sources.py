"""Captioned image collections as users have them on disk, read into one list of samples.

Layouts: the four Flickr30k distributions (original `.token` file, Kaggle `results.csv`, Karpathy
`dataset_flickr30k.json`, the `nlphuji` CSV with a folder or zip of images), Hugging Face
imagefolder (`metadata.jsonl`/`metadata.csv`) and kohya folders (image + same-stem `.txt` or
`.caption`). Only captions and paths are read here; pixels are read by the training dataset.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from t2i.errors import InvalidInput, NotFound, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FLICKR_IMAGE_DIRS = ("flickr30k-images", "flickr30k_images", "images", ".")


@dataclass(frozen=True)
class Sample:
    key: str  # stable name of the image within the collection (cache keys, reports)
    path: Path  # the image file, or the zip holding it
    captions: tuple[str, ...]
    split: str | None = None  # train / val / test where the layout says
    member: str | None = None  # name inside the zip, when `path` is a zip
    conditioning: Path | None = None  # its control image, for ControlNet training


def clean_caption(text: str) -> str:
    """Control characters out, whitespace collapsed, tokenised punctuation re-attached."""
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([.,!?;:])", r"\1", text)


def _group(pairs, image_dir: Path, splits: dict[str, str] | None = None) -> list[Sample]:
    """(file name, caption) pairs -> one Sample per image, captions in file order."""
    captions: dict[str, list[str]] = {}
    for name, caption in pairs:
        caption = clean_caption(caption)
        if caption:
            captions.setdefault(name.strip(), []).append(caption)
    return [Sample(name, image_dir / name, tuple(found), (splits or {}).get(name))
            for name, found in captions.items()]


def _find_image_dir(root: Path, some_image: str) -> Path:
    for candidate in [root / d for d in FLICKR_IMAGE_DIRS] + [root / "flickr30k_images" / "flickr30k_images"]:
        if (candidate / some_image).is_file():
            return candidate
    raise NotFound(f"captions found, but not the image {some_image} in any of {', '.join(FLICKR_IMAGE_DIRS)} "
                   "below it", field="data", value=root)


def read_flickr_token(file: Path) -> list[Sample]:
    """Original Flickr30k: `1000092795.jpg#0<TAB>caption` lines."""
    pairs = []
    for line in file.read_text(encoding="utf-8").splitlines():
        name, sep, caption = line.partition("\t")
        if sep:
            pairs.append((name.split("#")[0], caption))
    return _group(pairs, _find_image_dir(file.parent, pairs[0][0]) if pairs else file.parent)


def read_kaggle_csv(file: Path) -> list[Sample]:
    """Kaggle: `image_name| comment_number| comment`, including its rows with a missing pipe."""
    pairs = []
    lines = file.read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        fields = line.split("|", 2)
        if len(fields) == 3:
            pairs.append((fields[0], fields[2]))
        elif len(fields) == 2:  # "2199200615.jpg| 4   A dog runs ...": number and caption run together
            match = re.match(r"\s*\d+\s+(.*)", fields[1])
            if match:
                pairs.append((fields[0], match.group(1)))
    first = pairs[0][0].strip() if pairs else ""
    return _group(pairs, _find_image_dir(file.parent, first) if pairs else file.parent)


def read_karpathy_json(file: Path) -> list[Sample]:
    """Karpathy splits: `{"images": [{"filename", "split", "sentences": [{"raw"}]}]}`."""
    images = json.loads(file.read_text(encoding="utf-8"))["images"]
    pairs = [(image["filename"], sentence["raw"]) for image in images for sentence in image["sentences"]]
    splits = {image["filename"]: image["split"] for image in images}
    return _group(pairs, _find_image_dir(file.parent, images[0]["filename"]) if images else file.parent, splits)


def read_nlphuji_csv(file: Path) -> list[Sample]:
    """Hugging Face nlphuji/flickr30k: CSV (raw = JSON list of captions, split, filename) + images."""
    with open(file, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    archive = file.parent / "flickr30k-images.zip"
    if archive.is_file():
        members = {Path(m).name: m for m in zipfile.ZipFile(archive).namelist() if not m.endswith("/")}
        return [Sample(row["filename"], archive, tuple(c for c in map(clean_caption, json.loads(row["raw"])) if c),
                       row["split"], members.get(row["filename"], row["filename"])) for row in rows]
    image_dir = _find_image_dir(file.parent, rows[0]["filename"]) if rows else file.parent
    return [Sample(row["filename"], image_dir / row["filename"],
                   tuple(c for c in map(clean_caption, json.loads(row["raw"])) if c), row["split"]) for row in rows]


def read_imagefolder(file: Path, control_column: str = "conditioning_image") -> list[Sample]:
    """Hugging Face imagefolder: metadata.jsonl / metadata.csv with `file_name` and a text column (and the
    control image's path, relative to the file, in `control_column` where a row has one)."""
    if file.suffix == ".jsonl":
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with open(file, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    column = next((c for c in ("text", "caption", "captions", "prompt") if rows and c in rows[0]), None)
    if column is None:
        raise InvalidInput("no caption column (text, caption, captions or prompt) beside file_name", field="data",
                           value=file)
    samples = []
    for row in rows:
        value = row[column]
        captions = value if isinstance(value, list) else [value]
        control = row.get(control_column)
        samples.append(Sample(row["file_name"], file.parent / row["file_name"],
                              tuple(c for c in map(clean_caption, captions) if c), row.get("split"),
                              conditioning=file.parent / control if isinstance(control, str) and control else None))
    return samples


CONTROL_FOLDER = "conditioning"  # control images twin the images there, by relative path and stem


def read_kohya_folder(root: Path) -> list[Sample]:
    """kohya: every image with a same-stem .txt or .caption file (one caption per line)."""
    samples = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                        and p.relative_to(root).parts[0] != CONTROL_FOLDER):
        for suffix in (".txt", ".caption"):
            text_file = image.with_suffix(suffix)
            if text_file.is_file():
                lines = text_file.read_text(encoding="utf-8").splitlines()
                samples.append(Sample(str(image.relative_to(root)), image,
                                      tuple(c for c in map(clean_caption, lines) if c)))
                break
    return samples


# layout name -> (marker file name, reader); detection tries them in this order
LAYOUTS: dict[str, tuple[str, Callable[[Path], list[Sample]]]] = {
    "flickr-token": ("results_20130124.token", read_flickr_token),
    "karpathy": ("dataset_flickr30k.json", read_karpathy_json),
    "nlphuji": ("flickr_annotations_30k.csv", read_nlphuji_csv),
    "kaggle": ("results.csv", read_kaggle_csv),
    "imagefolder-jsonl": ("metadata.jsonl", read_imagefolder),
    "imagefolder-csv": ("metadata.csv", read_imagefolder),
}
FORMATS = (*LAYOUTS, "kohya")


def _marker(root: Path, name: str) -> Path | None:
    for candidate in (root / name, *sorted(root.glob(f"*/{name}"))):
        if candidate.is_file():
            return candidate
    return None


def with_control_twins(samples: list[Sample], root: Path) -> list[Sample]:
    """Each sample without a control image gets its twin in root/conditioning/ (same relative path and
    stem, any image suffix) when there is one: kohya's ControlNet layout, for any captions layout."""
    folder = root / CONTROL_FOLDER
    if not folder.is_dir():
        return samples
    found = []
    for sample in samples:
        twin = None
        if sample.conditioning is None and sample.member is None:
            relative = sample.path.relative_to(root) if sample.path.is_relative_to(root) else Path(sample.path.name)
            twin = next((c for suffix in IMAGE_SUFFIXES
                         if (c := (folder / relative).with_suffix(suffix)).is_file()), None)
        found.append(dataclasses.replace(sample, conditioning=twin) if twin else sample)
    return found


def read_collection(root: str | Path, data_format: str | None = None,
                    control_column: str = "conditioning_image") -> tuple[str, list[Sample]]:
    """(layout name, samples) of a data folder; `data_format` skips detection. Control images (ControlNet
    training) come from an imagefolder's `control_column` or from root/conditioning/ twins."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NotFound("no such folder", field="data", value=root)
    if data_format is not None and data_format not in FORMATS:
        raise InvalidInput("unknown layout", field="data_format", value=data_format, choices=FORMATS)
    for name, (marker_name, reader) in LAYOUTS.items():
        if data_format in (None, name) and (marker := _marker(root, marker_name)):
            try:
                found = reader(marker, control_column) if reader is read_imagefolder else reader(marker)
                return name, with_control_twins(_non_empty(found, root), root)
            except (ValueError, KeyError, TypeError, IndexError, csv.Error) as exc:  # JSON, CSV, encoding errors
                raise InvalidInput(f"its {marker.name} is not a {name} captions file ({type(exc).__name__}: "
                                   f"{first_line(exc)})", field="data", value=root) from exc
    if data_format in (None, "kohya"):
        samples = read_kohya_folder(root)
        if samples:
            return "kohya", with_control_twins(_non_empty(samples, root), root)
    accepted = ", ".join(f"{name} ({marker})" for name, (marker, _) in LAYOUTS.items())
    raise InvalidInput(f"no captioned images found. Accepted layouts: {accepted}, "
                       "or kohya (images with same-stem .txt/.caption files)", field="data", value=root)


def _non_empty(samples: list[Sample], root: Path) -> list[Sample]:
    samples = [s for s in samples if s.captions]
    if not samples:
        raise InvalidInput("the captions file lists no captioned images", field="data", value=root)
    return samples


def select_split(samples: list[Sample], split: str, val_fraction: float, seed: int) -> list[Sample]:
    """The samples of one split: the layout's own (Karpathy) split when it has one, else a seeded one."""
    if any(s.split for s in samples):
        return [s for s in samples if s.split == split]
    if split == "test":
        return []
    ordered = sorted(samples, key=lambda s: s.key)
    random.Random(seed).shuffle(ordered)
    n_val = round(len(ordered) * val_fraction)
    return ordered[:n_val] if split == "val" else ordered[n_val:]
