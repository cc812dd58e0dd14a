"""`t2i shapes make-dataset` and the training commands of the shipped shapes models."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from t2i.cli import app
from t2i.errors import InvalidInput

shapes_app = typer.Typer(no_args_is_help=True, help="The shapes world: a dataset and a demo model you can measure.")
app.add_typer(shapes_app, name="shapes")


def _new_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidInput("is a file, not a folder", field="out", value=out, hint="choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise InvalidInput("is not empty", field="out", value=out, hint="choose a new folder")


@shapes_app.command("make-dataset")
def make_shapes_dataset(
    out: Path = typer.Argument(..., help="Folder to write (an imagefolder with metadata.jsonl)."),
    count: int = typer.Option(2000, help="Number of images."),
    seed: int = typer.Option(0),
    colour: Optional[List[str]] = typer.Option(
        None, help="NAME[:WEIGHT] or 'known' (the 8 training colours), repeatable; default: known."),
    size: int = typer.Option(32, help="Image side in pixels (16 to 1024)."),
    frame: Optional[List[str]] = typer.Option(None, help="WxH, repeatable: images of these sizes (one drawn per "
                                              "image), each shape near an end of the long side, where square "
                                              "crops cut it (e.g. 48x32 and 32x48 for aspect-ratio buckets)."),
    control: Optional[str] = typer.Option(None, help="mask or edges: write each image's control image in "
                                          "conditioning/ (named in metadata.jsonl's conditioning_image), for "
                                          "ControlNet training."),
):
    """Write captioned images of coloured shapes in a layout `t2i finetune` reads."""
    from t2i.shapes.world import colour_mix, make_dataset

    colours = colour_mix(colour or ["known"])
    if count < 1:
        raise InvalidInput("must be at least 1", field="count", value=count)
    if not 16 <= size <= 1024:
        raise InvalidInput("must be from 16 to 1024", field="size", value=size)
    frames = tuple(_frame(text) for text in frame or ())
    from t2i.shapes.world import CONTROLS

    if control is not None and control not in CONTROLS:
        raise InvalidInput("unknown control image", field="control", value=control, choices=CONTROLS)
    _new_folder(out)
    print(make_dataset(out, count, seed, colours, image_size=size, frames=frames, control=control))


def _frame(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and 22 <= min(int(width), int(height))
            and max(int(width), int(height)) <= 1024):
        raise InvalidInput("must be WIDTHxHEIGHT, each side 22 to 1024 (the shortest fits a shape and its margins)",
                           field="frame", value=text)
    return int(width), int(height)


@shapes_app.command("train-demo")
def train_demo_model(out: Path = typer.Argument(..., help="Working folder; the model lands in OUT/model.")):
    """Train the `demo` model from scratch with the recorded recipe (about 30 minutes on 2 CPU cores)."""
    _new_folder(out)
    from t2i.shapes.demo import train_demo

    print(train_demo(out))


@shapes_app.command("train-features")
def train_feature_network(out: Path = typer.Argument(..., help="Folder for model.safetensors and recipe.json.")):
    """Train the feature network behind Shapes-FID/KID with the recorded recipe (about 3 minutes on 2 CPU cores)."""
    _new_folder(out)
    from t2i.shapes.features import train_features

    print(train_features(out))


@shapes_app.command("train-controlnet")
def train_controlnet(
    out: Path = typer.Argument(..., help="Folder for model.safetensors and recipe.json."),
    control: str = typer.Option("mask", help="What the ControlNet reads: the object's mask, or its edges."),
):
    """Train the shapes ControlNet for `demo` with the recorded recipe (about 3 minutes on 2 CPU cores, then
    a few more measuring it)."""
    from t2i.shapes.world import CONTROLS

    if control not in CONTROLS:
        raise InvalidInput("unknown control image", field="control", value=control, choices=CONTROLS)
    _new_folder(out)
    from t2i.shapes.controlnet import ControlRecipe, train_shape_controlnet

    print(train_shape_controlnet(out, ControlRecipe(control=control)))


@shapes_app.command("train-ip-adapter")
def train_ip_adapter(out: Path = typer.Argument(..., help="Folder for model.safetensors and recipe.json.")):
    """Train the shapes IP-Adapter for `demo` (image encoder: shape-features) with the recorded recipe (about
    3 minutes on 2 CPU cores, then a few more measuring it)."""
    _new_folder(out)
    from t2i.shapes.ip_adapter import train_shape_ip_adapter

    print(train_shape_ip_adapter(out))
