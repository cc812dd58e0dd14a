"""A held-out loss that compares across steps and across runs.

The training loss is noisy (new images, noise and timesteps every step) and never sees held-out
images. This one is computed on the same held-out images, captions, noise and timesteps every
time: the images of the validation split (capped), each with its first caption and no dropout,
the VAE mean (no latent sampling), noise from a fixed seed that no training setting changes, and
timesteps spread evenly over the schedule (a stratified estimate of the expected loss over t). It
is the plain epsilon (or v) MSE, without Min-SNR weighting, so runs trained with and without it
still compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from t2i.data.sources import read_collection, select_split
from t2i.data.training_set import CENTRE, Augment, check_images, pixels
from t2i.errors import InvalidInput
from t2i.train.config import FinetuneConfig
from t2i.train.step import seed_for

NOISE_SEED = seed_for("t2i validation loss")  # never derived from --seed: runs with other seeds compare


@dataclass(frozen=True)
class HeldOut:
    latents: torch.Tensor  # (N, 4, h, w), scaled as the UNet sees them
    text: torch.Tensor  # (N, 77, width)
    noise: torch.Tensor
    timesteps: torch.Tensor  # (N,), spread evenly over the schedule

    def __len__(self) -> int:
        return len(self.latents)


@torch.no_grad()
def held_out_set(config: FinetuneConfig, pipe, scheduler, device) -> HeldOut:
    """Encode the held-out images once, at set-up; the noise and timesteps are fixed with them."""
    layout, samples = read_collection(config.data, config.data_format)
    held = select_split(samples, config.validation_split, config.val_fraction, config.seed)
    readable, _ = check_images(held)
    if not readable:
        raise InvalidInput(f"the {layout} layout has no readable {config.validation_split!r} images for the "
                           "validation loss", field="validation_split", value=config.validation_split,
                           hint="hold some out with {val_fraction} (e.g. 0.1), or name another split")
    chosen = sorted(readable, key=lambda s: s.key)[:config.validation_images]
    augment = Augment(config.resolution)
    latents, texts = [], []
    for start in range(0, len(chosen), 8):
        part = chosen[start:start + 8]
        batch = torch.stack([pixels(s, augment, CENTRE, False) for s in part]).to(device, pipe.vae.dtype)
        latents.append(pipe.vae.encode(batch).latent_dist.mean.float() * pipe.vae.config.scaling_factor)
        ids = pipe.tokenizer([s.captions[0] for s in part], padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        texts.append(pipe.text_encoder(ids.to(device))[0])
    latent_batch = torch.cat(latents)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.randn(latent_batch.shape, generator=generator).to(device)
    steps = scheduler.config.num_train_timesteps
    timesteps = ((torch.arange(len(latent_batch)) + 0.5) * steps / len(latent_batch)).long().clamp(max=steps - 1)
    timesteps = timesteps.to(device)
    return HeldOut(latent_batch, torch.cat(texts), noise, timesteps)


@torch.no_grad()
def validation_loss(unet, held: HeldOut, scheduler, autocast, batch_size: int = 8) -> float:
    """The mean held-out MSE of `unet` (which is left in the mode it was in)."""
    training = unet.training
    unet.eval()
    total = 0.0
    dtype = next(unet.parameters()).dtype
    for start in range(0, len(held), batch_size):
        part = slice(start, start + batch_size)
        latents, noise, timesteps = held.latents[part], held.noise[part], held.timesteps[part]
        noisy = scheduler.add_noise(latents, noise, timesteps)
        epsilon = scheduler.config.prediction_type == "epsilon"
        target = noise if epsilon else scheduler.get_velocity(latents, noise, timesteps)
        with autocast():
            prediction = unet(noisy.to(dtype), timesteps, held.text[part].to(dtype)).sample
        total += F.mse_loss(prediction.float(), target.float(), reduction="sum").item() / latents[0].numel()
    unet.train(training)
    return total / len(held)
