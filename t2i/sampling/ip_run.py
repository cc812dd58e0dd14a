"""IP-Adapter units at run time: each adapter and image encoder loaded, checked and each reference image
embedded before any sampling; then, per call, the adapters installed in the call's own copy of the UNet
(diffusers' `_load_ip_adapter_weights` builds the layers there, so the shared UNet never changes) and the
embeddings handed to the pipeline as `ip_adapter_image_embeds`, once per image, repeated for the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from diffusers import StableDiffusionPipeline

from t2i.errors import InvalidInput
from t2i.formats.images import load_image
from t2i.models.controlnet import find
from t2i.models.image_encoder import LoadedEncoder, find_image_encoder, load_image_encoder
from t2i.models.ip_adapter import LoadedIPAdapter, check_encoder, load_ip_adapter
from t2i.sampling.control_run import image_hash
from t2i.sampling.ip_adapter import IPAdapterUnit, active
from t2i.sampling.record_entries import IPAdapterUse


@dataclass(frozen=True)
class PreparedIPAdapter:
    unit: IPAdapterUnit
    adapter: LoadedIPAdapter
    encoder: LoadedEncoder
    image_hash: str  # of the reference image's pixels
    embeds: torch.Tensor  # (1, ...): the reference image's embedding (or hidden states, for Plus)
    negative: torch.Tensor  # the same for the unconditional half of the CFG batch

    def record(self) -> IPAdapterUse:
        unit = self.unit
        return IPAdapterUse(model=self.adapter.path, title=self.adapter.title,
                            image=unit.image if isinstance(unit.image, str) else None, image_hash=self.image_hash,
                            scale=unit.scale, start=unit.start, end=unit.end, encoder=self.encoder.path,
                            module=module_name(self.encoder))


def module_name(encoder: LoadedEncoder) -> str:
    """A1111's preprocessor name for what embeds the image: its ViT-H CLIP, or t2i's shapes network."""
    return "ip-adapter_shape_features" if encoder.hidden_width is None else "ip-adapter_clip_sd15"


def _place(encoder: LoadedEncoder, model) -> LoadedEncoder:
    encoder.module.to(model.device, model.pipe.unet.dtype).eval().requires_grad_(False)
    return encoder


def embed(encoder: LoadedEncoder, image, device, hidden_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding, unconditional embedding) of one image, by diffusers' own `encode_image` (the one the
    pipelines run when given `ip_adapter_image`): zeros for the plain adapter's unconditional side, the
    encoder's reading of a black image for Plus."""
    holder = SimpleNamespace(image_encoder=encoder.module, feature_extractor=encoder.processor)
    with torch.no_grad():
        return StableDiffusionPipeline.encode_image(holder, image, device, 1, hidden_states)


def prepare_ip_adapters(model, units: tuple[IPAdapterUnit, ...], folder: str | None,
                        encoder_name: str | None) -> list[PreparedIPAdapter]:
    """Every unit's adapter, encoder and embeddings, read and checked before any work. Each adapter file
    and encoder is loaded once per model (`model.adapters`)."""
    prepared = []
    for unit in units:
        image = load_image(unit.image, "ip_image")
        # a name the model already holds (the adapter a training run is validating) is used as it is
        known = adapter_key(unit.model) in model.adapters
        path = unit.model if known else find(unit.model, folder, field="ip_adapter", what="IP-Adapter", hub=False)
        adapter = model.adapters.get(adapter_key(path), lambda: load_ip_adapter(path, model.pipe.unet, model.config))
        if any("lora" in key for key in adapter.state["ip_adapter"]):
            raise InvalidInput("an IP-Adapter FaceID file (its LoRA layers need insightface's face embeddings, "
                               "which t2i does not compute)", field="ip_adapter", value=path)
        source = find_image_encoder(path, encoder_name or adapter.encoder, model.config)
        encoder = model.adapters.get("image-encoder:" + source,
                                     lambda: _place(load_image_encoder(source, model.config), model))
        check_encoder(adapter, encoder)
        embeds, negative = embed(encoder, image, model.device, adapter.uses_hidden_states)
        prepared.append(PreparedIPAdapter(unit, adapter, encoder, image_hash(image), embeds, negative))
    return prepared


def adapter_key(path: str) -> str:
    """An adapter's key in its model's cache (`model.adapters`, which holds image encoders too)."""
    return "ip-adapter:" + path


def batch_embeds(prepared: list[PreparedIPAdapter], count: int, cfg: bool) -> list[torch.Tensor]:
    """`ip_adapter_image_embeds` for a batch of `count` prompts: per adapter, the unconditional half then
    the conditional one when guidance is on, as diffusers' `prepare_ip_adapter_image_embeds` lays them out."""
    embeds = []
    for unit in prepared:
        positive = torch.cat([unit.embeds[None]] * count)
        embeds.append(torch.cat([torch.cat([unit.negative[None]] * count), positive]) if cfg else positive)
    return embeds


class ScaleWindow:
    """Sets each adapter's scale before every UNet call: its scale inside its window, 0 outside (the
    adapters' layers are this call's own). The window counts calls against the pipeline's `num_timesteps`
    (set before its loop; a second-order sampler's extra calls are in it); `reset()` before each call."""

    def __init__(self, unet, units: list[IPAdapterUnit]):
        self.units, self.calls, self.pipe = units, 0, None
        self.processors = [p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip")]
        unet.register_forward_pre_hook(self._before_call)

    def reset(self) -> None:
        self.calls = 0

    def _before_call(self, _module, _args):
        count = max(1, self.pipe.num_timesteps) if self.pipe is not None else 1
        scales = [u.scale if active(u.start, u.end, self.calls, count) else 0.0 for u in self.units]
        for processor in self.processors:
            processor.scale = scales
        self.calls += 1


def install(unet, prepared: list[PreparedIPAdapter]) -> ScaleWindow:
    """Build the adapters' layers in `unet` (a per-call copy) and return the window that sets their scales."""
    unet._load_ip_adapter_weights([p.adapter.state for p in prepared])
    return ScaleWindow(unet, [p.unit for p in prepared])
