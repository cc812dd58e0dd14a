"""What the benchmarks share: SD 1.5-shaped models with random weights, FLOP counts, the machine's
matmul rate (the ceiling MFU is measured against), peak memory."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

SIZES = {"tiny": (None, 64), "sd-shaped": (8, 256), "full": (1, 512)}  # width divisor, resolution
# dense bf16 tensor-core peaks from NVIDIA's datasheets (no sparsity): the GPU ceiling for MFU
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "RTX 4090": 165.0}


def make_model(folder: Path, width_divisor: int) -> None:
    """SD 1.5's architecture from t2i's shipped configs, widths divided, random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from t2i.models import SD1_CONFIG_DIR

    d = width_divisor
    unet = dict(UNet2DConditionModel.load_config(SD1_CONFIG_DIR, subfolder="unet"))
    vae = dict(AutoencoderKL.load_config(SD1_CONFIG_DIR, subfolder="vae"))
    text = CLIPTextConfig.from_pretrained(SD1_CONFIG_DIR, subfolder="text_encoder")
    if d > 1:
        unet.update(block_out_channels=[c // d for c in unet["block_out_channels"]], norm_num_groups=8,
                    cross_attention_dim=768 // d)
        vae.update(block_out_channels=[c // d for c in vae["block_out_channels"]], norm_num_groups=8)
        text.hidden_size, text.intermediate_size, text.projection_dim = 768 // d, 3072 // d, 768 // d
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(unet), vae=AutoencoderKL.from_config(vae),
        text_encoder=CLIPTextModel(text),
        tokenizer=CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer"),
        scheduler=PNDMScheduler.from_pretrained(SD1_CONFIG_DIR, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)


def unet_flops(unet, batch: int, latent_side: int, backward: bool = False) -> int:
    """FLOPs of one UNet call (forward, or forward and backward) on `batch` latents, as PyTorch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    sample = torch.randn(batch, unet.config.in_channels, latent_side, latent_side, device=unet.device,
                         dtype=unet.dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=unet.device, dtype=unet.dtype)
    timestep = torch.full((batch,), 500, device=unet.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        output = unet(sample.requires_grad_(backward), timestep, context).sample
        if backward:
            output.float().pow(2).mean().backward()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s ceiling, where it comes from): the datasheet bf16 peak of a known GPU, else a
    measured large matmul in `dtype` (on CPU, what this machine's BLAS reaches)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{key} bf16 dense peak"
    side = 2048 if device.type == "cuda" else 1024
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats, started = 10, time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * side**3 * repeats / (time.perf_counter() - started), f"measured {side}^3 {dtype} matmul"


def peak_memory_mb() -> float:
    """The GPU's peak allocation since the last reset, or on CPU this process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
