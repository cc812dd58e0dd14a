"""A per-call view of a loaded model: its own pipeline, sampler and LoRAs over the shared weights.

Two generations on one loaded model (two server requests, two threads) must not see each
other's sampler or LoRA. Each call gets a fresh pipeline object and a fresh scheduler; with
LoRAs, it also gets its own copy of the UNet's and text encoder's module trees, whose parameters
and buffers are the loaded model's own tensors (no weights are copied), so that peft's adapter
layers are injected into the copy and the shared modules never change.
"""

from __future__ import annotations

import copy

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

from t2i.formats.lora import LoraRef, apply_loras
from t2i.sampling.samplers import build_scheduler

PIPELINES = {"txt2img": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline,
             "inpaint": StableDiffusionInpaintPipeline}


def shared_weights_copy(module):
    """A copy of `module`'s tree of submodules whose parameters and buffers share memory with its own.

    The copy gets new tensor objects over the same storage, not the same objects: peft moves
    the layers it wraps with `.to()`, which re-assigns each parameter's `.data` in place, and doing
    that to a parameter another thread is reading can corrupt that thread's result.
    """
    memo = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b.detach() for b in module.buffers()})
    return copy.deepcopy(module, memo)


def call_view(model, mode: str, sampler: str, schedule: str, loras: tuple[LoraRef, ...] = (),
              progress: bool = True):
    """(pipeline for `mode` over `model`'s weights, the LoRAs applied as the metadata records them)."""
    components = dict(model.pipe.components)
    if loras:
        components["unet"] = shared_weights_copy(components["unet"])
        components["text_encoder"] = shared_weights_copy(components["text_encoder"])
    components["scheduler"] = build_scheduler(sampler, schedule, model.scheduler_config)
    pipe = PIPELINES[mode](**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(leave=False, disable=not progress)
    return pipe, apply_loras(pipe, loras)
