"""ControlNet units at run time: each unit's ControlNet loaded and its map made before any sampling,
then the arguments and the (per-call) ControlNet wrapper the diffusers ControlNet pipelines run with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from t2i.formats.images import load_image
from t2i.models.controlnet import LoadedControlNet, find, load_controlnet
from t2i.sampling.control import ControlUnit, block_scales
from t2i.sampling.control_maps import control_map
from t2i.sampling.record_entries import ControlUse


@dataclass(frozen=True)
class PreparedControl:
    unit: ControlUnit
    controlnet: LoadedControlNet
    map: Image.Image  # what the ControlNet reads, at the output size
    image_hash: str  # of the control image's pixels: a re-make can tell whether it got the same image

    def record(self) -> ControlUse:
        """The unit as an image's settings record it (a path for a file, None for an image in memory)."""
        unit = self.unit
        return ControlUse(
            model=self.controlnet.path, title=self.controlnet.title,
            image=unit.image if isinstance(unit.image, str) else None, image_hash=self.image_hash,
            module=unit.module, weight=unit.weight, resize_mode=unit.resize_mode, processor_res=unit.processor_res,
            threshold_a=unit.threshold_a, threshold_b=unit.threshold_b, guidance_start=unit.guidance_start,
            guidance_end=unit.guidance_end, control_mode=unit.control_mode, pixel_perfect=unit.pixel_perfect)


def image_hash(image: Image.Image) -> str:
    """The first 10 hex of the SHA-256 of the RGB pixels and size (a file and its decoded upload agree)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()[:10]


def prepare_controls(model, units: tuple[ControlUnit, ...], size: tuple[int, int],
                     folder: str | None) -> list[PreparedControl]:
    """Every unit's ControlNet and map, read and checked before any work."""
    prepared = []
    for unit in units:
        image = load_image(unit.image, "control")
        # a name the model already holds (one offered by a training run) is used as it is
        path = unit.model if unit.model in model.controlnets else find(unit.model, folder)
        controlnet = model.controlnets.get(path, lambda: load_controlnet(path, model.pipe.unet, model.config))
        detected = control_map(image, unit.module, size, unit.resize_mode, unit.processor_res, unit.threshold_a,
                               unit.threshold_b, unit.pixel_perfect)
        prepared.append(PreparedControl(unit, controlnet, detected, image_hash(image)))
    return prepared


class UnitNet(torch.nn.Module):
    """One unit's ControlNet as the pipeline calls it, with the unit's control mode applied to its residuals
    (module docstring of t2i.sampling.control). `cfg`: the batch is [unconditional, conditional]."""

    def __init__(self, net, control_mode: str, cfg: bool):
        super().__init__()
        self.net, self.control_mode, self.cfg = net, control_mode, cfg

    @property
    def config(self):
        return self.net.config

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                return_dict=False, **kwargs):
        down, mid = self.net(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                             controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale,
                             return_dict=False, **kwargs)
        if self.control_mode == "Balanced":  # diffusers' own residuals, untouched
            return down, mid
        scales = block_scales(len(down) + 1, self.control_mode)
        residuals = [r * s for r, s in zip([*down, mid], scales)]
        if self.control_mode == "ControlNet is more important" and self.cfg:
            half = sample.shape[0] // 2
            residuals = [torch.cat([torch.zeros_like(r[:half]), r[half:]]) for r in residuals]
        return residuals[:-1], residuals[-1]


def control_net(controls: list[PreparedControl], cfg: bool) -> MultiControlNetModel:
    """A new wrapper for one call over the shared ControlNets: nothing shared is changed."""
    return MultiControlNetModel([UnitNet(c.controlnet.net, c.unit.control_mode, cfg) for c in controls])


def pipeline_arguments(controls: list[PreparedControl], mode: str) -> dict:
    """The ControlNet pipelines' call arguments: txt2img takes the maps as `image`, the others as
    `control_image` (their `image` is the init image)."""
    key = "image" if mode == "txt2img" else "control_image"
    return {key: [c.map for c in controls],
            "controlnet_conditioning_scale": [c.unit.weight for c in controls],
            "control_guidance_start": [c.unit.guidance_start for c in controls],
            "control_guidance_end": [c.unit.guidance_end for c in controls]}
