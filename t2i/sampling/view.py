"""A per-call view of a loaded model: its own pipeline, sampler and LoRAs over the shared weights.

Two generations on one loaded model (two server requests, two threads) must not see each
other's sampler or LoRA. Each call gets a fresh pipeline object and a fresh scheduler; with
LoRAs, it also gets its own copy of the UNet's and text encoder's module trees, whose parameters
and buffers are the loaded model's own tensors (no weights are copied), so that peft's adapter
layers are injected into the copy and the shared modules never change.
"""

from __future__ import annotations

import copy
import threading

import torch
from diffusers import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPAGInpaintPipeline,
    StableDiffusionControlNetPAGPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPAGImg2ImgPipeline,
    StableDiffusionPAGInpaintPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionPipeline,
)

from t2i.errors import check
from t2i.formats.lora import LoraRef, apply_loras
from t2i.sampling.feature_cache import cached_unet
from t2i.sampling.samplers import build_scheduler

PIPELINES = {"txt2img": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline,
             "inpaint": StableDiffusionInpaintPipeline}
PAG_PIPELINES = {"txt2img": StableDiffusionPAGPipeline, "img2img": StableDiffusionPAGImg2ImgPipeline,
                 "inpaint": StableDiffusionPAGInpaintPipeline}
CONTROL_PAG_PIPELINES = {"txt2img": StableDiffusionControlNetPAGPipeline,
                         "inpaint": StableDiffusionControlNetPAGInpaintPipeline}
CONTROL_PIPELINES = {"txt2img": StableDiffusionControlNetPipeline, "img2img": StableDiffusionControlNetImg2ImgPipeline,
                     "inpaint": StableDiffusionControlNetInpaintPipeline}


class SerialisedTokenizer:
    """The shared tokenizer, one call at a time. A fast tokenizer keeps its padding and truncation
    settings in its Rust backend and sets them at the start of every call, so two threads calling it
    at once can each run with the other's settings: measured, 7 of 3,000 concurrent calls came back
    padded to 77 tokens or not padded against what they asked. Every call that encodes goes through
    one lock per tokenizer; everything else (vocabulary, decoding, attributes) is the tokenizer's own."""

    _ENCODING = ("__call__", "tokenize", "encode", "encode_plus", "batch_encode_plus", "pad")

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._lock = tokenizer.__dict__.setdefault("_t2i_lock", threading.RLock())  # one per tokenizer

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str):
        found = getattr(self._tokenizer, name)
        if name not in self._ENCODING:
            return found

        def serialised(*args, **kwargs):
            with self._lock:
                return found(*args, **kwargs)
        return serialised


def serialised_tokenizer(tokenizer):
    if tokenizer is None or isinstance(tokenizer, SerialisedTokenizer):
        return tokenizer
    return SerialisedTokenizer(tokenizer)


def shared_weights_copy(module):
    """A copy of `module`'s tree of submodules whose parameters and buffers share memory with its own.

    The copy gets new tensor objects over the same storage, not the same objects: peft moves
    the layers it wraps with `.to()`, which re-assigns each parameter's `.data` in place, and doing
    that to a parameter another thread is reading can corrupt that thread's result.
    """
    memo = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b.detach() for b in module.buffers()})
    # accelerate's offload hooks point at the other models (to move them off the GPU): never copy those
    memo.update({id(m._hf_hook): m._hf_hook for m in module.modules() if hasattr(m, "_hf_hook")})
    return copy.deepcopy(module, memo)


def lora_copy(module):
    """A shared-weights copy for peft to wrap, stripped of what LoRA layers cannot run under.

    Fused q/k/v projections would bypass the adapters on to_q/to_k/to_v: the copy goes back to
    separate ones (the fused weights stay the shared model's). The copy also runs uncompiled: a
    compiled graph per LoRA set would mean compiling again for every request. And it carries no
    offload hooks: diffusers' LoRA loader would otherwise strip and re-add the hooks of every
    component in the pipeline, the shared VAE's included.
    """
    from accelerate.hooks import remove_hook_from_module

    copied = shared_weights_copy(module)
    if getattr(copied, "original_attn_processors", None) is not None:  # set by fuse_qkv_projections
        copied.unfuse_qkv_projections()
    remove_hook_from_module(copied, recurse=True)
    return copied


def _offload_copies(components: dict, device) -> None:
    """Model offload for a LoRA view's own copies: the text encoder leaves the GPU when the UNet
    starts, and the UNet copy when the view is dropped after its call."""
    from accelerate import cpu_offload_with_hook

    _, text_hook = cpu_offload_with_hook(components["text_encoder"], device)
    cpu_offload_with_hook(components["unet"], device, prev_module_hook=text_hook)


def call_view(model, mode: str, sampler: str, schedule: str, loras: tuple[LoraRef, ...] = (),
              progress: bool = True, cache_interval: int = 1, controls=(), cfg: bool = True,
              pag_layers: tuple[str, ...] | None = None, ip_adapters=(),
              sag: tuple[float, float, float] | None = None, attention: bool = False):
    """(pipeline for `mode` over `model`'s weights, the LoRAs applied as the metadata records them;
    with `cache_interval` > 1, a UNet that reuses its deep features: t2i.sampling.feature_cache;
    with `controls` (t2i.sampling.control_run.PreparedControl), a ControlNet pipeline whose ControlNet
    is this call's own wrapper of theirs; `cfg`: the call runs classifier-free guidance; with
    `pag_layers`, a PAG pipeline perturbing those layers of this call's own copy of the UNet; with
    `ip_adapters` (t2i.sampling.ip_run.PreparedIPAdapter), their layers built in this call's own copy of
    the UNet, whose scales `pipe.unet.ip_window` sets step by step; with `sag` (scale, mask threshold, blur
    sigma), this call's own copy of the UNet guides itself by SAG: t2i.sampling.sag; with `attention`, its
    cross-attention maps are summed in `pipe.unet.attention_store`: t2i.sampling.attention_maps)."""
    components = dict(model.pipe.components)
    components["scheduler"] = build_scheduler(sampler, schedule, model.scheduler_config)
    components["tokenizer"] = serialised_tokenizer(components["tokenizer"])
    applied = []
    if loras:
        check(model.config.offload != "sequential", "loras", loras[0].path,
              "does not combine with {offload} sequential (its per-layer hooks hold the weights)",
              hint="use {offload} model")
        components["unet"] = lora_copy(components["unet"])
        components["text_encoder"] = lora_copy(components["text_encoder"])
        # LoRAs are loaded into a pipeline of the copies alone, so that no shared module is touched
        loading = PIPELINES["txt2img"](**{**components, "vae": None}, requires_safety_checker=False)
        applied = apply_loras(loading, loras)
        if model.config.offload:
            _offload_copies(components, model.device)
    if cache_interval > 1:
        components["unet"] = cached_unet(components["unet"], cache_interval)
    if controls:
        from t2i.sampling.control_run import control_net

        components["controlnet"] = control_net(list(controls), cfg)
    extra = {}
    if (ip_adapters or sag is not None or pag_layers is not None or attention) and not loras:
        # each changes the UNet's attention processors (or its forward) for the call: on a copy of its own
        components["unet"] = lora_copy(components["unet"])
    window = None
    if ip_adapters:
        from t2i.sampling.ip_run import install

        window = install(components["unet"], list(ip_adapters))
    if sag is not None:
        from t2i.sampling.sag import self_attention_guided

        self_attention_guided(components["unet"], *sag, cfg=cfg, scheduler=components["scheduler"])
    if attention:
        from t2i.sampling.attention_maps import watch_cross_attention

        watch_cross_attention(components["unet"], cfg, pag_layers is not None)
    if pag_layers is not None:  # the PAG pipelines swap the UNet's attention processors during each call
        extra["pag_applied_layers"] = list(pag_layers)
        table = CONTROL_PAG_PIPELINES if controls else PAG_PIPELINES
    else:
        table = CONTROL_PIPELINES if controls else PIPELINES
    pipe = table[mode](**components, requires_safety_checker=False, **extra)
    if window is not None:
        window.pipe = pipe
        pipe.unet.ip_window = window
    pipe.set_progress_bar_config(leave=False, disable=not progress)
    return pipe, applied
