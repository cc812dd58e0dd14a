"""The shapes world's proof of aspect-ratio buckets: what a square crop cuts away.

A collection of wide and tall images whose shapes sit near an end of the long side
(`t2i shapes make-dataset --frame 48x32 --frame 32x48`) is turned into training targets exactly as
`t2i finetune` makes them (t2i.data.training_set.pixels), once with square centre crops and once
in kohya's buckets. Two measures, each a share of the targets with a bootstrap interval:
- cut: the object reaches the target's edge (its mask touches the border) though on the whole
  image it stands clear of every edge: part of what the caption names is gone;
- misread: the analyser no longer reads the colour and shape it reads on the whole image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from t2i.data.buckets import Bucketing
from t2i.data.sources import read_collection
from t2i.data.training_set import CENTRE, Augment, pixels, place_samples, read_rgb
from t2i.eval.metrics import Estimate, bootstrap
from t2i.shapes.analyser import analyse, foreground


def _image(tensor) -> Image.Image:
    array = ((tensor.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)


def training_targets(folder: str, resolution: int, bucketing: Bucketing | None = None) -> list[Image.Image]:
    """The images training sees, in name order: square crops, or each image in its bucket."""
    _, samples = read_collection(folder)
    samples = sorted(samples, key=lambda s: s.key)
    placements = place_samples(samples, bucketing)[1] if bucketing else None
    augment = Augment(resolution)
    return [_image(pixels(s, augment, CENTRE, False, placements[s.key] if placements else None)) for s in samples]


def touches_border(image: Image.Image) -> bool:
    mask = foreground(image)
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def lost_objects(folder: str, resolution: int, bucketing: Bucketing | None = None) -> dict[str, Estimate]:
    """{"cut", "misread"}: the shares of training targets that lost part or all of their object."""
    _, samples = read_collection(folder)
    wholes = [read_rgb(s) for s in sorted(samples, key=lambda s: s.key)]
    targets = training_targets(folder, resolution, bucketing)
    cut = np.array([touches_border(t) and not touches_border(w) for t, w in zip(targets, wholes)], dtype=np.float64)
    misread = np.array([analyse(t) != analyse(w) for t, w in zip(targets, wholes)], dtype=np.float64)
    return {"cut": bootstrap(np.mean, cut, bounds=(0, 1)), "misread": bootstrap(np.mean, misread, bounds=(0, 1))}
