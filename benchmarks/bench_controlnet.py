"""ControlNet: t2i generate with 0, 1 and 2 ControlNets beside diffusers' own pipelines, and ControlNet
training beside LoRA training on the same model and data.

    python benchmarks/bench_controlnet.py [--size sd-shaped] [--images 6] [--steps 20] [--train-steps 30]

(a) Generation on an SD 1.5-shaped model with random weights (--size: sd-shaped = every width / 8 at 256 px,
    full = SD 1.5 at 512 px): t2i (a unit a ControlNet, Balanced, module none) against plain diffusers
    (StableDiffusionPipeline for 0, StableDiffusionControlNetPipeline with one ControlNetModel or a list of
    two), DPM++ 2M Karras, the same seed, prompt and control image. The sides alternate image by image;
    the median seconds per image and t2i / diffusers are reported. The ControlNets are the model's UNet
    encoder with random output convolutions (their weights do not change the work).
(b) Training: `t2i finetune --controlnet` and `--lora` (rank 4, cross-attention) on the same model, data
    (shapes with their masks), batch and resolution, one after the other, --repeats times; the steady
    steps per second from loss.csv's clock (the first 5 steps are left out: warm-up).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import SIZES, make_model
from diffusers import (
    ControlNetModel,
    DPMSolverMultistepScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.control import ControlUnit
from t2i.sampling.generate import generate

PROMPT = "a red circle on a white background"


def make_controlnets(model_dir: Path, out: Path, count: int) -> list[Path]:
    from diffusers import UNet2DConditionModel

    from t2i.train.controlnet import embedding_channels

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    paths = []
    for index in range(count):
        torch.manual_seed(index)
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding_channels(8))
        with torch.no_grad():
            for name, parameter in net.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                    parameter.normal_(0, 0.02)
        net.save_pretrained(out / f"cn{index}")
        paths.append(out / f"cn{index}")
    return paths


def generation(args, work: Path) -> list[tuple]:
    divisor, side = SIZES[args.size]
    make_model(work / "model", divisor or 8)
    nets = make_controlnets(work / "model", work, 2)
    control = Image.new("RGB", (side, side), "black")
    control.paste((255, 255, 255), (side // 4, side // 4, side // 2, side // 2))
    control.save(work / "control.png")
    model = load_model(ModelConfig(model=str(work / "model"), device=args.device, dtype="fp32"))
    plain = {0: StableDiffusionPipeline(**model.pipe.components)}
    loaded = [ControlNetModel.from_pretrained(n).to(model.device) for n in nets]
    plain[1] = StableDiffusionControlNetPipeline(**model.pipe.components, controlnet=loaded[0])
    plain[2] = StableDiffusionControlNetPipeline(**model.pipe.components, controlnet=loaded)
    for pipe in plain.values():
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(model.scheduler_config, use_karras_sigmas=True)
        pipe.set_progress_bar_config(disable=True)

    def ours(count: int, seed: int):
        units = tuple(ControlUnit(str(n), str(work / "control.png")) for n in nets[:count])
        config = GenerationConfig(prompts=(PROMPT,), seed=seed, steps=args.steps, sampler="dpmpp-2m-karras",
                                  width=side, height=side, controls=units)
        generate(model, config, progress=False)

    def theirs(count: int, seed: int):
        extra = {} if count == 0 else {"image": control if count == 1 else [control] * count}
        plain[count](PROMPT, num_inference_steps=args.steps, height=side, width=side, guidance_scale=7.5,
                     generator=torch.Generator("cpu").manual_seed(seed), **extra)

    rows = []
    for count in (0, 1, 2):
        ours(count, 0), theirs(count, 0)  # warm-up: first-call allocations and ControlNet loading
        times: dict[str, list[float]] = {"t2i": [], "diffusers": []}
        for image in range(args.images):
            sides = [("t2i", ours), ("diffusers", theirs)]
            for name, run in sides if image % 2 == 0 else sides[::-1]:
                started = time.perf_counter()
                run(count, image)
                times[name].append(time.perf_counter() - started)
        a, b = statistics.median(times["t2i"]), statistics.median(times["diffusers"])
        rows.append((f"{count} ControlNet(s)", a, b, a / b))
    return rows


def steady_rate(run: Path) -> float:
    with open(run / "loss.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"]]
    first, last = rows[4], rows[-1]
    return (int(last["step"]) - int(first["step"])) / (float(last["seconds"]) - float(first["seconds"]))


def training(args, work: Path) -> list[tuple]:
    from t2i.shapes.world import make_dataset
    from t2i.train.config import FinetuneConfig
    from t2i.train.trainer import finetune

    divisor, side = SIZES[args.size]
    data = make_dataset(work / "data", 64, image_size=args.train_resolution, control="mask")
    rates: dict[str, list[float]] = {"controlnet": [], "lora": []}
    for repeat in range(args.repeats):
        for kind in ("lora", "controlnet") if repeat % 2 == 0 else ("controlnet", "lora"):
            out = work / f"train-{kind}-{repeat}"
            finetune(FinetuneConfig(data=str(data), output=str(out), model=str(work / "model"),
                                    resolution=args.train_resolution, batch_size=args.batch_size,
                                    max_steps=args.train_steps, checkpoint_every=0, learning_rate=1e-4,
                                    controlnet=kind == "controlnet", cache_dir=str(work / "cache")), progress=False)
            rates[kind].append(steady_rate(out))
    lora, controlnet = statistics.median(rates["lora"]), statistics.median(rates["controlnet"])
    return [("training steps/s", controlnet, lora, controlnet / lora)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("sd-shaped", "full"), default="sd-shaped")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--train-resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        table(f"(a) generation, {args.size}, {args.steps} DPM++ 2M Karras steps, median of {args.images} images, "
              f"{torch.get_num_threads()} threads", ("t2i s/img", "diffusers"), generation(args, work))
        table(f"\n(b) training at {args.train_resolution} px, batch {args.batch_size}, {args.train_steps} steps, "
              f"median of {args.repeats} runs each", ("ControlNet", "LoRA"), training(args, work))


def table(title: str, sides: tuple[str, str], rows: list[tuple]) -> None:
    print(title)
    print(f"{'':22} {sides[0]:>10} {sides[1]:>10} {'ratio':>7}")
    for name, a, b, ratio in rows:
        print(f"{name:22} {a:10.3f} {b:10.3f} {ratio:7.3f}")


if __name__ == "__main__":
    main()
