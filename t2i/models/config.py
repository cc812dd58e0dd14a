"""Which model to load, on which device, in which precision: every default once, every value checked.

No torch import here, so a front end can check a config before paying for the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2i.errors import check

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PRESETS = ("tiny", "demo")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")  # auto: bf16 on CUDA where supported, else fp16; fp32 elsewhere
RUNTIME_FIELDS = ("compile", "channels_last", "fuse_qkv", "attention_slicing", "offload")  # how, not what
OFFLOAD_MODES = ("model", "sequential")  # diffusers' model and sequential CPU offload (accelerate hooks)


@dataclass(frozen=True)
class ModelConfig:
    model: str = DEFAULT_MODEL  # hub id, diffusers folder, single .safetensors file or preset
    vae: str | None = None  # swap in another VAE (folder, .safetensors file or hub id)
    dtype: str = "auto"
    device: str = "auto"
    offline: bool = False
    allow_pickle: bool = False  # pickled checkpoints can run code when loaded: opt-in only
    single_file_config: str | None = None  # configs for a single-file model (default: SD 1.x's)
    # how the loaded model runs (A1111's launch flags): applied once at load, never recorded in an
    # image, as none of them changes what an image is (t2i.models.speed; tolerances tested)
    compile: bool = False  # torch.compile the UNet and the VAE decoder
    channels_last: bool = False  # NHWC memory layout for the UNet's and VAE's convolutions
    fuse_qkv: bool = False  # one matmul for attention's q, k and v projections
    attention_slicing: bool = False  # attention a head at a time: less memory, usually slower than SDPA
    offload: str | None = None  # keep weights in CPU memory, moved to the GPU when used: model or sequential

    def __post_init__(self):
        check(self.dtype in DTYPE_NAMES, "dtype", self.dtype, "unknown precision", choices=DTYPE_NAMES)
        check(self.device in DEVICES, "device", self.device, "unknown device", choices=DEVICES)
        check(self.offload is None or self.offload in OFFLOAD_MODES, "offload", self.offload, "unknown offload mode",
              choices=OFFLOAD_MODES)
        check(not (self.fuse_qkv and self.attention_slicing), "attention_slicing", True,
              "does not combine with {fuse_qkv}: each sets the attention processor", hint="choose one")
        check(not (self.compile and self.offload == "sequential"), "compile", True,
              "does not combine with {offload} sequential: its per-layer hooks break every compiled graph",
              hint="use {offload} model with {compile}")
