"""Perturbed-Attention Guidance (Ahn et al. 2024): guide away from what the UNet predicts when chosen
self-attention layers see only themselves (their attention map the identity), as CFG guides away from the
unconditional prediction.

diffusers' maintained PAG pipelines do the work. They swap the attention processors of the UNet they are
given for the call, so each call gets its own module tree over the shared weights (t2i.sampling.view), and
the layers are checked here, before any work, against the model's self-attention modules.
"""

from __future__ import annotations

import re

from t2i.errors import check

DEFAULT_LAYERS = ("mid",)


def self_attention_layers(unet) -> list[str]:
    """The names of `unet`'s self-attention modules, which PAG's layer patterns are matched against."""
    from diffusers.models.attention_processor import Attention

    return [name for name, module in unet.named_modules()
            if isinstance(module, Attention) and not module.is_cross_attention]


def _blocks(names: list[str]) -> list[str]:
    """The attention blocks holding `names` ("down_blocks.0.attentions.0", "mid_block.attentions.0", ...)."""
    return sorted({".".join(name.split(".")[:4] if name.startswith(("down", "up")) else name.split(".")[:3])
                   for name in names})


def check_layers(unet, layers: tuple[str, ...]) -> None:
    """Each pattern (a regular expression, as diffusers matches them) must name a self-attention layer."""
    names = self_attention_layers(unet)
    for layer in layers:
        try:
            found = any(re.search(layer, name) for name in names)
        except re.error as exc:
            found = False
            check(False, "pag_layers", layer, f"is not a valid pattern ({exc})")
        check(found, "pag_layers", layer, "matches no self-attention layer of this model",
              choices=["mid", *_blocks(names)])
