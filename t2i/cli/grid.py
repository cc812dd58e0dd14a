"""`t2i grid`: A1111's X/Y/Z plot. It takes every `t2i generate` option (one prompt, one image a cell)
plus the axes; the options are `generate`'s own parameters, so the two commands never drift apart."""

from __future__ import annotations

import inspect
import secrets
from dataclasses import replace
from typing import Optional, get_type_hints

import typer

from t2i.cli import app, given, log, out_folder, prepare_environment
from t2i.cli.generate import build_configs, generate
from t2i.sampling.grid import AXES, MAX_CELLS, parse_axis, plan_grid

GRID_OPTIONS = ("x", "y", "z", "max_cells")
NOT_FOR_GRIDS = ("prompts_file", "num_images", "batch_size", "from_image")  # one prompt, one image a cell
AXIS_HELP = "AXIS=V1,V2,... with AXIS one of " + ", ".join(AXES) + '; quote values holding commas: sampler="Euler a"'


def grid(ctx: typer.Context, x: str, y: Optional[str] = None, z: Optional[str] = None, max_cells: int = MAX_CELLS,
         **_generate_options) -> None:
    """X/Y/Z plot: one setting per axis, every cell a normal generation (saved with its infotext),
    one labelled grid image per Z value."""
    options = given(ctx)
    prepare_environment(options.get("offline", False))
    axes = {name: parse_axis(spec, name) for name, spec in (("x", x), ("y", y), ("z", z)) if spec}
    model_config, base = build_configs({k: v for k, v in options.items() if k not in GRID_OPTIONS})
    if base.seed is None:  # one seed for every cell, so the axes are all that changes
        base = replace(base, seed=secrets.randbelow(2**32))
    plan = plan_grid(base, axes["x"], axes.get("y"), axes.get("z"), max_cells)
    out_dir = out_folder(options.get("out", "outputs"))

    from t2i.formats.png import save_grid_png, save_png
    from t2i.models.loading import load_model
    from t2i.sampling.generate import generate as generate_images
    from t2i.sampling.grid import draw_grid

    loaded = load_model(model_config)
    done = 0
    z_labels = plan.z.labels() if plan.z else [None]
    for sheet, title in zip(plan.cells, z_labels):
        rows: list[list] = []
        for row in sheet:
            rows.append([])
            for config in row:
                done += 1
                log.info("cell %d/%d", done, plan.count)
                result, = generate_images(loaded, config)
                print(save_png(result.image, result.settings, out_dir), flush=True)
                rows[-1].append(result)
        image = draw_grid([[r.image for r in row] for row in rows], plan.x.labels(),
                          plan.y.labels() if plan.y else None, title)
        print(save_grid_png(image, rows[0][0].settings.infotext(), out_dir), flush=True)


def _grid_signature() -> None:
    """Give `grid` generate's options (minus the ones a grid cannot use) after its own."""
    hints = get_type_hints(generate)
    own = [p for p in inspect.signature(grid).parameters.values() if p.kind is not p.VAR_KEYWORD]
    axis_options = {"x": typer.Option(..., help="The X axis: " + AXIS_HELP),
                    "y": typer.Option(None, help="The Y axis (rows)."),
                    "z": typer.Option(None, help="The Z axis: one grid image per value."),
                    "max_cells": typer.Option(MAX_CELLS, help="Refuse grids of more images than this.")}
    own = [p.replace(default=axis_options.get(p.name, p.default)) for p in own]
    borrowed = [p.replace(annotation=hints[p.name]) for p in inspect.signature(generate).parameters.values()
                if p.name not in ("ctx", *NOT_FOR_GRIDS)]
    signature = inspect.Signature(own[:1] + borrowed[:1] + own[1:] + borrowed[1:])
    grid.__signature__ = signature  # type: ignore[attr-defined]
    grid.__annotations__ = {**hints, **get_type_hints(grid)}


_grid_signature()
app.command()(grid)
