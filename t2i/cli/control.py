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
    fields = {**UNIT_OPTIONS, "control_pixel_perfect": "pixel_perfect"}
    return tuple(ControlUnit.parse(spec, **settings)
                 for spec, settings in zip(specs, per_unit(typed, fields, len(specs), "ControlNet units", "--control")))


def per_unit(typed: dict[str, list], fields: dict[str, str], count: int, what: str, order: str) -> list[dict]:
    """Each unit's settings from flags given once (every unit) or once a unit, in the order of `order`."""
    for flag, values in typed.items():
        if len(values) not in (1, count):
            raise InvalidInput(f"given {len(values)} times for {count} {what}", field=flag, value=None,
                               hint=f"give it once (every unit) or once a unit, in the order of {order}")
    return [{fields[flag]: values[index if len(values) > 1 else 0] for flag, values in typed.items()}
            for index in range(count)]


class IPAdapterOptions:
    """`t2i generate`'s IP-Adapter flags: --ip-adapter and --ip-image pair up in order; the others are given once
    (every adapter) or once an adapter."""

    adapter = typer.Option(None, help="An IP-Adapter .safetensors (a path or a name in --controlnet-dir): "
                           "--ip-image is used as a prompt; repeatable.")
    image = typer.Option(None, help="The picture an --ip-adapter reads, one per adapter.")
    scale = typer.Option(None, help="How strongly the picture steers, 0 to 2 (default 1; ~0.5 beside a prompt).")
    start = typer.Option(None, help="Where in the steps the adapter starts acting, 0 to 1 (default 0).")
    end = typer.Option(None, help="Where it stops, 0 to 1 (default 1).")
    encoder = typer.Option(None, help="The image encoder: a CLIP vision model's folder (h94's models/image_encoder) "
                           "or shape-features. Default: the one the adapter names, else image_encoder/ beside it.")


def ip_adapter_units(options: dict) -> tuple | None:
    """The `ip_adapters` of a generation from the typed flags (popped from `options`); None if none were typed."""
    from t2i.sampling.ip_adapter import IPAdapterUnit

    adapters, images = options.pop("ip_adapter", None) or [], options.pop("ip_image", None) or []
    fields = {"ip_scale": "scale", "ip_start": "start", "ip_end": "end"}
    typed = {flag: options.pop(flag) for flag in fields if options.get(flag)}
    if not adapters:
        if images or typed:
            name = "--ip-image" if images else "--" + next(iter(typed)).replace("_", "-")
            raise InvalidInput(f"{name} is a setting of an IP-Adapter", field="ip_adapter", value=None,
                               hint="name the adapter with --ip-adapter FILE")
        return None
    if len(images) != len(adapters):
        raise InvalidInput(f"given {len(images)} time(s) for {len(adapters)} IP-Adapter(s)", field="ip_image",
                           value=None, hint="give one --ip-image for each --ip-adapter, in the same order")
    return tuple(IPAdapterUnit(model, image, **settings) for model, image, settings
                 in zip(adapters, images, per_unit(typed, fields, len(adapters), "IP-Adapters", "--ip-adapter")))


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
