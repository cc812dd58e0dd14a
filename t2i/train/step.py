"""One training step's loss: the epsilon (or v) prediction MSE under the model's own noise schedule.

Noise, timesteps and the latent sample are drawn from a generator seeded by (seed, batch, rank),
never from a global RNG: that is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from t2i.train.config import FinetuneConfig


def seed_for(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def training_loss(unet, parts, config: FinetuneConfig, batch: dict, batch_index: int, rank: int,
                  accelerator) -> torch.Tensor:
    pipe, scheduler = parts.model.pipe, parts.noise_scheduler
    device, dtype = accelerator.device, pipe.vae.dtype
    generator = torch.Generator().manual_seed(seed_for(config.seed, "noise", batch_index, rank))
    with torch.no_grad():
        if "pixels" in batch:  # no cache: encode now
            dist = pipe.vae.encode(batch["pixels"].to(device, dtype)).latent_dist
            mean, std = dist.mean, dist.std
            text = pipe.text_encoder(batch["input_ids"].to(device))[0]
        else:
            mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
            text = batch["text"].to(device)
        eps = torch.randn(mean.shape, generator=generator).to(device, mean.dtype)
        latents = ((mean + std * eps) * pipe.vae.config.scaling_factor).float()
        noise = torch.randn(latents.shape, generator=generator).to(device)
        if config.noise_offset:
            offset = torch.randn(latents.shape[:2] + (1, 1), generator=generator).to(device)
            noise = noise + config.noise_offset * offset
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    with accelerator.autocast():
        prediction = unet(noisy.to(dtype), timesteps, text.to(dtype)).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.snr_gamma:
        snr = compute_snr(scheduler, timesteps)
        clipped = torch.clamp(snr, max=config.snr_gamma)
        per_sample = per_sample * (clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1))
    return per_sample.mean()
