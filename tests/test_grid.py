"""`t2i grid`: A1111's X/Y/Z plot. Axes parse as A1111 reads them, every cell is a normal generation
that re-makes alone, the grid holds the cells' exact pixels under drawn labels, and bad axes fail
before any image."""

import re

import numpy as np
import pytest
from conftest import pixels
from PIL import Image

from t2i.errors import InvalidInput, NotFound
from t2i.formats.png import read_png_text
from t2i.sampling.config import GenerationConfig
from t2i.sampling.grid import draw_grid, parse_axis, plan_grid

BASE = GenerationConfig(prompts=("a red circle",), negative_prompt="a blue square", seed=5, steps=4)


@pytest.mark.parametrize("spec, name, values", [
    ("steps=10,20,30", "steps", (10, 20, 30)),
    ("Steps = 10, 20", "steps", (10, 20)),
    ("cfg=3,7.5", "cfg", (3.0, 7.5)),
    ("CFG Scale=3", "cfg", (3.0,)),
    ('sampler="Euler a","DPM++ 2M Karras"', "sampler", ("Euler a", "DPM++ 2M Karras")),
    ("sampler=Euler a,DPM++ 2M", "sampler", ("Euler a", "DPM++ 2M")),
    ('prompt-sr=red,"green, bright"', "prompt-sr", ("red", "green, bright")),
    ("seed=1,2", "seed", (1, 2)),
    ("scheduler=karras,Align Your Steps", "schedule", ("karras", "Align Your Steps")),
    ("Prompt S/R=red,blue", "prompt-sr", ("red", "blue")),
    ("clip_skip=1,2", "clip-skip", (1, 2)),
    ("denoising=0.3,0.6", "strength", (0.3, 0.6)),
    ("lora-weight=0,0.5,1", "lora-weight", (0.0, 0.5, 1.0)),
])
def test_axes_parse_as_a1111_writes_them(spec, name, values):
    axis = parse_axis(spec, "x")
    assert (axis.name, axis.values) == (name, values)


@pytest.mark.parametrize("spec, message", [
    ("colour=red", "names no axis ('colour')"),
    ("steps", "is not AXIS=V1,V2"),
    ("steps=10,many", "'many' is not a number"),
    ("cfg=nan", "'nan' is not a number"),
    ("lora-weight=0.5,1e308", "'1e308': the scale must lie within -100..100"),
    ("steps=", "has no values"),
])
def test_bad_axes_name_the_choices(spec, message):
    with pytest.raises(InvalidInput, match=re.escape(message)) as error:
        parse_axis(spec, "x")
    if "axis" in message or "AXIS" in message:
        assert "seed, steps, cfg, sampler, schedule, prompt-sr, lora-weight, clip-skip, strength" in str(error.value)


def test_a_plan_changes_only_its_axes_and_checks_every_cell_first():
    plan = plan_grid(BASE, parse_axis("steps=4,6", "x"), parse_axis('sampler=Euler a,"DPM++ 2M SDE Karras"', "y"),
                     parse_axis("prompt-sr=red,green", "z"))
    assert plan.count == 8
    cells = [c for sheet in plan.cells for row in sheet for c in row]
    assert {c.seed for c in cells} == {5}, "one seed for every cell"
    assert [c.steps for c in plan.cells[0][0]] == [4, 6]
    # each sampler on A1111's Automatic schedule, a joined name keeping its own
    assert [row[0].sampling for row in plan.cells[0]] == [("euler-a", "normal"), ("dpmpp-2m-sde", "karras")]
    assert plan.cells[1][0][0].prompts == ("a green circle",) and plan.cells[0][0][0].prompts == ("a red circle",)
    seeds = plan_grid(BASE, parse_axis("seed=1,2", "x"))
    assert [c.seed for c in seeds.cells[0][0]] == [1, 2]
    schedules = plan_grid(BASE, parse_axis("sampler=euler,dpmpp_2m", "x"), parse_axis("schedule=karras,ays", "y"))
    assert [c.sampling for c in schedules.cells[0][1]] == [("euler", "align-your-steps"),
                                                          ("dpmpp-2m", "align-your-steps")]


@pytest.mark.parametrize("axes, error, message", [
    (("steps=" + ",".join(map(str, range(1, 22))), "seed=" + ",".join(map(str, range(20)))), InvalidInput,
     "makes 420 images; the limit is 400"),
    (("sampler=euler,bogus",), NotFound, "unknown sampler"),
    (("sampler=ddim", "schedule=karras"), InvalidInput, "has no Karras schedule"),
    (("prompt-sr=blue cat,dog",), InvalidInput, "Prompt S/R's first value must appear in the prompt"),
    (("lora-weight=0,1",), InvalidInput, "needs a LoRA to weigh"),
    (("steps=2,3", "steps=4"), InvalidInput, "uses one axis twice"),
    (("strength=0.5",), InvalidInput, "needs init_image"),
])
def test_bad_plans_fail_before_any_image(axes, error, message):
    with pytest.raises(error, match=re.escape(message)):
        plan_grid(BASE, *[parse_axis(spec, name) for spec, name in zip(axes, "xyz")])


def test_the_drawn_grid_holds_the_cells_pixels_under_their_labels():
    cells = [[Image.new("RGB", (32, 32), (10 * (r * 2 + c), 200, 50)) for c in range(2)] for r in range(2)]
    sheet = draw_grid(cells, ["Steps: 4", "Steps: 8"], ["Sampler: Euler a", "Sampler: DPM++ 2M"], "CFG Scale: 7")
    array = np.asarray(sheet)
    found = []
    for r in range(2):
        for c in range(2):
            colour = np.array([10 * (r * 2 + c), 200, 50])
            ys, xs = np.nonzero((array == colour).all(axis=2))
            assert len(ys) == 32 * 32 and ys.max() - ys.min() == 31 and xs.max() - xs.min() == 31
            found.append((ys.min(), xs.min()))
    assert found[0][0] == found[1][0] < found[2][0] == found[3][0] and found[0][1] == found[2][1] < found[1][1]
    top, left = found[0]
    assert (array[:top] < 128).any(), "labels drawn above the cells"
    assert (array[top:, :left] < 128).any(), "labels drawn left of the rows"


def test_grid_command_writes_cells_that_remake_alone_and_one_grid_per_z(run_cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli("grid", "a red circle", "--model", "tiny", "--device", "cpu", "--x", "steps=2,3",
                              "--y", 'sampler="Euler a",DDIM', "--z", "cfg=3,7", "--seed", "4", "--out", str(out))
    assert code == 0
    written = stdout.split()
    assert [p.endswith("-grid.png") for p in written] == [False] * 4 + [True] + [False] * 4 + [True]
    cell = written[7]  # z=7, y=DDIM, x=2 steps
    text, settings = read_png_text(cell)
    assert (settings["guidance_scale"], settings["sampler"], settings["steps"], settings["seed"]) == (7, "ddim", 2, 4)
    assert "Sampler: DDIM" in text
    code, again, _ = run_cli("generate", "--from-image", cell, "--out", str(tmp_path / "again"))
    assert code == 0 and np.array_equal(pixels(again.split()[0]), pixels(cell))
    grid = np.asarray(Image.open(written[9]).convert("RGB"))
    tiles = [pixels(p).astype(np.uint8) for p in written[5:9]]
    for tile in tiles:  # every cell's exact pixels are in the grid
        hits = [(y, x) for y in range(grid.shape[0] - 31) for x in range(grid.shape[1] - 31)
                if np.array_equal(grid[y:y + 32, x:x + 32], tile)]
        assert hits
    assert read_png_text(written[4])[0].startswith("a red circle\n")  # the grid carries its first cell's infotext


def test_grid_command_refuses_bad_axes_before_any_work(run_cli, tmp_path):
    out = tmp_path / "out"
    for args, message in [(("--x", "colour=red"), "--x colour=red: names no axis"),
                          (("--x", "steps=1,2", "--y", "sampler=nope"), "unknown sampler"),
                          (("--x", "seed=" + ",".join(map(str, range(401)))), "raise it with --max-cells")]:
        code, stdout, stderr = run_cli("grid", "a cat", "--model", "tiny", "--device", "cpu", *args, "--out", str(out))
        assert code == 2 and message in stderr and stdout == "", stderr
    assert not out.exists()
