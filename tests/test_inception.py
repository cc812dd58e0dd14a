"""Inception-v3 for FID/KID/IS: the features equal torch-fidelity's network at every tapped layer, the
metrics equal torch-fidelity's own metric code, the closed forms hold, the metrics run in bounded
memory, and bad weight or statistics files are refused in one line."""

import os
import tracemalloc

import numpy as np
import pytest
import torch
from reference_fidelity import metric_module, register_namespace

from t2i.errors import InvalidInput, LoadError, NotFound
from t2i.eval import metrics
from t2i.eval.inception import LAYERS, WEIGHTS_BYTES, InceptionV3, find_weights, load_inception, resize_like_tf1

SIZES = [(32, 32), (64, 48), (299, 299), (333, 500)]


def calibrated_inception(seed: int = 0) -> InceptionV3:
    """Random weights whose batch-norm statistics are those of a batch of random images, so every layer's
    activations are normalised and depend on the input (with the default statistics the deep features
    are nearly the same for every image, and a parity test on them could not fail)."""
    torch.manual_seed(seed)
    network = InceptionV3()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = this batch's
    network.train()
    generator = torch.Generator().manual_seed(seed)
    network(torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8, generator=generator), ("logits",))
    return network.eval()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(calibrated_inception().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference(weights_file):
    assert register_namespace(), "torch-fidelity is installed by the test extra (pip install --no-deps)"
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return lambda dtype: FeatureExtractorInceptionV3("inception-v3-compat", list(LAYERS),
                                                     feature_extractor_weights_path=str(weights_file),
                                                     feature_extractor_internal_dtype=dtype)


def test_every_layer_equals_torch_fidelity_at_several_sizes(weights_file, reference):
    """In float32, as torch-fidelity runs (its 0.4.0 `feature_extractor_internal_dtype="float64"` leaves
    the network in float32: checked, so there is no float64 reference to compare with)."""
    ours = load_inception(find_weights(str(weights_file), unchecked=True))
    theirs = reference(None)
    generator = torch.Generator().manual_seed(3)
    for height, width in SIZES:
        images = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, generator=generator)
        found, expected = ours(images, LAYERS), dict(zip(LAYERS, theirs(images)))
        for layer in LAYERS:
            assert found[layer].shape == expected[layer].shape
            assert (found[layer] - expected[layer]).abs().max() <= 1e-4, (layer, height, width)
        # the two images differ at every layer: a network that ignored its input would fail here
        assert (found["2048"][0] - found["2048"][1]).abs().max() > 1e-3


def test_the_pytorch_fid_preprocessing_is_torchs_bilinear_resize_of_x_over_255_then_2x_minus_1():
    images = torch.randint(0, 256, (2, 3, 40, 57), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    by_hand = 2 * torch.nn.functional.interpolate(images.float() / 255, size=(299, 299), mode="bilinear",
                                                  align_corners=False) - 1
    assert torch.equal(InceptionV3("pytorch-fid")._prepare(images), by_hand)
    tf1 = InceptionV3("tf1")._prepare(images)
    assert (tf1 - by_hand).abs().max() > 0.1, "the two resizes sample other positions (TF1 has no half-pixel offset)"


def test_the_tf1_resize_reads_pixel_i_times_in_over_out():
    row = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4)
    # 4 -> 8: positions 0, .5, 1, ..., 3.5; the last one clamps to the edge pixel
    assert resize_like_tf1(row.expand(1, 1, 4, 4), 8)[0, 0, 0].tolist() == [0, .5, 1, 1.5, 2, 2.5, 3, 3]


def features(seed, n, dims, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dims)) * (1 + shift) + shift).astype(np.float32)


def test_fid_kid_is_and_precision_recall_equal_torch_fidelitys_own_metric_code():
    fid, kid, isc, prc = (metric_module(name) for name in ("fid", "kid", "isc", "prc"))
    real, fake = features(0, 1200, 32), features(1, 1100, 32, shift=0.1)
    theirs_fid = fid.fid_statistics_to_metric(fid.fid_features_to_statistics(torch.from_numpy(real)),
                                              fid.fid_features_to_statistics(torch.from_numpy(fake)), False)
    assert metrics.frechet_distance(real, fake) == pytest.approx(theirs_fid["frechet_inception_distance"], rel=1e-6)

    theirs_kid = kid.kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=5,
                                            kid_subset_size=1000, rng_seed=2020, verbose=False)
    ours_kid = metrics.kernel_distance(real, fake, subsets=5, subset_size=1000)
    assert ours_kid[0] == pytest.approx(theirs_kid["kernel_inception_distance_mean"], rel=1e-4)
    assert ours_kid[1] == pytest.approx(theirs_kid["kernel_inception_distance_std"], rel=1e-3)

    logits = features(2, 1000, 50) * 3
    theirs_is = isc.isc_features_to_metric(torch.from_numpy(logits), 10, True, 2020)
    assert metrics.inception_score(logits) == pytest.approx(
        (theirs_is["inception_score_mean"], theirs_is["inception_score_std"]), rel=1e-6)

    theirs_pr = prc.prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                           prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    ours_pr = metrics.manifold_metrics(real, fake, k=3)
    assert ours_pr["precision"] == pytest.approx(theirs_pr["precision"], abs=1e-6)
    assert ours_pr["recall"] == pytest.approx(theirs_pr["recall"], abs=1e-6)


def test_closed_forms():
    rng = np.random.default_rng(0)
    # Gaussians with diagonal covariances: FID = |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    var_a, var_b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert metrics.fid_from_moments(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)
    # a rotation of both covariances changes nothing
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert metrics.fid_from_moments(mean_a, rotation @ np.diag(var_a) @ rotation.T, mean_b,
                                    rotation @ np.diag(var_b) @ rotation.T) == pytest.approx(expected)
    same = features(3, 500, 8)
    assert abs(metrics.frechet_distance(same, same)) < 1e-9
    # fewer images than features: the N x N route equals the D x D one, weighted (a resample) or not (to
    # 1e-6: the D x D route takes square roots of rank-deficient round-off)
    few_a, few_b = features(20, 30, 64), features(21, 25, 64, shift=0.2)
    counts_a, counts_b = np.bincount(rng.integers(0, 30, 30), minlength=30), np.bincount(rng.integers(0, 25, 25),
                                                                                       minlength=25)
    assert metrics._few_rows(few_a, few_b)
    assert metrics.frechet_distance(few_a, few_b) == pytest.approx(
        metrics.fid_from_moments(*metrics.moments(few_a), *metrics.moments(few_b)), rel=1e-6)
    assert metrics._fid_from_rows(few_a, few_b, counts_a, counts_b) == pytest.approx(
        metrics.fid_from_moments(*metrics.moments(few_a, counts_a), *metrics.moments(few_b, counts_b)), rel=1e-6)
    # IS: one class everywhere scores 1; ten confident, equally used classes score 10
    assert metrics.inception_score(np.zeros((100, 10)))[0] == pytest.approx(1.0)
    assert metrics.inception_score(np.eye(10).repeat(20, axis=0) * 50, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    # KID is unbiased: over many disjoint draws of one distribution it averages to 0
    draws = [metrics.kernel_distance(features(i, 50, 4), features(1000 + i, 50, 4), subsets=1, subset_size=50)[0]
             for i in range(200)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws))


def test_blocked_metrics_equal_the_whole_array_computation(monkeypatch):
    real, fake = features(4, 60, 5).astype(np.float64), features(5, 50, 5, shift=0.2).astype(np.float64)
    distances = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731 (N x N x D: the old way)
    real_radii = np.sort(distances(real, real), axis=1)[:, 5]
    fake_radii = np.sort(distances(fake, fake), axis=1)[:, 5]
    between = distances(real, fake)
    inside = between < real_radii[:, None]
    expected = {"precision": inside.any(axis=0).mean(), "recall": (between < fake_radii[None]).any(axis=1).mean(),
                "density": inside.sum() / (5 * len(fake)), "coverage": (between.min(axis=1) < real_radii).mean()}
    monkeypatch.setattr(metrics, "_ROWS", 7)  # many blocks, one of them short
    monkeypatch.setattr(metrics, "_BLOCK_ENTRIES", 7 * 50)
    assert metrics.manifold_metrics(real, fake) == pytest.approx(expected)
    mean, cov = metrics.moments(real)
    assert np.allclose(mean, real.mean(0)) and np.allclose(cov, np.cov(real, rowvar=False))
    counts = np.bincount(np.random.default_rng(1).integers(0, 60, 60), minlength=60)
    copied = np.repeat(real, counts, axis=0)  # a bootstrap resample, made as rows
    assert np.allclose(metrics.moments(real, counts)[1], np.cov(copied, rowvar=False))


def test_precision_recall_on_3000_images_stays_within_blocks_of_memory():
    real, fake = features(6, 3000, 64), features(7, 3000, 64, shift=0.1)
    tracemalloc.start()
    metrics.manifold_indicators(real, fake)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole = 3000 * 3000 * 64 * 8  # what an N x N x D array of distances would take: 4.6 GB
    assert peak < 400e6 and peak < whole / 10, f"{peak / 1e6:.0f} MB"


def test_the_estimates_bracket_their_values_and_is_keeps_its_split_spread():
    real, fake = features(8, 400, 16), features(9, 400, 16, shift=0.3)
    fid = metrics.fid_estimate(real, fake)
    assert 0 <= fid.low < fid.value < fid.high
    kid = metrics.kid_estimate(real, fake, subsets=20, rounds=20)
    assert kid.low < kid.value < kid.high and kid.value > 0
    estimate = metrics.is_estimate(features(10, 400, 12) * 4)
    assert 1 <= estimate.low < estimate.value < estimate.high <= 12 and estimate.spread > 0
    assert estimate.as_dict()["split_std"] == estimate.spread
    for name, found in metrics.manifold_estimates(real, fake).items():
        assert found.low <= found.value <= found.high, name


def test_weights_are_checked_before_use(tmp_path, weights_file):
    with pytest.raises(NotFound, match="no Inception weights at .*; download https://github.com/toshas"):
        find_weights(str(tmp_path / "missing.pth"))
    with pytest.raises(InvalidInput, match=f"bytes; the published Inception weights are {WEIGHTS_BYTES:,}"):
        find_weights(str(weights_file))
    sparse = tmp_path / "zeros.pth"
    with open(sparse, "wb") as handle:  # the published size, other bytes
        handle.truncate(WEIGHTS_BYTES)
    with pytest.raises(InvalidInput, match="has SHA-256 .* the published Inception weights have 6726825d0af5f729"):
        find_weights(str(sparse))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_file.read_bytes()[:100_000])
    with pytest.raises(LoadError, match="is not an Inception-v3 FID weight file"):
        load_inception(find_weights(str(truncated), unchecked=True))
    accepted = find_weights(str(weights_file), unchecked=True)
    assert not accepted.checked and len(accepted.sha256) == 64


def test_a_safetensors_copy_gives_the_same_features(tmp_path, weights_file):
    from safetensors.torch import save_file

    state = torch.load(weights_file, weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "inception.safetensors"))
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    one = load_inception(find_weights(str(weights_file), unchecked=True))(images)["2048"]
    two = load_inception(find_weights(str(tmp_path / "inception.safetensors"), unchecked=True))(images)["2048"]
    assert torch.equal(one, two)


def test_statistics_files_are_reused_and_a_mismatch_is_named(tmp_path):
    from t2i.eval.extractors import Seen
    from t2i.eval.reference_stats import cached_seen, read_stats

    made_by = {"extractor": "inception", "weights_sha256": "ab" * 32, "preprocessing": "tf1", "resolution": "64",
               "images": "cd" * 32}
    calls = []

    def compute():
        calls.append(1)
        return Seen(features(11, 50, 8), features(12, 50, 4))

    first = cached_seen(tmp_path, made_by, 8, compute)
    second = cached_seen(tmp_path, made_by, 8, compute)
    assert len(calls) == 1 and np.array_equal(first.features, second.features)
    (saved,) = tmp_path.glob("*.npz")
    with np.load(saved) as data:  # pytorch-fid's and clean-fid's two arrays, as they read them
        assert np.allclose(data["mu"], first.features.mean(0), atol=1e-6)
        assert np.allclose(data["sigma"], np.cov(first.features.astype(np.float64), rowvar=False), atol=1e-6)
    with pytest.raises(InvalidInput, match="was made with preprocessing tf1; this run uses pytorch-fid"):
        read_stats(saved, {**made_by, "preprocessing": "pytorch-fid"}, 8)
    with pytest.raises(InvalidInput, match="holds 8-dimensional statistics; this extractor has 2048"):
        read_stats(saved, made_by, 2048)
    published = tmp_path / "published.npz"  # only mu and sigma: nothing to check but the size
    np.savez(published, mu=np.zeros(8), sigma=np.eye(8))
    assert set(read_stats(published, made_by, 8)) == {"mu", "sigma"}
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(LoadError, match="is not a statistics .npz file"):
        read_stats(broken, made_by, 8)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary file left behind"


@pytest.mark.slow
def test_evaluate_on_inception_reports_every_metric_and_reuses_the_real_images_statistics(weights_file, tmp_path,
                                                                                          monkeypatch):
    from t2i.eval.config import EvalConfig
    from t2i.eval.extractors import InceptionExtractor
    from t2i.eval.run import evaluate
    from t2i.shapes.world import make_dataset

    data = make_dataset(tmp_path / "shapes", 1300, seed=4)
    # the wiring is under test here, not the network (tested above at 299): at 75 px, Inception's smallest
    # input, a forward pass costs 1/16 of the 299 px one
    monkeypatch.setattr("t2i.eval.inception.INPUT_SIZE", 75)
    seen = []
    original = InceptionExtractor.see
    monkeypatch.setattr(InceptionExtractor, "see", lambda self, images: seen.append(len(images)) or original(self,
                                                                                                              images))
    config = EvalConfig(model="demo", data=str(data), num_samples=130, steps=4, is_splits=10,
                        metrics=("inception-fid", "inception-kid", "inception-is", "inception-pr"),
                        inception_weights=str(weights_file), inception_unchecked=True, stats_dir=str(tmp_path / "stats"))
    report = evaluate(config, tmp_path / "one", log=lambda _: None)
    assert seen == [130, 130, 130], "held-out, floor, generated"
    identity = report["extractors"]["inception"]
    assert identity["dims"] == 2048 and identity["preprocessing"] == "tf1" and not identity["weights_published"]
    scores = report["results"]["base"]["7.5"]
    for name in ("inception_fid", "inception_kid", "inception_is", "inception_precision", "inception_recall",
                 "inception_density", "inception_coverage"):
        assert scores[name]["ci"][0] <= scores[name]["value"] <= scores[name]["ci"][1], name
    assert "(not the published file)" in (tmp_path / "one" / "report.md").read_text()

    seen.clear()  # another report on the same data: the real images' features come from the cache
    again = evaluate(config, tmp_path / "two", log=lambda _: None)
    assert seen == [130] and again["results"] == report["results"]

    # published statistics: mu and sigma only, measured against as they are
    from t2i.eval.reference_stats import images_hash
    from t2i.eval.run import _held_out

    held_out = images_hash([(sample.path, sample.member) for sample in _held_out(config)[1]])
    files = sorted((tmp_path / "stats").glob("inception-32-*.npz"))  # the held-out images' and the floor's
    assert len(files) == 2
    (stats,) = [f for f in files if str(np.load(f)["images"]) == held_out]
    with np.load(stats) as arrays:
        np.savez(tmp_path / "published.npz", mu=arrays["mu"], sigma=arrays["sigma"])
        np.savez(tmp_path / "other.npz", **{**{k: arrays[k] for k in arrays.files},
                                            "preprocessing": np.array("pytorch-fid")})
    with_reference = EvalConfig(**{**config.__dict__, "reference_stats": str(tmp_path / "published.npz")})
    measured = evaluate(with_reference, tmp_path / "three", log=lambda _: None)
    assert measured["reference_stats"]["made_by"] == "not recorded in the file"
    assert measured["results"]["base"]["7.5"]["inception_fid"]["value"] == pytest.approx(
        scores["inception_fid"]["value"], rel=1e-4), "the held-out images' own statistics: the same FID (to the "
    "round-off of the square roots of a rank-deficient covariance's eigenvalues)"
    with pytest.raises(InvalidInput, match="was made with preprocessing pytorch-fid; this run uses tf1"):
        evaluate(EvalConfig(**{**config.__dict__, "reference_stats": str(tmp_path / "other.npz")}), tmp_path / "four")
    assert not (tmp_path / "four").exists()
