"""Setting up a run: the frozen parts, the trainable UNet (LoRA adapter or whole), the batches."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate.data_loader import skip_first_batches
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel, cast_training_params
from tqdm.auto import tqdm

from t2i.data.buckets import BucketBatches, Bucketing, check_step, smallest_step
from t2i.data.cache import TensorCache, build_cache, cached_samples, weights_fingerprint
from t2i.data.sources import read_collection, select_split
from t2i.data.training_set import Augment, EpochSampler, TrainingSet, check_images, place_samples
from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import LoadedModel, load_model
from t2i.models.speed import check_compile_backend
from t2i.train.config import LORA_TARGETS, TEXT_ENCODER_TARGETS, FinetuneConfig

log = logging.getLogger("t2i")
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Components:
    model: LoadedModel  # the base model; its UNet is the one being trained
    noise_scheduler: DDPMScheduler  # the model's own schedule: training and sampling agree
    lora_config: Any  # peft LoraConfig, or None for a whole-UNet fine-tune
    params: list[torch.nn.Parameter]  # what the optimizer trains: the UNet's, then the text encoder's
    ema: EMAModel | None
    text_lora_config: Any = None  # the text encoder's LoraConfig when it is trained too
    text_params: list[torch.nn.Parameter] = dataclasses.field(default_factory=list)
    controlnet: Any = None  # the ControlNet being trained (the UNet is then frozen)
    ip_adapter: Any = None  # the IP-Adapter layers being trained, inside the frozen UNet (t2i.train.ip_adapter)
    image_encoder: Any = None  # t2i.models.image_encoder.LoadedEncoder: embeds the training images (frozen)

    def param_groups(self, config: FinetuneConfig) -> list[dict]:
        """The optimizer's groups: the UNet's weights at --learning-rate, the text encoder's at its own."""
        groups = [{"params": self.params[:len(self.params) - len(self.text_params)], "lr": config.lr}]
        if self.text_params:
            groups.append({"params": self.text_params, "lr": config.te_lr})
        return groups


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
    lora_config, controlnet, ip_adapter, encoder = None, None, None, None
    if config.ip_adapter:
        from t2i.models.image_encoder import load_image_encoder
        from t2i.train.ip_adapter import AdapterInUNet, new_ip_layers

        encoder = load_image_encoder(str(config.image_encoder), model.config)
        place(encoder.module.requires_grad_(False), weight_dtype).eval()
        place(pipe.unet.requires_grad_(False), weight_dtype)
        new_ip_layers(pipe.unet, encoder.width, seed=config.seed)
        ip_adapter = AdapterInUNet(pipe.unet).to(device)
    elif config.controlnet:
        from t2i.train.controlnet import embedding_channels, new_controlnet

        place(pipe.unet.requires_grad_(False), weight_dtype)
        controlnet = new_controlnet(pipe.unet, embedding_channels(pipe.vae_scale_factor), seed=config.seed)
        place(controlnet, torch.float32).train()
    elif config.lora:
        from peft import LoraConfig

        place(pipe.unet.requires_grad_(False), weight_dtype)
        lora_config = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                 target_modules=list(LORA_TARGETS[config.lora_targets]))
        pipe.unet.add_adapter(lora_config)
        cast_training_params(pipe.unet, dtype=torch.float32)
    else:
        place(pipe.unet, torch.float32).requires_grad_(True)
    pipe.unet.train()
    text_lora_config, text_params = None, []
    if config.train_text_encoder:
        from peft import LoraConfig, inject_adapter_in_model

        text_lora_config = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                      target_modules=list(TEXT_ENCODER_TARGETS))
        # peft's own injection: transformers' add_adapter wants a newer peft than diffusers' range allows
        inject_adapter_in_model(text_lora_config, pipe.text_encoder)
        cast_training_params(pipe.text_encoder, dtype=torch.float32)
        pipe.text_encoder.train()
        text_params = [p for p in pipe.text_encoder.parameters() if p.requires_grad]
    networks = [pipe.unet] if controlnet is None else [pipe.unet, controlnet]
    for network in networks:
        if config.gradient_checkpointing:
            network.enable_gradient_checkpointing()
        if config.channels_last:
            network.to(memory_format=torch.channels_last)
        if config.compile:  # in place: the module keeps its type and state-dict keys: saving and resuming are unchanged
            network.compile(backend=COMPILE_BACKEND)  # inductor's default mode: autotuning would add minutes
    # a list, not a filter(): the optimizer would exhaust an iterator and clipping would see nothing
    trained = controlnet if controlnet is not None else ip_adapter if ip_adapter is not None else pipe.unet
    params = [p for p in trained.parameters() if p.requires_grad] + text_params
    return Components(model, DDPMScheduler.from_config(model.scheduler_config), lora_config, params,
                      EMAModel(pipe.unet.parameters()) if config.ema else None, text_lora_config, text_params,
                      controlnet, ip_adapter, encoder)


@dataclass
class TrainData:
    layout: str
    dataset: TrainingSet
    skipped: dict[str, str]  # image key -> why it could not be read
    batches_per_epoch: int  # per rank
    bucket_batches: BucketBatches | None = None  # with --buckets: each batch from one bucket


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "t2i" / "train-cache"


def bucketing_of(config: FinetuneConfig, pipe) -> Bucketing:
    """The run's bucket settings, its step checked against what the model's downsampling takes."""
    down_blocks = len(pipe.unet.config.down_block_types)
    check_step(config.bucket_step, smallest_step(pipe.vae_scale_factor, down_blocks))
    return Bucketing((config.resolution, config.resolution), config.bucket_min, config.bucket_max,
                     config.bucket_step, config.bucket_no_upscale)


def load_data(config: FinetuneConfig, parts: Components, accelerator, progress: bool) -> TrainData:
    """The training split, readable images only; with the cache, every latent (and, unless the text
    encoder is trained, every caption) encoded once; with buckets, each image placed in its bucket."""
    pipe, rank, world = parts.model.pipe, accelerator.process_index, accelerator.num_processes
    layout, samples = read_collection(config.data, config.data_format, config.control_column)
    train = select_split(samples, "train", config.val_fraction, config.seed)
    if not train:
        raise InvalidInput(f"the {layout} layout has no training images", field="data", value=config.data)
    without_control = {}
    if config.controlnet:  # a ControlNet learns from (image, control image) pairs: the others are left out
        without_control = {s.key: "no control image" for s in train if s.conditioning is None}
        train = [s for s in train if s.conditioning is not None]
        if not train:
            raise InvalidInput(f"none of its training images has a control image ({config.control_column!r} in "
                               "its captions file, or a twin in its conditioning/ folder)", field="data",
                               value=config.data, hint="name the column with {control_column}")
    augment = Augment(config.resolution, config.random_crop, config.flip, config.caption_dropout)
    placements = None
    candidates = train
    if config.buckets:
        candidates, placements = place_samples(train, bucketing_of(config, pipe))
    cache, vae_id, text_id = None, "", ""
    if config.cache:
        cache = TensorCache(Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir())
        dtype = pipe.vae.dtype
        vae_id = f"{weights_fingerprint(pipe.vae)}-{dtype}"
        if not config.train_text_encoder:
            text_id = f"{weights_fingerprint(pipe.text_encoder)}-{len(pipe.tokenizer)}-{dtype}"
        elif rank == 0:
            log.info("the text encoder is trained, so its embeddings change every step: only the latents are cached")
        bar = tqdm(total=len(candidates), desc="caching latents", disable=not progress or rank != 0)
        reasons = build_cache(candidates, augment, cache, pipe.vae, pipe.text_encoder, pipe.tokenizer, vae_id,
                              text_id, rank, world, progress=bar.update, placements=placements)
        bar.close()
        accelerator.wait_for_everyone()
        good = cached_samples(candidates, augment, cache, vae_id, placements)
        kept = {s.key for s in good}
        skipped = {s.key: reasons.get(s.key, "unreadable") for s in train if s.key not in kept}
    else:
        good, skipped = check_images(candidates)
        placed = {s.key for s in candidates}
        skipped |= {s.key: "unreadable" for s in train if s.key not in placed}
    if not good:
        raise InvalidInput(f"none of the {len(train)} training images could be read", field="data", value=config.data)
    skipped |= without_control
    dataset = TrainingSet(good, augment, config.seed, pipe.tokenizer, cache, vae_id, text_id, placements,
                          controls=config.controlnet,
                          references=parts.image_encoder.processor if parts.image_encoder is not None else None)
    if placements is not None:
        grouped = BucketBatches([placements[s.key].bucket for s in good], config.batch_size, config.seed, world)
        return TrainData(layout, dataset, skipped, grouped.per_rank(), grouped)
    draws = EpochSampler.draws_per_rank(len(good), world, config.batch_size)
    return TrainData(layout, dataset, skipped, draws // config.batch_size)


def batches(data: TrainData, config: FinetuneConfig, rank: int, world: int, first_batch: int) -> Iterator[dict]:
    """The endless stream of this rank's batches, starting at global batch `first_batch` (resume)."""
    epoch, offset = divmod(first_batch, data.batches_per_epoch)
    while True:
        if data.bucket_batches is not None:  # the epoch's batch list is known: a resume skips without loading
            chosen = data.bucket_batches.for_rank(epoch, rank)[offset:]
            loader = torch.utils.data.DataLoader(data.dataset, batch_sampler=[[(epoch, i) for i in b] for b in chosen],
                                                 num_workers=config.num_workers)
            yield from loader
        else:
            sampler = EpochSampler(len(data.dataset), config.seed, epoch, rank, world, config.batch_size)
            loader = torch.utils.data.DataLoader(data.dataset, batch_size=config.batch_size, sampler=sampler,
                                                 num_workers=config.num_workers)
            yield from skip_first_batches(loader, offset) if offset else loader
        epoch, offset = epoch + 1, 0
