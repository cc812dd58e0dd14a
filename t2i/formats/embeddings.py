"""Textual-inversion embeddings in A1111's `embeddings/` layout: a file's name, used as a word in a
prompt, stands for the file's learned token vectors.

Read: `.safetensors` holding one tensor (A1111's and civitai's `emb_params`, or diffusers'
`{token: vector}`), and, only when pickles are allowed, A1111's `.pt` (`string_to_param`) and
diffusers' `.bin`. A name is matched on CLIP token ids, as A1111 matches it, so case and spacing
around it do not matter but a name inside a longer word does not match. Files are opened only
when their name is in a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from t2i.errors import InvalidInput, NotFound
from t2i.formats.hashes import file_sha256

SAFE_SUFFIXES = (".safetensors",)
PICKLED_SUFFIXES = (".pt", ".bin")
MAX_VECTORS = 75  # one chunk: an embedding is never split across chunks


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: torch.Tensor  # (n, width)
    path: Path

    @cached_property
    def hash(self) -> str:
        """What A1111 writes in `TI hashes`: the first 12 hex digits of the file's SHA-256."""
        return file_sha256(self.path)[:12]


def available_embeddings(folder: str | Path) -> dict[str, Path]:
    """name -> file for every embedding under `folder` (subfolders too, as A1111 reads them)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotFound("is not a folder", field="embeddings_dir", value=folder,
                       hint="give the folder holding your .safetensors embeddings")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in SAFE_SUFFIXES + PICKLED_SUFFIXES:
            found.setdefault(path.stem, path)
    return found


def _vectors_from(data: dict, path: Path) -> torch.Tensor:
    if "string_to_param" in data:  # A1111's .pt: {'*': tensor}
        data = data["string_to_param"]
    tensors = {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}
    if {"clip_l", "clip_g"} <= set(tensors):
        raise InvalidInput("is an SDXL embedding (clip_l and clip_g); t2i runs SD 1.x", field="embeddings_dir",
                           value=path)
    if len(tensors) != 1:
        raise InvalidInput(f"holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:4])}); an SD 1.x embedding "
                           "holds one", field="embeddings_dir", value=path)
    vectors = next(iter(tensors.values())).detach().float()
    vectors = vectors.unsqueeze(0) if vectors.ndim == 1 else vectors
    if vectors.ndim != 2 or not 1 <= len(vectors) <= MAX_VECTORS:
        raise InvalidInput(f"has vectors of shape {tuple(vectors.shape)}; expected 1 to {MAX_VECTORS} rows",
                           field="embeddings_dir", value=path)
    if not torch.isfinite(vectors).all():
        raise InvalidInput("holds NaN or infinite values", field="embeddings_dir", value=path)
    return vectors


def load_embedding(name: str, path: Path, width: int, allow_pickle: bool = False) -> Embedding:
    """One embedding file, checked against the text encoder's width."""
    if path.suffix.lower() in PICKLED_SUFFIXES:
        if not allow_pickle:
            raise InvalidInput("is a pickled embedding, and loading a pickle can run arbitrary code",
                               field="embeddings_dir", value=path,
                               hint="convert it to .safetensors, or set {allow_pickle} if you trust its source")
        try:  # even opted in, tensors and plain containers only: embeddings need nothing more
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InvalidInput(f"cannot be read as an embedding ({type(exc).__name__})", field="embeddings_dir",
                               value=path) from exc
    else:
        from safetensors.torch import load_file

        try:
            data = load_file(path)
        except Exception as exc:
            raise InvalidInput(f"is not a readable .safetensors file ({exc})", field="embeddings_dir",
                               value=path) from exc
    if not isinstance(data, dict):
        raise InvalidInput("holds no embedding", field="embeddings_dir", value=path)
    vectors = _vectors_from(data, path)
    if vectors.shape[1] != width:
        raise InvalidInput(f"is for a text encoder of width {vectors.shape[1]}; this model's is {width}",
                           field="embeddings_dir", value=path, hint="use an embedding trained for SD 1.x")
    return Embedding(name, vectors, path)


def embedding_shape(path: Path) -> tuple[int, int] | None:
    """(vectors, width) of a .safetensors embedding read from its header alone; None when it is not one."""
    from safetensors import safe_open

    if path.suffix.lower() not in SAFE_SUFFIXES:
        return None
    try:
        with safe_open(path, framework="pt") as f:
            shapes = [f.get_slice(key).get_shape() for key in f.keys()]
    except Exception:
        return None
    if len(shapes) != 1 or len(shapes[0]) not in (1, 2):
        return None
    return (1, shapes[0][0]) if len(shapes[0]) == 1 else (shapes[0][0], shapes[0][1])


class EmbeddingLibrary:
    """The embeddings of one folder, matched in token ids and loaded when a prompt uses them."""

    def __init__(self, folder: str | Path, tokenizer, width: int, allow_pickle: bool = False):
        self.files = available_embeddings(folder)
        self.width, self.allow_pickle = width, allow_pickle
        self.loaded: dict[str, Embedding] = {}
        by_ids: dict[tuple[int, ...], str] = {}
        for name in self.files:
            ids = tuple(tokenizer(name, add_special_tokens=False, verbose=False).input_ids)
            if ids:
                by_ids.setdefault(ids, name)
        # longest names first, so "bad_hands_v2" wins over "bad_hands" where both match
        self.names = sorted(by_ids.items(), key=lambda item: -len(item[0]))

    def match(self, ids: list[int], start: int) -> tuple[int, Embedding] | None:
        """(how many ids the name took, the embedding) where an embedding's name starts at ids[start]."""
        for name_ids, name in self.names:
            if tuple(ids[start:start + len(name_ids)]) == name_ids:
                return len(name_ids), self.get(name)
        return None

    def get(self, name: str) -> Embedding:
        if name not in self.loaded:
            self.loaded[name] = load_embedding(name, self.files[name], self.width, self.allow_pickle)
        return self.loaded[name]
