"""Image files in and out: readable inputs with clear errors, atomic never-overwriting outputs."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from t2i.errors import UsageError

OUTPUT_NAME = re.compile(r"^(\d{5,})-")


def load_image(path: str, option: str) -> Image.Image:
    """An RGB image with its EXIF orientation applied; `option` names the flag in errors."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{option} {path}: no such file")
    try:
        with Image.open(file) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"{option} {path}: not a readable image ({exc})") from exc


def load_mask(path: str, size: tuple[int, int]) -> Image.Image:
    """A grayscale inpainting mask: white is repainted, black is kept."""
    mask = load_image(path, "--mask").convert("L")
    if mask.size != size:
        raise UsageError(f"--mask {path} is {mask.size[0]}x{mask.size[1]} but the init image is "
                         f"{size[0]}x{size[1]}: give a mask of the same size")
    return mask


def _next_index(out_dir: Path) -> int:
    found = [int(m.group(1)) for name in os.listdir(out_dir) if (m := OUTPUT_NAME.match(name))]
    return max(found, default=0) + 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_png(image: Image.Image, out_dir: Path, seed: int, pnginfo: PngImagePlugin.PngInfo) -> Path:
    """Write `NNNNN-SEED.png` atomically; never replaces an existing file.

    The image is written to a temporary file first, then hard-linked to the first free name: a
    link fails instead of overwriting, and readers never see a half-written PNG.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".t2i-", suffix=".png.part")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=pnginfo)
            f.flush()
            os.fsync(f.fileno())
        index = _next_index(out_dir)
        while True:
            final = out_dir / f"{index:05d}-{seed}.png"
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                index += 1
    finally:
        os.unlink(tmp)
