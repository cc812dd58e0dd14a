"""The fine-tuning loop, under accelerate: set up, step, checkpoint, finish.

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
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from t2i.errors import InvalidInput, LoadError, TrainingError, first_line, require_extra
from t2i.files import atomic_write, write_text
from t2i.train.checkpoints import (
    check_same_settings,
    install_weight_hooks,
    read_state,
    resume_candidates,
    save_checkpoint,
)
from t2i.train.components import (
    WEIGHT_DTYPES,
    Components,
    TrainData,
    batches,
    bucketing_of,
    load_components,
    load_data,
)
from t2i.train.config import FinetuneConfig
from t2i.train.optimizers import kohya_name, make_optimizer, optimizer_class, optimizer_kwargs
from t2i.train.outputs import (
    LossLog,
    kohya_training_metadata,
    load_weights,
    plot_loss,
    save_final,
    save_weights,
    validation_grid,
)
from t2i.train.step import training_loss
from t2i.train.validation import held_out_set, validation_loss

log = logging.getLogger("t2i")
# settings a checkpoint must share with the run that resumes it: what the batches are drawn from,
# and how each step trains (a changed learning rate would be recorded but not used: the
# optimizer's saved state carries the old one)
RESUME_KEYS = ("data", "model", "lora", "lora_targets", "rank", "alpha", "batch_size", "gradient_accumulation",
               "seed", "resolution", "flip", "random_crop", "caption_dropout", "cache", "learning_rate",
               "lr_scheduler", "lr_warmup_steps", "max_grad_norm", "snr_gamma", "noise_offset", "ema",
               "buckets", "bucket_min", "bucket_max", "bucket_step", "bucket_no_upscale", "train_text_encoder",
               "text_encoder_lr", "optimizer", "optimizer_args", "controlnet", "control_column",
               "ip_adapter", "image_encoder", "ip_image_dropout")


def _refuse_isolated_ranks(accelerator: Accelerator) -> None:
    """`accelerate launch --multi_gpu` without GPUs starts N processes that each think they are alone."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise TrainingError(f"launched as {launched} processes but they did not form one group (each trains alone)",
                            hint="on CPUs use `ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node N "
                                 "-m t2i finetune ...`")


class Trainer:
    """One fine-tuning run; `run()` returns the output folder."""

    def __init__(self, config: FinetuneConfig, progress: bool = True):
        require_extra("train", "tensorboard", "matplotlib")
        self.config, self.progress = config, progress
        self.out = Path(config.output).expanduser()
        # accelerate keeps its settings in a per-process singleton: forget the previous run's (the process
        # group itself, PartialState, is kept), so a second run in one process gets its own precision
        AcceleratorState._reset_state()
        # None lets `accelerate launch --mixed_precision X` decide; either way weight_dtype follows the result
        # accumulate(): no gradient sync between micro-batches, and backward() divides each loss by the count
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="tensorboard",
                                       project_dir=str(self.out),
                                       gradient_accumulation_steps=config.gradient_accumulation)
        _refuse_isolated_ranks(self.accelerator)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.weight_dtype = WEIGHT_DTYPES[self.accelerator.mixed_precision]
        if self.main and not config.resume and (self.out / "train_config.json").exists():
            raise InvalidInput("already holds a training run", field="output", value=self.out,
                               hint="resume it ({resume} latest) or choose another output folder")
        # the optimizer's package, device and argument names are known before any weight is read
        optimizer_kwargs(config.optimizer, config.optimizer_args,
                         optimizer_class(config.optimizer, self.accelerator.device.type))

    @property
    def trained_unet(self):
        return self.parts.model.pipe.unet  # the module itself; accelerate's DDP wrapper only wraps it

    @property
    def trained_modules(self) -> tuple:
        """What backward reaches: the prepared UNet or ControlNet, and the prepared text encoder when trained."""
        if self.controlnet is not None:
            return (self.controlnet,)
        if self.ip_adapter is not None:
            return (self.ip_adapter,)
        return (self.unet,) if self.text_encoder is None else (self.unet, self.text_encoder)

    # ---- set-up ---------------------------------------------------------------------------
    def _setup(self) -> None:
        config = self.config
        self.parts: Components = load_components(config, self.accelerator.device, self.weight_dtype)
        self.data: TrainData = load_data(config, self.parts, self.accelerator, self.progress)
        steps_per_epoch = max(1, self.data.batches_per_epoch // config.gradient_accumulation)
        self.total_steps = config.max_steps or config.epochs * steps_per_epoch
        self.optimizer = make_optimizer(config.optimizer, config.optimizer_args, self.parts.param_groups(config),
                                        self.accelerator.device.type)
        # stepped once per optimizer step on every rank: not prepared, so accelerate does not scale it
        self.lr_scheduler = get_scheduler(config.lr_scheduler, self.optimizer, num_warmup_steps=config.lr_warmup_steps,
                                          num_training_steps=self.total_steps)
        self.text_encoder, self.controlnet, self.ip_adapter = None, None, None
        if config.ip_adapter:  # the UNet is frozen: only the adapter layers' gradients are synced
            self.unet = self.parts.model.pipe.unet
            self.ip_adapter, self.optimizer = self.accelerator.prepare(self.parts.ip_adapter, self.optimizer)
        elif config.controlnet:  # the UNet is frozen: only the ControlNet's gradients are synced
            self.unet = self.parts.model.pipe.unet
            self.controlnet, self.optimizer = self.accelerator.prepare(self.parts.controlnet, self.optimizer)
        elif config.train_text_encoder:  # prepared too, so that its gradients are synced across processes
            self.unet, self.text_encoder, self.optimizer = self.accelerator.prepare(
                self.parts.model.pipe.unet, self.parts.model.pipe.text_encoder, self.optimizer)
        else:
            self.unet, self.optimizer = self.accelerator.prepare(self.parts.model.pipe.unet, self.optimizer)
        self.held_out = None
        if config.validation_loss_every and self.main:  # encoded once; other ranks never wait on it
            bucketing = bucketing_of(config, self.parts.model.pipe) if config.buckets else None
            self.held_out = held_out_set(config, self.parts.model.pipe, self.parts.noise_scheduler,
                                         self.accelerator.device, bucketing, self.parts.image_encoder)
        parts = self.parts
        install_weight_hooks(self.accelerator, lambda folder: save_weights(folder, parts, parts.ema),
                             lambda folder: load_weights(folder, parts, parts.ema))

    def _settings(self) -> dict:
        """The resume keys as a checkpoint's JSON holds them (tuples as lists)."""
        return json.loads(json.dumps({k: getattr(self.config, k) for k in RESUME_KEYS}))

    def _resume(self) -> int:
        """The step to go on from: the named checkpoint, or with 'latest' the newest intact one."""
        candidates = resume_candidates(self.out / "checkpoints", self.config.resume or "latest")
        for path in candidates:
            try:
                state = read_state(path)
                check_same_settings(path, state, self._settings(), self._defaults())
                self.accelerator.load_state(str(path))  # overwrites all it loads: a failed try leaves no trace
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            except InvalidInput:
                raise
            except Exception as exc:  # a truncated or damaged file surfaces as many library error types
                if self.config.resume != "latest":
                    raise LoadError(f"the checkpoint is damaged ({first_line(exc)})", field="resume", value=path,
                                    hint="resume from 'latest' or another checkpoint folder") from exc
                log.warning("checkpoint %s is damaged (%s): trying the one before it", path.name, first_line(exc))
                continue
            log.info("resumed from %s at step %d", path, state["step"])
            return state["step"]
        # killed before its first checkpoint (or every one is damaged): nothing is lost by starting over here
        log.warning("no intact checkpoint in %s: starting from step 0 in the same folder", self.out / "checkpoints")
        return 0

    @staticmethod
    def _defaults() -> dict:
        """What a checkpoint written before a setting existed ran with: that setting's default."""
        defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)
                    if f.name in RESUME_KEYS and f.default is not dataclasses.MISSING}
        return json.loads(json.dumps(defaults))

    def _checkpoint(self, step: int) -> None:
        state = {"step": step, "settings": self._settings(), "lr_scheduler": self.lr_scheduler.state_dict()}
        save_checkpoint(self.accelerator, self.out / "checkpoints", step, state, self.config.checkpoints_keep)

    def _start_logs(self, step: int) -> LossLog | None:
        if not self.main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        record = {**dataclasses.asdict(self.config), "layout": self.data.layout, "images": len(self.data.dataset),
                  "skipped_images": len(self.data.skipped), "processes": self.world, "total_steps": self.total_steps,
                  "learning_rates": {"unet": self.config.lr, "text_encoder": self.config.te_lr
                                     if self.config.train_text_encoder else None},
                  "optimizer_class": kohya_name(self.config.optimizer, self.config.optimizer_args),
                  "bucket_info": self._bucket_info()}
        write_text(self.out / "train_config.json", json.dumps(record, indent=2, default=str))
        self.accelerator.init_trackers("t2i-finetune", config={k: v for k, v in record.items()
                                                               if isinstance(v, (int, float, str, bool))})
        if self.data.skipped:
            log.warning("skipping %d unreadable image(s), e.g. %s", len(self.data.skipped),
                        next(iter(self.data.skipped.items())))
        return LossLog(self.out / "loss.csv", resume_step=step)

    def _bucket_placements(self) -> list | None:
        placements = self.data.dataset.placements
        return None if placements is None else [placements[s.key] for s in self.data.dataset.samples]

    def _bucket_info(self) -> dict | None:
        from t2i.data.buckets import bucket_info

        placements = self._bucket_placements()
        return None if placements is None else bucket_info(placements)

    # ---- one optimizer step ---------------------------------------------------------------
    def _step(self, step: int, stream) -> tuple[float, float, float]:
        """Accumulate, clip, step; returns (mean loss over ranks and micro-batches, grad norm, clipped norm)."""
        accumulation, losses = self.config.gradient_accumulation, []
        for micro in range(accumulation):
            with self.accelerator.accumulate(*self.trained_modules):  # gradients synced on the last micro-batch
                loss = training_loss(self.unet, self.parts, self.config, next(stream), step * accumulation + micro,
                                     self.rank, self.accelerator, self.text_encoder, self.controlnet,
                                     self.ip_adapter)
                self.accelerator.backward(loss)
            losses.append(loss.detach())
        every_rank = self.accelerator.gather(torch.stack(losses))  # once a step, not once a micro-batch
        if not torch.isfinite(every_rank).all():  # before the optimizer step: the weights are still good
            raise TrainingError(f"the loss became {every_rank.tolist()} at step {step + 1}: training stopped "
                                f"and the last checkpoint in {self.out / 'checkpoints'} is intact",
                                hint="lower {learning_rate}, or use bf16 instead of fp16 mixed precision")
        norm = self.accelerator.clip_grad_norm_(self.parts.params, self.config.max_grad_norm)
        grads = [p.grad.detach().float().norm() for p in self.parts.params if p.grad is not None]
        clipped = torch.stack(grads).norm().item() if grads else 0.0
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.parts.ema is not None:
            self.parts.ema.step(self.parts.params)
        return every_rank.float().mean().item(), float(norm), clipped

    def _validation_loss(self, step: int) -> float | str:
        """The held-out loss at this step, when one is due ("" otherwise, an empty loss.csv cell)."""
        every = self.config.validation_loss_every
        if self.held_out is None or not (step % every == 0 or step == self.total_steps):
            return ""
        text_encoder = self.parts.model.pipe.text_encoder if self.config.train_text_encoder else None
        value = validation_loss(self.trained_unet, self.held_out, self.parts.noise_scheduler, self.accelerator.autocast,
                                text_encoder, self.parts.controlnet)
        self.accelerator.log({"val_loss": value}, step=step)
        return value

    # ---- finishing ------------------------------------------------------------------------
    def _validate(self, step: int) -> None:
        if not self.config.validation_prompts or not self.main:
            return
        pipe, controlnet = self.parts.model.pipe, self.parts.controlnet
        for module in (pipe.unet, pipe.text_encoder, controlnet):
            if module is not None:
                module.eval()
        with self.accelerator.autocast():
            sheet = validation_grid(self.parts.model, self.config.validation_prompts, self.config.validation_steps,
                                    self.config.seed, self.config.resolution, controlnet,
                                    self.config.validation_controls, self._validation_ip_units())
        atomic_write(self.out / "validation" / f"step-{step:06d}.png", lambda tmp: sheet.save(tmp, format="PNG"))
        pipe.unet.train()
        pipe.text_encoder.train(self.config.train_text_encoder)
        if controlnet is not None:
            controlnet.train()

    def _validation_ip_units(self) -> tuple:
        """The adapter as it is now, offered to generation, read by each validation prompt's picture."""
        if not self.config.ip_adapter or not self.config.validation_ip_images:
            return ()
        from t2i.models.ip_adapter import TRAINING_ADAPTER, training_snapshot
        from t2i.sampling.ip_adapter import IPAdapterUnit
        from t2i.sampling.ip_run import adapter_key

        snapshot = training_snapshot(self.trained_unet, str(self.config.image_encoder))
        self.parts.model.adapters.put(adapter_key(TRAINING_ADAPTER), snapshot)
        return tuple(IPAdapterUnit(TRAINING_ADAPTER, image) for image in self.config.validation_ip_images)

    def _check_ranks_agree(self) -> None:
        """Every rank must end with the same weights; a silent divergence would ship rank 0's alone."""
        hasher = hashlib.sha256()
        for parameter in self.parts.params:  # one tensor's bytes at a time, never all of them joined
            hasher.update(parameter.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
        digest = hasher.hexdigest()
        log.info("rank %d of %d: trained weights sha256 %s", self.rank, self.world, digest[:16])
        every_rank = self.accelerator.gather(torch.tensor([int(digest[:15], 16)], device=self.accelerator.device))
        if (every_rank != every_rank[0]).any():
            raise TrainingError(f"the {self.world} processes ended with different weights: the launch did not keep "
                                "them in sync (see the launch forms in the README)")

    def _finish(self, loss_log: LossLog | None) -> None:
        self._check_ranks_agree()
        if self.main:
            if self.parts.ema is not None:
                self.parts.ema.copy_to(self.trained_unet.parameters())
            save_final(self.out, self.parts, self.config,
                       kohya_training_metadata(self.config, self._bucket_placements(),
                                               kohya_name(self.config.optimizer, self.config.optimizer_args)))
            if loss_log and loss_log.rows():
                plot_loss(loss_log, self.out / "loss.png")
        # Tear down in step on every rank. Dropping the DDP wrapper after its process group is gone can
        # deadlock with gloo (the group's destructor joins a worker thread that waits for the GIL), so
        # the wrapper goes first, while the group and every rank are still there.
        self.accelerator.wait_for_everyone()
        self.unet = self.trained_unet
        self.text_encoder, self.controlnet, self.ip_adapter = None, None, None
        self.accelerator.free_memory()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> Path:
        config = self.config
        self._setup()
        step = self._resume() if config.resume else 0
        loss_log = self._start_logs(step)
        bar = tqdm(total=self.total_steps, initial=step, desc="fine-tuning", disable=not self.progress or not self.main)
        try:
            step = self._train(step, loss_log, bar)
        finally:  # the bar ends its line however training ends: an error or Ctrl-C is said on a line of its own
            bar.close()
        if not (config.validate_every and step % config.validate_every == 0):
            self._validate(step)
        self._finish(loss_log)
        return self.out

    def _train(self, step: int, loss_log: LossLog | None, bar) -> int:
        """Optimizer steps from `step` to the end, with their logs, checkpoints and validation grids."""
        config = self.config
        stream = batches(self.data, config, self.rank, self.world, step * config.gradient_accumulation)
        started = time.perf_counter()
        if step == 0 and self.held_out is not None and loss_log is not None:  # where training starts from
            loss_log.add(step=0, val_loss=self._validation_loss(0))
        while step < self.total_steps:
            loss, norm, clipped = self._step(step, stream)
            step += 1
            if loss_log is not None:  # the main process logs
                lr = self.lr_scheduler.get_last_lr()[0]
                epoch = (step * config.gradient_accumulation - 1) // self.data.batches_per_epoch
                loss_log.add(step=step, epoch=epoch, loss=loss, lr=lr, grad_norm=norm, clipped_grad_norm=clipped,
                             seconds=round(time.perf_counter() - started, 3), val_loss=self._validation_loss(step))
                self.accelerator.log({"loss": loss, "lr": lr, "grad_norm": norm}, step=step)
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < self.total_steps:
                self._checkpoint(step)
            if config.validate_every and step % config.validate_every == 0:
                self._validate(step)
        return step


def finetune(config: FinetuneConfig, progress: bool = True) -> Path:
    """Run a fine-tune to completion; returns the output folder."""
    return Trainer(config, progress).run()
