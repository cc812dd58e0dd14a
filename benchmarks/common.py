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


def _unet_call(unet, batch: int, latent_side: int, backward: bool) -> None:
    """One UNet call on random latents and text, and when asked its backward into whatever of the UNet
    requires grad (a LoRA's weights only, in LoRA training), as a training step runs it."""
    sample = torch.randn(batch, unet.config.in_channels, latent_side, latent_side, device=unet.device,
                         dtype=unet.dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=unet.device, dtype=unet.dtype)
    timestep = torch.full((batch,), 500, device=unet.device)
    with torch.set_grad_enabled(backward):
        output = unet(sample, timestep, context).sample
        if backward:
            output.float().pow(2).mean().backward()
    unet.zero_grad(set_to_none=True)


def unet_flops(unet, batch: int, latent_side: int, backward: bool = False) -> int:
    """FLOPs of one UNet call (forward, or forward and backward) on `batch` latents, as PyTorch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _unet_call(unet, batch, latent_side, backward)
    return counter.get_total_flops()


def attention_share(unet, batch: int, latent_side: int, steps: int = 3) -> float:
    """The share of a UNet forward and backward's kernel time spent in its attention kernels, by
    torch.profiler over a few calls after a warm-up one. A share, not seconds: it holds on a machine
    whose speed drifts between runs. Every training loop runs these kernels alike (inductor keeps
    SDPA as an external kernel), so they bound how short any loop's step can get."""
    from torch.profiler import ProfilerActivity, profile

    _unet_call(unet, batch, latent_side, backward=True)  # warm-up: first-call allocations and dispatch
    cuda = unet.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            _unet_call(unet, batch, latent_side, backward=True)
        if cuda:
            torch.cuda.synchronize()
    events = profiler.key_averages()
    own = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    markers = ("scaled_dot_product", "flash", "fmha", "attention")  # CPU op names; CUDA kernel names
    return sum(own(e) for e in events if any(m in e.key for m in markers)) / sum(own(e) for e in events)


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
