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
                  accelerator, text_encoder=None, controlnet=None, ip_adapter=None) -> torch.Tensor:
    """`text_encoder`: the (prepared) text encoder when it is trained; its gradients then flow.
    `controlnet`: the (prepared) ControlNet being trained; it reads the batch's control images and its
    residuals go into the frozen UNet (t2i.train.controlnet). `ip_adapter`: the (prepared) IP-Adapter
    layers being trained; the frozen image encoder embeds the batch's images (t2i.train.ip_adapter)."""
    pipe, scheduler = parts.model.pipe, parts.noise_scheduler
    device, dtype = accelerator.device, pipe.vae.dtype
    generator = torch.Generator().manual_seed(seed_for(config.seed, "noise", batch_index, rank))
    with torch.no_grad():
        if "pixels" in batch:  # no cache: encode now
            dist = pipe.vae.encode(batch["pixels"].to(device, dtype)).latent_dist
            mean, std = dist.mean, dist.std
        else:
            mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
        if "text" in batch:  # cached embeddings
            text = batch["text"].to(device)
        elif text_encoder is None:  # frozen: encoded now, without a graph
            text = pipe.text_encoder(batch["input_ids"].to(device))[0]
        eps = torch.randn(mean.shape, generator=generator).to(device, mean.dtype)
        latents = ((mean + std * eps) * pipe.vae.config.scaling_factor).float()
        noise = draw_noise(generator, latents.shape, config.noise_offset).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = prediction_target(scheduler, latents, noise, timesteps)
        if ip_adapter is not None:  # drawn after the rest: the other modes' draws are as they were
            from t2i.train.ip_adapter import drop_images

            encoder = parts.image_encoder.module
            embeds = encoder(batch["reference"].to(device, next(encoder.parameters()).dtype)).image_embeds
            embeds = drop_images(embeds, generator, config.ip_image_dropout)
    with accelerator.autocast():
        if text_encoder is not None:
            text = text_encoder(batch["input_ids"].to(device))[0]
        residuals = {}
        if controlnet is not None:
            down, mid = controlnet(noisy.to(dtype), timesteps, encoder_hidden_states=text.to(dtype),
                                   controlnet_cond=batch["control"].to(device, dtype), return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        if ip_adapter is not None:
            prediction = ip_adapter(unet, noisy.to(dtype), timesteps, text.to(dtype), embeds.to(dtype))
        else:
            prediction = unet(noisy.to(dtype), timesteps, text.to(dtype), **residuals).sample
    weights = min_snr_weights(scheduler, timesteps, config.snr_gamma) if config.snr_gamma else None
    return weighted_mse(prediction, target, weights)


def draw_noise(generator: torch.Generator, shape: torch.Size, noise_offset: float) -> torch.Tensor:
    """The training noise; with an offset, plus a per-channel constant (Guttenberg's noise offset, as
    the diffusers example adds it) so the model learns to shift an image's mean brightness."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(tuple(shape[:2]) + (1, 1), generator=generator)
    return noise


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon models) or the velocity (v-prediction models)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon targets and
    min(SNR, gamma) / (SNR + 1) for v targets."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights if weights is not None else per_sample).mean()
