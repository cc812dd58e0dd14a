"""What `t2i evaluate` measures: `EvalConfig`, every default once and every value checked.

No numpy, scipy or torch import here, so `t2i --help` and the CLI's checks stay instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from t2i.errors import check

SHAPES_METRICS = ("shapes-fid", "shapes-kid", "shapes-pr", "accuracy")
INCEPTION_METRICS = ("inception-fid", "inception-kid", "inception-is", "inception-pr")
METRICS = (*SHAPES_METRICS, "shapes-is", *INCEPTION_METRICS, "clip-score", "control-agreement")
MIN_SAMPLES = 128  # twice the 64 feature dimensions: FID with fewer images is mostly its own bias
MIN_SPLIT_IMAGES = 10  # an Inception Score split's class marginal needs images to average over
PREPROCESSINGS = ("tf1", "pytorch-fid")  # Inception's input resize: torch-fidelity's (TF1) or pytorch-fid's
# The protocol of the project's source documents: up to 10,000 held-out images, FID and KID against
# them, IS with 10 splits, CLIP score, and the FID-CLIP curve over the SD paper's guidance scales
PROTOCOLS = {"fid-10k": 10_000}
PROTOCOL_GUIDANCE = (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


def extractor_of(metric: str) -> str | None:
    """'shapes' or 'inception' for a distribution metric; None for accuracy and the CLIP score."""
    prefix = metric.split("-")[0]
    return prefix if prefix in ("shapes", "inception") else None


@dataclass(frozen=True)
class EvalConfig:
    model: str = "demo"
    data: str = ""
    loras: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()  # each a variant: every image made with its held-out control image
    split: str = "test"  # the layout's own split when it has one; else the seeded validation share
    val_fraction: float = 0.1
    data_seed: int = 0
    num_samples: int = 256
    guidance_scales: tuple[float, ...] = (7.5,)
    sampler: str = "dpmpp-2m"
    steps: int = 20
    seed: int = 0
    batch_size: int = 16
    width: int | None = None  # None: the model's native size; another tells how a model (or LoRA) does there
    height: int | None = None
    metrics: tuple[str, ...] = SHAPES_METRICS
    clip_model: str | None = None  # a local CLIP folder or a cached hub id, for clip-score
    protocol: str | None = None  # set by for_protocol: num_samples is then a cap, not a demand
    is_splits: int = 10
    inception_weights: str | None = None  # None: the cache location (t2i.eval.inception.default_weights_path)
    inception_preprocessing: str = "tf1"
    inception_unchecked: bool = False  # use weights that are not the published file's bytes
    reference_stats: str | None = None  # an .npz of mu/sigma (e.g. published) for inception-fid
    stats_dir: str | None = None  # where real images' features are cached; None: ~/.cache/t2i/eval-stats

    @classmethod
    def for_protocol(cls, protocol: str, **given) -> "EvalConfig":
        """The protocol's settings under the ones the user gave. Its metrics are measured on the
        shapes network for the `demo` model (the shapes world, where the whole path runs here) and
        on Inception-v3 for any other model."""
        check(protocol in PROTOCOLS, "protocol", protocol, "unknown protocol", choices=tuple(PROTOCOLS))
        shapes = given.get("model", cls.model) == "demo"
        prefix = "shapes" if shapes else "inception"
        metrics = tuple(f"{prefix}-{name}" for name in ("fid", "kid", "is", "pr")) + (("accuracy",) if shapes else ())
        metrics += ("clip-score",) if given.get("clip_model") else ()
        defaults = {"num_samples": PROTOCOLS[protocol], "metrics": metrics, "guidance_scales": PROTOCOL_GUIDANCE}
        return cls(**{**defaults, **given, "protocol": protocol})

    @property
    def extractors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e for e in map(extractor_of, self.metrics) if e))

    def __post_init__(self):
        object.__setattr__(self, "loras", tuple(self.loras))
        object.__setattr__(self, "controlnets", tuple(self.controlnets))
        object.__setattr__(self, "guidance_scales", tuple(float(g) for g in self.guidance_scales))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        check(self.num_samples >= MIN_SAMPLES, "num_samples", self.num_samples,
              f"must be at least {MIN_SAMPLES}: FID on 64 features with fewer images measures mostly its own bias")
        check(self.split in ("test", "val"), "split", self.split, "unknown split", choices=("test", "val"))
        check(len(self.guidance_scales) >= 1, "guidance_scales", None, "give at least one guidance scale")
        for scale in self.guidance_scales:
            check(math.isfinite(scale) and scale >= 0, "guidance_scales", scale, "must be a finite number, 0 or more")
        for metric in self.metrics:
            check(metric in METRICS, "metrics", metric, "unknown metric", choices=METRICS)
        check(self.inception_preprocessing in PREPROCESSINGS, "inception_preprocessing",
              self.inception_preprocessing, "unknown preprocessing", choices=PREPROCESSINGS)
        check(self.is_splits >= 1, "is_splits", self.is_splits, "must be at least 1")
        for name in ("width", "height"):
            size = getattr(self, name)
            check(size is None or (size >= 8 and size % 8 == 0), name, size, "must be a positive multiple of 8")
        if any(m.endswith("-is") for m in self.metrics) and self.protocol is None:
            check(self.num_samples % self.is_splits == 0, "is_splits", self.is_splits,
                  f"does not divide {{num_samples}} {self.num_samples} into equal splits",
                  hint="choose {num_samples} a multiple of it")
            check(self.num_samples // self.is_splits >= MIN_SPLIT_IMAGES, "is_splits", self.is_splits,
                  f"leaves {self.num_samples // self.is_splits} images a split; IS needs at least {MIN_SPLIT_IMAGES}")
        check(self.reference_stats is None or "inception-fid" in self.metrics, "reference_stats",
              self.reference_stats, "is used by inception-fid only", hint="add {metrics} inception-fid")
        check(not self.controlnets or "control-agreement" in self.metrics, "controlnets", self.controlnets[0]
              if self.controlnets else None, "is measured by the control-agreement metric",
              hint="add {metrics} control-agreement")
        check("clip-score" not in self.metrics or self.clip_model is not None, "metrics", "clip-score",
              "needs {clip_model}: a local CLIP folder or a cached hub id (e.g. openai/clip-vit-base-patch16)")
