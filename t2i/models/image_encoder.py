"""Image encoders for IP-Adapters: a CLIP vision model (what h94's adapters read: ViT-H for
ip-adapter_sd15), or the shapes world's feature network (what t2i's shapes adapters read).

Both are presented as diffusers' pipelines expect an `image_encoder` and its `feature_extractor`, so
diffusers' own `encode_image` embeds the reference images for both. An encoder is found where the user
says (`--image-encoder`), else where the adapter file says (t2i's files name theirs), else beside the
adapter as h94's repository lays it out (`image_encoder/` next to the file or one folder up); never
downloaded when offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from t2i.errors import InvalidInput, LoadError, NotFound, T2IError, first_line
from t2i.models.config import ModelConfig
from t2i.models.loading import HUB_ID, download

SHAPE_FEATURES = "shape-features"  # the name of the shipped shapes encoder
CLIP_FILES = ["config.json", "model.safetensors"]


@dataclass(frozen=True)
class LoadedEncoder:
    module: torch.nn.Module  # returns `.image_embeds` (and `.hidden_states` with output_hidden_states)
    processor: object  # images -> `.pixel_values`
    name: str
    path: str
    width: int  # of the image embedding
    hidden_width: int | None  # of the hidden states (None: it has none, so no IP-Adapter Plus)

    @property
    def reference(self) -> str:
        """How an adapter file names it: the shipped shapes network by name, anything else by its path."""
        return SHAPE_FEATURES if self.name == SHAPE_FEATURES else self.path


class ShapeImageEncoder(torch.nn.Module):
    """The shapes feature network (t2i.shapes.features) as a diffusers image encoder."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        if output_hidden_states:
            raise InvalidInput("the shapes feature network has no hidden states for an IP-Adapter Plus",
                               field="image_encoder", value=SHAPE_FEATURES)
        return SimpleNamespace(image_embeds=self.features(pixel_values))


class ShapeImageProcessor:
    """Images -> the network's 32x32 input in [0, 1] (a black image is the zero input, as CLIP's is)."""

    def __call__(self, images, return_tensors: str = "pt"):
        from t2i.shapes.features import to_tensor

        return SimpleNamespace(pixel_values=to_tensor(images if isinstance(images, list) else [images]))


def _shape_features(folder: Path) -> LoadedEncoder:
    from t2i.shapes.features import load_features

    features = load_features(folder)
    return LoadedEncoder(ShapeImageEncoder(features), ShapeImageProcessor(), SHAPE_FEATURES, str(folder),
                         features.colour.in_features, None)


def _clip(folder: Path, model: ModelConfig, name: str) -> LoadedEncoder:
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    if not (folder / "config.json").is_file():
        raise InvalidInput("not an image encoder folder (no config.json)", field="image_encoder", value=folder,
                           hint="give a CLIP vision model's folder, e.g. h94/IP-Adapter's models/image_encoder")
    encoder = CLIPVisionModelWithProjection.from_pretrained(folder, use_safetensors=None if model.allow_pickle
                                                            else True)
    side = encoder.config.image_size  # CLIP's own preprocessing (torchvision-free), at the encoder's size
    processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LoadedEncoder(encoder, processor, name, str(folder), encoder.config.projection_dim,
                         encoder.config.hidden_size)


def load_image_encoder(source: str, model: ModelConfig) -> LoadedEncoder:
    """The encoder at `source` (a folder, a hub id, or `shape-features`), on the CPU in fp32."""
    from t2i.models import SHAPE_FEATURES_DIR

    path = Path(source).expanduser()
    try:
        if source == SHAPE_FEATURES or (path.is_dir() and (path / "recipe.json").is_file()
                                        and not (path / "config.json").is_file()):
            return _shape_features(SHAPE_FEATURES_DIR if source == SHAPE_FEATURES else path)
        if path.is_dir():
            return _clip(path, model, path.name)
        if HUB_ID.match(source) and not path.suffix:
            return _clip(download(source, model, CLIP_FILES, "image_encoder"), model, source)
    except T2IError:
        raise
    except Exception as exc:  # foreign or truncated weights surface as many library error types
        raise LoadError(f"could not load this image encoder ({first_line(exc)})", field="image_encoder",
                        value=source) from exc
    raise NotFound("no such image encoder folder or hub id", field="image_encoder", value=source,
                   hint="give a CLIP vision model's folder (h94/IP-Adapter's models/image_encoder) or shape-features")


def find_image_encoder(adapter_path: str, named: str | None, model: ModelConfig) -> str:
    """The encoder to load for an adapter: the one named (by the user or the file), else the first of
    h94's places that exists; none there is one line naming where t2i looked."""
    if named:
        return named
    folder = Path(adapter_path).expanduser().parent
    looked = [str(folder / "image_encoder"), str(folder.parent / "image_encoder")]
    for place in looked:
        if Path(place).is_dir():
            return place
    raise NotFound(f"no image encoder for this IP-Adapter (looked in {' and '.join(looked)})", field="image_encoder",
                   value=adapter_path, hint="give one with --image-encoder FOLDER (a CLIP vision model)")
