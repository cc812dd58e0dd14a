"""IP-Adapter files: reading h94's layout, checking it fits the model and its image encoder, writing it.

h94's files (and t2i's) hold two groups of tensors: `image_proj.*`, the projection from the image
encoder's embedding to the extra context tokens, and `ip_adapter.N.to_k_ip/to_v_ip.weight`, the new
key/value layers, N counting the UNet's attention processors in diffusers' order (the cross-attention
ones are the odd N). diffusers turns that dict into its own modules (`_load_ip_adapter_weights`); this
module reads the file, refuses one made for another base or encoder before any module is built, and
writes the same layout back (`save_ip_adapter`), with the image encoder it was trained on in the metadata.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.errors import InvalidInput, LoadError, T2IError, first_line
from t2i.formats.hashes import file_sha256
from t2i.models.config import ModelConfig
from t2i.models.loading import PICKLE_SUFFIXES, pickle_to_safetensors, refuse_pickle

ENCODER_METADATA = "t2i_image_encoder"  # the image encoder a t2i adapter was trained with
SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
TOKENS = 4  # diffusers' ImageProjection makes 4 tokens (h94's ip-adapter_sd15)


@dataclass(frozen=True)
class LoadedIPAdapter:
    state: dict  # {"image_proj": {...}, "ip_adapter": {...}}, as diffusers' loader takes it
    name: str  # the file's name without its suffix, as A1111 lists it
    path: str
    hash: str  # A1111's short model hash: first 8 hex of the file's SHA-256
    encoder: str | None  # the image encoder the file names (t2i's own files), else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"

    @property
    def uses_hidden_states(self) -> bool:
        """IP-Adapter Plus reads the encoder's penultimate hidden states through a resampler; the plain
        adapter reads its projected embedding."""
        return "latents" in self.state["image_proj"]

    @property
    def encoder_width(self) -> int | None:
        """The width of what it reads from the image encoder (None: a layout t2i does not check)."""
        proj = self.state["image_proj"]
        key = "proj_in.weight" if self.uses_hidden_states else "proj.weight"
        return proj[key].shape[-1] if key in proj else None


def _split(tensors: dict, source: str) -> dict:
    """h94's flat `image_proj.`/`ip_adapter.` keys -> the two groups diffusers reads."""
    groups: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in tensors.items():
        group, _, rest = key.partition(".")
        if group in groups:
            groups[group][rest] = value
    if not groups["image_proj"] or not groups["ip_adapter"]:
        raise InvalidInput("not an IP-Adapter (it has no image_proj.* and ip_adapter.* tensors)", field="ip_adapter",
                           value=source, hint="give an h94 IP-Adapter .safetensors or one t2i trained")
    return groups


def _read(path: Path, model: ModelConfig) -> tuple[dict, dict]:
    """(tensors, metadata). A pickled .bin only when allowed; h94's .bin files hold the two groups as
    nested dicts, which are flattened to the safetensors layout first."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    refuse_pickle(path, model, "ip_adapter")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("image_proj"), dict):
            return {f"{group}.{key}": value for group in ("image_proj", "ip_adapter")
                    for key, value in checkpoint.get(group, {}).items()}, {}
        with tempfile.TemporaryDirectory() as workdir:
            path = pickle_to_safetensors(path, Path(workdir))
            return load_file(str(path)), {}
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return load_file(str(path)), metadata


def cross_attention_layers(unet) -> list[str]:
    """The UNet's cross-attention processors' names in diffusers' order, and their index N in h94's keys."""
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor")]


def check_fits(state: dict, unet, source: str) -> None:
    """The adapter's key/value layers read the model's context width, one pair per cross-attention layer."""
    layers = cross_attention_layers(unet)
    pairs = sorted({key.split(".")[0] for key in state["ip_adapter"] if key.endswith("to_k_ip.weight")}, key=int)
    width = state["ip_adapter"][f"{pairs[0]}.to_k_ip.weight"].shape[1] if pairs else None
    ours = unet.config.cross_attention_dim
    if width != ours or len(pairs) != len(layers):
        kind = "SD 2.x" if width == 1024 else "SDXL" if width == 2048 else "another base"
        raise InvalidInput(f"made for {kind} (context width {width}, {len(pairs)} cross-attention layers); this "
                           f"model has width {ours} and {len(layers)} layers", field="ip_adapter", value=source,
                           hint="use an IP-Adapter made for this model's base (SD 1.x: ip-adapter_sd15)")


def check_encoder(adapter: LoadedIPAdapter, encoder) -> None:
    """The adapter's projection must read what the image encoder gives (t2i.models.image_encoder)."""
    theirs = adapter.encoder_width
    ours = encoder.hidden_width if adapter.uses_hidden_states else encoder.width
    if theirs is not None and theirs != ours:
        kind = "penultimate hidden states" if adapter.uses_hidden_states else "an image embedding"
        raise InvalidInput(f"reads {kind} {theirs} wide; the image encoder {encoder.name} gives {ours}",
                           field="image_encoder", value=encoder.path,
                           hint="give the encoder the adapter was trained with (ip-adapter_sd15: ViT-H, 1024)")


def load_ip_adapter(path_text: str, unet, model: ModelConfig) -> LoadedIPAdapter:
    """The adapter file at `path_text`, checked against `unet` (its tensors stay on the CPU in fp32 or as
    saved: diffusers places them with the UNet when it builds the layers)."""
    path = Path(path_text).expanduser()
    if path.is_dir() or path.suffix.lower() not in SUFFIXES:
        raise InvalidInput("expected an IP-Adapter .safetensors file (or a pickled .bin with --allow-pickle)",
                           field="ip_adapter", value=path_text)
    try:
        tensors, metadata = _read(path, model)
    except T2IError:
        raise
    except Exception as exc:  # a truncated or foreign file surfaces as many error types
        raise LoadError(f"could not read this IP-Adapter ({first_line(exc)})", field="ip_adapter",
                        value=path_text) from exc
    state = _split(tensors, path_text)
    check_fits(state, unet, path_text)
    return LoadedIPAdapter(state, path.stem, path_text, file_sha256(path)[:8], metadata.get(ENCODER_METADATA))


def adapter_state(unet) -> dict:
    """The h94 layout of the adapter installed in `unet` (by diffusers' loader or for training)."""
    state = {f"image_proj.{key}": value for key, value in unet.encoder_hid_proj.image_projection_layers[0]
             .state_dict().items()}
    for index, processor in enumerate(unet.attn_processors.values()):
        if hasattr(processor, "to_k_ip"):
            state[f"ip_adapter.{index}.to_k_ip.weight"] = processor.to_k_ip[0].weight
            state[f"ip_adapter.{index}.to_v_ip.weight"] = processor.to_v_ip[0].weight
    # diffusers names the plain projection's linear layer image_embeds; h94's files call it proj
    return {key.replace("image_proj.image_embeds.", "image_proj.proj."): value.detach().float().contiguous().cpu()
            for key, value in state.items()}


TRAINING_ADAPTER = "(the IP-Adapter being trained)"  # its name in the model's adapter cache


def training_snapshot(unet, encoder: str) -> LoadedIPAdapter:
    """The adapter in `unet` as it is now, as if loaded from its file (a training run's validation reads it)."""
    return LoadedIPAdapter(_split(adapter_state(unet), TRAINING_ADAPTER), "training", TRAINING_ADAPTER, "0" * 8,
                           encoder)


def save_ip_adapter(unet, path: Path, encoder: str) -> None:
    """One .safetensors in h94's layout (diffusers' `load_ip_adapter` and A1111 read it), naming `encoder`."""
    from safetensors.torch import save_file

    from t2i.files import atomic_write

    tensors = adapter_state(unet)
    atomic_write(path, lambda temporary: save_file(tensors, str(temporary),
                                                   metadata={ENCODER_METADATA: encoder, "format": "pt"}))
