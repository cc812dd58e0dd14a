"""ControlNets: where one comes from, whether it fits the loaded model, and the single file others read.

A ControlNet may be a diffusers folder, a hub id, or one weights file as A1111 and ComfyUI users keep
them: diffusers' own keys (what t2i saves) or the original ControlNet release's (`control_model.` /
`input_hint_block`); pickled `.pth` files only with `allow_pickle`. A single file carries no config:
its architecture is the base UNet's (a ControlNet is a copy of its encoder), with the conditioning
encoder's channels read from the file's own tensors. One made for another base (SD 2.x, SDXL) is
refused by its tensor shapes before any weight is loaded into a module.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from diffusers import ControlNetModel

from t2i.errors import InvalidInput, LoadError, NotFound, T2IError, first_line
from t2i.formats.hashes import file_sha256
from t2i.models.config import ModelConfig
from t2i.models.loading import HUB_ID, PICKLE_SUFFIXES, download, pickle_to_safetensors, refuse_pickle

DIFFUSERS_KEY = "controlnet_cond_embedding.conv_in.weight"
ORIGINAL_PREFIX = "control_model."  # the original release's checkpoints; some files drop the prefix
ORIGINAL_KEY = "input_hint_block.0.weight"
HUB_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
CONFIG_METADATA = "t2i_controlnet_config"  # the diffusers config t2i writes into its single files


@dataclass(frozen=True)
class LoadedControlNet:
    net: ControlNetModel
    name: str  # as A1111 lists it: the file's or folder's name without its suffix
    path: str  # what was loaded
    hash: str | None  # A1111's short model hash (first 8 hex of the file's SHA-256); None for a folder or hub id

    @property
    def title(self) -> str:
        """A1111's `Model:` value, `name [hash]`."""
        return f"{self.name} [{self.hash}]" if self.hash else self.name


def find(source: str, folder: str | None, field: str = "control", what: str = "ControlNet", hub: bool = True) -> str:
    """A ControlNet (or, with `what`, another model kept in A1111's ControlNet folder) by path, by hub id
    (where `hub`), or by name in `folder` (with or without its suffix)."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    if folder:
        base = Path(folder).expanduser()
        for candidate in [base / source] + [base / (source + suffix) for suffix in SUFFIXES]:
            if candidate.exists():
                return str(candidate)
    if hub and HUB_ID.match(source) and not path.suffix:
        return source
    kinds = ["a path", "a hub id"] if hub else ["a path"]
    if folder:
        kinds.append(f"the name of a file in {folder}")
    raise NotFound(f"no such {what} file{', folder or hub id' if hub else ''}", field=field, value=source,
                   hint="give " + (", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]))


def _cross_width(state: dict, original: bool) -> int | None:
    key = ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" if original else
           "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    return state[key].shape[1] if key in state else None


def _first_channels(state: dict, original: bool) -> int | None:
    key = "input_blocks.0.0.weight" if original else "conv_in.weight"
    return state[key].shape[0] if key in state else None


def check_fits(unet_config, cross_width: int | None, channels: int | None, extra_embedding: bool,
               source: str) -> None:
    """A ControlNet's residuals are added to the UNet's own features: both must have one layout."""
    ours = (unet_config.cross_attention_dim, unet_config.block_out_channels[0])
    theirs = (cross_width, channels)
    if extra_embedding or any(t is not None and t != o for t, o in zip(theirs, ours)):
        kind = "SDXL" if extra_embedding else "SD 2.x" if cross_width == 1024 else "another base"
        raise InvalidInput(f"made for {kind} (cross-attention width {cross_width}, first block {channels} "
                           f"channels); this model has width {ours[0]} and {ours[1]} channels", field="control",
                           value=source, hint="use a ControlNet made for this model's base (SD 1.x: width 768)")


def _embedding_channels(state: dict) -> tuple[tuple[int, ...], int]:
    """(conditioning_embedding_out_channels, conditioning_channels) from a diffusers-keyed state dict:
    conv_in, then pairs of convs whose second widens the map and halves its size."""
    conv_in = state[DIFFUSERS_KEY]
    widths = [conv_in.shape[0]]
    index = 1
    while f"controlnet_cond_embedding.blocks.{index}.weight" in state:
        widths.append(state[f"controlnet_cond_embedding.blocks.{index}.weight"].shape[0])
        index += 2
    return tuple(widths), conv_in.shape[1]


def config_for(unet, state: dict | None = None, embedding: tuple[tuple[int, ...], int] | None = None) -> dict:
    """The diffusers config of a ControlNet for `unet`, its conditioning encoder as `state` has it
    (or as `embedding` says), built without allocating any weights."""
    from accelerate import init_empty_weights

    channels, conditioning = embedding or (_embedding_channels(state) if state is not None else ((16, 32, 96, 256), 3))
    with init_empty_weights():
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels,
                                        load_weights_from_unet=False, conditioning_channels=conditioning)
    return dict(net.config)


def _read_state(path: Path, model: ModelConfig) -> tuple[dict, dict]:
    """(tensors, safetensors metadata) of a single file; a pickle only when allowed, converted first."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    refuse_pickle(path, model, "control")
    with tempfile.TemporaryDirectory() as workdir:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            path = pickle_to_safetensors(path, Path(workdir))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata


def _from_file(path: Path, unet, model: ModelConfig) -> ControlNetModel:
    from accelerate import init_empty_weights

    state, metadata = _read_state(path, model)
    if any(key.startswith(ORIGINAL_PREFIX) for key in state):
        state = {key[len(ORIGINAL_PREFIX):]: value for key, value in state.items() if key.startswith(ORIGINAL_PREFIX)}
    original = ORIGINAL_KEY in state
    if not original and DIFFUSERS_KEY not in state:
        raise InvalidInput("not a ControlNet (it has neither diffusers' nor the original release's "
                           "conditioning encoder)", field="control", value=path)
    check_fits(unet.config, _cross_width(state, original), _first_channels(state, original),
               "add_embedding.linear_1.weight" in state or "label_emb.0.0.weight" in state, str(path))
    if original:
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        hint = state[ORIGINAL_KEY]
        config = config_for(unet, embedding=((16, 32, 96, 256), hint.shape[1]))
        state = convert_controlnet_checkpoint(state, config)
    config = json.loads(metadata[CONFIG_METADATA]) if CONFIG_METADATA in metadata else config_for(unet, state)
    with init_empty_weights():
        net = ControlNetModel.from_config(config)
    net.load_state_dict(state, strict=True, assign=True)
    return net


def _from_folder(folder: Path, unet, model: ModelConfig) -> ControlNetModel:
    if not (folder / "config.json").is_file():
        raise InvalidInput("not a diffusers ControlNet folder (no config.json)", field="control", value=folder,
                           hint="give a folder saved with save_pretrained, or a .safetensors file")
    net = ControlNetModel.from_pretrained(folder, use_safetensors=None if model.allow_pickle else True)
    check_fits(unet.config, net.config.cross_attention_dim, net.config.block_out_channels[0],
               net.config.addition_embed_type is not None, str(folder))
    return net


def load_controlnet(source: str, unet, model: ModelConfig) -> LoadedControlNet:
    """The ControlNet at `source` (a path or hub id, see `find`), checked against `unet`, on its device and dtype."""
    path = Path(source).expanduser()
    file_hash = None
    try:
        if path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise InvalidInput("expected a .safetensors ControlNet (or a diffusers folder)", field="control",
                                   value=source)
            net = _from_file(path, unet, model)
            file_hash, name = file_sha256(path)[:8], path.stem
        elif path.is_dir():
            net, name = _from_folder(path, unet, model), path.name
        else:
            net, name = _from_folder(download(source, model, HUB_FILES, "control"), unet, model), source
    except T2IError:
        raise
    except Exception as exc:  # truncated files and foreign layouts surface as many library error types
        raise LoadError(f"could not load this ControlNet ({first_line(exc)})", field="control", value=source) from exc
    # dtype only where it changes: diffusers warns about fp32-kept modules whenever one is passed
    net.to(unet.device) if net.dtype == unet.dtype else net.to(unet.device, unet.dtype)
    net.eval().requires_grad_(False)
    return LoadedControlNet(net, name, source, file_hash)


def save_single_file(net: ControlNetModel, path: Path) -> None:
    """One .safetensors with diffusers' keys, as A1111's ControlNet extension and ComfyUI read them, and the
    diffusers config in its metadata (t2i reads it back; the others go by the keys)."""
    from safetensors.torch import save_file

    from t2i.files import atomic_write

    tensors = {key: value.detach().contiguous().cpu() for key, value in net.state_dict().items()}
    config = {key: value for key, value in net.config.items() if not key.startswith("_")}
    metadata = {CONFIG_METADATA: json.dumps(config, default=str), "format": "pt"}
    atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
