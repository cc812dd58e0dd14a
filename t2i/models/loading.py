"""The component factory: where a model comes from, and how its four components are loaded.

`--model` may be a built-in preset (`tiny`), a local diffusers folder, a single-file checkpoint or a
Hugging Face hub id. Every source ends as the same four components (CLIPTokenizer, CLIPTextModel,
AutoencoderKL, UNet2DConditionModel) plus the model's ORIGINAL scheduler config, which every
sampler is built from. One set of components serves txt2img, img2img and inpainting.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from transformers import CLIPTextModel, CLIPTokenizer

from t2i.errors import InvalidInput, LoadError, NotFound, T2IError, first_line
from t2i.formats.hashes import file_sha256
from t2i.models import DEMO_MODEL_DIR, SD1_CONFIG_DIR
from t2i.models.config import PRESETS, ModelConfig
from t2i.models.speed import apply_runtime_options, check_runtime_options

log = logging.getLogger("t2i")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a diffusers SD repo needs, safetensors only: never the fp16/non-EMA/pickle duplicates
HUB_FILES = ["model_index.json", "scheduler/*.json", "tokenizer/*", "*/config.json",
             "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
             "vae/diffusion_pytorch_model.safetensors"]


class OnceCache:
    """Things loaded for a model on first use, each once even when two threads ask at the same moment."""

    def __init__(self):
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: str, value: Any) -> None:
        """Set (or replace) an entry: a ControlNet in training is offered to generation this way."""
        with self._lock:
            self._items[key] = value

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._items:
                self._items[key] = load()
            return self._items[key]


@dataclass
class LoadedModel:
    """Loaded components, shared by every generation on this model and never changed by one:
    a generation builds its own pipeline around them (t2i.sampling.view)."""

    pipe: StableDiffusionPipeline  # holds the components; generation never sets anything on it
    scheduler_config: Mapping[str, Any]  # as the model shipped it; samplers are built from this
    name: str  # A1111's "Model:" field
    hash: str | None  # A1111's "Model hash": first 10 hex of the checkpoint file's SHA-256
    config: ModelConfig
    # upscaler pipelines hires fix has loaded for this model, by folder (t2i.sampling.hires), loaded once
    upscalers: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # ControlNets generations on this model have named, by path (t2i.models.controlnet), loaded once
    controlnets: OnceCache = field(default_factory=OnceCache, compare=False, repr=False)
    # IP-Adapter files and image encoders, by path (t2i.sampling.ip_run), loaded once
    adapters: OnceCache = field(default_factory=OnceCache, compare=False, repr=False)

    @property
    def is_inpainting_model(self) -> bool:
        return self.pipe.unet.config.in_channels == 9

    @property
    def dtype_name(self) -> str:
        return next(name for name, dtype in DTYPES.items() if dtype == self.pipe.unet.dtype)

    @property
    def device(self) -> torch.device:
        """Where the model runs: with offload, the weights rest in CPU memory but run on this device."""
        return self.pipe._execution_device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise InvalidInput("no such device is available here", field="device", value=name, hint="use auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that runs it natively (as fast as fp16 there, and the SD VAE cannot
    overflow in it), fp16 on older GPUs, fp32 elsewhere (CPUs without bf16 matmul units run it slower)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return DTYPES[name]


def _is_offline(config: ModelConfig) -> bool:
    # HF_HUB_OFFLINE is read when huggingface_hub is imported; the CLI sets it before that for --offline
    return config.offline or bool(hub_constants.HF_HUB_OFFLINE)


def refuse_pickle(path: Path, config: ModelConfig, field: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not config.allow_pickle:
        raise InvalidInput("a pickled checkpoint, and loading a pickle can run arbitrary code", field=field,
                           value=path, hint="convert it to .safetensors, or set {allow_pickle} if you trust its source")


def pickle_to_safetensors(path: Path, workdir: Path) -> Path:
    """Load an opted-in pickle fully (diffusers' weights_only loading fails on many real ones)."""
    from safetensors.torch import save_file

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", checkpoint)
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    converted = workdir / (path.stem + ".safetensors")
    save_file(tensors, converted)
    return converted


def _unet_in_channels(checkpoint: Path) -> int:
    """9 for an inpainting checkpoint, 4 otherwise: read from the header, no weights loaded."""
    from safetensors import safe_open

    with safe_open(checkpoint, framework="pt") as f:
        key = "model.diffusion_model.input_blocks.0.0.weight"
        return f.get_slice(key).get_shape()[1] if key in f.keys() else 4


def _load_single_file(path: Path, config: ModelConfig, vae: AutoencoderKL | None) -> StableDiffusionPipeline:
    config_dir = str(config.single_file_config or SD1_CONFIG_DIR)
    with tempfile.TemporaryDirectory() as workdir:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            path = pickle_to_safetensors(path, Path(workdir))
        # local_files_only + config=<local folder>: without both, diffusers fetches SD 1.5's configs
        common = {"config": config_dir, "local_files_only": True}
        extra = {"vae": vae} if vae is not None else {}
        in_channels = _unet_in_channels(path)
        if in_channels != 4:
            extra["unet"] = UNet2DConditionModel.from_single_file(str(path), subfolder="unet",
                                                                  in_channels=in_channels, **common)
        return StableDiffusionPipeline.from_single_file(str(path), safety_checker=None,
                                                        requires_safety_checker=False, **common, **extra)


def _load_folder(folder: Path, config: ModelConfig, vae: AutoencoderKL | None,
                 dtype: torch.dtype) -> StableDiffusionPipeline:
    """Each component is read straight into `dtype` (casting fp16 files afterwards makes diffusers warn)."""
    if not (folder / "model_index.json").is_file():
        raise InvalidInput("not a diffusers model folder (no model_index.json)", field="model", value=folder,
                           hint="give a folder saved with save_pretrained, a .safetensors checkpoint, or a hub id")
    safetensors_only = None if config.allow_pickle else True
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True,
                                                     use_safetensors=safetensors_only, dtype=dtype)
        if vae is None:
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=safetensors_only,
                                                torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=safetensors_only,
                                                    torch_dtype=dtype)
        scheduler = _scheduler_class(folder).from_pretrained(folder, subfolder="scheduler")
    except (OSError, EnvironmentError) as exc:
        hint = None if config.allow_pickle else "only .safetensors weights are read without {allow_pickle}"
        raise LoadError(f"could not load this model ({first_line(exc)})", field="model", value=folder,
                        hint=hint) from exc
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _scheduler_class(folder: Path):
    import diffusers

    name = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    if not (name.endswith("Scheduler") and hasattr(diffusers, name)):
        raise LoadError(f"unknown scheduler class {name!r} in scheduler/scheduler_config.json", field="model",
                        value=folder)
    return getattr(diffusers, name)


def download(repo_id: str, config: ModelConfig, files: list[str] = HUB_FILES, field: str = "model") -> Path:
    """The local snapshot of a hub repo (`files`: the patterns it needs): the cache when it holds it,
    else a download."""
    patterns = files + (["*.bin"] if config.allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception as exc:  # not cached (the hub client raises several types for it)
        if _is_offline(config):
            raise LoadError("not in the local Hugging Face cache, and t2i is offline", field=field, value=repo_id,
                            hint="give a local diffusers folder or .safetensors file") from exc
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    try:  # fail in seconds, not after the hub client's retries with back-off
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise LoadError(f"cannot reach {host} to download it", field=field, value=repo_id,
                        hint="give a local diffusers folder or .safetensors file, or a cached model offline") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise LoadError(f"could not download it ({first_line(exc)})", field=field, value=repo_id) from exc


def _load_vae(source: str, config: ModelConfig) -> AutoencoderKL:
    path = Path(source).expanduser()
    if path.is_file():
        refuse_pickle(path, config, "vae")
        return AutoencoderKL.from_single_file(str(path), config=str(config.single_file_config or SD1_CONFIG_DIR),
                                              subfolder="vae", local_files_only=True)
    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, use_safetensors=None if config.allow_pickle else True)
    if HUB_ID.match(source):
        return AutoencoderKL.from_pretrained(download(source, config))
    raise NotFound("no such file or folder", field="vae", value=source)


def _locate(config: ModelConfig) -> tuple[str, Path | None]:
    """Classify --model as ('preset'|'file'|'folder'|'hub', path)."""
    source = config.model
    if source == "demo":
        return "folder", DEMO_MODEL_DIR
    if source in PRESETS:
        return "preset", None
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
            raise InvalidInput("expected a .safetensors checkpoint (or a diffusers folder)", field="model",
                               value=source)
        refuse_pickle(path, config, "model")
        return "file", path
    if HUB_ID.match(source) and not path.suffix:
        return "hub", None
    raise NotFound("no such file or folder", field="model", value=source,
                   hint=f"give a diffusers folder, a .safetensors file, a hub id or a preset ({', '.join(PRESETS)})")


def load_model(config: ModelConfig) -> LoadedModel:
    """Load (or build) the components named by `config`, on its device and dtype."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    check_runtime_options(config, device)
    kind, path = _locate(config)
    model_hash = None
    try:
        vae = _load_vae(config.vae, config) if config.vae else None
        if kind == "preset":
            from t2i.models.presets import tiny_components

            log.warning("model 'tiny' has random weights: its images are noise (it is for tests and smoke runs)")
            components = tiny_components()
            if vae is not None:
                components["vae"] = vae
            pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
            name = "tiny"
        elif kind == "file":
            assert path is not None  # _locate gives a path for files and folders
            pipe = _load_single_file(path, config, vae)
            model_hash, name = file_sha256(path)[:10], path.stem
        else:
            folder = path if path is not None else download(config.model, config)
            pipe = _load_folder(folder, config, vae, dtype)
            name = config.model if kind == "hub" or config.model in PRESETS else folder.name
    except T2IError:
        raise
    except Exception as exc:  # corrupt or mismatched files surface as many library error types
        raise LoadError(f"could not load this model ({first_line(exc)})", field="model", value=config.model) from exc
    resting = torch.device("cpu") if config.offload else device  # offload hooks move weights when they run
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):  # each, as saved weights may be fp16
        # dtype only where it changes: diffusers warns about fp32-kept modules whenever one is passed
        module.to(resting) if module.dtype == dtype else module.to(resting, dtype)
    apply_runtime_options(pipe, config, device)
    pipe.set_progress_bar_config(leave=False)
    return LoadedModel(pipe=pipe, scheduler_config=dict(pipe.scheduler.config), name=name, hash=model_hash,
                       config=config)
