"""What `t2i evaluate` measures: `EvalConfig`, every default once and every value checked.

No numpy, scipy or torch import here, so `t2i --help` and the CLI's checks stay instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from t2i.errors import check

SHAPES_METRICS = ("shapes-fid", "shapes-kid", "shapes-pr", "accuracy")
METRICS = (*SHAPES_METRICS, "clip-score")
MIN_SAMPLES = 128  # twice the 64 feature dimensions: FID with fewer images is mostly its own bias


@dataclass(frozen=True)
class EvalConfig:
    model: str = "demo"
    data: str = ""
    loras: tuple[str, ...] = ()
    split: str = "test"  # the layout's own split when it has one; else the seeded validation share
    val_fraction: float = 0.1
    data_seed: int = 0
    num_samples: int = 256
    guidance_scales: tuple[float, ...] = (7.5,)
    sampler: str = "dpmpp-2m"
    steps: int = 20
    seed: int = 0
    batch_size: int = 16
    metrics: tuple[str, ...] = SHAPES_METRICS
    clip_model: str | None = None  # a local CLIP folder or a cached hub id, for clip-score

    def __post_init__(self):
        object.__setattr__(self, "loras", tuple(self.loras))
        object.__setattr__(self, "guidance_scales", tuple(float(g) for g in self.guidance_scales))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        check(self.num_samples >= MIN_SAMPLES, "num_samples", self.num_samples,
              f"must be at least {MIN_SAMPLES}: FID on 64 features with fewer images measures mostly its own bias")
        check(self.split in ("test", "val"), "split", self.split, "unknown split", choices=("test", "val"))
        check(len(self.guidance_scales) >= 1, "guidance_scales", None, "give at least one guidance scale")
        for scale in self.guidance_scales:
            check(math.isfinite(scale) and scale >= 0, "guidance_scales", scale, "must be a finite number, 0 or more")
        for metric in self.metrics:
            check(metric in METRICS, "metrics", metric, "unknown metric", choices=METRICS,
                  hint="Inception FID/KID and IS are not built yet")
        check("clip-score" not in self.metrics or self.clip_model is not None, "metrics", "clip-score",
              "needs {clip_model}: a local CLIP folder or a cached hub id (e.g. openai/clip-vit-base-patch16)")
