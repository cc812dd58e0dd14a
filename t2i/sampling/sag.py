"""Self-Attention Guidance (Hong et al. 2023), for every sampler.

SAG blurs the parts of the predicted clean image that the mid block's self-attention attends to most,
noises that back to the current step, and guides away from what the UNet predicts there:
out = out + scale * (out_ref - out_degraded), where out_ref is the prediction for the reference half of
the batch (the unconditional one under CFG, else the conditional one). diffusers' SAG pipeline is
deprecated and refuses the Euler family; here SAG runs inside the call's own copy of the UNet, in the
UNet's own (variance-preserving) input space, so any sampler, LoRA, IP-Adapter and ControlNet combine with it:
- the mid block's first self-attention stores its attention map as it runs (the same softmax diffusers'
  attention computes, `get_attention_scores`);
- its mask: keys that receive more than `threshold` of attention summed over queries, mean over heads
  (each query's row sums to 1, so 1.0 is "more than the average key"), at the mid block's size, widened
  to the latent's (nearest), as diffusers' SAG pipeline and A1111's SAG extension compute it;
- noise level: t2i.sampling.noise_level (the sampler's own sigma, or the schedule at the timestep).
Adding the same correction to every part of the batch adds it once to the guided result whatever the
CFG scale, since CFG is uncond + cfg * (cond - uncond).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from t2i.sampling.noise_level import alpha_bar, clean_and_noise

DEFAULT_SCALE = 0.75  # diffusers' and A1111's SAG extension's default when it is on
DEFAULT_THRESHOLD = 1.0
DEFAULT_BLUR_SIGMA = 1.0  # diffusers' pipeline and A1111's extension: a 9-tap kernel at sigma 1


def blur(latents: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur over +-4 sigma (9 taps at sigma 1, as diffusers' SAG), reflecting at the edges; the
    kernel is kept inside what a small latent can reflect."""
    half = min(math.ceil(4 * sigma), latents.shape[-1] - 1, latents.shape[-2] - 1)
    offsets = torch.arange(-half, half + 1, dtype=torch.float32, device=latents.device)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.sum()).to(latents.dtype)
    kernel = torch.outer(weights, weights).expand(latents.shape[1], 1, 2 * half + 1, 2 * half + 1)
    padded = F.pad(latents, [half] * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=latents.shape[1])


def attention_mask(maps: torch.Tensor, heads: int, map_size: tuple[int, int], latent_size: tuple[int, int],
                   threshold: float) -> torch.Tensor:
    """(B, 1, H, W) float mask from (B * heads, queries, keys) attention probabilities."""
    batch = maps.shape[0] // heads
    received = maps.reshape(batch, heads, maps.shape[1], maps.shape[2]).mean(1).sum(1)  # per key
    mask = (received > threshold).reshape(batch, 1, *map_size).to(maps.dtype)
    return F.interpolate(mask, latent_size)  # nearest


class StoringSelfAttention:
    """The mid block's self-attention, computed with explicit probabilities, which it keeps for the mask."""

    def __init__(self):
        self.maps: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(hidden_states))
        probabilities = attn.get_attention_scores(query, key, attention_mask)
        self.maps = probabilities.detach()
        out = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@dataclass
class SagState:
    scale: float
    threshold: float
    blur_sigma: float
    chunks: int  # parts of the batch: 2 under CFG ([uncond, cond]), else 1
    scheduler: Any  # the call's diffusers scheduler: its sigmas, step index and alphas_cumprod
    store: StoringSelfAttention = field(default_factory=StoringSelfAttention)
    last_mask: torch.Tensor | None = None  # the latest mask, for tests and curious users


def _first(value, count: int, total: int):
    """The reference part of a batched UNet argument (tensors, lists and dicts of them)."""
    if torch.is_tensor(value):
        return value[:count] if value.dim() > 0 and value.shape[0] == total else value
    if isinstance(value, (list, tuple)):
        return type(value)(_first(v, count, total) for v in value)
    if isinstance(value, dict):
        return {k: _first(v, count, total) for k, v in value.items()}
    return value


def _mid_size(unet, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The mid block's map size: the latent halved (rounding up) by each downsampling block."""
    height, width = latent_size
    for block in unet.down_blocks:
        if getattr(block, "downsamplers", None):
            height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def _guided_forward(unet, state: SagState, sample, timestep, encoder_hidden_states, *args, **kwargs):
    forward = partial(type(unet).forward, unet)
    as_tuple = not kwargs.pop("return_dict", True)
    output = forward(sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
    total = sample.shape[0]
    count = total // state.chunks
    assert state.store.maps is not None
    heads = unet.mid_block.attentions[0].transformer_blocks[0].attn1.heads
    mask = attention_mask(state.store.maps[:count * heads], heads, _mid_size(unet, sample.shape[-2:]),
                          tuple(sample.shape[-2:]), state.threshold)
    state.last_mask = mask
    alpha = alpha_bar(state.scheduler, timestep, sample.dtype, sample.device)
    x, out = sample[:count], output[:count]
    clean, noise = clean_and_noise(x, out, alpha, state.scheduler.config.prediction_type)
    degraded_clean = blur(clean, state.blur_sigma) * mask + clean * (1 - mask)
    degraded = alpha.sqrt() * degraded_clean + (1 - alpha).sqrt() * noise
    args = tuple(_first(a, count, total) for a in args)
    kwargs = _first(kwargs, count, total)
    again = forward(degraded, _first(timestep, count, total), _first(encoder_hidden_states, count, total), *args,
                    return_dict=False, **kwargs)[0]
    guided = output + (state.scale * (out - again)).repeat(state.chunks, *([1] * (output.dim() - 1)))
    if as_tuple:
        return (guided,)
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    return UNet2DConditionOutput(sample=guided)


def check_model(unet) -> None:
    """SAG reads the mid block's self-attention: a UNet without one cannot have it."""
    from t2i.errors import check

    attentions = getattr(unet.mid_block, "attentions", None)
    check(bool(attentions), "sag_scale", None, "this model's mid block has no attention for SAG to read",
          hint="use PAG (--pag-scale) instead")


def self_attention_guided(unet, scale: float, threshold: float, blur_sigma: float, cfg: bool, scheduler) -> SagState:
    """Make `unet` (a per-call copy) guide itself by SAG: its mid block's first self-attention keeps its map,
    and its forward runs the degraded pass and adds the correction. Returns the state (its last mask)."""
    state = SagState(scale, threshold, blur_sigma, 2 if cfg else 1, scheduler)
    unet.mid_block.attentions[0].transformer_blocks[0].attn1.set_processor(state.store)
    unet.forward = partial(_guided_forward, unet, state)
    unet.sag_state = state
    return state
