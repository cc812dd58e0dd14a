"""A1111's `parameters` infotext: the settings line A1111, ComfyUI and civitai read from a PNG."""

from __future__ import annotations

import json
import re
from typing import Any


def _quote(value: Any) -> str:
    """A value as A1111 reads it back: JSON-quoted when it holds a separator or starts with a quote."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") or text.startswith('"') else text


def format_infotext(prompt: str, negative_prompt: str, fields: dict[str, Any]) -> str:
    """The A1111 `parameters` text: the prompt, the negative prompt's line (left out when empty), then
    the `Key: value` pairs in order (None values left out)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


# A1111's reading rules (modules/infotext_utils.py): the last line is the settings line when it holds
# at least 3 `Key: value` pairs separated by commas, a value in double quotes being a JSON string
# (kept as written if it does not parse); the lines before it, stripped, are the prompt, up to a line
# starting with "Negative prompt:", after which they are the negative prompt.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, str]:
    """An infotext's fields as A1111 reads them: "Prompt", "Negative prompt" and each `Key: value`."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:  # no settings line: all of it is the prompt
        lines, last = [*lines, last], ""
    fields = {key: _unquote(value) for key, value in _PAIR.findall(last)}
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **fields}


def _unquote(value: str) -> str:
    if not (len(value) >= 2 and value[0] == value[-1] == '"'):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value
