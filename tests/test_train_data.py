"""Training inputs: every image mode decodes right, bad files are skipped, draws are reproducible,
and the latent/text cache is reused exactly when its key matches."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.cache import TensorCache, build_cache, cached_samples
from t2i.data.sources import Sample
from t2i.data.training_set import CENTRE, Augment, EpochSampler, TrainingSet, check_images, image_key, read_rgb
from t2i.models.presets import tiny_components


def sample(path, *captions):
    return Sample(Path(path).name, Path(path), captions or ("a caption",))


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (255, 255, 255)),  # transparent -> white background
    (lambda: Image.new("RGBA", (8, 8), (0, 0, 255, 255)), (0, 0, 255)),
    (lambda: Image.new("L", (8, 8), 128), (128, 128, 128)),
    (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
    (lambda: Image.new("RGB", (8, 8), (0, 204, 0)).convert("P"), (0, 204, 0)),  # a web-palette colour
    (lambda: Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), (255, 255, 255)),  # 16-bit: not clipped
    (lambda: Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), (255, 255, 255)),
])
def test_every_image_mode_becomes_8_bit_rgb(tmp_path, make, expected):
    image = make()
    path = tmp_path / ("x.tif" if image.mode == "CMYK" else "x.png")
    image.save(path)
    rgb = read_rgb(sample(path))
    assert rgb.mode == "RGB" and rgb.getpixel((3, 3)) == expected


def test_16_bit_gradients_keep_their_shape(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 16, dtype=np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    row = np.asarray(read_rgb(sample(tmp_path / "ramp.png")))[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) > 0)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), "black")
    image.paste((255, 0, 0), (0, 0, 5, 10))  # red strip on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    shown = read_rgb(sample(tmp_path / "rotated.jpg"))
    assert shown.size == (10, 20)
    assert shown.getpixel((5, 1))[0] > 200  # the strip is now at the top


def test_bad_files_are_skipped_and_counted(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16)).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (64, 64)).save(tmp_path / "full.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    samples = [sample(tmp_path / n) for n in ("good.png", "empty.png", "text.png", "truncated.jpg", "missing.png")]
    kept, skipped = check_images(samples)
    assert [s.key for s in kept] == ["good.png"]
    assert sorted(skipped) == ["empty.png", "missing.png", "text.png", "truncated.jpg"]


class Echo(torch.utils.data.Dataset):
    def __getitem__(self, item):
        return torch.tensor(item)


def test_sampler_shards_cover_the_epoch_and_resume_mid_epoch():
    from accelerate.data_loader import skip_first_batches

    full = list(EpochSampler(10, seed=1, epoch=0, rank=0, world=1, batch_size=2))
    assert sorted(i for _, i in full) == list(range(10))
    loader = torch.utils.data.DataLoader(Echo(), batch_size=2, sampler=EpochSampler(10, seed=1, epoch=0, batch_size=2))
    resumed = [pair.tolist() for batch in skip_first_batches(loader, 2) for pair in batch]
    assert resumed == [list(pair) for pair in full[4:]]  # what the trainer does on resume
    assert list(EpochSampler(10, seed=1, epoch=1, batch_size=2)) != full
    ranks = [list(EpochSampler(10, seed=1, epoch=0, rank=r, world=2, batch_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6  # padded to whole batches on every rank
    assert {i for r in ranks for _, i in r} == set(range(10)) and not set(ranks[0][:5]) & set(ranks[1][:5])


def test_draws_use_every_caption_and_drop_the_requested_share(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    captions = ("one", "two", "three", "four", "five")
    dataset = TrainingSet([sample(tmp_path / "x.png", *captions)], Augment(8, caption_dropout=0.2), seed=0,
                          tokenizer=None)
    drawn = Counter(dataset.draw(epoch, 0)[1] for epoch in range(2000))
    assert set(drawn) == set(captions) | {""}
    assert 0.17 < drawn[""] / 2000 < 0.23
    assert dataset.draw(7, 0) == dataset.draw(7, 0)


class CountingVAE(torch.nn.Module):
    """The tiny VAE, counting how many images it encodes."""

    def __init__(self, vae):
        super().__init__()
        self.vae, self.encoded = vae, 0
        self.config, self.device, self.dtype = vae.config, vae.device, vae.dtype

    def encode(self, pixels):
        self.encoded += len(pixels)
        return self.vae.encode(pixels)


def test_cache_is_reused_and_invalidated_by_its_key(tmp_path):
    parts = tiny_components()
    images = []
    for i in range(3):
        Image.new("RGB", (40, 32), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
        images.append(sample(tmp_path / f"{i}.png", f"caption {i}"))
    cache = TensorCache(tmp_path / "cache")
    vae = CountingVAE(parts["vae"])

    def build(augment, vae_id="vae-a"):
        build_cache(images, augment, cache, vae, parts["text_encoder"], parts["tokenizer"], vae_id, "text-a")
        return vae.encoded

    assert build(Augment(16)) == 3
    assert build(Augment(16)) == 3, "same keys: nothing re-encoded"
    assert build(Augment(16, flip=True)) == 6, "flipped views are new entries, the plain ones are reused"
    assert build(Augment(24)) == 9, "another resolution is another crop"
    assert build(Augment(16), vae_id="vae-b") == 12, "another VAE invalidates every latent"
    texts = len(list((tmp_path / "cache").rglob("*.safetensors"))) - 12
    assert texts == 4  # 3 captions and the empty one, computed once for all of the above
    damaged = cache.path(image_key(images[0], Augment(16), CENTRE, False, "vae-a"))
    damaged.write_bytes(damaged.read_bytes()[:40])  # a truncated entry (a killed writer, a full disk)
    assert build(Augment(16)) == 13, "a damaged entry is encoded again, not fatal"
    Image.new("RGB", (40, 32), "white").save(tmp_path / "1.png")  # the file changed on disk
    assert cached_samples(images, Augment(16), cache, "vae-a") == [images[0], images[2]]
    dataset = TrainingSet([images[0]], Augment(16, caption_dropout=0), 0, parts["tokenizer"], cache, "vae-a", "text-a")
    example = dataset[(0, 0)]
    assert example["latent_mean"].shape == (4, 8, 8) and example["text"].shape == (77, 32)
