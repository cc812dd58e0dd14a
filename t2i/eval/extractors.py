"""What the distribution metrics see an image as: the shipped shapes network, or Inception-v3.

Each extractor turns images into pool features (FID, KID, precision/recall) and class logits (the
Inception Score), and names itself (`identity`: network, weights' hash, preprocessing, dimensions)
so that every report and every cached statistics file says which numbers it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps

EXTRACTORS = ("shapes", "inception")


@dataclass(frozen=True)
class Seen:
    """One image set as an extractor sees it."""

    features: np.ndarray  # (N, D) float32
    logits: np.ndarray  # (N, classes) float32


class Extractor(Protocol):
    name: str
    identity: dict

    def see(self, images: list[Image.Image]) -> Seen: ...


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """A real photograph as the generated images are made: the centred largest square, resized
    (bicubic) to the generated size; a no-op crop for square images."""
    return ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)


class ShapesExtractor:
    """The shipped shapes network: 64 features; its colour and shape heads together name one of
    9 x 4 classes (the joint log-probability is the logit), which the Inception Score counts."""

    name = "shapes"

    def __init__(self):
        from t2i.eval.inception import file_sha256
        from t2i.models import SHAPE_FEATURES_DIR
        from t2i.shapes.features import WEIGHTS_FILE, load_features

        self.network = load_features()
        self.identity = {"extractor": "shapes", "network": "t2i shapes feature network",
                         "weights_sha256": file_sha256(SHAPE_FEATURES_DIR / WEIGHTS_FILE),
                         "preprocessing": "bicubic to 32x32, [0, 1]", "dims": 64}

    def see(self, images: list[Image.Image]) -> Seen:
        import torch

        from t2i.shapes.features import extract, to_tensor

        features = extract(self.network, images).astype(np.float32)
        with torch.no_grad():
            colour, shape = self.network.classify(to_tensor(images)) if images else (torch.zeros(0, 9),
                                                                                     torch.zeros(0, 4))
            joint = colour.log_softmax(1)[:, :, None] + shape.log_softmax(1)[:, None, :]
        return Seen(features, joint.flatten(1).numpy().astype(np.float32))


class InceptionExtractor:
    """Inception-v3 (the FID network): 2,048 pool features and 1,008 logits without the bias, as
    torch-fidelity taps them for FID/KID/precision and for IS."""

    name = "inception"

    def __init__(self, weights: str | None, preprocessing: str = "tf1", unchecked: bool = False):
        from t2i.eval.inception import find_weights, load_inception

        found = find_weights(weights, unchecked)
        self.network = load_inception(found, preprocessing)
        self.identity = {"extractor": "inception", "network": "inception-v3 FID (TF 2015-12-05 graph)",
                         "weights_sha256": found.sha256, "weights_published": found.checked,
                         "preprocessing": preprocessing, "dims": 2048}

    def see(self, images: list[Image.Image]) -> Seen:
        from t2i.eval.inception import inception_features

        found = inception_features(self.network, images, ("2048", "logits_unbiased"))
        return Seen(found["2048"].astype(np.float32), found["logits_unbiased"].astype(np.float32))
