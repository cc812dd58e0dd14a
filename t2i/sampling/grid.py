"""A1111's X/Y/Z plot: one setting changed along each axis, every other setting the same, drawn as a
labelled grid per Z value.

Planning is apart from generating and imports no torch: every axis name and value, and every cell's
whole `GenerationConfig`, is checked before the first image. Values are comma-separated, with CSV
quoting for values that hold commas (`sampler="Euler a","DPM++ 2M Karras"`), as A1111 reads them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from t2i.errors import InvalidInput, check
from t2i.formats.lora import LoraRef, lora_scale_problem
from t2i.sampling.config import GenerationConfig

MAX_CELLS = 400  # images in one run (all Z values); --max-cells raises it


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str):
        value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(text)
        return value
    return parse


def _lora_weight(text: str) -> float:
    value = _number(float)(text)
    problem = lora_scale_problem(value)
    if problem:
        raise InvalidInput(f"{text!r}: {problem}", field="lora-weight", value=None)
    return value


def _with_lora_weight(config: GenerationConfig, value: float) -> GenerationConfig:
    check(bool(config.loras), "x", "lora-weight", "needs a LoRA to weigh", hint="add --lora PATH")
    return replace(config, loras=tuple(LoraRef(ref.path, value) for ref in config.loras))


@dataclass(frozen=True)
class Axis:
    label: str  # A1111's axis label, drawn beside each value
    parse: Callable[[str], Any]
    apply: Callable[..., GenerationConfig] | None  # (config, value) -> config; None: applied by plan_grid


AXES: dict[str, Axis] = {
    "seed": Axis("Seed", _number(int), lambda c, v: replace(c, seed=v)),
    "steps": Axis("Steps", _number(int), lambda c, v: replace(c, steps=v)),
    "cfg": Axis("CFG Scale", _number(float), lambda c, v: replace(c, guidance_scale=v)),
    # each sampler on the schedule the base config says: by default A1111's Automatic for that sampler
    "sampler": Axis("Sampler", str, lambda c, v: replace(c, sampler=v)),
    "schedule": Axis("Schedule type", str, lambda c, v: replace(c, schedule=v)),
    "prompt-sr": Axis("Prompt S/R", str, None),  # applied with the axis's first value: see `_search_replace`
    "lora-weight": Axis("LoRA weight", _lora_weight, _with_lora_weight),
    "clip-skip": Axis("Clip skip", _number(int), lambda c, v: replace(c, clip_skip=None if v == 1 else v)),
    "strength": Axis("Denoising", _number(float), lambda c, v: replace(c, strength=v)),
}
ALIASES = {"cfg-scale": "cfg", "guidance-scale": "cfg", "sampler-name": "sampler", "scheduler": "schedule",
           "schedule-type": "schedule", "prompt-s/r": "prompt-sr", "sr": "prompt-sr", "denoising": "strength",
           "denoising-strength": "strength", "clip-stop-at-last-layers": "clip-skip"}


@dataclass(frozen=True)
class AxisValues:
    name: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]  # as typed, for the labels

    def labels(self) -> list[str]:
        return [f"{AXES[self.name].label}: {text}" for text in self.texts]


def parse_axis(spec: str, option: str) -> AxisValues:
    """'steps=10,20,30' -> AxisValues('steps', (10, 20, 30)); a bad name or value names the choices."""
    name, sep, rest = spec.partition("=")
    typed = "-".join(name.strip().lower().replace("_", " ").split())
    key = ALIASES.get(typed, typed)
    if not sep or key not in AXES:
        raise InvalidInput("is not AXIS=V1,V2,..." if not sep else f"names no axis ({name.strip()!r})",
                           field=option, value=spec, choices=tuple(AXES))
    texts = tuple(t.strip() for t in next(csv.reader([rest], skipinitialspace=True), []) if t.strip())
    check(len(texts) >= 1, option, spec, "has no values")
    values = []
    for text in texts:
        try:
            values.append(AXES[key].parse(text))
        except ValueError:
            raise InvalidInput(f"{text!r} is not a number", field=option, value=spec) from None
        except InvalidInput as error:  # a number out of the axis's range
            raise InvalidInput(error.problem, field=option, value=spec) from None
    return AxisValues(key, tuple(values), texts)


def _search_replace(config: GenerationConfig, search: str, value: str) -> GenerationConfig:
    return replace(config, prompts=tuple(p.replace(search, value) for p in config.prompts),
                   negative_prompt=config.negative_prompt.replace(search, value))


@dataclass(frozen=True)
class GridPlan:
    x: AxisValues
    y: AxisValues | None
    z: AxisValues | None
    cells: tuple[tuple[tuple[GenerationConfig, ...], ...], ...]  # [z][y][x]

    @property
    def count(self) -> int:
        return sum(len(row) for grid in self.cells for row in grid)


def plan_grid(base: GenerationConfig, x: AxisValues, y: AxisValues | None = None, z: AxisValues | None = None,
              max_cells: int = MAX_CELLS) -> GridPlan:
    """Every cell's config, checked now. One seed for every cell unless seed is an axis (A1111's rule)."""
    axes = [a for a in (x, y, z) if a is not None]
    names = [a.name for a in axes]
    check(len(set(names)) == len(names), "y", ", ".join(names), "uses one axis twice")
    count = math.prod(len(a.values) for a in axes)
    check(count <= max_cells, "x", " x ".join(str(len(a.values)) for a in axes),
          f"makes {count} images; the limit is {max_cells}", hint="raise it with {max_cells}")
    check(len(base.prompts) == 1, "prompts", len(base.prompts), "a grid takes one prompt")
    check(base.num_images == 1, "num_images", base.num_images, "a grid makes one image a cell")
    for axis in axes:
        if axis.name == "prompt-sr":
            search = str(axis.values[0])
            check(search in base.prompts[0] or search in base.negative_prompt, "x", search,
                  "Prompt S/R's first value must appear in the prompt (it is what the others replace)")

    def cell(*picks: tuple[AxisValues, Any]) -> GenerationConfig:
        config = base
        # sampler before schedule, so a schedule axis sets the schedule of every sampler cell
        for axis, value in sorted(picks, key=lambda pick: pick[0].name == "schedule"):
            if axis.name == "prompt-sr":
                config = _search_replace(config, str(axis.values[0]), str(value))
            else:
                apply = AXES[axis.name].apply
                assert apply is not None  # only prompt-sr has none
                config = apply(config, value)
        return config

    zs = z.values if z else (None,)
    ys = y.values if y else (None,)
    cells = tuple(tuple(tuple(cell(*[(a, v) for a, v in ((x, xv), (y, yv), (z, zv)) if a is not None])
                              for xv in x.values) for yv in ys) for zv in zs)
    return GridPlan(x, y, z, cells)


def draw_grid(images: list[list[Image.Image]], x_labels: list[str], y_labels: list[str] | None,
              title: str | None) -> Image.Image:
    """Images in rows, X labels above the columns, Y labels left of the rows, a title above (Z).

    Cells keep their pixels; a column is widened (the cell centred in it) when its label is wider
    than the image, so labels never overlap, however small the images are.
    """
    width, height = images[0][0].size
    size = max(12, min(width, height) // 12)
    font = ImageFont.load_default(size=size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        return int(measure.textlength(text, font=font))

    line = int(size * 1.6)
    column = max(width, max(text_width(t) for t in x_labels) + size)
    left = (max(text_width(t) for t in y_labels) + size) if y_labels else 0
    top = line + (line if title else 0)
    sheet_width = max(left + column * len(images[0]), text_width(title) + size if title else 0)
    sheet = Image.new("RGB", (sheet_width, top + height * len(images)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text(((sheet_width - text_width(title)) // 2, size // 3), title, fill="black", font=font)
    for index, label in enumerate(x_labels):
        draw.text((left + index * column + (column - text_width(label)) // 2, top - line + size // 4), label,
                  fill="black", font=font)
    for row, line_images in enumerate(images):
        if y_labels:
            draw.text((size // 2, top + row * height + (height - size) // 2), y_labels[row], fill="black", font=font)
        for index, image in enumerate(line_images):
            sheet.paste(image, (left + index * column + (column - width) // 2, top + row * height))
    return sheet
