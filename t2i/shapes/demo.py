"""The `demo` model: SD 1.x architecture trained from scratch on the shapes world, on a CPU.

Recipe: SD 1.x's CLIP tokenizer and a small CLIPTextModel left at its seeded random init
(enough to tell prompts apart), a small AutoencoderKL trained for reconstruction, then a
UNet2DConditionModel trained by t2i's own trainer (`finetune`, whole UNet, EMA) with the SD 1.x
noise schedule t2i samples with. `train_demo` writes the model, its recipe and its timings.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from t2i.files import write_text
from t2i.models import SD1_CONFIG_DIR
from t2i.shapes.world import COLOURS, SHAPES, make_dataset, make_image, random_shape

log = logging.getLogger("t2i")


@dataclass(frozen=True)
class DemoRecipe:
    images: int = 20_000
    image_size: int = 32
    seed: int = 0
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_lr: float = 3e-3
    vae_kl_weight: float = 1e-6
    unet_channels: tuple[int, ...] = (64, 128)
    unet_steps: int = 1800
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_warmup: int = 100
    caption_dropout: float = 0.1


def text_components(recipe: DemoRecipe):
    """SD 1.x's own CLIP tokenizer, so prompts split into the tokens real models see ("brown" is one
    token, "cyan" two); the encoder is small and never trained: a fixed random map of token ids."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer")
    torch.manual_seed(recipe.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.text_hidden, intermediate_size=4 * recipe.text_hidden,
        num_hidden_layers=recipe.text_layers, num_attention_heads=recipe.text_heads, max_position_embeddings=77,
        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1))
    return tokenizer, text_encoder.eval()


def new_vae(recipe: DemoRecipe):
    from diffusers import AutoencoderKL

    torch.manual_seed(recipe.seed)
    blocks = len(recipe.vae_channels)
    return AutoencoderKL(block_out_channels=recipe.vae_channels, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, layers_per_block=1, latent_channels=4,
                         norm_num_groups=16, sample_size=recipe.image_size)


def shape_batch(rng: random.Random, count: int, size: int) -> torch.Tensor:
    """Shapes in the training colours half the time, in any RGB colour otherwise: the VAE is a codec
    for all colours (as SD's is), so a colour the UNet never learnt can still be taught later."""
    def rgb():
        return tuple(rng.randrange(256) for _ in range(3)) if rng.random() < 0.5 else None

    images = [np.asarray(make_image(random_shape(rng, image_size=size), size, rgb()), dtype=np.float32)
              for _ in range(count)]
    return torch.from_numpy(np.stack(images) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def train_vae(recipe: DemoRecipe, progress: bool = True):
    """Reconstruction (MSE) plus a light KL term, on freshly drawn shapes every step."""
    vae = new_vae(recipe).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.vae_lr, total_steps=recipe.vae_steps,
                                                   pct_start=0.05)
    rng = random.Random(recipe.seed + 1)
    for _ in tqdm(range(recipe.vae_steps), desc="training the VAE", disable=not progress):
        batch = shape_batch(rng, recipe.vae_batch, recipe.image_size)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, batch) + recipe.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    vae.eval()
    with torch.no_grad():  # SD's 0.18215 is SD's; this VAE's latents get their own unit-variance factor
        latents = vae.encode(shape_batch(rng, 256, recipe.image_size)).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    return vae


def new_unet(recipe: DemoRecipe, latent_size: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(recipe.seed)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=recipe.unet_channels,
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=recipe.text_hidden,
        attention_head_dim=8, norm_num_groups=32)


def train_demo(out: Path, recipe: DemoRecipe = DemoRecipe(), progress: bool = True) -> Path:
    """Build the demo model in `out/model` (fp16 safetensors) with `recipe.json` beside its weights."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from t2i.train.config import FinetuneConfig
    from t2i.train.trainer import finetune

    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.perf_counter()
    make_dataset(out / "data", recipe.images, recipe.seed, image_size=recipe.image_size)
    timings["dataset_s"] = time.perf_counter() - started

    started = time.perf_counter()
    vae = train_vae(recipe, progress)
    timings["vae_s"] = time.perf_counter() - started

    tokenizer, text_encoder = text_components(recipe)
    latent_size = recipe.image_size // 2 ** (len(recipe.vae_channels) - 1)
    initial = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                      unet=new_unet(recipe, latent_size),
                                      scheduler=PNDMScheduler.from_pretrained(SD1_CONFIG_DIR, subfolder="scheduler"),
                                      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    initial.save_pretrained(out / "initial")

    started = time.perf_counter()
    finetune(FinetuneConfig(
        data=str(out / "data"), output=str(out / "trained"), model=str(out / "initial"), lora=False, ema=True,
        resolution=recipe.image_size, batch_size=recipe.unet_batch, max_steps=recipe.unet_steps,
        learning_rate=recipe.unet_lr, lr_scheduler="constant_with_warmup", lr_warmup_steps=recipe.unet_warmup,
        caption_dropout=recipe.caption_dropout, seed=recipe.seed, cache_dir=str(out / "cache"),
        checkpoint_every=500, mixed_precision="no"), progress=progress)
    timings["unet_s"] = time.perf_counter() - started

    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model

    trained = load_model(ModelConfig(model=str(out / "trained"), device="cpu")).pipe
    trained.to(torch.float16).save_pretrained(out / "model")
    record = {"recipe": asdict(recipe), "seconds": {k: round(v, 1) for k, v in timings.items()},
              "total_minutes": round(sum(timings.values()) / 60, 2), "threads": torch.get_num_threads(),
              "colours": list(COLOURS), "shapes": list(SHAPES)}
    write_text(out / "model" / "recipe.json", json.dumps(record, indent=2))
    log.info("demo model written to %s in %.1f min", out / "model", record["total_minutes"])
    return out / "model"
