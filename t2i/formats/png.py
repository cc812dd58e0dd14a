"""PNG files that carry their settings: A1111's `parameters` text plus a `t2i` JSON chunk.

Writing is a step of its own, apart from generation (the CLI writes files, a server sends bytes).
Files are named `NNNNN-SEED.png`, never from prompt text, and never overwrite an existing file.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, PngImagePlugin

from t2i.errors import InvalidInput
from t2i.files import write_new
from t2i.formats.images import checked_image

JSON_CHUNK = "t2i"
OUTPUT_NAME = re.compile(r"^(\d{5,})-")


class Recorded(Protocol):
    """What a PNG carries of an image's settings (t2i.sampling.settings.ImageSettings)."""

    @property
    def seed(self) -> int: ...

    def infotext(self) -> str: ...

    def to_record(self) -> dict[str, Any]: ...


def png_info(settings: Recorded) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", settings.infotext())  # PIL writes iTXt when the text is not Latin-1
    info.add_text(JSON_CHUNK, json.dumps(settings.to_record(), ensure_ascii=False, sort_keys=True))
    return info


def png_bytes(image: Image.Image, settings: Recorded) -> bytes:
    """The PNG file for one generated image, in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(settings))
    return buffer.getvalue()


def _names(out_dir: Path, tag: int | str):
    """`NNNNN-TAG.png` (TAG: the seed, or `grid`) from one past the highest number in the folder upwards."""
    index = max((int(m.group(1)) for name in os.listdir(out_dir) if (m := OUTPUT_NAME.match(name))), default=0) + 1
    while True:
        yield f"{index:05d}-{tag}.png"
        index += 1


def png_base64(image: Image.Image) -> str:
    """An image as the base64 PNG the A1111 API answers with (no settings chunks)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def save_png(image: Image.Image, settings: Recorded, out_dir: Path) -> Path:
    """Write one generated image with its settings into `out_dir`; returns the new file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = png_bytes(image, settings)
    return write_new(out_dir, _names(out_dir, settings.seed), lambda tmp: tmp.write_bytes(data))


def save_strip(frames, beside: Path) -> Path:
    """The denoising strip, frames left to right, as `<image's name>-strip.png` beside its image."""
    width, height = frames[0].size
    strip = Image.new("RGB", (width * len(frames), height), "white")
    for index, frame in enumerate(frames):
        strip.paste(frame.convert("RGB"), (index * width, 0))
    names = [f"{beside.stem}-strip.png"] + [f"{beside.stem}-strip-{n}.png" for n in range(1, 1000)]
    return write_new(beside.parent, names, lambda tmp: strip.save(tmp, format="PNG"))


def save_attention(maps, image: Image.Image, beside: Path) -> list[Path]:
    """A word's cross-attention maps beside its image: the overlay grid (`-attention.png`) and the raw maps
    (`-attention.safetensors`: `words` (words, H, W) at the image's size, `tokens` per context position at
    the latent's, the words and their positions and weights as JSON in the metadata)."""
    import json

    from safetensors.torch import save_file

    grid = maps.overlay(image)
    words = json.dumps([{"word": w.text, "positions": list(w.positions), "weight": w.weight} for w in maps.words])
    tensors = {"words": maps.maps.contiguous(), "tokens": maps.tokens.contiguous()}
    png = write_new(beside.parent, [f"{beside.stem}-attention.png"], lambda tmp: grid.save(tmp, format="PNG"))
    raw = write_new(beside.parent, [f"{beside.stem}-attention.safetensors"],
                    lambda tmp: save_file(tensors, str(tmp), metadata={"words": words}))
    return [png, raw]


def save_grid_png(image: Image.Image, text: str, out_dir: Path) -> Path:
    """Write an X/Y/Z grid as `NNNNN-grid.png`, carrying `text` (its first cell's infotext, as A1111 does)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return write_new(out_dir, _names(out_dir, "grid"), lambda tmp: tmp.write_bytes(buffer.getvalue()))


EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
# the EXIF spec's 8-byte character-code prefixes of a UserComment
_COMMENT_CODES = {b"UNICODE\0": "utf-16", b"ASCII\0\0\0": "ascii", b"\0" * 8: "utf-8"}


def parameters_text(image: Image.Image) -> str | None:
    """A1111's infotext stored in an image: the PNG `parameters` text chunk, or for JPEG and WebP the
    EXIF UserComment A1111 writes there (piexif's "UNICODE" comment: UTF-16, big-endian unless a BOM
    says otherwise)."""
    text = image.info.get("parameters")  # PIL puts a PNG's text chunks in `info`, copies included
    if isinstance(text, str):
        return text
    comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(comment, str):
        return comment or None
    if not isinstance(comment, bytes) or len(comment) < 8:
        return None
    encoding = _COMMENT_CODES.get(comment[:8], "utf-8")
    body = comment[8:]
    if encoding == "utf-16":
        encoding = "utf-16" if body[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-16-be"
    return body.decode(encoding, errors="replace").rstrip("\0") or None


def read_png_text(path: str | Path) -> tuple[str | None, dict[str, Any] | None]:
    """(infotext, t2i settings) stored in an image; either may be None for images from other tools.
    The infotext is read from JPEG and WebP EXIF too (A1111's UserComment); the t2i record is PNG's."""
    with checked_image(path, "image") as image:
        chunks = dict(getattr(image, "text", {}))
        parameters = parameters_text(image)
    try:
        settings = json.loads(chunks[JSON_CHUNK]) if JSON_CHUNK in chunks else None
    except ValueError as exc:
        raise InvalidInput(f"its {JSON_CHUNK!r} settings chunk is not valid JSON ({exc})", field="image",
                           value=path) from exc
    if settings is not None and not isinstance(settings, dict):
        raise InvalidInput(f"its {JSON_CHUNK!r} settings chunk is not a JSON object", field="image", value=path)
    return parameters, settings
