"""`t2i finetune --lora` against the per-step work of the diffusers LoRA example, same model and data.

    python benchmarks/bench_finetune.py [--steps 30] [--batch-size 4] [--size sd-shaped|tiny|full]

--size full builds SD 1.5's exact architecture with random weights (no download) at 512 px: a GPU
run. The default, sd-shaped, is SD 1.5 with every width divided by 8 at 256 px: the same blocks in
the same proportions (VAE encoder vs UNet vs text encoder), so the cost mix that caching changes is
SD's, at a size a CPU can run. `tiny` is the test model, where the UNet dwarfs the VAE.

The reference loop does what diffusers' train_text_to_image_lora.py does every step: decode and
transform the images, run the VAE encoder and the text encoder, then the UNet forward/backward.
t2i encodes each image and caption once into its cache and trains from it. Each side runs in its
own process (peak memory is per process); the table shows steps/s, peak memory and their ratios.
t2i's one-time caching pass is timed apart.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from t2i.train.config import FinetuneConfig

SIZES = {"tiny": (None, 64), "sd-shaped": (8, 256), "full": (1, 512)}  # width divisor, resolution


def make_data(folder: Path, count: int, size: int) -> None:
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    for i in range(count):
        image = Image.new("RGB", (size + 8, size), "white")
        ImageDraw.Draw(image).ellipse((4 + i % 5, 4, size - 4, size - 8), fill=colours[i % 6])
        image.save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"a {colours[i % 6]} circle\na round {colours[i % 6]} shape")


def make_model(folder: Path, width_divisor: int) -> None:
    """SD 1.5's architecture from t2i's shipped configs, widths divided, random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from t2i.models import SD1_CONFIG_DIR

    d = width_divisor
    unet = dict(UNet2DConditionModel.load_config(SD1_CONFIG_DIR, subfolder="unet"))
    vae = dict(AutoencoderKL.load_config(SD1_CONFIG_DIR, subfolder="vae"))
    text = CLIPTextConfig.from_pretrained(SD1_CONFIG_DIR, subfolder="text_encoder")
    if d > 1:
        unet.update(block_out_channels=[c // d for c in unet["block_out_channels"]], norm_num_groups=8,
                    cross_attention_dim=768 // d)
        vae.update(block_out_channels=[c // d for c in vae["block_out_channels"]], norm_num_groups=8)
        text.hidden_size, text.intermediate_size, text.projection_dim = 768 // d, 3072 // d, 768 // d
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(unet), vae=AutoencoderKL.from_config(vae), text_encoder=CLIPTextModel(text),
        tokenizer=CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer"),
        scheduler=PNDMScheduler.from_pretrained(SD1_CONFIG_DIR, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)


def run_t2i(args) -> dict:
    from t2i.train.trainer import Trainer

    config = FinetuneConfig(data=args.data, output=args.output, model=args.model, resolution=args.resolution,
                            batch_size=args.batch_size, max_steps=args.steps, checkpoint_every=0,
                            cache_dir=args.cache_dir, mixed_precision=args.mixed_precision, caption_dropout=0.1)
    trainer = Trainer(config, progress=False)
    started = time.perf_counter()
    trainer.run()
    total = time.perf_counter() - started
    rows = (Path(args.output) / "loss.csv").read_text().splitlines()[1:]
    loop_seconds = float(rows[-1].split(",")[-1]) - float(rows[0].split(",")[-1])  # steps 2..N: no warm-up
    return {"steps_per_s": (len(rows) - 1) / loop_seconds, "setup_s": total - loop_seconds}


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
    return {"steps_per_s": (len(times) - 1) / sum(times[1:]), "setup_s": 0.0}


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


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
    parser.add_argument("--child", choices=("t2i", "reference"), help=argparse.SUPPRESS)
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
        results = {}
        for side in ("reference", "t2i"):
            command = [sys.executable, __file__, "--child", side, "--data", str(scratch / "data"), "--model",
                       args.model, "--output", str(scratch / f"out-{side}"), "--cache-dir", str(scratch / "cache"),
                       "--steps", str(args.steps), "--resolution", str(args.resolution), "--batch-size",
                       str(args.batch_size), "--mixed-precision", args.mixed_precision]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[side] = json.loads(output.split("RESULT ", 1)[1])
    ref, ours = results["reference"], results["t2i"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model {args.size}, {args.resolution} px, "
          f"batch {args.batch_size}, {args.steps} steps, {args.mixed_precision} precision, {device}")
    print(f"{'':<34}{'steps/s':>10}{'img/s':>10}{'peak MB':>10}{'setup s':>10}")
    for name, r in (("diffusers-example loop (no cache)", ref), ("t2i finetune --lora (cached)", ours)):
        print(f"{name:<34}{r['steps_per_s']:>10.2f}{r['steps_per_s'] * args.batch_size:>10.2f}"
              f"{r['peak_mb']:>10.0f}{r['setup_s']:>10.1f}")
    print(f"{'t2i / reference':<34}{ours['steps_per_s'] / ref['steps_per_s']:>10.2f}{'':>10}"
          f"{ours['peak_mb'] / ref['peak_mb']:>10.2f}")


if __name__ == "__main__":
    main()
