"""Reading images: one decoder for init images, masks and training data, so all see the same pixels.

Any common file becomes 8-bit RGB as a person would see it: EXIF rotation applied, 16-bit values
scaled (not clipped at 255), transparency put on white.
"""

from __future__ import annotations

import io
import logging
import math
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from t2i.errors import InvalidInput, NotFound

log = logging.getLogger("t2i")

MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # what t2i works on; a larger input is read reduced (A1111's UI stops at 2048)
# what t2i reads at all: phone photos (12-48 MP) and scans pass; a decompression bomb (a small file that
# decodes to gigabytes) does not. Decoding one this size takes at most ~0.6 GB (RGB, 8 bits).
BOMB_PIXELS = 200_000_000
# what a missing, empty, truncated or non-image file raises when read
UNREADABLE = (OSError, ValueError, KeyError, zipfile.BadZipFile, Image.DecompressionBombError)


def open_image(path: Path, member: str | None = None) -> Image.Image:
    """Decode a file (or a member of a zip archive) fully into memory."""
    if member is not None:
        with zipfile.ZipFile(path) as archive:
            image = Image.open(io.BytesIO(archive.read(member)))
    else:
        image = Image.open(path)
    image.load()  # reads the pixels; PIL closes a single-frame file opened by name
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: EXIF rotation applied, 16-bit scaled to 8 bits, alpha composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale, do not clip at 255
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array / max(array.max(), 1) * 255, 0, 255).astype(np.uint8))
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


@contextmanager
def checked_image(path: str | Path | BinaryIO, field: str) -> Iterator[Image.Image]:
    """An image file (or uploaded bytes) opened for reading, refused before decoding when it is
    missing, not an image, over BOMB_PIXELS (a decompression bomb decodes to gigabytes from a small
    file) or holds a text chunk that inflates past PIL's limit."""
    if hasattr(path, "read"):
        file, path = path, describe(path)
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise NotFound("no such file", field=field, value=path)
    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height > BOMB_PIXELS:
                raise InvalidInput(f"is {width}x{height} pixels; t2i reads at most {BOMB_PIXELS:,}",
                                   field=field, value=path, hint="downscale it first")
            yield image
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"has more pixels than t2i reads (at most {BOMB_PIXELS:,})", field=field,
                           value=path) from exc
    except ValueError as exc:
        if "Decompressed" not in str(exc):
            raise InvalidInput(f"not a readable image ({_reason(exc)})", field=field, value=path) from exc
        raise InvalidInput(f"a text chunk inflates past the {PngImagePlugin.MAX_TEXT_CHUNK:,}-byte limit",
                           field=field, value=path) from exc
    except (UnidentifiedImageError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"not a readable image ({_reason(exc)})", field=field, value=path) from exc


def _reason(exc: Exception) -> str:
    """PIL's message without the Python object it names ("cannot identify image file <_io.BytesIO
    object at 0x7f...>"): a reader of the error cannot use an address."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)) or type(exc).__name__


def decode_reduced(image: Image.Image, field: str) -> Image.Image:
    """Decode an opened image, reduced by the smallest whole factor that brings it within MAX_PIXELS
    (JPEGs are decoded reduced, cheaply; other formats are reduced after decoding), with a warning.
    The factor depends on the size alone, so an image and its mask of the same size reduce alike."""
    width, height = image.size
    factor = math.ceil(math.sqrt(width * height / MAX_PIXELS)) if width * height > MAX_PIXELS else 1
    while (width // factor) * (height // factor) > MAX_PIXELS:
        factor += 1
    target = (width // factor, height // factor)
    if factor > 1:
        image.draft(image.mode, target)  # JPEG: the decoder itself scales by 1/2, 1/4 or 1/8
    image.load()
    if image.size != target:
        image = image.resize(target, Image.Resampling.BOX)
    if factor > 1:
        log.warning("%s is %dx%d pixels: read reduced to %dx%d (t2i works on at most %d pixels)", field, width,
                    height, *target, MAX_PIXELS)
    return image


def load_image(source: str | Path | BinaryIO | Image.Image, field: str) -> Image.Image:
    """An init image or mask as RGB, from a path, bytes or an image in memory; `field` names it in errors."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    with checked_image(source, field) as image:
        return to_rgb(decode_reduced(image, field))


def load_mask(source: str | Path | Image.Image, size: tuple[int, int]) -> Image.Image:
    """A grayscale inpainting mask the size of the init image: white is repainted, black is kept."""
    mask = load_image(source, "mask").convert("L")
    if mask.size != size:
        raise InvalidInput(f"is {mask.size[0]}x{mask.size[1]} but the init image is {size[0]}x{size[1]}",
                           field="mask", value=describe(source), hint="give a mask of the same size")
    return mask


def describe(source) -> str:
    if hasattr(source, "read"):
        return "(uploaded image)"
    return "(image in memory)" if isinstance(source, Image.Image) else str(source)
