"""Generation settings inside the PNG: A1111's `parameters` infotext plus a full JSON record.

The infotext is what A1111, ComfyUI and civitai read; the `t2i` JSON chunk holds every resolved
setting, so `t2i generate --from-image` can re-make the image exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from t2i.errors import UsageError
from t2i.schedulers import SAMPLERS

JSON_CHUNK = "t2i"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _format_number(value: float) -> str:
    return f"{value:g}"


def infotext(settings: dict[str, Any]) -> str:
    """The A1111 `parameters` text for one image's settings."""
    spec = SAMPLERS[settings["sampler"]]
    prompt = settings["prompt"] + "".join(
        f" <lora:{lora['name']}:{_format_number(lora['scale'])}>" for lora in settings["loras"])
    fields = {
        "Steps": settings["steps"], "Sampler": spec.a1111, "Schedule type": spec.schedule,
        "CFG scale": _format_number(settings["guidance_scale"]), "Seed": settings["seed"],
        "Size": f"{settings['width']}x{settings['height']}", "Model hash": settings["model_hash"],
        "Model": settings["model_name"], "VAE": settings["vae"] and Path(settings["vae"]).name,
        "Denoising strength": settings["strength"] and _format_number(settings["strength"]),
        "Clip skip": settings["clip_skip"] if (settings["clip_skip"] or 1) > 1 else None,
        "Lora hashes": ", ".join(f"{lora['name']}: {lora['hash']}" for lora in settings["loras"]) or None,
        "Version": f"t2i {settings['version']}",
    }
    lines = [prompt]
    if settings["negative_prompt"]:
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def png_info(settings: dict[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext(settings))  # PIL writes iTXt when the text is not Latin-1
    info.add_text(JSON_CHUNK, json.dumps(settings, ensure_ascii=False, sort_keys=True))
    return info


def read_metadata(path: str) -> tuple[str | None, dict[str, Any] | None]:
    """(infotext, t2i settings) stored in a PNG; either may be None for images from other tools."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with Image.open(file) as image:
            chunks = dict(getattr(image, "text", {}))
    except OSError as exc:
        raise UsageError(f"{path}: not a readable image ({exc})") from exc
    settings = json.loads(chunks[JSON_CHUNK]) if JSON_CHUNK in chunks else None
    return chunks.get("parameters"), settings
