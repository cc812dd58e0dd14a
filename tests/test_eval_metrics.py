"""The evaluation's numbers: FID and KID equal torchmetrics' on the same features, the shipped
shapes feature network sees what it should, and the floors behave (real vs real near 0, images of
the wrong colours far worse)."""

import random

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from t2i.eval.metrics import bootstrap, frechet_distance, kernel_distance, manifold_metrics
from t2i.shapes.features import extract, load_features, to_tensor
from t2i.shapes.world import ALL_COLOURS, COLOURS, make_image, random_shape


def renders(count, seed, colours=tuple(COLOURS), recolour=None):
    rng = random.Random(seed)
    images = []
    for _ in range(count):
        spec = random_shape(rng, colours)
        images.append(make_image(spec, rgb=ALL_COLOURS[recolour[spec.colour]] if recolour else None))
    return images


@pytest.fixture(scope="module")
def network():
    model = load_features()
    model.num_features = 64  # what torchmetrics reads off a custom feature extractor
    return model


def test_fid_and_kid_equal_torchmetrics_on_the_shipped_network(network):
    real, fake = renders(200, 1), renders(200, 2, recolour={c: "brown" if c == "red" else c for c in COLOURS})
    ours_real, ours_fake = extract(network, real), extract(network, fake)
    reference = FrechetInceptionDistance(feature=network)
    reference.update(to_tensor(real), real=True)
    reference.update(to_tensor(fake), real=False)
    assert frechet_distance(ours_real, ours_fake) == pytest.approx(reference.compute().item(), rel=1e-4, abs=1e-4)

    kid = KernelInceptionDistance(feature=network, subsets=1, subset_size=200)
    kid.update(to_tensor(real), real=True)
    kid.update(to_tensor(fake), real=False)
    assert kernel_distance(ours_real, ours_fake, subsets=1, subset_size=200)[0] == \
        pytest.approx(kid.compute()[0].item(), rel=1e-4, abs=1e-6)


def test_the_network_names_colour_and_shape_of_fresh_renders(network):
    rng = random.Random(5)
    specs = [random_shape(rng, tuple(ALL_COLOURS)) for _ in range(300)]
    pixels = to_tensor([make_image(spec) for spec in specs])
    with torch.no_grad():
        colour_logits, shape_logits = network.classify(pixels)
        colours, shapes = colour_logits.argmax(1).tolist(), shape_logits.argmax(1).tolist()
    names, shape_names = list(ALL_COLOURS), ("circle", "square", "triangle", "cross")
    assert np.mean([names[c] == s.colour for c, s in zip(colours, specs)]) > 0.97
    assert np.mean([shape_names[i] == s.shape for i, s in zip(shapes, specs)]) > 0.97


def test_floors_real_vs_real_is_near_zero_and_wrong_colours_score_far_worse(network):
    real, other_real = extract(network, renders(256, 10)), extract(network, renders(256, 11))
    # a model that paints red and blue shapes brown: the colour distribution itself is off (a uniform
    # shuffle of colours would keep it, and only the prompt-agreement score can see that)
    wrong = extract(network, renders(256, 12, recolour={c: "brown" if c in ("red", "blue") else c for c in COLOURS}))
    floor = bootstrap(frechet_distance, real, other_real, rounds=50)
    bad = bootstrap(frechet_distance, real, wrong, rounds=50)
    assert floor.low <= floor.value <= floor.high and bad.low <= bad.value <= bad.high
    assert floor.low < 0.5 * bad.low and bad.value > 5 * floor.value, (floor, bad)
    pr_floor, pr_bad = manifold_metrics(real, other_real), manifold_metrics(real, wrong)
    assert pr_floor["precision"] > 0.8 and pr_floor["recall"] > 0.8 and pr_floor["coverage"] > 0.8
    # a quarter of the real images (the red and blue ones) have no generated neighbours any more
    assert pr_bad["precision"] < pr_floor["precision"] - 0.08
    assert pr_bad["recall"] < pr_floor["recall"] - 0.15 and pr_bad["coverage"] < pr_floor["coverage"] - 0.15
    kid_floor, kid_bad = kernel_distance(real, other_real)[0], kernel_distance(real, wrong)[0]
    assert kid_bad > 10 * abs(kid_floor)


def test_bootstrap_intervals_hold_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    estimates = [bootstrap(np.mean, (rng.random(200) < 0.7).astype(float), rounds=200, seed=i) for i in range(200)]
    covered = np.mean([e.low < 0.7 < e.high for e in estimates])
    assert 0.88 <= covered <= 0.99, covered
    assert all(e.n == 200 and e.high - e.low < 0.16 for e in estimates)


class _FeaturesAsTensors(torch.nn.Module):
    """transformers 5 returns CLIP features as output objects; torchmetrics expects the tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output

    @property
    def config(self):
        return self.model.config


def test_clip_score_equals_torchmetrics_on_identical_weights(tiny_clip):
    from PIL import Image
    from torchmetrics.functional.multimodal import clip_score

    from t2i.eval.clip_score import clip_scores, load_clip

    model, processor = load_clip(str(tiny_clip))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(6)]
    captions = ["a red circle", "a blue square on a wall", "x", "a green star", "two dogs", "a photo of a cat"]
    ours = clip_scores(model, processor, images, captions, batch_size=4)
    theirs = [float(clip_score(torch.from_numpy(np.asarray(image)).permute(2, 0, 1), caption,
                               model_name_or_path=lambda: (_FeaturesAsTensors(model), processor)))
              for image, caption in zip(images, captions)]
    assert np.allclose(ours, theirs, atol=1e-4) and len(set(np.round(ours, 3))) == 6
    assert (ours >= 0).all() and (ours <= 100).all()


def test_a_fid_interval_is_clipped_at_0_and_a_kid_interval_is_not():
    from t2i.eval.metrics import bootstrap, frechet_distance, kernel_distance

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(128, 4)), rng.normal(size=(128, 4))  # one distribution: FID and KID near 0
    raw = bootstrap(frechet_distance, real, fake)
    assert raw.low < 0, "unclipped, this interval reaches below 0: the case the clip is for"
    clipped = bootstrap(frechet_distance, real, fake, bounds=(0, np.inf))
    assert clipped.low == 0 and (clipped.value, clipped.high) == (raw.value, raw.high)
    kid = bootstrap(lambda a, b: kernel_distance(a, b, subsets=10)[0], real, fake)
    assert kid.low < 0 < kid.high  # unbiased: it brackets 0 from both sides


def test_the_report_clips_fid_at_0():
    from t2i.eval import run

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(128, 4)), rng.normal(size=(128, 4))
    seen = lambda features: {"shapes": run.Seen(features, np.zeros((len(features), 36)))}  # noqa: E731
    scores = run._scores(run.EvalConfig(data="d", metrics=("shapes-fid", "shapes-kid")), [], seen(real), seen(fake),
                         None)
    assert scores["shapes_fid"].low == 0
    assert scores["shapes_kid"].low < 0 < scores["shapes_kid"].high
