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

from t2i.data.buckets import Bucketing
from t2i.data.sources import read_collection, select_split
from t2i.data.training_set import CENTRE, Augment, check_images, control_pixels, pixels, place_samples, placed_image
from t2i.errors import InvalidInput
from t2i.train.config import FinetuneConfig
from t2i.train.step import seed_for

NOISE_SEED = seed_for("t2i validation loss")  # never derived from --seed: runs with other seeds compare


@dataclass(frozen=True)
class HeldOutGroup:
    """Held-out images of one size (all of them without buckets; one bucket's with them)."""

    latents: torch.Tensor  # (n, 4, h, w), scaled as the UNet sees them
    input_ids: torch.Tensor  # (n, 77): a trained text encoder encodes them afresh each time
    text: torch.Tensor  # (n, 77, width), from the frozen text encoder
    noise: torch.Tensor
    timesteps: torch.Tensor  # (n,)
    controls: torch.Tensor | None = None  # (n, 3, H, W) in [0, 1], when a ControlNet is trained
    image_embeds: torch.Tensor | None = None  # (n, width): each image's own embedding, when an IP-Adapter is trained


@dataclass(frozen=True)
class HeldOut:
    groups: list[HeldOutGroup]

    def __len__(self) -> int:
        return sum(len(g.latents) for g in self.groups)


@torch.no_grad()
def held_out_set(config: FinetuneConfig, pipe, scheduler, device, bucketing: Bucketing | None = None,
                 encoder=None) -> HeldOut:
    """Encode the held-out images once, at set-up; the noise and timesteps are fixed with them. With
    buckets, each image is encoded in its own bucket, as it would have been trained; with `encoder` (an
    IP-Adapter run's t2i.models.image_encoder.LoadedEncoder), each image is also its own reference."""
    layout, samples = read_collection(config.data, config.data_format, config.control_column)
    held = select_split(samples, config.validation_split, config.val_fraction, config.seed)
    if config.controlnet:
        held = [s for s in held if s.conditioning is not None]
    readable, _ = check_images(held)
    if not readable:
        raise InvalidInput(f"the {layout} layout has no readable {config.validation_split!r} images for the "
                           "validation loss", field="validation_split", value=config.validation_split,
                           hint="hold some out with {val_fraction} (e.g. 0.1), or name another split")
    chosen = sorted(readable, key=lambda s: s.key)[:config.validation_images]
    placements = None
    if bucketing is not None:
        chosen, placements = place_samples(chosen, bucketing)
    steps = scheduler.config.num_train_timesteps
    # timesteps spread evenly over the schedule across all the images, in name order
    spread = ((torch.arange(len(chosen)) + 0.5) * steps / len(chosen)).long().clamp(max=steps - 1)
    by_size: dict[tuple, list[int]] = {}
    for index, sample in enumerate(chosen):
        by_size.setdefault(placements[sample.key].bucket if placements else (), []).append(index)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    augment = Augment(config.resolution)
    groups = []
    for members in by_size.values():
        latents, ids, texts, controls, embeds = [], [], [], [], []
        for start in range(0, len(members), 8):
            part = [chosen[i] for i in members[start:start + 8]]
            batch = torch.stack([pixels(s, augment, CENTRE, False, placements[s.key] if placements else None)
                                 for s in part]).to(device, pipe.vae.dtype)
            latents.append(pipe.vae.encode(batch).latent_dist.mean.float() * pipe.vae.config.scaling_factor)
            tokens = pipe.tokenizer([s.captions[0] for s in part], padding="max_length", truncation=True,
                                    max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
            ids.append(tokens)
            if config.controlnet:
                controls += [control_pixels(s, augment, CENTRE, False, placements[s.key] if placements else None)
                             for s in part]
            texts.append(pipe.text_encoder(tokens.to(device))[0])
            if encoder is not None:
                shown = encoder.processor([placed_image(s, augment, CENTRE, False) for s in part],
                                          return_tensors="pt").pixel_values
                embeds.append(encoder.module(shown.to(device, next(encoder.module.parameters()).dtype)).image_embeds)
        latent_batch = torch.cat(latents)
        noise = torch.randn(latent_batch.shape, generator=generator).to(device)
        groups.append(HeldOutGroup(latent_batch, torch.cat(ids), torch.cat(texts), noise,
                                   spread[members].to(device), torch.stack(controls).to(device) if controls else None,
                                   torch.cat(embeds) if embeds else None))
    return HeldOut(groups)


@torch.no_grad()
def validation_loss(unet, held: HeldOut, scheduler, autocast, text_encoder=None, controlnet=None,
                    batch_size: int = 8) -> float:
    """The mean held-out MSE of `unet` (which is left in the mode it was in); with `text_encoder` (a
    trained one), the captions are encoded by it now; with `controlnet`, its residuals go into the UNet."""
    training = unet.training, controlnet.training if controlnet is not None else False
    unet.eval()
    if controlnet is not None:
        controlnet.eval()
    total = 0.0
    dtype = next(unet.parameters()).dtype
    epsilon = scheduler.config.prediction_type == "epsilon"
    for group in held.groups:
        for start in range(0, len(group.latents), batch_size):
            part = slice(start, start + batch_size)
            latents, noise, timesteps = group.latents[part], group.noise[part], group.timesteps[part]
            noisy = scheduler.add_noise(latents, noise, timesteps)
            target = noise if epsilon else scheduler.get_velocity(latents, noise, timesteps)
            with autocast():
                text = group.text[part] if text_encoder is None else \
                    text_encoder(group.input_ids[part].to(latents.device))[0]
                residuals = {}
                if controlnet is not None and group.controls is not None:
                    down, mid = controlnet(noisy.to(dtype), timesteps, encoder_hidden_states=text.to(dtype),
                                           controlnet_cond=group.controls[part].to(dtype), return_dict=False)
                    residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
                if group.image_embeds is not None:  # an IP-Adapter in training reads each image itself
                    residuals = {"added_cond_kwargs": {"image_embeds": [group.image_embeds[part][:, None].to(dtype)]}}
                prediction = unet(noisy.to(dtype), timesteps, text.to(dtype), **residuals).sample
            total += F.mse_loss(prediction.float(), target.float(), reduction="sum").item() / latents[0].numel()
    unet.train(training[0])
    if controlnet is not None:
        controlnet.train(training[1])
    return total / len(held)
