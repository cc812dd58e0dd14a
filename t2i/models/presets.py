"""The presets: `tiny` (SD 1.x-shaped, random weights, built in code), `demo` (shipped, trained on the
shapes world) and the SD 1.x configs shipped for offline single-file loading.

`tiny` has the same classes and wiring as a real SD 1.x model, a few hundred thousand parameters,
no download. Tests and smoke runs use it; its images are noise.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from t2i.models import SD1_CONFIG_DIR

TEXT_DIM = 32


def byte_level_tokenizer() -> CLIPTokenizer:
    """A valid CLIPTokenizer with no merges: one token per byte (514 entries)."""
    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    # model_max_length: without it padding="max_length" overflows in transformers 5
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def tiny_components(seed: int = 0, unet_in_channels: int = 4) -> dict:
    """Tokenizer, text encoder, VAE, UNet and SD 1.x scheduler; deterministic for a given seed.

    `unet_in_channels=9` gives the layout of an inpainting UNet (latents + mask + masked image).
    """
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=len(tokenizer) - 2,
        eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1))
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=unet_in_channels,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM, norm_num_groups=8)
    scheduler = PNDMScheduler.from_pretrained(SD1_CONFIG_DIR, subfolder="scheduler")
    return {"tokenizer": tokenizer, "text_encoder": text_encoder.eval(), "vae": vae.eval(),
            "unet": unet.eval(), "scheduler": scheduler}
