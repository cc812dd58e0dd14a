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
    (["--num-samples", "128", "--metric", "fid"], "--metric fid: unknown metric; choose one of"),
    (["--num-samples", "128", "--metric", "inception-fid"], "no Inception weights at "),
    (["--num-samples", "128", "--metric", "inception-fid", "--inception-weights", "/no/inception.pth"],
     "--inception-weights /no/inception.pth: no Inception weights at /no/inception.pth; download https://"),
    (["--num-samples", "128", "--metric", "inception-fid", "--inception-weights", "DATA/metadata.jsonl"],
     "bytes; the published Inception weights are 95,628,359; download the file again, or pass "
     "--inception-unchecked"),
    (["--num-samples", "128", "--metric", "shapes-is"], "--is-splits 10: does not divide --num-samples 128 into "
     "equal splits"),
    (["--num-samples", "128", "--metric", "shapes-is", "--is-splits", "32"], "--is-splits 32: leaves 4 images a "
     "split"),
    (["--num-samples", "128", "--inception-preprocessing", "tf2"], "--inception-preprocessing tf2: unknown"),
    (["--num-samples", "128", "--reference-stats", "x.npz"], "--reference-stats x.npz: is used by inception-fid "
     "only"),
    (["--protocol", "fid-50k"], "--protocol fid-50k: unknown protocol; choose one of fid-10k"),
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
    args = [arg.replace("DATA", str(shapes_data)) for arg in map(str, args)]
    code, _, err = run_cli("evaluate", "--data", shapes_data, "--output", tmp_path / "out", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_inception_weights_is_a_runtime_error_and_writes_nothing(run_cli, shapes_data, tmp_path):
    code, _, err = run_cli("evaluate", "--data", shapes_data, "--output", tmp_path / "out", "--num-samples", "128",
                           "--metric", "inception-fid", "--inception-unchecked",
                           "--inception-weights", shapes_data / "metadata.jsonl")
    assert code == 1 and "metadata.jsonl: is not an Inception-v3 FID weight file" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


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


def test_the_protocol_on_the_shapes_world_scores_every_metric_over_guidance(run_cli, shapes_data, tmp_path):
    """`--protocol fid-10k` on `demo`: N is what the held-out split holds (140 of 1,400, a multiple of the
    10 IS splits), the shapes network's FID/KID/IS/precision-recall and accuracy, over two guidance
    scales (the SD paper's eight are the default, shortened here for time), with the FID curve."""
    out = tmp_path / "protocol"
    code, _, err = run_cli("evaluate", "--data", shapes_data, "--output", out, "--protocol", "fid-10k", "--steps", "4",
                           "--guidance-scale", "1.5", "--guidance-scale", "7.5", "--stats-dir", tmp_path / "stats")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 140 and report["protocol"]["asked"] == 10_000
    assert report["extractors"]["shapes"]["dims"] == 64 and len(report["extractors"]["shapes"]["weights_sha256"]) == 64
    scores = report["results"]["base"]
    for name in ("shapes_fid", "shapes_kid", "shapes_is", "precision", "recall", "density", "coverage", "accuracy"):
        assert name in scores["7.5"] and name in scores["1.5"], name
    assert "split_std" in scores["7.5"]["shapes_is"]
    # the shapes network's 36 classes: real renders spread over them, so their IS is far above 1
    assert 10 < report["floor"]["shapes_is"]["value"] <= 36
    assert "sweep.png" in report["pictures"] and (out / "sweep.png").is_file()
    assert set(report["timing"]["metric_s"]) >= {"shapes-fid", "shapes-kid", "shapes-is", "shapes-pr"}
    text = (out / "report.md").read_text()
    assert "Protocol fid-10k: N = 140 (asked 10000" in text and "preprocessing bicubic to 32x32" in text
    assert len(list((tmp_path / "stats").glob("shapes-32-*.npz"))) == 2, "held-out and floor images cached"


@pytest.mark.slow
def test_control_agreement_compares_a_controlnet_with_the_base_on_held_out_masks(tmp_path):
    """`t2i evaluate --controlnet --metric control-agreement` on shapes with their masks: the shipped
    ControlNet's objects overlap their held-out masks where the base model's land anywhere."""
    from t2i.models import SHAPE_CONTROLNET
    from t2i.shapes.world import make_dataset

    data = make_dataset(tmp_path / "data", 1300, seed=7, control="mask")
    report = evaluate(EvalConfig(model="demo", data=str(data), controlnets=(str(SHAPE_CONTROLNET),),
                                 metrics=("control-agreement", "accuracy"), num_samples=128, steps=8, batch_size=32),
                      tmp_path / "report", log=lambda *_: None)
    base, controlled = report["results"]["base"]["7.5"], report["results"]["controlnet-shape-controlnet"]["7.5"]
    assert base["control_iou"]["ci"][1] < 0.5 < 0.7 < controlled["control_iou"]["ci"][0]
    assert controlled["control_centroid_px"]["value"] < base["control_centroid_px"]["ci"][0] / 2
    assert controlled["accuracy"]["value"] >= base["accuracy"]["ci"][0]
    assert "control_iou" in (tmp_path / "report" / "report.md").read_text()
