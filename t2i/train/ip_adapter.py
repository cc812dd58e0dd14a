"""IP-Adapter training: the image projection and the new key/value layers learn, everything else is frozen.

The layers are built in the UNet by diffusers' own loader from a starting state in h94's layout (so what
is trained is exactly what inference loads): the projection freshly initialised, each to_k_ip/to_v_ip a
copy of its cross-attention's to_k/to_v (as h94's training starts them). Each step embeds the training
image itself with the frozen image encoder; the embedding is dropped (zeroed, the unconditional image
embedding) for a share of the examples, the caption by the usual caption dropout, so that guidance still
works with either missing.
"""

from __future__ import annotations

import torch

from t2i.models.ip_adapter import TOKENS, adapter_state

IMAGE_DROPOUT = 0.05  # h94's share of examples trained without their image


def new_ip_layers(unet, encoder_width: int, seed: int = 0) -> None:
    """Build untrained adapter layers in `unet` (frozen otherwise), in fp32 and trainable."""
    cross = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed)
    projection = torch.nn.Linear(encoder_width, TOKENS * cross)
    torch.nn.init.normal_(projection.weight, std=encoder_width ** -0.5, generator=generator)
    torch.nn.init.zeros_(projection.bias)
    state = {"image_proj": {"proj.weight": projection.weight.data, "proj.bias": projection.bias.data,
                            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)},
             "ip_adapter": {}}
    for index, name in enumerate(unet.attn_processors):
        if not name.endswith("attn1.processor"):
            attention = unet.get_submodule(name[:-len(".processor")])
            state["ip_adapter"][f"{index}.to_k_ip.weight"] = attention.to_k.weight.detach().float().clone()
            state["ip_adapter"][f"{index}.to_v_ip.weight"] = attention.to_v.weight.detach().float().clone()
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    for parameter in adapter_parameters(unet):
        parameter.data = parameter.data.float()
        parameter.requires_grad_(True)


def adapter_modules(unet) -> list[torch.nn.Module]:
    """The projection and the processors holding the new key/value layers."""
    return [unet.encoder_hid_proj, *[p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip")]]


def adapter_parameters(unet) -> list[torch.nn.Parameter]:
    return [p for module in adapter_modules(unet) for p in module.parameters()]


def load_adapter_into(unet, tensors: dict) -> None:
    """Put h94-layout tensors (what `adapter_state` gives) back into the adapter layers in `unet`."""
    current = adapter_state(unet)
    missing = current.keys() - tensors.keys()
    if missing:
        raise KeyError(f"the adapter file lacks {sorted(missing)[:3]}")
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    projection.load_state_dict({key[len("image_proj."):].replace("proj.", "image_embeds.", 1): value
                                for key, value in tensors.items() if key.startswith("image_proj.")})
    processors = list(unet.attn_processors.values())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("ip_adapter."):
                _, index, layer, _ = key.split(".")
                getattr(processors[int(index)], layer)[0].weight.copy_(value)


class AdapterInUNet(torch.nn.Module):
    """The trained layers as one module for accelerate (its wrapper syncs their gradients), whose forward
    runs the frozen UNet they live in with the image embeddings."""

    def __init__(self, unet):
        super().__init__()
        self.layers = torch.nn.ModuleList(adapter_modules(unet))

    def forward(self, unet, noisy, timesteps, text, image_embeds):
        return unet(noisy, timesteps, text, added_cond_kwargs={"image_embeds": [image_embeds[:, None]]}).sample


def drop_images(embeds: torch.Tensor, generator: torch.Generator, rate: float = IMAGE_DROPOUT) -> torch.Tensor:
    """The embeddings with a share zeroed (drawn from the step's generator: a resumed run draws the same)."""
    keep = (torch.rand(embeds.shape[0], generator=generator) >= rate).to(embeds.device, embeds.dtype)
    return embeds * keep[:, None]
