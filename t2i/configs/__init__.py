"""Configuration files shipped with t2i (no weights)."""

from pathlib import Path

#: SD 1.x architecture configs + CLIP tokenizer, for offline single-file loading
SD1_CONFIG_DIR = Path(__file__).parent / "sd1"
