"""`t2i evaluate` in the shapes world: a report with N and intervals beside the real-vs-real floor,
prompt agreement that sees wrong colours, resume without re-making images, and refusals."""

import json
import os
import random
import subprocess
import sys

import pytest

from t2i.errors import InvalidInput
from t2i.eval.run import EvalConfig, _accuracy, _my_runs, evaluate
from t2i.shapes.world import ALL_COLOURS, COLOURS, make_image, random_shape


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from t2i.shapes.world import make_dataset

    return make_dataset(tmp_path_factory.mktemp("eval") / "shapes", 1400, seed=3)


def test_prompt_agreement_sees_shuffled_colours():
    rng = random.Random(0)
    specs = [random_shape(rng) for _ in range(64)]
    prompts = [f"a {s.colour} {s.shape}" for s in specs]
    shuffle = dict(zip(COLOURS, list(COLOURS)[1:] + list(COLOURS)[:1]))
    right = _accuracy(prompts, [make_image(s) for s in specs])
    wrong = _accuracy(prompts, [make_image(s, rgb=ALL_COLOURS[shuffle[s.colour]]) for s in specs])
    assert right["colour_accuracy"].value > 0.95 and wrong["colour_accuracy"].value < 0.1
    assert wrong["shape_accuracy"].value > 0.9, "the shapes are still right"
    assert wrong["accuracy"].high < right["accuracy"].low


@pytest.mark.slow
def test_a_report_with_intervals_and_resume_that_makes_only_what_is_missing(shapes_data, tmp_path):
    config = EvalConfig(model="demo", data=str(shapes_data), num_samples=128, steps=6, guidance_scales=(7.5,))
    out, lines = tmp_path / "report", []
    report = evaluate(config, out, log=lines.append)
    assert lines == ["base @ guidance 7.5: 128 image(s) made, 0 kept from before"]
    scores, floor = report["results"]["base"]["7.5"], report["floor"]
    for estimate in [*scores.values(), *floor.values()]:
        assert estimate["ci"][0] <= estimate["value"] <= estimate["ci"][1] and estimate["n"] == 128
    assert floor["shapes_fid"]["value"] < 5 and floor["precision"]["value"] > 0.9
    assert floor["shapes_fid"]["ci"][0] >= 0 and scores["shapes_fid"]["ci"][0] >= 0, "FID cannot be negative"
    assert scores["colour_accuracy"]["value"] > 0.9 and scores["shapes_fid"]["value"] < 10
    assert "| floor: real vs other real |" in (out / "report.md").read_text()
    assert len(list((out / "images" / "base" / "g7.5").glob("*.png"))) == 128
    assert report["pictures"] == ["grid.png"] and (out / "grid.png").is_file(), "a sweep plot needs 2+ scales"

    with pytest.raises(InvalidInput, match="holds this run already"):
        evaluate(config, out)
    with pytest.raises(InvalidInput, match=r"holds a run with other settings \(steps\)"):
        evaluate(EvalConfig(**{**config.__dict__, "steps": 7}), out, resume=True)
    for index in (3, 4, 90):  # as if killed before these were written
        (out / "images" / "base" / "g7.5" / f"{index:05d}.png").unlink()
    lines.clear()
    again = evaluate(config, out, resume=True, log=lines.append)
    assert lines == ["base @ guidance 7.5: 3 image(s) made, 125 kept from before"]
    assert again["results"] == report["results"], "the re-made images are the same images"
    assert json.loads((out / "report.json").read_text())["n"] == 128


@pytest.mark.parametrize("args, message", [
    (["--num-samples", "200"], "--num-samples 200: the held-out split of"),
    (["--num-samples", "16"], "--num-samples 16: must be at least 128"),
    (["--num-samples", "128", "--metric", "inception-fid"], "--metric inception-fid: unknown metric"),
    (["--num-samples", "128", "--guidance-scale", "nan"], "--guidance-scale nan: must be a finite number"),
    (["--num-samples", "128", "--lora", "/no/such.safetensors"], "--lora /no/such.safetensors: no such LoRA file"),
    (["--num-samples", "128", "--run", "DATA"], "has no loss.png"),
    (["--num-samples", "128", "--metric", "clip-score"], "--metric clip-score: needs --clip-model"),
    (["--num-samples", "128", "--metric", "clip-score", "--clip-model", "/no/clip"],
     "--clip-model /no/clip: no such folder"),
    (["--num-samples", "128", "--metric", "clip-score", "--clip-model", "nobody/no-clip", "--offline"],
     "--clip-model nobody/no-clip: no CLIP weights (model.safetensors) in the Hugging Face cache"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, shapes_data, tmp_path, args, message):
    args = [shapes_data if arg == "DATA" else arg for arg in args]
    code, _, err = run_cli("evaluate", "--data", shapes_data, "--output", tmp_path / "out", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_processes_share_the_missing_images_in_single_process_batches(world):
    missing = [i for i in range(23) if i not in (5, 6, 14)]
    single = [run[i:i + 4] for run in _my_runs(missing, 4, 0, 1) for i in range(0, len(run), 4)]
    shares = [_my_runs(missing, 4, rank, world) for rank in range(world)]
    made = [i for share in shares for run in share for i in run]
    assert sorted(made) == missing and len(made) == len(set(made)), "every image made once"
    batches = [run[i:i + 4] for share in shares for run in share for i in range(0, len(run), 4)]
    assert batches == single, "each image in the batch a single process puts it in"


@pytest.mark.slow
def test_two_processes_give_a_single_process_report_and_make_every_image_once(shapes_data, tmp_path):
    args = ["evaluate", "--model", "demo", "--data", str(shapes_data), "--num-samples", "128", "--steps", "6",
            "--batch-size", "16"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "t2i", *args, "--output", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "t2i", *args, "--output", str(tmp_path / "two")], env=env, capture_output=True,
                              text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert two["timing"]["processes"] == 2 and one["timing"]["images_made"] == two["timing"]["images_made"] == 128
    assert launched.stdout.count("| base | 7.5 |") == 1, "one report, printed once"
    for ours, theirs in ((one["floor"], two["floor"]), (one["results"]["base"]["7.5"], two["results"]["base"]["7.5"])):
        assert set(ours) == set(theirs) and len(ours) >= 6
        for metric, estimate in ours.items():
            assert estimate["value"] == pytest.approx(theirs[metric]["value"], abs=1e-6), metric
            assert estimate["ci"] == pytest.approx(theirs[metric]["ci"], abs=1e-6), metric
    folder = ("images", "base", "g7.5")
    for index in range(128):
        name = f"{index:05d}.png"
        assert (tmp_path / "one").joinpath(*folder, name).read_bytes() == (tmp_path / "two").joinpath(
            *folder, name).read_bytes()


def test_clip_score_is_reported_with_its_interval(shapes_data, tmp_path, tiny_clip):
    config = EvalConfig(model="demo", data=str(shapes_data), num_samples=128, steps=4, metrics=("clip-score",),
                        clip_model=str(tiny_clip))
    report = evaluate(config, tmp_path / "out", log=lambda line: None)
    score = report["results"]["base"]["7.5"]["clip_score"]
    low, high = score["ci"]
    assert 0 < low < score["value"] < high < 100 and score["n"] == 128
    assert "clip_score" in (tmp_path / "out" / "report.md").read_text()
