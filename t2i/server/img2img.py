"""Images as A1111 clients send them: base64, raw or as a data: URL, never fetched from a URL."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image

from t2i.errors import InvalidInput, check
from t2i.formats.images import checked_image, decode_reduced


def decode_image(text: str, field: str) -> Image.Image:
    """A base64 image as A1111 clients send it (raw, or a data: URL). URLs are refused: the server
    never fetches from where a request points."""
    check(isinstance(text, str) and text != "", field, None, "is empty; send a base64-encoded image")
    if text.startswith(("http://", "https://", "file:")):
        raise InvalidInput("is a URL; this server does not fetch images", field=field, value=text[:60],
                           hint="send the image itself, base64-encoded")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"is not valid base64 ({exc})", field=field) from exc
    with checked_image(io.BytesIO(data), field) as image:
        return decode_reduced(image, field).copy()
