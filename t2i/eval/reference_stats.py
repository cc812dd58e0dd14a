"""Real images' features, computed once per image set, extractor and resolution, then reused; and
the extractors and statistics files a `t2i evaluate` run measures real images with.

A statistics file is an `.npz` holding `mu` and `sigma` as pytorch-fid and clean-fid write them
(so t2i's files can be used by those tools, and published files by t2i), plus, when t2i wrote it,
the features and logits themselves (KID and precision/recall need them) and what made them:
`extractor`, `weights_sha256`, `preprocessing`, `resolution`, `images` (a hash of the image files).
A file made another way is refused with the mismatch named.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from t2i.errors import InvalidInput, LoadError, check
from t2i.eval.extractors import Extractor, Seen
from t2i.eval.metrics import moments
from t2i.files import atomic_write

if TYPE_CHECKING:
    from t2i.eval.config import EvalConfig

CHECKED = ("extractor", "weights_sha256", "preprocessing", "resolution")


def default_stats_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "t2i" / "eval-stats"


def images_hash(files: list[tuple[Path, str | None]]) -> str:
    """The image set's identity: each file's path, member, size and modification time, in order."""
    digest = hashlib.sha256()
    for path, member in files:
        stat = path.stat()
        digest.update(json.dumps([str(path.resolve()), member, stat.st_size, stat.st_mtime_ns]).encode())
    return digest.hexdigest()


def describe(identity: dict, resolution: int, images: str) -> dict[str, str]:
    return {"extractor": identity["extractor"], "weights_sha256": identity["weights_sha256"],
            "preprocessing": identity["preprocessing"], "resolution": str(resolution), "images": images}


def write_stats(path: Path, seen: Seen, made_by: dict[str, str]) -> None:
    mu, sigma = moments(seen.features)
    arrays = {"mu": mu, "sigma": sigma, "features": seen.features, "logits": seen.logits,
              **{key: np.array(value) for key, value in made_by.items()}}
    atomic_write(path, lambda tmp: tmp.write_bytes(_npz_bytes(arrays)))


def _npz_bytes(arrays: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_stats(path: Path, expected: dict[str, str], dims: int) -> dict[str, np.ndarray]:
    """The file's arrays, after checking they were made the way `expected` says (keys the file does
    not record, as in published files, cannot be checked and are taken on trust)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:
        raise LoadError(f"is not a statistics .npz file ({type(error).__name__}: {error})"[:200],
                        field="reference_stats", value=path) from error
    if "mu" not in arrays or "sigma" not in arrays:
        raise LoadError("holds no mu and sigma", field="reference_stats", value=path)
    if arrays["mu"].shape != (dims,) or arrays["sigma"].shape != (dims, dims):
        raise InvalidInput(f"holds {arrays['mu'].shape[0]}-dimensional statistics; this extractor has {dims}",
                           field="reference_stats", value=path)
    for key in CHECKED:
        if key in arrays and str(arrays[key]) != expected[key]:
            raise InvalidInput(f"was made with {key} {str(arrays[key])[:24]}; this run uses {expected[key][:24]}",
                               field="reference_stats", value=path, hint="make the statistics again for this run")
    return arrays


def cached_seen(cache_dir: Path, made_by: dict[str, str], dims: int, compute: Callable[[], Seen]) -> Seen:
    """The image set's features from the cache, else computed and cached (atomically: a killed run
    leaves no half-written file, and the next run computes them again)."""
    key = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir / f"{made_by['extractor']}-{made_by['resolution']}-{key}.npz"
    if path.is_file():
        arrays = read_stats(path, made_by, dims)
        if "features" in arrays and str(arrays.get("images", "")) == made_by["images"]:
            return Seen(arrays["features"], arrays["logits"])
    seen = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_stats(path, seen, made_by)
    return seen


# ---- what `t2i evaluate` measures real images with, and where it finds their statistics ----------

def build_extractors(config: EvalConfig) -> dict[str, Extractor]:
    from t2i.eval.extractors import InceptionExtractor, ShapesExtractor

    found: dict[str, Extractor] = {}
    for name in config.extractors:
        found[name] = ShapesExtractor() if name == "shapes" else InceptionExtractor(
            config.inception_weights, config.inception_preprocessing, config.inception_unchecked)
    return found


def published_reference(config: EvalConfig, extractor, size: int) -> dict:
    """The published statistics file, checked against this run's extractor where it says how it was made."""
    path = Path(config.reference_stats or "")
    check(path.is_file(), "reference_stats", path, "no such file")
    arrays = read_stats(path, describe(extractor.identity, size, ""), extractor.identity["dims"])
    return {"mu": arrays["mu"], "sigma": arrays["sigma"],
            "made_by": {k: str(arrays[k]) for k in CHECKED if k in arrays} or "not recorded in the file"}


def real_images_seen(config: EvalConfig, extractors: dict, samples, size: int) -> dict[str, Seen]:
    """Each extractor's view of real samples, from the statistics cache when it holds them."""
    from t2i.data.training_set import read_rgb
    from t2i.eval.extractors import fit_square

    folder = Path(config.stats_dir).expanduser() if config.stats_dir else default_stats_dir()
    images = images_hash([(sample.path, sample.member) for sample in samples])

    def seen_by(extractor) -> Callable[[], Seen]:
        return lambda: extractor.see([fit_square(read_rgb(sample), size) for sample in samples])

    return {name: cached_seen(folder, describe(extractor.identity, size, images), extractor.identity["dims"],
                              seen_by(extractor)) for name, extractor in extractors.items()}
