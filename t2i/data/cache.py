"""The on-disk cache of VAE latents and text embeddings: each image and caption is encoded once.

Entries are keyed by everything that changes them (file, size, mtime, crop, flip, resolution and
the frozen weights' fingerprint), so a cache built for one model or crop is never used for another.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from t2i.data.training_set import CENTRE, image_key, pixels, text_key
from t2i.errors import first_line
from t2i.files import atomic_write
from t2i.formats.images import UNREADABLE

log = logging.getLogger("t2i")


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

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        """Whether an intact entry is there; a damaged one (a truncated file, say) is removed, so that
        it is encoded again rather than stopping a run."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return False
        try:
            with safe_open(path, framework="pt") as f:  # reads and checks the header against the file size
                f.keys()
            return True
        except Exception as exc:  # safetensors raises its own error type for every kind of damage
            log.warning("cache entry %s is damaged (%s): encoding it again", path.name, first_line(exc))
            path.unlink(missing_ok=True)
            return False

    def get(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path(key))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(final, lambda tmp: save_file(tensors, str(tmp)))


def _latent_keys(sample, augment, vae_id: str, placements=None) -> list[tuple[str, bool]]:
    flips = (False, True) if augment.flip else (False,)
    placement = placements[sample.key] if placements is not None else None
    return [(image_key(sample, augment, CENTRE, flip, vae_id, placement), flip) for flip in flips]


@torch.no_grad()
def build_cache(samples, augment, cache: TensorCache, vae, text_encoder, tokenizer, vae_id: str, text_id: str,
                rank: int = 0, world: int = 1, progress=None, batch_size: int = 32,
                placements=None) -> dict[str, str]:
    """Encode this rank's share of the missing latents and (when `text_id` is set) caption embeddings, once.

    Entries already cached under the same key are reused. With `placements`, each image is encoded
    in its bucket (images of one size are encoded together). Returns {key: reason} for the images
    this rank could not read; which samples are usable is then read off the cache by
    `cached_samples`, the same on every rank.
    """
    unreadable = {}
    device, dtype = vae.device, vae.dtype
    pending: dict[tuple, list[tuple[str, torch.Tensor]]] = {}  # image shape -> (key, pixels), encoded in batches

    def encode(group: list[tuple[str, torch.Tensor]]) -> None:
        dist = vae.encode(torch.stack([p for _, p in group]).to(device, dtype)).latent_dist
        for (key, _), mean, std in zip(group, dist.mean, dist.std):
            cache.put(key, {"mean": mean, "std": std})
        group.clear()

    for position, sample in enumerate(samples):
        if position % world == rank:
            placement = placements[sample.key] if placements is not None else None
            try:
                for key, flip in _latent_keys(sample, augment, vae_id, placements):
                    if key not in cache:
                        image = pixels(sample, augment, CENTRE, flip, placement)
                        pending.setdefault(tuple(image.shape), []).append((key, image))
            except UNREADABLE as exc:
                unreadable[sample.key] = f"{type(exc).__name__}: {exc}"
            for group in pending.values():
                if len(group) >= batch_size:
                    encode(group)
        if progress:
            progress()
    for group in pending.values():
        if group:
            encode(group)
    if text_id:
        _cache_captions(samples, cache, text_encoder, tokenizer, text_id, rank, world)
    return unreadable


def _cache_captions(samples, cache: TensorCache, text_encoder, tokenizer, text_id: str, rank: int, world: int):
    captions = sorted({""} | {c for s in samples for c in s.captions})
    todo = [c for i, c in enumerate(captions) if i % world == rank and text_key(c, text_id) not in cache]
    for start in range(0, len(todo), 64):
        chunk = todo[start:start + 64]
        ids = tokenizer(chunk, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(text_encoder.device)
        for caption, embedding in zip(chunk, text_encoder(ids)[0]):
            cache.put(text_key(caption, text_id), {"text": embedding})


def cached_samples(samples, augment, cache: TensorCache, vae_id: str, placements=None) -> list:
    """The samples whose every latent is in the cache."""
    good = []
    for sample in samples:
        try:
            if all(key in cache for key, _ in _latent_keys(sample, augment, vae_id, placements)):
                good.append(sample)
        except UNREADABLE:
            pass
    return good
