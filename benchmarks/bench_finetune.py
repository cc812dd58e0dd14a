"""`t2i finetune --lora` against the per-step work of the diffusers LoRA example, same model and data.

    python benchmarks/bench_finetune.py [--steps 30] [--batch-size 4] [--size sd-shaped|tiny|full]
        [--variants default channels-last compile buckets text-encoder prodigy adafactor lion adamw8bit]

--size full builds SD 1.5's exact architecture with random weights (no download) at 512 px: a GPU
run. The default, sd-shaped, is SD 1.5 with every width divided by 8 at 256 px: the same blocks in
the same proportions (VAE encoder vs UNet vs text encoder), so the cost mix that caching changes is
SD's, at a size a CPU can run. `tiny` is the test model, where the UNet dwarfs the VAE.

The reference loop does what diffusers' train_text_to_image_lora.py does every step: decode and
transform the images, run the VAE encoder and the text encoder, then the UNet forward/backward.
t2i encodes each image and caption once into its cache and trains from it. Each side runs in its
own process (peak memory is per process); the table shows steps/s, peak memory and their ratios.
t2i's one-time costs (the caching pass, compilation) are timed apart; each run builds its own cache,
so every t2i row's peak memory includes its caching pass. Each --variants row is t2i
with that training option. MFU: the UNet's forward and backward FLOPs per step (PyTorch's
FlopCounterMode) over the GPU's bf16 dense peak, or on CPU over a measured large fp32 matmul.
The data are wide and tall images (3:2 and 2:3), as photo collections are: `buckets` trains them in
kohya's aspect-ratio buckets of the same area instead of square crops; `text-encoder` adds a LoRA on
CLIP (its embeddings are then computed every step, not cached); the optimizer rows swap AdamW for
that optimizer (adamw8bit on CUDA only).
The last line is the limit: the share of a UNet step spent in the attention kernels (torch.profiler),
which every loop runs alike, and so the most any t2i option can gain over the reference.
The diffusers example itself needs torchvision and datasets; torchvision's build for torch 2.13 does
not import beside a CPU-only torch, so here the reference is the example's per-step work written out.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import SIZES, attention_share, make_model, peak_flops, peak_memory_mb, unet_flops
from PIL import Image, ImageDraw

from t2i.train.config import FinetuneConfig

OPTIMIZER_ROWS = ("prodigy", "adafactor", "lion", "adamw8bit")
VARIANTS = ("default", "channels-last", "compile", "buckets", "text-encoder", *OPTIMIZER_ROWS)


def make_data(folder: Path, count: int, size: int) -> None:
    """Half wide, half tall images (3:2 and 2:3), a circle in each."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    for i in range(count):
        frame = (size * 3 // 2, size) if i % 2 else (size, size * 3 // 2)
        image = Image.new("RGB", frame, "white")
        ImageDraw.Draw(image).ellipse((4 + i % 5, 4, frame[0] - 4, frame[1] - 8), fill=colours[i % 6])
        image.save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"a {colours[i % 6]} circle\na round {colours[i % 6]} shape")


def run_t2i(args) -> dict:
    from t2i.train.trainer import Trainer

    step = 8 if args.model == "tiny" else 64  # the bucket step the model's downsampling takes
    options = {"default": {}, "channels-last": {"channels_last": True}, "compile": {"compile": True},
               "buckets": {"buckets": True, "bucket_min": args.resolution // 2, "bucket_max": args.resolution * 2,
                           "bucket_step": step},
               "text-encoder": {"train_text_encoder": True},
               **{name: {"optimizer": name} for name in OPTIMIZER_ROWS}}[args.variant]
    config = FinetuneConfig(data=args.data, output=args.output, model=args.model, resolution=args.resolution,
                            batch_size=args.batch_size, max_steps=args.steps, checkpoint_every=0,
                            cache_dir=args.cache_dir, mixed_precision=args.mixed_precision, caption_dropout=0.1,
                            **options)
    trainer = Trainer(config, progress=False)
    started = time.perf_counter()
    trainer.run()
    total = time.perf_counter() - started
    with open(Path(args.output) / "loss.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    loop_seconds = seconds[-1] - seconds[1]  # steps 3..N: the first two (compilation, warm-up) are one-time costs
    return {"steps_per_s": (len(seconds) - 2) / loop_seconds, "setup_s": total - loop_seconds}


def run_reference(args) -> dict:
    """The diffusers example's per-step work, written out plainly (no cache)."""
    import random

    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from t2i.data.sources import read_collection
    from t2i.data.training_set import CENTRE, Augment, pixels
    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    model = load_model(ModelConfig(model=args.model, device="cpu", dtype="fp32"))
    pipe, device = model.pipe, accelerator.device
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    pipe.vae.requires_grad_(False).to(device, dtype)
    pipe.text_encoder.requires_grad_(False).to(device, dtype)
    unet = pipe.unet.requires_grad_(False).to(device, dtype)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    samples = read_collection(args.data)[1]
    augment = Augment(args.resolution)
    rng = random.Random(0)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        batch = [rng.choice(samples) for _ in range(args.batch_size)]
        images = torch.stack([pixels(s, augment, CENTRE, False) for s in batch])
        captions = [rng.choice(s.captions) for s in batch]
        ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            latents = pipe.vae.encode(images.to(device, dtype)).latent_dist.sample() * pipe.vae.config.scaling_factor
            text = pipe.text_encoder(ids.to(device))[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (len(batch),), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        with accelerator.autocast():
            prediction = unet(noisy, timesteps, text).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {"steps_per_s": (len(times) - 2) / sum(times[2:]), "setup_s": sum(times[:2])}


def child(args) -> None:
    result = (run_t2i if args.child == "t2i" else run_reference)(args)
    print("RESULT " + json.dumps({**result, "peak_mb": peak_memory_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", choices=SIZES, default="sd-shaped")
    parser.add_argument("--resolution", type=int, help="default: 64 tiny, 256 sd-shaped, 512 full")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating")
    parser.add_argument("--variants", nargs="+", default=["default", "channels-last", "compile"],
                        choices=VARIANTS, help="t2i rows (adamw8bit: CUDA only)")
    parser.add_argument("--child", choices=("t2i", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "data").mkdir()
        args.resolution = args.resolution or SIZES[args.size][1]
        if args.size != "tiny":
            make_model(scratch / "model", SIZES[args.size][0])
            args.model = str(scratch / "model")
        make_data(scratch / "data", args.images, args.resolution)
        variants = [v for v in args.variants if v != "adamw8bit" or torch.cuda.is_available()]
        sides = [("reference", "default"), *(("t2i", variant) for variant in variants)]
        runs = {side: [] for side in sides}
        for repeat in range(args.repeats):  # the sides alternate, in a rotated order each repeat
            for side, variant in sides[repeat % len(sides):] + sides[:repeat % len(sides)]:
                out = scratch / f"out-{side}-{variant}-{repeat}"
                command = [sys.executable, __file__, "--child", side, "--variant", variant, "--data",
                           str(scratch / "data"), "--model", args.model, "--output", str(out), "--cache-dir",
                           str(scratch / f"cache-{side}-{variant}-{repeat}"), "--steps", str(args.steps),
                           "--resolution", str(args.resolution),
                           "--batch-size", str(args.batch_size), "--mixed-precision", args.mixed_precision]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                runs[(side, variant)].append(json.loads(output.split("RESULT ", 1)[1]))
        results = {side: _median_run(found) for side, found in runs.items()}
        step = step_profile(args)
    ref = results[("reference", "default")]
    step_flops, ceiling = step["flops"], step["ceiling"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model {args.size}, {args.resolution} px, batch {args.batch_size}, {args.steps} steps, "
          f"{args.mixed_precision} precision, {device}; "
          f"MFU against {step['ceiling_source']} ({ceiling / 1e12:.2f} TFLOP/s)")
    print(f"{'':<34}{'steps/s':>9}{'img/s':>8}{'ratio':>7}{'peak MB':>9}{'mem ratio':>10}{'once s':>8}{'MFU':>7}")
    for (side, variant), r in results.items():
        name = "diffusers-example loop (no cache)" if side == "reference" else f"t2i finetune --lora {variant}"
        print(f"{name:<34}{r['steps_per_s']:>9.2f}{r['steps_per_s'] * args.batch_size:>8.2f}"
              f"{r['steps_per_s'] / ref['steps_per_s']:>7.2f}{r['peak_mb']:>9.0f}{r['peak_mb'] / ref['peak_mb']:>10.2f}"
              f"{r['setup_s']:>8.1f}{step_flops * r['steps_per_s'] / ceiling:>7.1%}")
    # every loop runs the same attention kernels, and compilation keeps them: no t2i step is shorter than
    # they make its default one, which bounds any option's speed-up over the reference
    share = step["attention_share"]
    line = f"attention kernels: {share:.0%} of a UNet forward+backward (torch.profiler)"
    if ("t2i", "default") in results:
        bound = results[("t2i", "default")]["steps_per_s"] / ref["steps_per_s"] / share
        line += f"; no t2i step shorter than that share of its default one: at most {bound:.2f}x the reference"
    print(line)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median steps/s (the upper median of an even count)."""
    return sorted(runs, key=lambda r: r["steps_per_s"])[len(runs) // 2]


def step_profile(args) -> dict:
    """One LoRA training step's UNet forward and backward (t2i's default targets): its FLOPs, the
    machine's FLOP/s ceiling and where that comes from, and the share of its time in attention."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from t2i.models.presets import tiny_components
    from t2i.train.config import LORA_TARGETS

    if args.size == "tiny":
        unet = tiny_components()["unet"]
    else:
        unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
    defaults = FinetuneConfig(data="", output="")
    unet.requires_grad_(False).add_adapter(LoraConfig(r=defaults.rank, lora_alpha=defaults.lora_alpha,
                                                      target_modules=list(LORA_TARGETS[defaults.lora_targets])))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
    latent_side = args.resolution // (2 if args.size == "tiny" else 8)
    unet.to(device).train()
    flops = unet_flops(unet, args.batch_size, latent_side, backward=True)
    share = attention_share(unet, args.batch_size, latent_side)
    ceiling, source = peak_flops(device, dtype)
    return {"flops": flops, "ceiling": ceiling, "ceiling_source": source, "attention_share": share}


if __name__ == "__main__":
    main()
