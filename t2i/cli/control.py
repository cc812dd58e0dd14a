"""ControlNet on the command line: `--control MODEL=IMAGE[:WEIGHT]` units with their per-unit options,
and `t2i control detect`, which writes the map a preprocessor makes so a user can look at it."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from t2i.cli import app, log
from t2i.errors import InvalidInput

control_app = typer.Typer(no_args_is_help=True, help="ControlNet tools: see what a preprocessor makes of an image.")
app.add_typer(control_app, name="control")

#: per-unit options of `t2i generate` -> the ControlUnit field each sets
UNIT_OPTIONS = {"control_module": "module", "control_resize": "resize_mode", "control_res": "processor_res",
                "control_threshold_a": "threshold_a", "control_threshold_b": "threshold_b",
                "control_start": "guidance_start", "control_end": "guidance_end", "control_mode": "control_mode"}


class ControlOptions:
    """`t2i generate`'s ControlNet flags. Each per-unit flag is given once (every unit) or once a unit, in order."""

    control = typer.Option(None, help="A ControlNet unit, MODEL=IMAGE[:WEIGHT]: MODEL a file, folder, hub id or "
                           "name in --controlnet-dir, IMAGE what its preprocessor reads; repeatable.")
    module = typer.Option(None, help="Preprocessor: none, canny, invert, threshold, blur_gaussian, scribble_xdog, "
                          "tile_resample (default none: the image is the map).")
    resize = typer.Option(None, help="Fitting the map to the output: Just Resize, Crop and Resize (default), "
                          "Resize and Fill.")
    res = typer.Option(None, help="Preprocessor resolution (short side, default 512).")
    threshold_a = typer.Option(None, help="The preprocessor's first slider (canny: low threshold).")
    threshold_b = typer.Option(None, help="The preprocessor's second slider (canny: high threshold).")
    start = typer.Option(None, help="Where in the steps a unit starts acting, 0 to 1 (default 0).")
    end = typer.Option(None, help="Where it stops, 0 to 1 (default 1).")
    mode = typer.Option(None, help="Balanced (default), 'My prompt is more important' (or prompt), "
                        "'ControlNet is more important' (or controlnet).")
    pixel_perfect = typer.Option(False, "--control-pixel-perfect", help="Preprocessor resolution from the "
                                 "output size (A1111's Pixel Perfect), for every unit.")
    folder = typer.Option(None, help="Where MODEL names are looked up (default ./controlnet).")


def control_units(options: dict) -> tuple | None:
    """The `controls` of a generation from the typed flags (popped from `options`); None if none were typed."""
    from t2i.sampling.control import ControlUnit

    specs = options.pop("control", None) or []
    typed = {flag: options.pop(flag) for flag in UNIT_OPTIONS if options.get(flag)}
    if options.pop("control_pixel_perfect", False):
        typed["control_pixel_perfect"] = [True]
    if not specs:
        if typed:
            name = "--" + next(iter(typed)).replace("_", "-")
            raise InvalidInput(f"{name} is a setting of a ControlNet unit", field="control", value=None,
                               hint="give the unit with --control MODEL=IMAGE[:WEIGHT]")
        return None
    for flag, values in typed.items():
        if len(values) not in (1, len(specs)):
            raise InvalidInput(f"given {len(values)} times for {len(specs)} ControlNet units", field=flag,
                               value=None, hint="give it once (every unit) or once a unit, in the order of --control")
    units = []
    fields = {**UNIT_OPTIONS, "control_pixel_perfect": "pixel_perfect"}
    for index, spec in enumerate(specs):
        settings = {fields[flag]: values[index if len(values) > 1 else 0] for flag, values in typed.items()}
        units.append(ControlUnit.parse(spec, **settings))
    return tuple(units)


@control_app.command("detect")
def detect(
    image: Path = typer.Argument(..., help="The image to run the preprocessor on."),
    module: str = typer.Option("canny", help="none, canny, invert, threshold, blur_gaussian, scribble_xdog, "
                               "tile_resample."),
    out: Path = typer.Option(..., help="Where to write the map (PNG); an existing file is never overwritten."),
    res: int = typer.Option(512, help="Preprocessor resolution (short side)."),
    threshold_a: Optional[float] = typer.Option(None, help="The first slider (canny: low threshold, 100)."),
    threshold_b: Optional[float] = typer.Option(None, help="The second slider (canny: high threshold, 200)."),
    size: Optional[List[int]] = typer.Option(None, help="Fit the map to WIDTH HEIGHT as generation would "
                                             "(with --resize).", show_default=False),
    resize: str = typer.Option("Crop and Resize", help="Just Resize, Crop and Resize, Resize and Fill."),
):
    """Write the map a ControlNet preprocessor makes of IMAGE (the map a unit with that module reads)."""
    from t2i.files import write_new
    from t2i.formats.images import load_image
    from t2i.sampling.control_maps import control_map
    from t2i.sampling.control_maps import detect as run_detect
    from t2i.sampling.control_modules import resolve_module

    resolve_module(module)
    if out.exists():
        raise InvalidInput("exists already; t2i never overwrites a file", field="out", value=out,
                           hint="choose another name")
    if out.suffix.lower() != ".png":
        raise InvalidInput("the map is written as PNG", field="out", value=out, hint="name it something.png")
    picture = load_image(str(image), "image")
    if size:
        if len(size) != 2 or min(size) < 8:
            raise InvalidInput("give --size twice: WIDTH then HEIGHT, each at least 8", field="size", value=size)
        found = control_map(picture, module, (size[0], size[1]), resize, res, threshold_a, threshold_b)
    else:
        found = run_detect(picture, module, res, threshold_a, threshold_b)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_new(out.parent, [out.name], lambda tmp: found.save(tmp, format="PNG"))
    print(written)
    log.info("%s map of %s: %dx%d", module, image, found.width, found.height)
