"""ControlNet training: the loss of one batch, with the UNet, VAE and text encoder frozen.

The ControlNet starts as a copy of the UNet's encoder (`ControlNetModel.from_unet`) with zero-initialised
output convolutions, so before its first step it changes nothing. Each step noises the latents, lets the
ControlNet read the noisy latents, the caption and the control image, adds its residuals to the frozen
UNet's features and trains on the UNet's noise-prediction error (epsilon, or v for v-prediction models),
as diffusers' train_controlnet example does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SD_EMBEDDING = (16, 32, 96, 256)  # SD 1.x ControlNets' conditioning encoder: three halvings, 512 px to 64


def embedding_channels(vae_factor: int) -> tuple[int, ...]:
    """The conditioning encoder's widths for a VAE that shrinks images by `vae_factor` (a power of 2):
    SD's, one halving per factor of 2."""
    halvings = max(1, vae_factor.bit_length() - 1)
    return SD_EMBEDDING[:halvings] + (SD_EMBEDDING[-1],) if halvings < 3 else SD_EMBEDDING


def new_controlnet(unet, embedding_channels: tuple[int, ...], conditioning_channels: int = 3, seed: int = 0):
    """A ControlNet for `unet`: its encoder's weights, a conditioning encoder that reduces the control image
    to the latent size (2^(len(embedding_channels)-1) must be the VAE's factor) and zeroed outputs."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding_channels,
                                     conditioning_channels=conditioning_channels)


def controlnet_loss(controlnet, unet, noise_scheduler, latents: torch.Tensor, text: torch.Tensor,
                    controls: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The MSE of the frozen UNet's prediction with the ControlNet's residuals added. `controls` are the
    control images in [0, 1] (diffusers' ControlNet pipelines feed them unnormalised)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=controls, return_dict=False)
    prediction = unet(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid, return_dict=False)[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target.float())
