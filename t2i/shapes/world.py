"""The shapes world: coloured shapes drawn on white, with captions that say what is drawn.

`make_image` draws one shape of a named colour at a size and position on a white background;
`caption` says it in plain words; `make_dataset` writes a captioned folder `t2i finetune` reads.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from t2i.errors import InvalidInput
from t2i.files import write_text

#: the colours the demo model learns; HELD_OUT is a word it never sees, for teaching with a LoRA.
#: Not purple: the demo's text encoder is a fixed random map, and "purple" happens to land where
#: the UNet already draws purple (87.5% before any LoRA), so it would prove nothing.
COLOURS = {"red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (235, 215, 30), "green": (40, 160, 60),
           "cyan": (40, 200, 215), "blue": (40, 70, 215), "pink": (250, 130, 200), "black": (30, 30, 30)}
HELD_OUT = {"brown": (140, 85, 35)}
ALL_COLOURS = {**COLOURS, **HELD_OUT}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUND = (255, 255, 255)
SIZE = 32


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: int  # bounding box side in pixels
    x: int  # top-left corner
    y: int

    @property
    def size_word(self) -> str:
        return "small" if self.size <= 15 else "large" if self.size >= 21 else ""


def random_shape(rng: random.Random, colours=tuple(COLOURS), shapes=SHAPES, image_size: int = SIZE) -> Shape:
    size = rng.randint(12, 24) * image_size // SIZE
    return Shape(rng.choice(colours), rng.choice(shapes), size, rng.randint(1, image_size - size - 1),
                 rng.randint(1, image_size - size - 1))


def edge_shape(rng: random.Random, frame: tuple[int, int], colours=tuple(COLOURS), shapes=SHAPES) -> Shape:
    """A shape near one end of a wide or tall frame's long side (1-4 pixels from that edge), where a
    square centre crop cuts it, and at least 5 pixels from the other two edges (a bucket trims a few rows
    there: 48x32 is resized to 40x27 and 3 rows are cut for its 40x24 bucket)."""
    width, height = frame
    long_side, short_side = max(frame), min(frame)
    size = rng.randint(12, min(20, short_side - 10))
    gap = rng.randint(1, 4)
    along = gap if rng.random() < 0.5 else long_side - size - gap
    across = rng.randint(5, short_side - size - 5)
    x, y = (along, across) if width >= height else (across, along)
    return Shape(rng.choice(colours), rng.choice(shapes), size, x, y)


def make_image(spec: Shape, image_size: int = SIZE, rgb: tuple[int, int, int] | None = None,
               frame: tuple[int, int] | None = None) -> Image.Image:
    """`rgb` paints the shape in any colour instead of its named one; `frame` (width, height) draws it
    on a canvas of that size instead of a square one."""
    image = Image.new("RGB", frame or (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    colour, (x, y, s) = rgb or ALL_COLOURS[spec.colour], (spec.x, spec.y, spec.size)
    box = (x, y, x + s - 1, y + s - 1)
    if spec.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif spec.shape == "square":
        draw.rectangle(box, fill=colour)
    elif spec.shape == "triangle":  # pointing up
        draw.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=colour)
    elif spec.shape == "cross":  # a plus sign with arms a third of its size wide
        third = s / 3
        draw.rectangle((x + third, y, x + 2 * third - 1, y + s - 1), fill=colour)
        draw.rectangle((x, y + third, x + s - 1, y + 2 * third - 1), fill=colour)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")
    return image


CONTROLS = ("mask", "edges")  # the control images the world draws beside each image (ControlNet's inputs)


def control_image(spec: Shape, kind: str, image_size: int = SIZE, frame: tuple[int, int] | None = None) -> Image.Image:
    """The object's mask (white on black, as segmentation-style control maps are) or its outline (canny edges
    of the drawn image, the map A1111's canny preprocessor makes of it)."""
    if kind == "mask":
        silhouette = make_image(spec, image_size, rgb=(0, 0, 0), frame=frame).convert("L")
        return silhouette.point(lambda v: 255 if v < 128 else 0).convert("RGB")
    if kind == "edges":
        from t2i.sampling.control_maps import detect

        drawn = make_image(spec, image_size, frame=frame)
        return detect(drawn, "canny", processor_res=min(drawn.size))
    raise ValueError(f"unknown control kind {kind!r}")


def caption(spec: Shape, rng: random.Random) -> str:
    """One of a few natural phrasings; the size word only when the size is clearly small or large."""
    size = f"{spec.size_word} " if spec.size_word and rng.random() < 0.5 else ""
    template = rng.choice(("a {size}{colour} {shape}", "a {size}{colour} {shape} on a white background",
                           "a {colour} {shape}", "{colour} {shape}"))
    return template.format(size=size, colour=spec.colour, shape=spec.shape)


def colour_mix(choices: list[str]) -> tuple[str, ...]:
    """`["brown:8", "known"]` -> brown drawn 8 times as often as each training colour.

    NAME or NAME:WEIGHT (a whole number); `known` stands for every training colour."""
    mix: list[str] = []
    for choice in choices:
        name, _, weight = choice.partition(":")
        names = list(COLOURS) if name == "known" else [name]
        if name != "known" and name not in ALL_COLOURS:
            raise InvalidInput("unknown colour", field="colours", value=choice, choices=(*ALL_COLOURS, "known"),
                               hint="write NAME or NAME:WEIGHT")
        if weight and not (weight.isdigit() and int(weight) >= 1):
            raise InvalidInput(f"the weight after ':' must be a whole number, e.g. {name}:4", field="colours",
                               value=choice)
        mix += names * int(weight or 1)
    return tuple(mix)


def make_dataset(out: Path, count: int, seed: int = 0, colours=tuple(COLOURS), shapes=SHAPES,
                 image_size: int = SIZE, frames: tuple[tuple[int, int], ...] = (), control: str | None = None) -> Path:
    """Write `count` images as a Hugging Face imagefolder (metadata.jsonl) that `t2i finetune` reads.

    Colours are drawn uniformly from `colours`: repeat one to draw it more often. With `frames`
    ((width, height) pairs, one drawn per image), the images are those sizes and each shape sits
    near an end of the long side (`edge_shape`): a collection whose square crops lose objects. With
    `control` (mask or edges), each image's control image goes in `conditioning/` under the same name and
    its line names it as `conditioning_image` (diffusers' ControlNet example reads that column).
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        frame = rng.choice(frames) if frames else None
        spec = edge_shape(rng, frame, colours, shapes) if frame else random_shape(rng, colours, shapes, image_size)
        name = f"{i:06d}.png"
        make_image(spec, image_size, frame=frame).save(out / name)
        captions = sorted({caption(spec, rng) for _ in range(4)})
        line = {"file_name": name, "text": captions, "colour": spec.colour, "shape": spec.shape}
        if control is not None:
            (out / "conditioning").mkdir(exist_ok=True)
            control_image(spec, control, image_size, frame).save(out / "conditioning" / name)
            line["conditioning_image"] = f"conditioning/{name}"
        lines.append(json.dumps(line))
    write_text(out / "metadata.jsonl", "\n".join(lines) + "\n")
    return out
