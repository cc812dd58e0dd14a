"""Shared fixtures: tiny SD 1.x components built in code, saved folders, a CLI runner."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from t2i.models.presets import tiny_components


def plain_pipeline(unet_in_channels: int = 4, cls=None):
    """A plain diffusers pipeline over the same tiny components the `tiny` preset builds."""
    from diffusers import StableDiffusionPipeline

    cls = cls or StableDiffusionPipeline
    return cls(**tiny_components(unet_in_channels=unet_in_channels), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)


def pixels(source) -> np.ndarray:
    """An image's pixels, from a file, a PIL image or a generation result."""
    image = getattr(source, "image", source)
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny model saved as a diffusers folder: the code path of a real local model."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    plain_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd-inpainting"
    plain_pipeline(unet_in_channels=9).save_pretrained(folder)
    return folder


@pytest.fixture
def init_image(tmp_path):
    """A 32x32 picture with structure (a gradient and a square), as a PNG file."""
    rows, cols = np.mgrid[0:32, 0:32]
    array = np.stack([rows * 8, cols * 8, np.full_like(rows, 90)], axis=-1).astype(np.uint8)
    array[8:24, 8:24] = (250, 30, 30)
    path = tmp_path / "init.png"
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def mask_image(tmp_path):
    array = np.zeros((32, 32), dtype=np.uint8)
    array[4:20, 4:20] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `t2i ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from t2i.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["t2i", *map(str, args)])
        monkeypatch.delenv("T2I_DEBUG", raising=False)
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run

