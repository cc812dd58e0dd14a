"""What a server can serve: its checkpoints, VAEs and LoRAs by name, and the models it has loaded.

Names resolve only to what is listed (the starting model, the entries of --models-dir, the LoRA
folder), so a request can never make the server open a path of its choosing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from t2i.errors import NotFound
from t2i.formats.embeddings import available_embeddings
from t2i.formats.lora import available_loras
from t2i.models.config import PRESETS
from t2i.server.settings import ServerSettings

AUTOMATIC_VAE = ("Automatic", "None", "")  # A1111's names for "the checkpoint's own VAE"
KEEP_LOADED = 2  # models kept in memory: switching back and forth does not reload


@dataclass(frozen=True)
class Checkpoint:
    title: str  # what clients send back in sd_model_checkpoint
    model_name: str
    source: str  # what ModelConfig.model gets
    filename: str


def _checkpoint(source: str, title: str | None = None) -> Checkpoint:
    path = Path(source).expanduser()
    if source in PRESETS or not path.exists():  # a preset or a hub id
        return Checkpoint(title or source, source, source, source)
    return Checkpoint(title or path.name, path.stem if path.is_file() else path.name, source, str(path.resolve()))


def _strip_hash(name: str) -> str:
    """'model.safetensors [0123456789]' -> 'model.safetensors': clients send titles with hashes."""
    head, sep, tail = name.rpartition(" [")
    return head if sep and tail.endswith("]") else name


class Catalog:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self._loaded: OrderedDict[tuple[str, str | None], object] = OrderedDict()
        self._lock = threading.Lock()

    def checkpoints(self) -> list[Checkpoint]:
        found = [_checkpoint(self.settings.model)]
        folder = Path(self.settings.models_dir).expanduser() if self.settings.models_dir else None
        if folder is not None and folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix == ".safetensors" and path.is_file() or (path / "model_index.json").is_file():
                    found.append(_checkpoint(str(path)))
        return found

    def checkpoint(self, name: str, field: str = "sd_model_checkpoint") -> Checkpoint:
        wanted = _strip_hash(str(name).strip())
        for entry in self.checkpoints():
            if wanted in (entry.title, entry.model_name):
                return entry
        raise NotFound("no such checkpoint on this server", field=field, value=name,
                       choices=[c.title for c in self.checkpoints()][:20], hint="GET /sdapi/v1/sd-models lists them")

    def vaes(self) -> dict[str, Path]:
        folder = Path(self.settings.models_dir).expanduser() / "VAE" if self.settings.models_dir else None
        if folder is None or not folder.is_dir():
            return {}
        return {p.name: p for p in sorted(folder.glob("*.safetensors"))}

    def vae(self, name: str | None, field: str = "sd_vae") -> str | None:
        """The VAE file for an `sd_vae` value; None for the checkpoint's own."""
        if name is None or name in AUTOMATIC_VAE:
            return None
        vaes = self.vaes()
        for key, path in vaes.items():
            if name in (key, Path(key).stem):
                return str(path)
        raise NotFound("no such VAE on this server", field=field, value=name,
                       choices=["Automatic", *vaes], hint="GET /sdapi/v1/sd-vae lists them")

    def loras(self) -> dict[str, Path]:
        return available_loras(self.settings.lora_dir)

    def embeddings(self) -> dict[str, Path]:
        return available_embeddings(self.settings.embeddings_dir) if self.settings.embeddings_dir else {}

    def load(self, checkpoint: Checkpoint, vae: str | None):
        """The loaded model for (checkpoint, VAE), loading it if needed; the last few stay loaded."""
        from t2i.models.loading import load_model

        key = (checkpoint.source, vae)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            model = load_model(self.settings.model_config(checkpoint.source, vae))
            self._loaded[key] = model
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
            return model
