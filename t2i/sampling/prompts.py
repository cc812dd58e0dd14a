"""Prompts written the A1111 way: emphasis brackets, explicit weights and BREAK, parsed into weighted text.

The rules, as A1111 documents and applies them: `(text)` multiplies the weight of its text by 1.1,
`[text]` divides it by 1.1, `(text:1.5)` multiplies it by 1.5; nested brackets multiply; `\\(`,
`\\)`, `\\[`, `\\]` and `\\\\` are literal characters; a bracket left open applies to the end of the
prompt, and a closing bracket with nothing open is literal text. `BREAK` (a word of its own, in
capitals) starts a new 75-token chunk. Written for t2i from those rules; no parser code is shared.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from t2i.errors import InvalidInput
from t2i.formats.lora import lora_scale_problem

ROUND, SQUARE = 1.1, 1 / 1.1
MAX_WEIGHT = 100.0  # a weight past this turns a token's embedding into noise; refused rather than drawn
EMPHASIS = ("original", "no-norm", "none")  # A1111: "Original", "No norm", "None" (brackets are text)

_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_TOKENS = re.compile(r"""
    \\[()\[\]\\]            # an escaped bracket or backslash
  | \( | \[                 # opening brackets
  | :\s*([^\s()\[\]:]*)\s*\)   # ':weight)' closes a round bracket with an explicit weight
  | \) | \]                 # closing brackets
  | [^\\()\[\]:]+           # plain text
  | [\\:]                   # a lone backslash or colon is text
""", re.VERBOSE)
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
BREAK_MARK = object()  # stands for a BREAK among the parsed pieces
_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?>")


@dataclass(frozen=True)
class Segment:
    text: str
    weight: float = 1.0
    is_break: bool = False  # a BREAK: the next text starts a new chunk


def _weight(token: str, prompt: str, field: str) -> float | None:
    """The explicit weight in ':WEIGHT)', None when it is not a number (then it is text, as in A1111)."""
    try:
        value = float(token)
    except ValueError:
        return None
    if not (_DECIMAL.fullmatch(token) and math.isfinite(value) and abs(value) <= MAX_WEIGHT):
        raise InvalidInput(f"the emphasis weight {token!r} is not a plain number from -{MAX_WEIGHT:g} to "
                           f"{MAX_WEIGHT:g}", field=field, value=prompt, hint="write e.g. (red:1.3)")
    return value


def _parse(prompt: str, field: str) -> list[list]:
    """[text, weight] pairs; a BREAK is a [BREAK_MARK, ...] pair (brackets around it span it, as in A1111)."""
    pieces: list[list] = []
    open_round: list[int] = []  # where each open bracket's text starts in `pieces`
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKENS.finditer(prompt):
        token, explicit = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif explicit is not None and open_round and (value := _weight(explicit, prompt, field)) is not None:
            scale(open_round.pop(), value)
        elif explicit is not None:  # ':x)' that is not a weight: text, then the bracket as usual
            pieces.append([token[:-1], 1.0])
            if open_round:
                scale(open_round.pop(), ROUND)
            else:
                pieces.append([")", 1.0])
        elif token == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:
            for number, part in enumerate(_BREAK.split(token)):
                if number:
                    pieces.append([BREAK_MARK, 1.0])
                pieces.append([part, 1.0])
    for start in open_round:  # left open: applies to the end
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)
    return pieces


def parse_prompt(prompt: str, emphasis: str = "original", field: str = "prompts") -> list[Segment]:
    """Weighted text segments, neighbours of equal weight merged; BREAKs as segments of their own.

    With emphasis "none" the prompt is text as it stands, brackets and BREAK included (A1111's "None")."""
    if emphasis == "none":
        return [Segment(prompt)] if prompt else []
    if _BREAK.sub("", prompt).strip() == "" and _BREAK.search(prompt):
        raise InvalidInput("holds nothing but BREAK", field=field, value=prompt,
                           hint="BREAK separates parts of a prompt")
    segments: list[Segment] = []
    for text, weight in _parse(prompt, field):
        last = segments[-1] if segments else None
        if text is BREAK_MARK:
            segments.append(Segment("", 1.0, is_break=True))
        elif text and last is not None and not last.is_break and last.weight == weight:
            segments[-1] = Segment(last.text + text, weight)
        elif text:
            segments.append(Segment(text, weight))
    return segments


def is_plain(segments: list[Segment]) -> bool:
    """True when the prompt has no weights and no BREAK: its text is all there is."""
    return all(s.weight == 1.0 and not s.is_break for s in segments)


def split_lora_tags(prompt: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """A1111's `<lora:NAME:WEIGHT>` tags (weight 1 when left out) taken out of a prompt: (text, tags)."""
    tags = []
    for match in _LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), (match.group(2) or "1").strip()
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        problem = lora_scale_problem(value)
        if problem:
            raise InvalidInput(f"the LoRA tag {match.group(0)!r} has no usable weight ({problem})", field="prompts",
                               value=prompt, hint="write e.g. <lora:name:0.8>")
        tags.append((name, value))
    return _LORA_TAG.sub("", prompt), tuple(tags)
