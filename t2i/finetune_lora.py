"""Fine-tuning an SD 1.x UNet: a peft LoRA (default) or the whole UNet, under accelerate.

The loss is the epsilon (or v) prediction MSE with the model's OWN noise schedule, the one its
sampler uses; CLIP and the VAE stay frozen. Batches, noise and timesteps are pure functions of
(seed, step), which is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, cast_training_params, compute_snr
from tqdm.auto import tqdm

from t2i.checkpoints import check_same_settings, find_checkpoint, read_state, save_checkpoint
from t2i.config import LORA_TARGETS, FinetuneConfig, ModelConfig
from t2i.data_sources import read_collection, select_split
from t2i.errors import T2IError, UsageError
from t2i.lora_files import DIFFUSERS_LORA_FILE, load_diffusers_lora_into, save_diffusers_lora, save_kohya_lora
from t2i.pipelines import load_model
from t2i.train_data import (Augment, EpochSampler, TensorCache, TrainingSet, build_cache, cached_samples,
                            check_images, weights_fingerprint)
from t2i.train_log import LossLog, plot_loss, validation_grid

log = logging.getLogger("t2i")
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# settings a checkpoint must share with the run that resumes it
RESUME_KEYS = ("data", "model", "lora", "lora_targets", "rank", "alpha", "batch_size", "gradient_accumulation",
               "seed", "resolution", "flip", "random_crop", "caption_dropout", "cache")


def _seed_for(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _refuse_isolated_ranks(accelerator: Accelerator) -> None:
    """`accelerate launch --multi_gpu` without GPUs starts N processes that each think they are alone."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise T2IError(f"launched as {launched} processes but they did not form one group (each trains alone); "
                       "on CPUs use `ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node N -m t2i finetune ...`")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "t2i" / "train-cache"


class Trainer:
    """One fine-tuning run; `run()` returns the output folder."""

    def __init__(self, config: FinetuneConfig, progress: bool = True):
        self.config, self.progress = config, progress
        self.out = Path(config.output).expanduser()
        # accelerate keeps its settings in a per-process singleton: forget the previous run's (the process
        # group itself, PartialState, is kept), so a second run in one process gets its own precision
        AcceleratorState._reset_state()
        # None lets `accelerate launch --mixed_precision X` decide; either way weight_dtype follows the result
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="tensorboard",
                                       project_dir=str(self.out))
        _refuse_isolated_ranks(self.accelerator)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        # frozen weights in the compute dtype; trainable ones stay fp32 whichever way precision was set
        self.weight_dtype = WEIGHT_DTYPES[self.accelerator.mixed_precision]
        if self.accelerator.is_main_process and not config.resume and (self.out / "train_config.json").exists():
            raise UsageError(f"--output {self.out} already holds a training run: pass --resume latest to continue "
                             "it, or choose another --output")

    # ---- set-up ---------------------------------------------------------------------------
    def _load_components(self) -> None:
        config = self.config
        model = load_model(ModelConfig(model=config.model, device="cpu", dtype="fp32", offline=config.offline,
                                       allow_pickle=config.allow_pickle))
        pipe = model.pipe
        self.scheduler_config = model.scheduler_config
        self.sampling_scheduler = pipe.scheduler  # saved with a whole-UNet model, as it came
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self.tokenizer, self.text_encoder, self.vae, self.unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
        for frozen in (self.text_encoder, self.vae):
            frozen.requires_grad_(False).to(self.device, self.weight_dtype).eval()
        if config.lora:
            from peft import LoraConfig

            self.unet.requires_grad_(False).to(self.device, self.weight_dtype)
            self.lora_config = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                          target_modules=list(LORA_TARGETS[config.lora_targets]))
            self.unet.add_adapter(self.lora_config)
            cast_training_params(self.unet, dtype=torch.float32)
        else:
            self.unet.to(self.device, torch.float32).requires_grad_(True)
        self.unet.train()
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.ema = EMAModel(self.unet.parameters()) if config.ema else None
        # a list, not a filter(): the optimizer would exhaust an iterator and clipping would see nothing
        self.params = [p for p in self.unet.parameters() if p.requires_grad]

    def _load_data(self) -> None:
        config = self.config
        self.layout, samples = read_collection(config.data, config.data_format)
        train = select_split(samples, "train", config.val_fraction, config.seed)
        if not train:
            raise UsageError(f"--data {config.data}: the {self.layout} layout has no training images")
        augment = Augment(config.resolution, config.random_crop, config.flip, config.caption_dropout)
        cache = vae_id = text_id = None
        if config.cache:
            cache = TensorCache(Path(config.cache_dir).expanduser() if config.cache_dir else _default_cache_dir())
            vae_id = f"{weights_fingerprint(self.vae)}-{self.weight_dtype}"
            text_id = f"{weights_fingerprint(self.text_encoder)}-{len(self.tokenizer)}-{self.weight_dtype}"
            bar = tqdm(total=len(train), desc="caching latents", disable=not self.progress or self.rank != 0)
            reasons = build_cache(train, augment, cache, self.vae, self.text_encoder, self.tokenizer, vae_id, text_id,
                                  self.rank, self.world, progress=bar.update)
            bar.close()
            self.accelerator.wait_for_everyone()
            good = cached_samples(train, augment, cache, vae_id)
            kept = {s.key for s in good}
            self.skipped = {s.key: reasons.get(s.key, "unreadable") for s in train if s.key not in kept}
        else:
            good, self.skipped = check_images(train)
        if not good:
            raise UsageError(f"--data {config.data}: none of the {len(train)} training images could be read")
        self.dataset = TrainingSet(good, augment, config.seed, self.tokenizer, cache, vae_id or "", text_id or "")
        draws = EpochSampler.draws_per_rank(len(good), self.world, config.batch_size)
        self.batches_per_epoch = draws // config.batch_size
        steps_per_epoch = max(1, self.batches_per_epoch // config.gradient_accumulation)
        self.total_steps = config.max_steps or config.epochs * steps_per_epoch

    def _batches(self, first_batch: int):
        """The endless stream of this rank's batches, starting at global batch `first_batch`."""
        epoch, offset = divmod(first_batch, self.batches_per_epoch)
        while True:
            sampler = EpochSampler(len(self.dataset), self.config.seed, epoch, self.rank, self.world,
                                   self.config.batch_size, start=offset * self.config.batch_size)
            loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.config.batch_size, sampler=sampler,
                                                 num_workers=self.config.num_workers)
            yield from loader
            epoch, offset = epoch + 1, 0

    # ---- one step -------------------------------------------------------------------------
    def _loss(self, batch: dict, batch_index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_seed_for(self.config.seed, "noise", batch_index, self.rank))
        with torch.no_grad():
            if "pixels" in batch:
                dist = self.vae.encode(batch["pixels"].to(self.device, self.weight_dtype)).latent_dist
                mean, std = dist.mean, dist.std
                text = self.text_encoder(batch["input_ids"].to(self.device))[0]
            else:
                mean, std = batch["latent_mean"].to(self.device), batch["latent_std"].to(self.device)
                text = batch["text"].to(self.device)
            eps = torch.randn(mean.shape, generator=generator).to(self.device, mean.dtype)
            latents = ((mean + std * eps) * self.vae.config.scaling_factor).float()
            noise = torch.randn(latents.shape, generator=generator).to(self.device)
            if self.config.noise_offset:
                offset = torch.randn(latents.shape[:2] + (1, 1), generator=generator).to(self.device)
                noise = noise + self.config.noise_offset * offset
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      generator=generator).to(self.device)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            prediction_type = self.noise_scheduler.config.prediction_type
            target = noise if prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise,
                                                                                                  timesteps)
        with self.accelerator.autocast():
            prediction = self.unet(noisy.to(self.weight_dtype), timesteps, text.to(self.weight_dtype)).sample
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.config.snr_gamma:
            snr = compute_snr(self.noise_scheduler, timesteps)
            clipped = torch.clamp(snr, max=self.config.snr_gamma)
            per_sample = per_sample * (clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1))
        return per_sample.mean()

    def _optimizer_step(self) -> tuple[float, float]:
        """Clip, step, zero; returns the gradient norm before and after clipping."""
        norm = self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)
        grads = [p.grad.detach().float().norm() for p in self.params if p.grad is not None]
        clipped = torch.stack(grads).norm().item() if grads else 0.0
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        return float(norm), clipped

    # ---- saving ---------------------------------------------------------------------------
    @property
    def trained_unet(self):
        return self.accelerator.unwrap_model(self.unet)

    def _check_ranks_agree(self) -> None:
        """Every rank must end with the same weights; a silent divergence would ship rank 0's alone."""
        digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in self.params)).hexdigest()
        log.info("rank %d of %d: trained weights sha256 %s", self.rank, self.world, digest[:16])
        every_rank = self.accelerator.gather(torch.tensor([int(digest[:15], 16)], device=self.device))
        if (every_rank != every_rank[0]).any():
            raise T2IError(f"the {self.world} processes ended with different weights: the launch did not keep "
                           "them in sync (see the launch forms in the README)")

    def _write_weights(self, folder: Path) -> None:
        if self.config.lora:
            save_diffusers_lora(self.trained_unet, folder, self.lora_config.to_dict())
        else:
            self.trained_unet.save_pretrained(folder / "unet")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), folder / "ema.pt")

    def _checkpoint(self, step: int) -> None:
        def write(folder: Path) -> None:
            self._write_weights(folder)
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), folder / "lr_scheduler.pt")
            if self.accelerator.scaler is not None:
                torch.save(self.accelerator.scaler.state_dict(), folder / "scaler.pt")

        settings = {k: getattr(self.config, k) for k in RESUME_KEYS}
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.out / "checkpoints", step, {"step": step, "settings": settings}, write,
                                   self.config.checkpoints_keep)
            log.info("checkpoint: %s", path)
        self.accelerator.wait_for_everyone()

    def _resume(self) -> int:
        path = find_checkpoint(self.out / "checkpoints", self.config.resume)
        state = read_state(path)
        check_same_settings(path, state, {k: getattr(self.config, k) for k in RESUME_KEYS})
        if self.config.lora:
            load_diffusers_lora_into(self.trained_unet, path / DIFFUSERS_LORA_FILE)
        else:
            from diffusers import UNet2DConditionModel

            self.trained_unet.load_state_dict(UNet2DConditionModel.from_pretrained(path / "unet").state_dict())
            if self.ema is not None:
                self.ema.load_state_dict(torch.load(path / "ema.pt", weights_only=True))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
        if self.accelerator.scaler is not None and (path / "scaler.pt").exists():
            self.accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        log.info("resumed from %s at step %d", path, state["step"])
        return state["step"]

    def _validate(self, step: int) -> None:
        if not self.config.validation_prompts or not self.accelerator.is_main_process:
            return
        unet = self.trained_unet
        unet.eval()
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=unet, scheduler=DPMSolverMultistepScheduler.from_config(
                                           self.scheduler_config), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        with self.accelerator.autocast():
            sheet = validation_grid(pipe, self.config.validation_prompts, self.config.validation_steps,
                                    self.config.seed, self.config.resolution)
        (self.out / "validation").mkdir(parents=True, exist_ok=True)
        sheet.save(self.out / "validation" / f"step-{step:06d}.png")
        unet.train()

    def _finish(self, loss_log: LossLog | None) -> None:
        self._check_ranks_agree()
        if self.accelerator.is_main_process:
            if self.ema is not None:
                self.ema.copy_to(self.trained_unet.parameters())
            if self.config.lora:
                save_diffusers_lora(self.trained_unet, self.out, self.lora_config.to_dict())
                if self.config.export_kohya:
                    save_kohya_lora(self.trained_unet, self.out / f"{self.out.name}.safetensors", self.config.rank,
                                    self.config.lora_alpha, self.config.model)
            else:
                pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                               unet=self.trained_unet, scheduler=self.sampling_scheduler,
                                               safety_checker=None,
                                               feature_extractor=None, requires_safety_checker=False)
                pipe.to(torch.float32).save_pretrained(self.out)
            if loss_log and loss_log.rows():
                plot_loss(loss_log, self.out / "loss.png")
        self._release_process_group()

    def _release_process_group(self) -> None:
        """Tear down in step on every rank. Dropping the DDP wrapper after its process group is gone
        can deadlock with gloo (the group's destructor joins a worker thread that waits for the GIL),
        so the wrapper goes first, while the group and every rank are still there."""
        self.accelerator.wait_for_everyone()
        self.unet = self.trained_unet
        self.accelerator.free_memory()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> Path:
        config = self.config
        self._load_components()
        self._load_data()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr)
        # stepped once per optimizer step on every rank: not prepared, so accelerate does not scale it
        self.lr_scheduler = get_scheduler(config.lr_scheduler, self.optimizer, num_warmup_steps=config.lr_warmup_steps,
                                          num_training_steps=self.total_steps)
        self.unet, self.optimizer = self.accelerator.prepare(self.unet, self.optimizer)
        step = self._resume() if config.resume else 0
        main = self.accelerator.is_main_process
        loss_log = None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            record = {**dataclasses.asdict(config), "layout": self.layout, "images": len(self.dataset),
                      "skipped_images": len(self.skipped), "processes": self.world, "total_steps": self.total_steps}
            (self.out / "train_config.json").write_text(json.dumps(record, indent=2, default=str))
            loss_log = LossLog(self.out / "loss.csv", resume_step=step)
            self.accelerator.init_trackers("t2i-finetune", config={k: v for k, v in record.items()
                                                                   if isinstance(v, (int, float, str, bool))})
        if self.skipped and main:
            log.warning("skipping %d unreadable image(s), e.g. %s", len(self.skipped), next(iter(self.skipped.items())))
        accumulation = config.gradient_accumulation
        batches = self._batches(step * accumulation)
        bar = tqdm(total=self.total_steps, initial=step, desc="fine-tuning", disable=not self.progress or not main)
        started = time.perf_counter()
        while step < self.total_steps:
            losses = []
            for micro in range(accumulation):
                batch_index = step * accumulation + micro
                sync = micro == accumulation - 1
                with nullcontext() if sync else self.accelerator.no_sync(self.unet):
                    loss = self._loss(next(batches), batch_index)
                    every_rank = self.accelerator.gather(loss.detach().reshape(1))
                    if not torch.isfinite(every_rank).all():
                        raise T2IError(f"the loss became {every_rank.tolist()} at step {step + 1}: training stopped "
                                       f"and the last checkpoint in {self.out / 'checkpoints'} is intact; lower "
                                       "--learning-rate, or use --mixed-precision bf16 instead of fp16")
                    self.accelerator.backward(loss / accumulation)
                losses.append(every_rank.mean().item())
            norm, clipped = self._optimizer_step()
            step += 1
            mean_loss = sum(losses) / len(losses)
            if main:
                lr = self.lr_scheduler.get_last_lr()[0]
                loss_log.add(step=step, epoch=(step * accumulation - 1) // self.batches_per_epoch, loss=mean_loss,
                             lr=lr, grad_norm=norm, clipped_grad_norm=clipped,
                             seconds=round(time.perf_counter() - started, 3))
                self.accelerator.log({"loss": mean_loss, "lr": lr, "grad_norm": norm}, step=step)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                bar.update(1)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < self.total_steps:
                self._checkpoint(step)
            if config.validate_every and step % config.validate_every == 0:
                self._validate(step)
        bar.close()
        if not (config.validate_every and step % config.validate_every == 0):
            self._validate(step)
        self._finish(loss_log)
        return self.out


def finetune(config: FinetuneConfig, progress: bool = True) -> Path:
    """Run a fine-tune to completion; returns the output folder."""
    return Trainer(config, progress).run()
