"""Which model to load, on which device, in which precision: every default once, every value checked.

No torch import here, so a front end can check a config before paying for the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2i.errors import check

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PRESETS = ("tiny", "demo")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")  # auto: fp16 on CUDA, fp32 elsewhere


@dataclass(frozen=True)
class ModelConfig:
    model: str = DEFAULT_MODEL  # hub id, diffusers folder, single .safetensors file or preset
    vae: str | None = None  # swap in another VAE (folder, .safetensors file or hub id)
    dtype: str = "auto"
    device: str = "auto"
    offline: bool = False
    allow_pickle: bool = False  # pickled checkpoints can run code when loaded: opt-in only
    single_file_config: str | None = None  # configs for a single-file model (default: SD 1.x's)

    def __post_init__(self):
        check(self.dtype in DTYPE_NAMES, "dtype", self.dtype, "unknown precision", choices=DTYPE_NAMES)
        check(self.device in DEVICES, "device", self.device, "unknown device", choices=DEVICES)
