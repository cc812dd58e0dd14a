"""A1111's `parameters` infotext: the settings line A1111, ComfyUI and civitai read from a PNG."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from t2i.sampling.samplers import SAMPLERS, SCHEDULES, resolve_sampler


def _quote(value: Any) -> str:
    """A value as A1111 reads it back: JSON-quoted when it holds a separator or starts with a quote."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") or text.startswith('"') else text


def _number(value: float) -> str:
    return f"{value:g}"


def infotext(settings: dict[str, Any]) -> str:
    """The A1111 `parameters` text for one image's settings (t2i.formats.settings)."""
    sampler, schedule = resolve_sampler(settings["sampler"], settings.get("schedule"))
    prompt = settings["prompt"] + "".join(
        f" <lora:{lora['name']}:{_number(lora['scale'])}>" for lora in settings["loras"])
    fields = {
        "Steps": settings["steps"], "Sampler": SAMPLERS[sampler].a1111,
        "Schedule type": SCHEDULES[schedule].a1111,
        "CFG scale": _number(settings["guidance_scale"]), "Seed": settings["seed"],
        "Size": f"{settings['width']}x{settings['height']}", "Model hash": settings["model_hash"],
        "Model": settings["model_name"], "VAE": settings["vae"] and Path(settings["vae"]).name,
        "Denoising strength": settings["strength"] and _number(settings["strength"]),
        "Clip skip": settings["clip_skip"] if (settings["clip_skip"] or 1) > 1 else None,
        "Lora hashes": ", ".join(f"{lora['name']}: {lora['hash']}" for lora in settings["loras"]) or None,
        "TI hashes": ", ".join(f"{e['name']}: {e['hash']}" for e in settings.get("embeddings", ())) or None,
        # A1111 writes it only when it is not its default, Original
        "Emphasis": {"no-norm": "No norm", "none": "None"}.get(settings.get("emphasis", "original")),
        "Version": f"t2i {settings['version']}",
    }
    lines = [prompt]
    if settings["negative_prompt"]:
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


# A1111's reading rules: the last line holds `Key: value` pairs separated by commas, a value in
# double quotes being a JSON string; the lines before it are the prompt, up to a line starting with
# "Negative prompt:", after which they are the negative prompt.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, str]:
    """An infotext's fields as A1111 reads them: "Prompt", "Negative prompt" and each `Key: value`."""
    *lines, last = text.strip().split("\n")
    if not _PAIR.match(last) or ":" not in last:  # no settings line: all of it is the prompt
        lines, last = [*lines, last], ""
    fields = {}
    for key, value in _PAIR.findall(last):
        fields[key] = json.loads(value) if value.startswith('"') and value.endswith('"') else value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **fields}
