"""Aspect-ratio buckets, as kohya's trainer makes and chooses them.

A photo collection is not square: Flickr30k is mostly 500x333 and 333x500. Instead of cutting
every image to a square, each is resized to cover the bucket whose aspect ratio is nearest its
own and centre-cropped to it, so a portrait keeps its top and bottom. The bucket list and the
choice follow kohya's `make_bucket_resolutions` and `BucketManager.select_bucket` number for
number (tests/test_buckets.py holds a golden table computed with kohya's code), so a user who
moves from kohya trains on the same pixels.

Sizes are (width, height), kohya's order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from t2i.errors import InvalidInput

Size = tuple[int, int]


def bucket_resolutions(max_reso: Size, min_size: int, max_size: int, step: int) -> list[Size]:
    """Every bucket of area at most max_reso's: the square, and for each width from min_size to
    max_size (in steps) the tallest height that fits the area, both ways round; sorted."""
    area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(area) // step) * step
    found = {(side, side)}
    for width in range(min_size, max_size + 1, step):
        height = min(max_size, (area // width) // step * step)
        if height >= min_size:
            found |= {(width, height), (height, width)}
    return sorted(found)


@dataclass(frozen=True)
class Placement:
    """Where one image goes: resized to `resized` (covering the bucket), then cropped to `bucket`."""

    bucket: Size
    resized: Size
    ar_error: float  # the bucket's aspect ratio minus the image's

    def crop_box(self, centering: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the bucket inside the resized image; centred as kohya's
        `trim_and_resize_if_required` (the spare pixels halved, rounding down), or at a random
        fraction of them for random crops."""
        spare_w, spare_h = self.resized[0] - self.bucket[0], self.resized[1] - self.bucket[1]
        left = spare_w // 2 if centering[0] == 0.5 else round(spare_w * centering[0])
        top = spare_h // 2 if centering[1] == 0.5 else round(spare_h * centering[1])
        return left, top, left + self.bucket[0], top + self.bucket[1]


def _ratio_error(width: int, height: int, aspect: float) -> float:
    return abs(width / height - aspect) if height else math.inf  # kohya divides by zero here


@dataclass(frozen=True)
class Bucketing:
    """kohya's bucket settings: `--max-reso` is (resolution, resolution)."""

    max_reso: Size
    min_size: int = 256
    max_size: int = 1024
    step: int = 64
    no_upscale: bool = False

    @property
    def resolutions(self) -> list[Size]:
        return bucket_resolutions(self.max_reso, self.min_size, self.max_size, self.step)

    def _round(self, x: float) -> int:
        whole = int(x + 0.5)
        return whole - whole % self.step

    def place(self, width: int, height: int) -> Placement:
        """The bucket an image of this size trains in, and the size it is resized to first."""
        aspect = width / height
        if not self.no_upscale:
            resolutions = self.resolutions
            bucket = (width, height)
            if bucket not in resolutions:  # the nearest aspect ratio; the first of equals, as numpy's argmin
                bucket = min(resolutions, key=lambda r: abs(r[0] / r[1] - aspect))
            # cover the bucket: match the side that leaves the other one at least as long as the bucket's
            scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            resized = (width, height)
            area = self.max_reso[0] * self.max_reso[1]
            if width * height > area:  # shrink to the area, rounding whichever side keeps the aspect better
                shrunk_w = math.sqrt(area * aspect)
                shrunk_h = area / shrunk_w
                by_width = self._round(shrunk_w)
                by_height = self._round(shrunk_h)
                width_error = _ratio_error(by_width, self._round(by_width / aspect), aspect)
                height_error = _ratio_error(self._round(by_height * aspect), by_height, aspect)
                if width_error < height_error:
                    resized = (by_width, int(by_width / aspect + 0.5))
                else:
                    resized = (int(by_height * aspect + 0.5), by_height)
            bucket = (resized[0] - resized[0] % self.step, resized[1] - resized[1] % self.step)
        return Placement(bucket, resized, bucket[0] / bucket[1] - aspect if bucket[1] else math.inf)


def place_all(bucketing: Bucketing, sizes: dict[str, Size]) -> dict[str, Placement]:
    """key -> placement for every image; an image that no-upscale would crop to nothing is refused."""
    placements = {}
    for key, (width, height) in sizes.items():
        placement = bucketing.place(width, height)
        if min(placement.bucket) < bucketing.step:
            raise InvalidInput(f"image {key} is {width}x{height}, smaller than the smallest bucket "
                               f"({bucketing.step}x{bucketing.step}) with --bucket-no-upscale", field="data",
                               value=key, hint="drop {bucket_no_upscale} (small images are then upscaled), "
                                               "or remove the image")
        placements[key] = placement
    return placements


def bucket_info(placements: list[Placement]) -> dict:
    """kohya's `ss_bucket_info`: the buckets in use, sorted, numbered from 0, with their image counts,
    and the mean absolute aspect-ratio error."""
    counts: dict[Size, int] = {}
    for placement in placements:
        counts[placement.bucket] = counts.get(placement.bucket, 0) + 1
    buckets = {index: {"resolution": list(size), "count": counts[size]} for index, size in enumerate(sorted(counts))}
    error = sum(abs(p.ar_error) for p in placements) / len(placements) if placements else 0
    return {"buckets": buckets, "mean_img_ar_error": error}


def smallest_step(vae_scale_factor: int, unet_down_blocks: int) -> int:
    """The pixel step every bucket side must be a multiple of: a latent pixel is vae_scale_factor
    pixels, and the UNet halves the latent (down_blocks - 1) times. 64 for SD 1.x."""
    return vae_scale_factor * 2 ** (unet_down_blocks - 1)


def check_step(step: int, smallest: int) -> None:
    if step % smallest:
        valid = ", ".join(str(smallest * k) for k in range(1, 5))
        raise InvalidInput(f"this model's downsampling needs bucket sides in multiples of {smallest}",
                           field="bucket_step", value=step, hint=f"use one of {valid}, ...")


class BucketBatches:
    """One epoch's batches, each from one bucket: kohya's order (every bucket cut into
    ceil(n / batch) batches, the batches shuffled together), seeded by (seed, epoch) so a resumed
    run draws the same ones. Ranks take every world-th batch of the list, padded by wrapping so that
    each gets the same number."""

    def __init__(self, buckets: list[Size], batch_size: int, seed: int, world: int = 1):
        self.buckets, self.batch_size, self.seed, self.world = buckets, batch_size, seed, world
        self.members: dict[Size, list[int]] = {}
        for index, bucket in enumerate(buckets):
            self.members.setdefault(bucket, []).append(index)

    def epoch(self, epoch: int) -> list[list[int]]:
        """Every batch of the epoch, in its order, before sharding."""
        rng = random.Random(f"{self.seed}/{epoch}/buckets")
        batches = []
        for bucket in sorted(self.members):
            members = list(self.members[bucket])
            rng.shuffle(members)
            batches += [members[i:i + self.batch_size] for i in range(0, len(members), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def per_rank(self) -> int:
        """Batches each rank draws in an epoch."""
        total = sum(-(-len(m) // self.batch_size) for m in self.members.values())
        return -(-total // self.world)

    def for_rank(self, epoch: int, rank: int) -> list[list[int]]:
        batches = self.epoch(epoch)
        padded = (batches * -(-self.per_rank() * self.world // len(batches)))[:self.per_rank() * self.world]
        return padded[rank::self.world]
