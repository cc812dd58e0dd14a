"""The file hashes other tools show and match on (A1111's `Model hash`, `Lora hashes`)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.utils.sha import sha_fileobj


def file_sha256(path: Path) -> str:
    """SHA-256 of the whole file, in hex (A1111's `Model hash` is its first 10 digits)."""
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()
