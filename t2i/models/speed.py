"""How a loaded model runs: compilation, memory layout, fused projections, attention, offload.

These are applied once, when the model is loaded and before anything shares it, so that no
generation ever changes them. None of them changes what an image is: the maths is the same and
only rounding may differ (bounds tested on `tiny`). What each costs and gains is measured in
benchmarks/bench_generate.py.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig

log = logging.getLogger("t2i")


def inductor_options(device: torch.device) -> dict[str, bool] | None:
    """Inductor's options for these modules alone (passed to each compile, never set process-wide).
    On a GPU: autotuned kernels without CUDA graphs (graphs would pin one shape and one thread's
    memory pool, and the server generates on a worker thread; this is the max-autotune-no-cudagraphs
    mode), with the flags diffusers' SD speed guide measured helping. On CPU: inductor's default."""
    if device.type != "cuda":
        return None
    return {"max_autotune": True, "triton.cudagraphs": False, "conv_1x1_as_mm": True,
            "coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True,
            "epilogue_fusion": False}


def check_runtime_options(config: ModelConfig, device: torch.device) -> None:
    """What the device decides, checked before any weight is read."""
    if config.offload and device.type == "cpu":
        raise InvalidInput("offload keeps weights in CPU memory for a GPU, and this run is on the CPU",
                           field="offload", value=config.offload, hint="leave {offload} off on a CPU")
    if config.compile:
        check_compile_backend(device)


def check_compile_backend(device: torch.device) -> None:
    """Inductor writes C++ on CPU and Triton on CUDA: refuse `compile` when the tool is missing."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise InvalidInput("torch.compile's GPU backend needs Triton, which is not installed", field="compile",
                               value=True, hint="pip install triton, or leave {compile} off")
    elif device.type == "cpu":
        compilers = (os.environ.get("CXX"), "g++", "clang++", "c++")
        if not any(name and shutil.which(name) for name in compilers):
            raise InvalidInput("torch.compile on CPU needs a C++ compiler, and none is on PATH", field="compile",
                               value=True, hint="install g++ (apt-get install g++), or leave {compile} off")
    else:
        raise InvalidInput(f"torch.compile is not supported on {device.type} here", field="compile", value=True,
                           hint="leave {compile} off")


def _offload(pipe, mode: str, device: torch.device) -> None:
    """diffusers' CPU offload: accelerate hooks (a core dependency) move each model (or each layer) to
    `device` when it runs."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def compile_components(pipe, device: torch.device, backend="inductor") -> None:
    """Compile the UNet and the VAE decoder in place (the modules keep their type, so diffusers and
    peft see them as before). Dynamo compiles again only when a shape or a module's structure changes."""
    options = inductor_options(device) if backend == "inductor" else None
    pipe.unet.compile(backend=backend, options=options)
    pipe.vae.decoder.compile(backend=backend, options=options)


def apply_runtime_options(pipe, config: ModelConfig, device: torch.device) -> None:
    """Apply `config`'s runtime options (checked by `check_runtime_options`) to freshly loaded components,
    which are on `device` unless offloaded."""
    if config.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if config.fuse_qkv:
        pipe.unet.fuse_qkv_projections()
        pipe.vae.fuse_qkv_projections()
    if config.attention_slicing:
        pipe.enable_attention_slicing()
    if config.offload:
        _offload(pipe, config.offload, device)
    if config.compile:
        compile_components(pipe, device)
        log.info("compiling the UNet and VAE decoder: the first image of each size takes minutes, later ones "
                 "reuse it")
