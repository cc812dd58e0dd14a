"""LoRA files: `--lora PATH[:SCALE]` references, and applying them to a pipeline.

diffusers (`pytorch_lora_weights.safetensors`) and kohya/A1111/ComfyUI (`lora_unet_*`) files both
load through diffusers' `load_lora_weights`, which keeps each kohya module's alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from t2i.errors import T2IError, UsageError, first_line

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"


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

    @property
    def file(self) -> Path:
        """The weights file: the path itself, or the diffusers file inside a training output folder."""
        path = Path(self.path).expanduser()
        if path.is_dir():
            path = path / DIFFUSERS_LORA_FILE
        if not path.is_file():
            raise UsageError(f"--lora {self.path}: no such LoRA file (or folder with {DIFFUSERS_LORA_FILE})")
        if path.suffix.lower() != ".safetensors":
            raise UsageError(f"--lora {self.path}: only .safetensors LoRA files are loaded (pickles can run code)")
        return path

    @property
    def name(self) -> str:
        """The name A1111 writes in `<lora:NAME:SCALE>`: the training folder's or file's name."""
        path = Path(self.path).expanduser()
        return path.name if path.is_dir() else path.stem


def apply_loras(pipe, refs: tuple[LoraRef, ...]) -> list[dict]:
    """Load each LoRA as its own adapter at its scale; returns what the metadata records."""
    from t2i.metadata import file_sha256

    applied = []
    for index, ref in enumerate(refs):
        file = ref.file
        adapter = f"lora{index}"
        try:
            pipe.load_lora_weights(str(file), adapter_name=adapter)
        except Exception as exc:  # corrupt or foreign files fail in safetensors, peft or the converters
            pipe.unload_lora_weights()
            raise T2IError(f"--lora {ref.path}: not a LoRA file t2i can load ({first_line(exc)})") from exc
        applied.append({"path": str(file), "name": ref.name, "scale": ref.scale, "adapter": adapter,
                        "hash": file_sha256(file)[:12]})
    if applied:
        pipe.set_adapters([a["adapter"] for a in applied], adapter_weights=[a["scale"] for a in applied])
    return [{k: v for k, v in a.items() if k != "adapter"} for a in applied]
