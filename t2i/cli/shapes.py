"""`t2i shapes make-dataset` and `t2i shapes train-demo`."""

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
):
    """Write captioned images of coloured shapes in a layout `t2i finetune` reads."""
    from t2i.shapes.world import colour_mix, make_dataset

    colours = colour_mix(colour or ["known"])
    if count < 1:
        raise InvalidInput("must be at least 1", field="count", value=count)
    if not 16 <= size <= 1024:
        raise InvalidInput("must be from 16 to 1024", field="size", value=size)
    _new_folder(out)
    print(make_dataset(out, count, seed, colours, image_size=size))


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
