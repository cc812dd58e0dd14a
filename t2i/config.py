"""Run settings as typed, validated dataclasses: every default lives here, once.

The CLI and the tests build these; the library functions take them. Nothing here imports torch,
so the CLI can build and check a config before paying for the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2i.errors import UsageError
from t2i.lora_files import LoraRef
from t2i.schedulers import resolve_sampler

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PRESETS = ("tiny",)
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
        check(self.dtype in DTYPE_NAMES, f"--dtype {self.dtype}: choose one of {', '.join(DTYPE_NAMES)}")
        check(self.device in DEVICES, f"--device {self.device}: choose one of {', '.join(DEVICES)}")


MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationConfig:
    prompts: tuple[str, ...]
    negative_prompt: str = ""
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int | None = None  # None: a random one, recorded in each image
    num_images: int = 1  # per prompt
    batch_size: int = 1
    width: int | None = None  # None: the model's native size (or the init image's)
    height: int | None = None
    sampler: str = "dpmpp-2m-karras"  # t2i, A1111 or ComfyUI name; stored resolved to the t2i name
    schedule: str | None = None  # "karras" or "normal", as in ComfyUI's scheduler field
    loras: tuple[LoraRef, ...] = ()
    clip_skip: int | None = None  # A1111 convention: 1 = last layer, 2 = penultimate
    init_image: str | None = None  # img2img, or inpainting with `mask`
    mask: str | None = None
    strength: float | None = None  # None: 0.75 for img2img, 1.0 for inpainting
    out_dir: str = "outputs"

    def __post_init__(self):
        check(len(self.prompts) >= 1, "give at least one prompt (argument or --prompts-file)")
        check(self.steps >= 1, f"--steps {self.steps}: must be at least 1")
        check(self.guidance_scale >= 0, f"--guidance-scale {self.guidance_scale}: must be 0 or more")
        check(self.num_images >= 1, f"--num-images {self.num_images}: must be at least 1")
        check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1")
        check(self.seed is None or 0 <= self.seed <= MAX_SEED, f"--seed {self.seed}: must be in 0..{MAX_SEED}")
        for flag, size in (("--width", self.width), ("--height", self.height)):
            check(size is None or (size >= 8 and size % 8 == 0),
                  f"{flag} {size}: must be a positive multiple of 8 (e.g. {max(8, (size or 0) // 8 * 8)})")
        check(self.clip_skip is None or self.clip_skip >= 1, f"--clip-skip {self.clip_skip}: must be 1 or more")
        check(self.mask is None or self.init_image is not None, "--mask needs --init-image (the image to repaint)")
        check(self.strength is None or self.init_image is not None,
              "--strength needs --init-image (it says how much of the init image to change)")
        check(self.strength is None or 0 < self.strength <= 1, f"--strength {self.strength}: must be in (0, 1]")
        check(self.strength is None or self.steps * self.strength >= 1,
              f"--strength {self.strength} with --steps {self.steps} leaves no denoising step: raise either")
        object.__setattr__(self, "sampler", resolve_sampler(self.sampler, self.schedule))
        object.__setattr__(self, "schedule", None)
        object.__setattr__(self, "loras", tuple(LoraRef.parse(r) if isinstance(r, str) else r for r in self.loras))

    @property
    def mode(self) -> str:
        return "inpaint" if self.mask else "img2img" if self.init_image else "txt2img"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)
