"""What the training loop eats: pixels or cached latents, captions or cached text embeddings.

Every random choice of a draw (which caption, caption dropout, flip, crop) is a function of
(seed, epoch, index), never of a global RNG: the same run gives the same batches in any number
of DataLoader workers, and a resumed run picks up exactly where the killed one stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps

from t2i.data.buckets import Bucketing, Placement, Size, place_all
from t2i.data.sources import Sample
from t2i.formats.images import UNREADABLE, open_image, to_rgb

if TYPE_CHECKING:
    from t2i.data.cache import TensorCache

CENTRE = (0.5, 0.5)


@dataclass(frozen=True)
class Augment:
    resolution: int
    random_crop: bool = False
    flip: bool = False  # random horizontal flip
    caption_dropout: float = 0.1  # share of draws trained on "" so classifier-free guidance works


def draw_rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{epoch}/{index}")


def read_rgb(sample: Sample) -> Image.Image:
    """The sample's image as 8-bit RGB, decoded as init images are (t2i.formats.images)."""
    return to_rgb(open_image(sample.path, sample.member))


# EXIF orientations that turn the stored image a quarter turn: its upright size is the stored one swapped
QUARTER_TURNS = (5, 6, 7, 8)


def upright_size(sample: Sample) -> Size:
    """(width, height) as the image is trained on (EXIF orientation applied), from its header alone."""
    with open_image(sample.path, sample.member) as image:
        width, height = image.size
        turned = image.getexif().get(0x0112) in QUARTER_TURNS
    return (height, width) if turned else (width, height)


def place_samples(samples: list[Sample], bucketing: Bucketing) -> tuple[list[Sample], dict[str, Placement]]:
    """The samples whose header reads, and the bucket of each (kohya's choice from its upright size)."""
    sizes = {}
    for sample in samples:
        try:
            sizes[sample.key] = upright_size(sample)
        except UNREADABLE:
            pass  # counted as skipped with the other unreadable images
    return [s for s in samples if s.key in sizes], place_all(bucketing, sizes)


def _placed(image: Image.Image, augment: Augment, centering: tuple[float, float], flip: bool,
            placement: Placement | None) -> Image.Image:
    """Without a bucket, the largest square at `centering` resized to the resolution; in a bucket, resized
    to cover it and cropped to it as kohya does; mirrored when `flip`."""
    if placement is None:
        image = ImageOps.fit(image, (augment.resolution,) * 2, Image.Resampling.BICUBIC, centering=centering)
    else:
        image = image.resize(placement.resized, Image.Resampling.BICUBIC).crop(placement.crop_box(centering))
    return ImageOps.mirror(image) if flip else image


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def placed_image(sample: Sample, augment: Augment, centering: tuple[float, float], flip: bool,
                 placement: Placement | None = None) -> Image.Image:
    """The sample as it is trained: cropped, resized and flipped (`_placed`)."""
    return _placed(read_rgb(sample), augment, centering, flip, placement)


def pixels(sample: Sample, augment: Augment, centering: tuple[float, float], flip: bool,
           placement: Placement | None = None) -> torch.Tensor:
    """The sample as a (3, H, W) tensor in [-1, 1], placed (`_placed`)."""
    return _tensor(placed_image(sample, augment, centering, flip, placement)) * 2.0 - 1.0


def control_pixels(sample: Sample, augment: Augment, centering: tuple[float, float], flip: bool,
                   placement: Placement | None = None) -> torch.Tensor:
    """The sample's control image as a (3, H, W) tensor in [0, 1] (as ControlNets read them), stretched to
    the image's own size first, then cropped and flipped exactly as the image is."""
    assert sample.conditioning is not None  # samples without one are left out of ControlNet training
    size = read_rgb(sample).size  # upright, as the image is trained
    control = to_rgb(open_image(sample.conditioning)).resize(size, Image.Resampling.BICUBIC)
    return _tensor(_placed(control, augment, centering, flip, placement))


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def image_key(sample: Sample, augment: Augment, centering: tuple[float, float], flip: bool, vae_id: str,
              placement: Placement | None = None) -> str:
    stat = sample.path.stat()
    parts = ["latent", vae_id, str(sample.path), sample.member, stat.st_size, stat.st_mtime_ns, augment.resolution,
             centering, flip]
    if placement is not None:  # a bucket's latent differs from the square one (square keys stay as they were)
        parts += [placement.bucket, placement.resized]
    return cache_key(*parts)


def text_key(caption: str, text_id: str) -> str:
    return cache_key("text", text_id, caption)


class TrainingSet(torch.utils.data.Dataset):
    """Indexed by (epoch, index) pairs from `EpochSampler`; returns one training example.

    With a cache, examples hold `latent_mean`/`latent_std` read from disk, and `text` embeddings
    too when `text_id` is set; otherwise `pixels` and `input_ids` for the models to encode (a trained
    text encoder must see the tokens). With `placements` (sample key -> bucket), each image is
    trained in its bucket.
    """

    def __init__(self, samples: list[Sample], augment: Augment, seed: int, tokenizer,
                 cache: TensorCache | None = None, vae_id: str = "", text_id: str = "",
                 placements: dict[str, Placement] | None = None, controls: bool = False, references=None):
        self.samples, self.augment, self.seed, self.tokenizer = samples, augment, seed, tokenizer
        self.cache, self.vae_id, self.text_id, self.placements = cache, vae_id, text_id, placements
        self.controls = controls  # ControlNet training: each example carries its control image
        # IP-Adapter training: an image encoder's processor; each example carries the image as it reads it
        self.references = references

    def placement(self, index: int) -> Placement | None:
        return self.placements[self.samples[index].key] if self.placements is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def draw(self, epoch: int, index: int) -> tuple[Sample, str, tuple[float, float], bool]:
        """What the (epoch, index) draw uses: sample, caption, crop centering, flip."""
        sample = self.samples[index]
        rng = draw_rng(self.seed, epoch, index)
        caption = "" if rng.random() < self.augment.caption_dropout else rng.choice(sample.captions)
        flip = self.augment.flip and rng.random() < 0.5
        centering = (rng.random(), rng.random()) if self.augment.random_crop else CENTRE
        return sample, caption, centering, flip

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        sample, caption, centering, flip = self.draw(*item)
        placement = self.placement(item[1])
        example: dict[str, torch.Tensor] = {}
        if self.cache is None:
            example["pixels"] = pixels(sample, self.augment, centering, flip, placement)
        else:
            latent = self.cache.get(image_key(sample, self.augment, centering, flip, self.vae_id, placement))
            example |= {"latent_mean": latent["mean"], "latent_std": latent["std"]}
        if self.controls:  # read every draw (never cached): small next to the image, and cropped as it is
            example["control"] = control_pixels(sample, self.augment, centering, flip, placement)
        if self.references is not None:  # the image as trained (cropped, flipped), as the encoder reads it
            placed = placed_image(sample, self.augment, centering, flip, placement)
            example["reference"] = self.references(placed, return_tensors="pt").pixel_values[0]
        if self.cache is not None and self.text_id:
            example["text"] = self.cache.get(text_key(caption, self.text_id))["text"]
        else:
            example["input_ids"] = self.tokenizer(caption, padding="max_length", truncation=True,
                                                  max_length=self.tokenizer.model_max_length,
                                                  return_tensors="pt").input_ids[0]
        return example


def _readable(sample: Sample) -> str | None:
    """None if the image decodes, else why not (missing, empty, truncated, not an image)."""
    try:
        read_rgb(sample)
        return None
    except UNREADABLE as exc:
        return f"{type(exc).__name__}: {exc}"


def check_images(samples: list[Sample]) -> tuple[list[Sample], dict[str, str]]:
    """(readable samples, {key: reason} for the skipped ones)."""
    skipped = {s.key: reason for s in samples if (reason := _readable(s)) is not None}
    return [s for s in samples if s.key not in skipped], skipped


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) for this rank's share of a seeded per-epoch permutation.

    Each epoch is padded by wrapping around so every rank gets the same number of full batches.
    """

    def __init__(self, size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, batch_size: int = 1):
        self.size, self.seed, self.epoch, self.rank, self.world = size, seed, epoch, rank, world
        self.batch_size = batch_size

    @staticmethod
    def draws_per_rank(size: int, world: int, batch_size: int) -> int:
        chunk = world * batch_size
        return -(-size // chunk) * batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        per_rank = self.draws_per_rank(self.size, self.world, self.batch_size)
        padded = (order * -(-per_rank * self.world // self.size))[:per_rank * self.world]
        return iter([(self.epoch, index) for index in padded[self.rank::self.world]])

    def __len__(self) -> int:
        return self.draws_per_rank(self.size, self.world, self.batch_size)
