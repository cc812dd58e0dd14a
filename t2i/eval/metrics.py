"""Distribution metrics on image features, and bootstrap confidence intervals for every number.

FID and KID are the textbook formulas (Heusel et al. 2017; Binkowski et al. 2018), written on
feature arrays so that the bootstrap can resample features instead of re-running a network;
the tests check both against torchmetrics' implementations on the same features. Precision,
recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) use k-nearest-neighbour
balls with k = 5, as those papers recommend.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import linalg

CONFIDENCE = 0.95
BOOTSTRAP_ROUNDS = 200
NEIGHBOURS = 5


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():  # singular products are usual (one colour, few images): handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_r @ cov_f)
        if not np.isfinite(root).all():  # a tiny ridge, as the reference FID code does
            ridge = np.eye(len(cov_r)) * 1e-6
            root = linalg.sqrtm((cov_r + ridge) @ (cov_f + ridge))
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root.real))


def kernel_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (mean, std)."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(real), len(fake))
    dims = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = fake[rng.choice(len(fake), size, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T / dims + 1) ** 3, (y @ y.T / dims + 1) ** 3, (x @ y.T / dims + 1) ** 3)
        off = size * (size - 1)
        values.append((k_xx.sum() - np.trace(k_xx)) / off + (k_yy.sum() - np.trace(k_yy)) / off
                      - 2 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def _radii(points: np.ndarray, k: int) -> np.ndarray:
    """Each point's distance to its k-th nearest other point."""
    distances = linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself


def manifold_metrics(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real`."""
    real_radii, fake_radii = _radii(real, k), _radii(fake, k)
    between = linalg.norm(real[:, None, :] - fake[None, :, :], axis=-1)  # (real, fake)
    inside_real = between < real_radii[:, None]  # fake j inside real i's ball
    return {"precision": float(inside_real.any(axis=0).mean()),
            "recall": float((between < fake_radii[None, :]).any(axis=1).mean()),
            "density": float(inside_real.sum() / (k * fake.shape[0])),
            "coverage": float((between.min(axis=1) < real_radii).mean())}


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # the bootstrap interval at CONFIDENCE
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": [self.low, self.high], "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def bootstrap_many(statistics: Callable[..., dict[str, float]], *samples: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
                   seed: int = 0, bounds: dict[str, tuple[float, float]] | None = None) -> dict[str, Estimate]:
    """`bootstrap` for a function that computes several statistics at once: one evaluation a
    resample serves them all (precision, recall, density and coverage share their distances)."""
    rng = np.random.default_rng(seed)
    values = statistics(*samples)
    draws = [statistics(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(rounds)]
    return {name: _estimate(value, np.array([d[name] for d in draws]), len(samples[-1]),
                            (bounds or {}).get(name, (-np.inf, np.inf))) for name, value in values.items()}


def _estimate(value: float, draws: np.ndarray, n: int, bounds: tuple[float, float]) -> Estimate:
    tail = (1 - CONFIDENCE) / 2 * 100
    lower, upper = np.percentile(draws - draws.mean(), [tail, 100 - tail])
    low, high = np.clip([value + lower, value + upper], *bounds)
    return Estimate(float(value), float(low), float(high), n)


def bootstrap(statistic: Callable[..., float], *samples: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
              seed: int = 0, bounds: tuple[float, float] = (-np.inf, np.inf)) -> Estimate:
    """`statistic(*samples)` with a bootstrap interval: the spread of the statistic over resamples
    (each sample drawn again with replacement), centred on the value.

    Centring removes the bootstrap's own bias: resampling repeats images, which shrinks each set's
    spread and inflates FID, so the raw percentiles of FID draws can lie wholly above the value
    they are meant to bracket (seen here: FID 131, draws 177-580). `bounds` clips the interval to
    the statistic's range (0..1 for a proportion).
    """
    return bootstrap_many(lambda *s: {"value": statistic(*s)}, *samples, rounds=rounds, seed=seed,
                          bounds={"value": bounds})["value"]
