"""Setting up a run: the frozen parts, the trainable UNet (LoRA adapter or whole), the batches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate.data_loader import skip_first_batches
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel, cast_training_params
from tqdm.auto import tqdm

from t2i.data.cache import TensorCache, build_cache, cached_samples, weights_fingerprint
from t2i.data.sources import read_collection, select_split
from t2i.data.training_set import Augment, EpochSampler, TrainingSet, check_images
from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import LoadedModel, load_model
from t2i.models.speed import check_compile_backend
from t2i.train.config import LORA_TARGETS, FinetuneConfig

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Components:
    model: LoadedModel  # the base model; its UNet is the one being trained
    noise_scheduler: DDPMScheduler  # the model's own schedule: training and sampling agree
    lora_config: Any  # peft LoraConfig, or None for a whole-UNet fine-tune
    params: list[torch.nn.Parameter]  # what the optimizer trains
    ema: EMAModel | None


COMPILE_BACKEND = "inductor"


def load_components(config: FinetuneConfig, device: torch.device, weight_dtype: torch.dtype) -> Components:
    """Frozen parts in the compute dtype; trainable weights stay fp32 whichever way precision was set."""
    if config.compile:  # a missing compiler is known before any weight is read
        check_compile_backend(device)
    model = load_model(ModelConfig(model=config.model, device="cpu", dtype="fp32", offline=config.offline,
                                   allow_pickle=config.allow_pickle))
    pipe = model.pipe
    def place(module, dtype):  # dtype only where it changes: diffusers warns whenever one is passed
        return module.to(device) if module.dtype == dtype else module.to(device, dtype)

    for frozen in (pipe.text_encoder, pipe.vae):
        place(frozen.requires_grad_(False), weight_dtype).eval()
    lora_config = None
    if config.lora:
        from peft import LoraConfig

        place(pipe.unet.requires_grad_(False), weight_dtype)
        lora_config = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                 target_modules=list(LORA_TARGETS[config.lora_targets]))
        pipe.unet.add_adapter(lora_config)
        cast_training_params(pipe.unet, dtype=torch.float32)
    else:
        place(pipe.unet, torch.float32).requires_grad_(True)
    pipe.unet.train()
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    if config.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if config.compile:  # in place: the module keeps its type and state-dict keys, so saving and resuming are unchanged
        pipe.unet.compile(backend=COMPILE_BACKEND)  # inductor's default mode: autotuning would add minutes
    # a list, not a filter(): the optimizer would exhaust an iterator and clipping would see nothing
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    return Components(model, DDPMScheduler.from_config(model.scheduler_config), lora_config, params,
                      EMAModel(pipe.unet.parameters()) if config.ema else None)


@dataclass
class TrainData:
    layout: str
    dataset: TrainingSet
    skipped: dict[str, str]  # image key -> why it could not be read
    batches_per_epoch: int  # per rank


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "t2i" / "train-cache"


def load_data(config: FinetuneConfig, parts: Components, accelerator, progress: bool) -> TrainData:
    """The training split, readable images only; with the cache, every latent and caption encoded once."""
    pipe, rank, world = parts.model.pipe, accelerator.process_index, accelerator.num_processes
    layout, samples = read_collection(config.data, config.data_format)
    train = select_split(samples, "train", config.val_fraction, config.seed)
    if not train:
        raise InvalidInput(f"the {layout} layout has no training images", field="data", value=config.data)
    augment = Augment(config.resolution, config.random_crop, config.flip, config.caption_dropout)
    cache, vae_id, text_id = None, "", ""
    if config.cache:
        cache = TensorCache(Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir())
        dtype = pipe.vae.dtype
        vae_id = f"{weights_fingerprint(pipe.vae)}-{dtype}"
        text_id = f"{weights_fingerprint(pipe.text_encoder)}-{len(pipe.tokenizer)}-{dtype}"
        bar = tqdm(total=len(train), desc="caching latents", disable=not progress or rank != 0)
        reasons = build_cache(train, augment, cache, pipe.vae, pipe.text_encoder, pipe.tokenizer, vae_id, text_id,
                              rank, world, progress=bar.update)
        bar.close()
        accelerator.wait_for_everyone()
        good = cached_samples(train, augment, cache, vae_id)
        kept = {s.key for s in good}
        skipped = {s.key: reasons.get(s.key, "unreadable") for s in train if s.key not in kept}
    else:
        good, skipped = check_images(train)
    if not good:
        raise InvalidInput(f"none of the {len(train)} training images could be read", field="data", value=config.data)
    dataset = TrainingSet(good, augment, config.seed, pipe.tokenizer, cache, vae_id, text_id)
    draws = EpochSampler.draws_per_rank(len(good), world, config.batch_size)
    return TrainData(layout, dataset, skipped, draws // config.batch_size)


def batches(data: TrainData, config: FinetuneConfig, rank: int, world: int, first_batch: int) -> Iterator[dict]:
    """The endless stream of this rank's batches, starting at global batch `first_batch` (resume)."""
    epoch, offset = divmod(first_batch, data.batches_per_epoch)
    while True:
        sampler = EpochSampler(len(data.dataset), config.seed, epoch, rank, world, config.batch_size)
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=config.batch_size, sampler=sampler,
                                             num_workers=config.num_workers)
        yield from skip_first_batches(loader, offset) if offset else loader
        epoch, offset = epoch + 1, 0
