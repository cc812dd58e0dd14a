"""Write a diffusers SD 1.x pipeline as an original (LDM / A1111) single-file checkpoint.

Only the tests need this: it turns the tiny model into the kind of `.safetensors` file users
download, so the real single-file loading path (diffusers' LDM -> diffusers conversion) runs on it.
The key layout is the CompVis one: `model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(state: dict, old_prefix: str, new_prefix: str, parts: dict | None = None) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith(old_prefix):
            rest = key[len(old_prefix):]
            for old, new in (parts or {}).items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
            out[new_prefix + rest] = value
    return out


def _encoder_to_ldm(state: dict, config) -> dict:
    """The time embedding, input blocks and middle block: a UNet's encoder, which a ControlNet copies."""
    per_block = config.layers_per_block
    out = {}
    out |= _rename(state, "time_embedding.linear_1.", "time_embed.0.")
    out |= _rename(state, "time_embedding.linear_2.", "time_embed.2.")
    out |= _rename(state, "conv_in.", "input_blocks.0.0.")
    for i in range(len(config.block_out_channels)):
        for j in range(per_block):
            index = 1 + i * (per_block + 1) + j
            out |= _rename(state, f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{index}.0.", RESNET)
            out |= _rename(state, f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{index}.1.")
        out |= _rename(state, f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per_block + 1)}.0.op.")
    out |= _rename(state, "mid_block.resnets.0.", "middle_block.0.", RESNET)
    out |= _rename(state, "mid_block.attentions.0.", "middle_block.1.")
    out |= _rename(state, "mid_block.resnets.1.", "middle_block.2.", RESNET)
    return out


def controlnet_to_ldm(net) -> dict:
    """A diffusers ControlNet in the original release's layout (`control_model.`, zero_convs, input_hint_block:
    convs at 0, 2, ..., 14, which needs the release's four conditioning widths)."""
    state = net.state_dict()
    out = _encoder_to_ldm(state, net.config)
    for i in range(len([k for k in state if k.startswith("controlnet_down_blocks.") and k.endswith(".weight")])):
        out |= _rename(state, f"controlnet_down_blocks.{i}.", f"zero_convs.{i}.0.")
    out |= _rename(state, "controlnet_mid_block.", "middle_block_out.0.")
    out |= _rename(state, "controlnet_cond_embedding.conv_in.", "input_hint_block.0.")
    for k in range(6):
        out |= _rename(state, f"controlnet_cond_embedding.blocks.{k}.", f"input_hint_block.{2 * (k + 1)}.")
    out |= _rename(state, "controlnet_cond_embedding.conv_out.", "input_hint_block.14.")
    assert len(out) == len(state), "every ControlNet tensor must be mapped"
    return {"control_model." + k: v for k, v in out.items()}


def unet_to_ldm(unet) -> dict:
    state, config = unet.state_dict(), unet.config
    per_block = config.layers_per_block
    out = _encoder_to_ldm(state, config)
    for i, block_type in enumerate(config.up_block_types):
        for j in range(per_block + 1):
            index = i * (per_block + 1) + j
            out |= _rename(state, f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{index}.0.", RESNET)
            out |= _rename(state, f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{index}.1.")
        upsampler = 2 if "CrossAttn" in block_type else 1
        out |= _rename(state, f"up_blocks.{i}.upsamplers.0.conv.",
                       f"output_blocks.{i * (per_block + 1) + per_block}.{upsampler}.conv.")
    out |= _rename(state, "conv_norm_out.", "out.0.")
    out |= _rename(state, "conv_out.", "out.2.")
    assert len(out) == len(state), "every UNet tensor must be mapped"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(vae) -> dict:
    state = vae.state_dict()
    blocks = len(vae.config.block_out_channels)
    out = {}
    for part in ("encoder", "decoder"):
        out |= _rename(state, f"{part}.conv_in.", f"{part}.conv_in.")
        out |= _rename(state, f"{part}.conv_out.", f"{part}.conv_out.")
        out |= _rename(state, f"{part}.conv_norm_out.", f"{part}.norm_out.")
        out |= _rename(state, f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", VAE_RESNET)
        out |= _rename(state, f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", VAE_RESNET)
        attention = _rename(state, f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION)
        # LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers
        out |= {k: v[:, :, None, None] if v.ndim == 2 else v for k, v in attention.items()}
    for i in range(blocks):
        out |= _rename(state, f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", VAE_RESNET)
        out |= _rename(state, f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.")
        # the decoder's up blocks are stored in reverse order in LDM
        out |= _rename(state, f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{blocks - 1 - i}.block.", VAE_RESNET)
        out |= _rename(state, f"decoder.up_blocks.{i}.upsamplers.0.conv.",
                       f"decoder.up.{blocks - 1 - i}.upsample.conv.")
    out |= _rename(state, "quant_conv.", "quant_conv.")
    out |= _rename(state, "post_quant_conv.", "post_quant_conv.")
    assert len(out) == len(state), "every VAE tensor must be mapped"
    return {"first_stage_model." + k: v for k, v in out.items()}


def text_encoder_to_ldm(text_encoder) -> dict:
    return {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
            for k, v in text_encoder.state_dict().items()}


def save_ldm_checkpoint(pipe, path) -> None:
    tensors = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **text_encoder_to_ldm(pipe.text_encoder)}
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}, str(path))
