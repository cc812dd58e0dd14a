"""LoRA files: reading them into a pipeline (`--lora PATH[:SCALE]`) and writing trained ones.

Two formats: diffusers (`pytorch_lora_weights.safetensors`, `unet.*.lora.down/up` keys, alpha in
the header's `lora_adapter_metadata`) and kohya (`lora_unet_*` keys with `lora_down`/`lora_up`
and an `alpha` tensor per module), which A1111, ComfyUI and kohya's scripts load. Both load
through diffusers' `load_lora_weights`, which keeps each kohya module's alpha.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from t2i.errors import InvalidInput, LoadError, NotFound, check, first_line
from t2i.files import atomic_write

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
# ComfyUI's LoRA loader takes strengths in [-100, 100]; beyond that a finite weight still overflows the
# UNet's activations (1e308 gave an all-black image), so every front end refuses it
LORA_SCALE_LIMIT = 100.0


def lora_scale_problem(scale: float) -> str | None:
    """Why a LoRA weight cannot be used, or None."""
    if not math.isfinite(scale):
        return "the scale must be a finite number"
    if abs(scale) > LORA_SCALE_LIMIT:
        return f"the scale must lie within -{LORA_SCALE_LIMIT:g}..{LORA_SCALE_LIMIT:g}"
    return None


@dataclass(frozen=True)
class LoraRef:
    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraRef":
        """'style.safetensors:0.8' -> (style.safetensors, 0.8); a bare path gets scale 1."""
        path, sep, scale = text.rpartition(":")
        if sep and path:
            try:
                return cls(path, float(scale))
            except ValueError:
                pass  # a ':' inside the path itself (C:\\loras\\x.safetensors)
        return cls(text)

    def __post_init__(self):
        problem = lora_scale_problem(self.scale)
        check(problem is None, "loras", f"{self.path}:{self.scale:g}", problem or "")

    @classmethod
    def from_tag(cls, name: str, scale: float, lora_dir: str | Path) -> "LoraRef":
        """The LoRA a prompt's `<lora:NAME:SCALE>` names: NAME.safetensors, or a training folder NAME,
        inside `lora_dir` and nowhere else."""
        folder = Path(lora_dir).expanduser()
        if not name or any(c in name for c in "/\\") or name in (".", "..") or Path(name).is_absolute():
            raise InvalidInput("a LoRA tag names a file inside the LoRA folder, not a path", field="prompts",
                               value=f"<lora:{name}>")
        for candidate in (folder / f"{name}.safetensors", folder / name):
            if candidate.exists():
                return cls(str(candidate), scale)
        known = sorted(available_loras(folder))
        raise NotFound(f"no LoRA named {name!r} in {folder}", field="prompts", value=f"<lora:{name}>",
                       choices=known[:20], hint="put it in {lora_dir} as NAME.safetensors")

    @property
    def file(self) -> Path:
        """The weights file: the path itself, or the diffusers file inside a training output folder."""
        path = Path(self.path).expanduser()
        if path.is_dir():
            path = path / DIFFUSERS_LORA_FILE
        if not path.is_file():
            raise NotFound(f"no such LoRA file (or folder with {DIFFUSERS_LORA_FILE})", field="loras", value=self.path)
        if path.suffix.lower() != ".safetensors":
            raise InvalidInput("only .safetensors LoRA files are loaded (pickles can run code)", field="loras",
                               value=self.path)
        return path

    @property
    def name(self) -> str:
        """The name A1111 writes in `<lora:NAME:SCALE>`: the training folder's or file's name."""
        path = Path(self.path).expanduser()
        return path.name if path.is_dir() else path.stem

    @property
    def hash_file(self) -> Path:
        """The file A1111 users have under `name`: for a training folder, its kohya export
        (`NAME/NAME.safetensors`) when there is one, else the diffusers file t2i loads."""
        path = Path(self.path).expanduser()
        export = path / f"{path.name}.safetensors"
        return export if path.is_dir() and export.is_file() else self.file


def available_loras(lora_dir: str | Path) -> dict[str, Path]:
    """name -> path of each LoRA a prompt tag can name in `lora_dir`: NAME.safetensors files and
    t2i training folders NAME/ (an empty dict when the folder does not exist)."""
    folder = Path(lora_dir).expanduser()
    if not folder.is_dir():
        return {}
    found = {p.name: p for p in folder.iterdir() if (p / DIFFUSERS_LORA_FILE).is_file()}
    found.update({p.stem: p for p in folder.glob("*.safetensors") if p.is_file()})
    return dict(sorted(found.items()))


DOWN_NAMES = (".lora.down.weight", ".lora_down.weight", ".lora_A.weight", ".lora_A.default.weight")


def check_lora_header(file: Path, field: str = "loras") -> None:
    """Refuse a LoRA file whose header metadata claims ranks its tensors do not have, before any
    tensor is read: diffusers sizes the adapter layers from the header's LoraConfig, so a header that
    says rank 1,000,000 over rank-4 tensors would allocate gigabytes before the load fails. Only the
    header is read here (tensor shapes included), never the weights."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata() or {}
            ranks = {handle.get_slice(key).get_shape()[0] for key in handle.keys() if key.endswith(DOWN_NAMES)}
    except Exception as exc:  # not a safetensors file, or a damaged header
        raise LoadError(f"not a LoRA file t2i can load ({first_line(exc)})", field=field, value=str(file)) from exc
    if "lora_adapter_metadata" not in metadata:
        return
    try:
        config = json.loads(metadata["lora_adapter_metadata"])
    except ValueError as exc:
        raise LoadError(f"its lora_adapter_metadata header is not JSON ({exc})", field=field, value=str(file)) from exc
    claimed = {value for key, value in config.items() if key.endswith(".r")}
    claimed |= {value for key, pattern in config.items() if key.endswith(".rank_pattern") and isinstance(pattern, dict)
                for value in pattern.values()}
    largest = max(ranks, default=0)
    oversized = [r for r in claimed if not isinstance(r, int) or isinstance(r, bool) or r > largest]
    if oversized:
        raise LoadError(f"its header claims rank {oversized[0]!r} but its tensors have rank at most {largest}: the "
                        "file is damaged or was edited", field=field, value=str(file))


def apply_loras(pipe, refs: tuple[LoraRef, ...]) -> list[dict]:
    """Load each LoRA into `pipe` as its own adapter at its scale; returns what the metadata records.

    This changes the pipeline's UNet (and text encoder): generation calls it on a per-call copy of
    the module tree (t2i.sampling.view), never on the shared loaded model.
    """
    from t2i.formats.hashes import lora_hash

    applied = []
    for index, ref in enumerate(refs):
        file = ref.file
        check_lora_header(file)
        adapter = f"lora{index}"
        try:
            # low_cpu_mem_usage=False: the memory-saving path creates the adapter layers under a context
            # manager that patches torch.nn.Module for the whole process, which races with a generation
            # loading another LoRA in another thread (and can leave the patch in place for good)
            pipe.load_lora_weights(str(file), adapter_name=adapter, low_cpu_mem_usage=False)
        except Exception as exc:  # corrupt or foreign files fail in safetensors, peft or the converters
            pipe.unload_lora_weights()
            raise LoadError(f"not a LoRA file t2i can load ({first_line(exc)})", field="loras",
                            value=ref.path) from exc
        # the path as given (a training folder stays a folder), so that re-making resolves name and hash alike
        applied.append({"path": ref.path, "name": ref.name, "scale": ref.scale, "adapter": adapter,
                        "hash": lora_hash(ref.hash_file)})
    if applied:
        pipe.set_adapters([a["adapter"] for a in applied], adapter_weights=[a["scale"] for a in applied])
    return [{k: v for k, v in a.items() if k != "adapter"} for a in applied]


# ---- writing: the training side -------------------------------------------------------------


def text_encoder_prefix(text_encoder) -> str:
    """What CLIP's module paths lack against the names LoRA files use: transformers 5's CLIPTextModel
    has `encoder.layers...` where files (and transformers 4) say `text_model.encoder.layers...`."""
    return "" if hasattr(text_encoder, "text_model") else "text_model."


def text_encoder_layers(text_encoder) -> dict:
    """The text encoder's peft LoRA tensors under the names LoRA files use (`text_model.encoder...`)."""
    from peft import get_peft_model_state_dict

    prefix = text_encoder_prefix(text_encoder)
    return {prefix + k: v for k, v in get_peft_model_state_dict(text_encoder).items()}


def save_diffusers_lora(unet, folder: Path, lora_config: dict, text_encoder=None,
                        text_lora_config: dict | None = None) -> Path:
    """`pytorch_lora_weights.safetensors` in diffusers keys (`unet.*`, and `text_encoder.*` when the
    text encoder was trained), with each LoraConfig in its header so that diffusers keeps alpha
    (without it, alpha is taken to be the rank)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    # diffusers 0.42 renames only Linear LoRA keys; conv ones (proj_in/out in SD 1) keep peft's names, and a
    # file of mixed names loads wrongly (the loader reads the format off the first key): use one naming
    layers = {k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v for k, v in layers.items()}
    text_layers = text_encoder_layers(text_encoder) if text_encoder is not None else None

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
            StableDiffusionPipeline.save_lora_weights(scratch, unet_lora_layers=layers,
                                                      unet_lora_adapter_metadata=lora_config,
                                                      text_encoder_lora_layers=text_layers,
                                                      text_encoder_lora_adapter_metadata=text_lora_config)
            os.replace(Path(scratch) / DIFFUSERS_LORA_FILE, tmp)

    return atomic_write(folder / DIFFUSERS_LORA_FILE, write)


def load_diffusers_lora_into(unet, file: Path, text_encoder=None) -> None:
    """Put the weights of a t2i LoRA file back into the unet's (and text encoder's) peft adapter
    (checkpoint resume)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    tensors = load_file(file)
    state = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
    parts = [(unet, convert_unet_state_dict_to_peft(state))]
    if text_encoder is not None:
        cut = "text_encoder." + text_encoder_prefix(text_encoder)
        parts.append((text_encoder, {k.removeprefix(cut): v for k, v in tensors.items() if k.startswith(cut)}))
    for module, module_state in parts:
        if not module_state:
            raise LoadError(f"holds no LoRA tensors for the {type(module).__name__}", field="resume", value=file)
        result = set_peft_model_state_dict(module, module_state, adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise LoadError(f"{len(unexpected)} LoRA tensors do not fit this model (e.g. {unexpected[0]})",
                            field="resume", value=file)


def kohya_state_dict(module, alpha: float, prefix: str = "lora_unet_", paths: str = "") -> dict:
    """peft LoRA tensors under kohya's names (`lora_unet_<module path with _>`, `lora_te_text_model_...`),
    with true alpha; `paths` is put before each module path (the text encoder's `text_model.`)."""
    import torch
    from peft import get_peft_model_state_dict

    out = {}
    for key, tensor in get_peft_model_state_dict(module).items():
        path, _, kind = key.rpartition(".lora_")  # "...attn2.to_q", "A.weight"
        name = prefix + (paths + path).replace(".", "_")
        out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = tensor.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def save_kohya_lora(unet, file: Path, rank: int, alpha: float, base_model: str, text_encoder=None,
                    training: dict[str, str] | None = None) -> Path:
    """A LoRA file A1111, ComfyUI and kohya's tools load, with the metadata A1111's UI reads; `training`
    adds kohya's `ss_*` record of how it was trained (buckets, optimizer, learning rates)."""
    from safetensors.torch import save_file

    from t2i.formats.hashes import kohya_hashes

    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                "ss_base_model_version": "sd_v1", "ss_output_name": file.stem, "ss_sd_model_name": base_model,
                "ss_training_comment": "trained with t2i", "modelspec.architecture": "stable-diffusion-v1/lora",
                "modelspec.implementation": "https://github.com/huggingface/diffusers",
                "modelspec.title": file.stem, "modelspec.sai_model_spec": "1.0.0", **(training or {})}
    state = kohya_state_dict(unet, alpha)
    if text_encoder is not None:
        state |= kohya_state_dict(text_encoder, alpha, "lora_te_", text_encoder_prefix(text_encoder))
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = kohya_hashes(state, metadata)
    return atomic_write(file, lambda tmp: save_file(state, str(tmp), metadata=metadata))
