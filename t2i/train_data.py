"""What the training loop eats: pixels or cached latents, captions or cached text embeddings.

Every random choice of a draw (which caption, caption dropout, flip, crop) is a function of
(seed, epoch, index), never of a global RNG: the same run gives the same batches in any number
of DataLoader workers, and a resumed run picks up exactly where the killed one stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from t2i.data_sources import Sample


# what a missing, empty, truncated or non-image file raises when read
UNREADABLE = (OSError, ValueError, KeyError, zipfile.BadZipFile, Image.DecompressionBombError)


@dataclass(frozen=True)
class Augment:
    resolution: int
    random_crop: bool = False
    flip: bool = False  # random horizontal flip
    caption_dropout: float = 0.1  # share of draws trained on "" so classifier-free guidance works


def draw_rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{epoch}/{index}")


def read_rgb(sample: Sample) -> Image.Image:
    """Decode any common image to 8-bit RGB: EXIF rotation applied, alpha put on white."""
    if sample.member is not None:
        with zipfile.ZipFile(sample.path) as archive:
            image = Image.open(io.BytesIO(archive.read(sample.member)))
            image.load()
    else:
        image = Image.open(sample.path)
        image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale, do not clip at 255
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array / max(array.max(), 1) * 255, 0, 255).astype(np.uint8))
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def crop_box(size: tuple[int, int], resolution: int, random_crop: bool, rng: random.Random) -> tuple[int, ...]:
    """The square crop (left, top, right, bottom) after resizing the short side to `resolution`."""
    width, height = size
    scale = resolution / min(width, height)
    width, height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    left = rng.randint(0, width - resolution) if random_crop else (width - resolution) // 2
    top = rng.randint(0, height - resolution) if random_crop else (height - resolution) // 2
    return width, height, left, top


def pixels(sample: Sample, augment: Augment, box: tuple[int, ...], flip: bool) -> torch.Tensor:
    """The sample as a (3, R, R) tensor in [-1, 1]."""
    width, height, left, top = box
    image = read_rgb(sample).resize((width, height), Image.BICUBIC)
    image = image.crop((left, top, left + augment.resolution, top + augment.resolution))
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def weights_fingerprint(*modules) -> str:
    """Identity of frozen weights, so a cache built for one model is never used with another."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class TensorCache:
    """Tensors on disk under a content key: one safetensors file each, written atomically."""

    def __init__(self, folder: Path):
        self.folder = folder

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path(key))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, suffix=".part")
        os.close(fd)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, final)


def image_key(sample: Sample, augment: Augment, box, flip: bool, vae_id: str) -> str:
    stat = sample.path.stat()
    return TensorCache.key("latent", vae_id, str(sample.path), sample.member, stat.st_size, stat.st_mtime_ns,
                           augment.resolution, box, flip)


def text_key(caption: str, text_id: str) -> str:
    return TensorCache.key("text", text_id, caption)


class TrainingSet(torch.utils.data.Dataset):
    """Indexed by (epoch, index) pairs from `EpochSampler`; returns one training example.

    With a cache (`vae_id`/`text_id` set), examples hold `latent_mean`/`latent_std` and `text`
    embeddings read from disk; without one, `pixels` and `input_ids` for the frozen models.
    """

    def __init__(self, samples: list[Sample], augment: Augment, seed: int, tokenizer,
                 cache: TensorCache | None = None, vae_id: str = "", text_id: str = ""):
        self.samples, self.augment, self.seed, self.tokenizer = samples, augment, seed, tokenizer
        self.cache, self.vae_id, self.text_id = cache, vae_id, text_id
        self._sizes: dict[str, tuple[int, int]] = {}  # image headers are read once, not on every draw

    def __len__(self) -> int:
        return len(self.samples)

    def draw(self, epoch: int, index: int) -> tuple[Sample, str, tuple, bool]:
        """What the (epoch, index) draw uses: sample, caption, crop box, flip."""
        sample = self.samples[index]
        rng = draw_rng(self.seed, epoch, index)
        caption = "" if rng.random() < self.augment.caption_dropout else rng.choice(sample.captions)
        flip = self.augment.flip and rng.random() < 0.5
        size = self._sizes.get(sample.key) or self._sizes.setdefault(sample.key, _image_size(sample))
        return sample, caption, crop_box(size, self.augment.resolution, self.augment.random_crop, rng), flip

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        sample, caption, box, flip = self.draw(*item)
        if self.cache is None:
            ids = self.tokenizer(caption, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids[0]
            return {"pixels": pixels(sample, self.augment, box, flip), "input_ids": ids}
        latent = self.cache.get(image_key(sample, self.augment, box, flip, self.vae_id))
        return {"latent_mean": latent["mean"], "latent_std": latent["std"],
                "text": self.cache.get(text_key(caption, self.text_id))["text"]}


def _image_size(sample: Sample) -> tuple[int, int]:
    """Size as displayed (after EXIF rotation), from the header alone."""
    if sample.member is not None:
        with zipfile.ZipFile(sample.path) as archive:
            image = Image.open(io.BytesIO(archive.read(sample.member)))
    else:
        image = Image.open(sample.path)
    with image:
        rotated = image.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap width and height
        return image.size[::-1] if rotated else image.size


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


def _latent_keys(sample: Sample, augment: Augment, vae_id: str) -> list[tuple[str, tuple, bool]]:
    box = crop_box(_image_size(sample), augment.resolution, False, random.Random(0))
    return [(image_key(sample, augment, box, flip, vae_id), box, flip) for flip in ((False, True) if augment.flip
                                                                                   else (False,))]


@torch.no_grad()
def build_cache(samples: list[Sample], augment: Augment, cache: TensorCache, vae, text_encoder, tokenizer,
                vae_id: str, text_id: str, rank: int = 0, world: int = 1, progress=None,
                batch_size: int = 32) -> dict[str, str]:
    """Encode this rank's share of the missing latents and caption embeddings, once.

    Entries already cached under the same key (same file, crop, flip, resolution and frozen
    weights) are reused. Returns {key: reason} for the images this rank could not read; which
    samples are usable is then read off the cache by `cached_samples`, the same on every rank.
    """
    unreadable = {}
    device, dtype = vae.device, vae.dtype
    pending: list[tuple[str, torch.Tensor]] = []  # (key, pixels), encoded in batches

    def encode_pending() -> None:
        dist = vae.encode(torch.stack([p for _, p in pending]).to(device, dtype)).latent_dist
        for (key, _), mean, std in zip(pending, dist.mean, dist.std):
            cache.put(key, {"mean": mean, "std": std})
        pending.clear()

    for position, sample in enumerate(samples):
        if position % world == rank:
            try:
                pending += [(key, pixels(sample, augment, box, flip))
                            for key, box, flip in _latent_keys(sample, augment, vae_id) if key not in cache]
            except UNREADABLE as exc:
                unreadable[sample.key] = f"{type(exc).__name__}: {exc}"
            if len(pending) >= batch_size:
                encode_pending()
        if progress:
            progress()
    if pending:
        encode_pending()
    captions = sorted({""} | {c for s in samples for c in s.captions})
    todo = [c for i, c in enumerate(captions) if i % world == rank and text_key(c, text_id) not in cache]
    for start in range(0, len(todo), 64):
        chunk = todo[start:start + 64]
        ids = tokenizer(chunk, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        for caption, embedding in zip(chunk, text_encoder(ids)[0]):
            cache.put(text_key(caption, text_id), {"text": embedding})
    return unreadable


def cached_samples(samples: list[Sample], augment: Augment, cache: TensorCache, vae_id: str) -> list[Sample]:
    """The samples whose every latent is in the cache."""
    good = []
    for sample in samples:
        try:
            if all(key in cache for key, _, _ in _latent_keys(sample, augment, vae_id)):
                good.append(sample)
        except UNREADABLE:
            pass
    return good


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) for this rank's share of a seeded per-epoch permutation.

    Each epoch is padded by wrapping around so every rank gets the same number of full batches;
    `start` skips the first draws of the epoch (resume).
    """

    def __init__(self, size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, batch_size: int = 1,
                 start: int = 0):
        self.size, self.seed, self.epoch, self.rank, self.world = size, seed, epoch, rank, world
        self.batch_size, self.start = batch_size, start

    @staticmethod
    def draws_per_rank(size: int, world: int, batch_size: int) -> int:
        chunk = world * batch_size
        return -(-size // chunk) * batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        per_rank = self.draws_per_rank(self.size, self.world, self.batch_size)
        padded = (order * -(-per_rank * self.world // self.size))[:per_rank * self.world]
        return iter([(self.epoch, index) for index in padded[self.rank::self.world][self.start:]])

    def __len__(self) -> int:
        return self.draws_per_rank(self.size, self.world, self.batch_size) - self.start
