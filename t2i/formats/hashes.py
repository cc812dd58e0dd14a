"""The file hashes other tools show and match on: A1111's `Model hash` and `Lora hashes`, kohya's `sshs_*`.

A1111 (and civitai) know a checkpoint by the SHA-256 of the whole file, but a `.safetensors` LoRA by
the "addnet" hash: the SHA-256 of the bytes after the safetensors header, so that editing the
metadata does not change it; a `sshs_model_hash` stored in the metadata takes precedence.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import BinaryIO

from huggingface_hub.utils.sha import sha_fileobj

LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000  # sd-webui-additional-networks' old hash: 64 KiB at 1 MiB


def file_sha256(path: Path) -> str:
    """SHA-256 of the whole file, in hex (A1111's `Model hash` is its first 10 digits)."""
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()


def _skip_header(stream: BinaryIO) -> None:
    stream.seek(0)
    header_length = int.from_bytes(stream.read(8), "little")
    stream.seek(8 + header_length)


def addnet_hash(stream: BinaryIO) -> str:
    """SHA-256 (hex) of a safetensors file's tensor data, everything after its header."""
    _skip_header(stream)
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def addnet_legacy_hash(stream: BinaryIO) -> str:
    """The older additional-networks hash: 8 hex digits of the SHA-256 of 64 KiB at 1 MiB."""
    stream.seek(LEGACY_OFFSET)
    return hashlib.sha256(stream.read(LEGACY_LENGTH)).hexdigest()[:8]


def safetensors_metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(header_length)).get("__metadata__", {})


def lora_hash(path: Path) -> str:
    """What A1111 writes in `Lora hashes` for this file: 12 hex digits."""
    stored = safetensors_metadata(path).get("sshs_model_hash")
    if stored:
        return stored[:12]
    with open(path, "rb") as f:
        return addnet_hash(f)[:12]


def kohya_hashes(tensors: dict, metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya's scripts store them: both hashes of the file the
    tensors make with only the training (`ss_`) metadata, which is meant never to change."""
    from safetensors.torch import save

    stream = io.BytesIO(save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")}))
    return addnet_hash(stream), addnet_legacy_hash(stream)
