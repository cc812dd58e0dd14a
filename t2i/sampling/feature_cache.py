"""DeepCache-style feature reuse: most denoising steps run only the UNet's outermost level.

Between neighbouring steps, the UNet's deep features change little (Ma et al., "DeepCache", 2023).
Every `interval`-th UNet call runs whole and keeps what enters the last up block; the calls between
run only the first down block and the last up block, on that kept input and their own fresh skip
connections. The UNet's weights and modules are the loaded model's: the wrapper is a per-call
shallow copy whose own list of up blocks holds a recording copy of the last one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from t2i.errors import InvalidInput


@dataclass
class FeatureCache:
    interval: int
    calls: int = 0
    deep: torch.Tensor | None = None  # what entered the last up block at the last whole call

    def reset(self) -> None:
        """Forget the kept features: a new batch starts from pure noise."""
        self.calls, self.deep = 0, None


def _check_supported(unet) -> None:
    config = unet.config
    plain_sd = (config.class_embed_type is None and config.addition_embed_type is None
                and config.time_embedding_act_fn is None and not config.center_input_sample
                and unet.encoder_hid_proj is None and len(unet.down_blocks) >= 2)
    if not plain_sd:
        raise InvalidInput("feature reuse runs SD 1.x-style UNets only (no class or added embeddings)",
                           field="cache_interval", value=None, hint="leave {cache_interval} at 1")


def _block_kwargs(block, emb, context, cross_attention_kwargs) -> dict:
    if getattr(block, "has_cross_attention", False):
        return {"temb": emb, "encoder_hidden_states": context, "cross_attention_kwargs": cross_attention_kwargs}
    return {"temb": emb}


def _forward(view, cache: FeatureCache, sample, timestep, encoder_hidden_states, *args,
             return_dict: bool = True, **kwargs):
    reuse = cache.deep is not None and cache.calls % cache.interval != 0
    cache.calls += 1
    if not reuse:  # the whole UNet; its recording last block keeps the deep features
        return UNet2DConditionModel.forward(view, sample, timestep, encoder_hidden_states, *args,
                                            return_dict=return_dict, **kwargs)
    cross = kwargs.get("cross_attention_kwargs")
    emb = view.time_embedding(view.get_time_embed(sample=sample, timestep=timestep), kwargs.get("timestep_cond"))
    hidden = view.conv_in(sample)
    first, last = view.down_blocks[0], view.up_blocks[-1]
    _, skips = first(hidden_states=hidden, **_block_kwargs(first, emb, encoder_hidden_states, cross))
    skips = (hidden, *skips)[:len(last.resnets)]  # what the whole UNet hands its last up block
    out = last(hidden_states=cache.deep, res_hidden_states_tuple=skips,
               **_block_kwargs(last, emb, encoder_hidden_states, cross))
    if view.conv_norm_out is not None:
        out = view.conv_act(view.conv_norm_out(out))
    out = view.conv_out(out)
    return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def cached_unet(unet, interval: int):
    """A shallow copy of `unet` that reuses its deep features for `interval - 1` calls in every `interval`."""
    _check_supported(unet)
    cache = FeatureCache(interval)
    view = copy.copy(unet)
    view.__dict__["_modules"] = dict(unet._modules)  # its own submodule table: the new list below stays its own
    recording = copy.copy(unet.up_blocks[-1])

    def record(*args, **kwargs):
        cache.deep = kwargs["hidden_states"]  # the UNet passes every block argument by name
        return type(recording).forward(recording, *args, **kwargs)

    recording.forward = record
    view.up_blocks = torch.nn.ModuleList([*unet.up_blocks[:-1], recording])
    view.forward = partial(_forward, view, cache)
    view.feature_cache = cache
    return view
