"""t2i generate against plain diffusers, its speed and memory options, and the CLI's start-up time.

    python benchmarks/bench_generate.py [--images 8] [--steps 20] [--repeats 5]
        [--size tiny|sd-shaped|full] [--batch-sizes 1 4] [--options default channels-last ...]

(a) The same work both ways on the tiny model: one image, one seed, 20 DPM++ 2M Karras steps,
    saved as a PNG. t2i's extra work (sampler build, metadata, atomic write, NaN check) is what the
    ratio measures. The two alternate image by image (this CPU's speed drifts), and the median
    per-image time over images x repeats is reported.
(b) Wall time of `t2i --help` and `t2i samplers` in fresh processes, against `import diffusers`.
(c) The speed and memory options at --size (full: SD 1.5's architecture with random weights, 512 px;
    sd-shaped: every width / 8 at 256 px, for a CPU), each a t2i model of its own beside plain
    diffusers' default pipeline in the same dtype (bf16 or fp16 on a GPU as t2i's auto picks, fp32
    on CPU). The rows alternate image by image, in a rotated order each repeat. Reported: seconds
    per image, UNet steps/s (it/s, each a CFG pair), the ratio to plain diffusers, peak GPU memory,
    one-time cost (compilation) and MFU: the UNet's FLOPs (PyTorch's FlopCounterMode) over the
    GPU's bf16 dense peak, or on CPU over a measured large matmul.
(d) Canvases on the --size model: hires fix (first pass at half --canvas-side, x2, Latent and Lanczos)
    against the same chain done by hand with diffusers' pipelines (txt2img latents, upscale, img2img
    from a fresh generator, A1111's step count), and outpainting (a quarter of the side grown on the
    right) against pad + inpaint + overlay by hand; alternating sides, median of --repeats. Rows after
    the ratios: each canvas's cost over plain txt2img of the final size.
(e) Guidance (--only-guidance): PAG, IP-Adapter and SAG, each beside diffusers' own pipeline for it, and each
    one's cost over plain CFG.
(f) Watching (--only-watching): the denoising strip, live previews and attention maps, each against the same
    generation.
(g) Editing (--only-editing): `t2i edit` (LEDITS++) beside diffusers' LEDITS++ pipeline over the same components
    (inversion and edit, a new pipeline each call as t2i builds one), and A1111's img2img alternative test; each
    one's cost over txt2img of as many steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import SIZES, make_model, peak_flops, unet_flops
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from t2i.formats.png import save_png
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.models.presets import tiny_components
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate


def plain_diffusers(pipe, prompt, seed, steps, out_dir: Path) -> None:
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    image = pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    image.save(out_dir / f"{seed}.png")


def t2i_generate(model, prompt, seed, steps, out_dir: Path) -> None:
    config = GenerationConfig(prompts=(prompt,), seed=seed, steps=steps, sampler="dpmpp-2m-karras")
    for result in generate(model, config, progress=False):
        save_png(result.image, result.settings, out_dir)


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# option -> (ModelConfig fields, GenerationConfig fields)
OPTIONS = {"default": ({}, {}), "channels-last": ({"channels_last": True}, {}), "fuse-qkv": ({"fuse_qkv": True}, {}),
           "attention-slicing": ({"attention_slicing": True}, {}), "vae-slicing": ({}, {"vae_slicing": True}),
           "vae-tiling": ({}, {"vae_tiling": True, "vae_tile_size": 256}), "compile": ({"compile": True}, {}),
           "cache-3": ({}, {"cache_interval": 3}), "offload-model": ({"offload": "model"}, {})}


def options_table(args) -> None:
    from t2i.models.loading import resolve_device, resolve_dtype

    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    with tempfile.TemporaryDirectory() as scratch:
        divisor, side = SIZES[args.size]
        if args.size == "tiny":
            source, plain = "tiny", StableDiffusionPipeline(**tiny_components(), safety_checker=None,
                                                             feature_extractor=None, requires_safety_checker=False)
        else:
            source = str(Path(scratch) / "model")
            make_model(Path(source), divisor)
            plain = StableDiffusionPipeline.from_pretrained(source, torch_dtype=dtype, safety_checker=None)
        plain = plain.to(device) if plain.unet.dtype == dtype else plain.to(device, dtype)
        plain.set_progress_bar_config(disable=True)
        plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config, use_karras_sigmas=True)
        models = {name: load_model(ModelConfig(model=source, device=device.type, **OPTIONS[name][0]))
                  for name in args.options}
        latent = side // plain.vae_scale_factor
        ceiling, ceiling_source = peak_flops(device, dtype)

        def run(name: str, batch: int, seed: int) -> None:
            prompt = f"a photo of object {seed}"
            if name == "plain diffusers":
                generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
                plain([prompt] * batch, num_inference_steps=args.steps, generator=generators, height=side,
                      width=side)
            else:
                config = GenerationConfig(prompts=(prompt,), seed=seed, steps=args.steps, num_images=batch,
                                          batch_size=batch, width=side, height=side, **OPTIONS[name][1])
                generate(models[name], config, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()

        rows = ["plain diffusers", *args.options]
        print(f"(c) options, {args.size} ({side} px), {args.steps} steps, CFG, {device.type} {dtype}, "
              f"{torch.get_num_threads()} threads, median of {args.repeats} repeats; MFU against {ceiling_source} "
              f"({ceiling / 1e12:.2f} TFLOP/s)")
        print(f"{'row':<20}{'batch':>6}{'s/image':>10}{'it/s':>8}{'ratio':>8}{'peak MB':>9}{'once s':>8}{'MFU':>7}")
        for batch in args.batch_sizes:
            step_flops = unet_flops(plain.unet, 2 * batch, latent)
            once = {name: timed(run, name, batch, 0) for name in rows}  # warm-up: compilation, first allocations
            times = {name: [] for name in rows}
            peaks = dict.fromkeys(rows, 0.0)
            for repeat in range(args.repeats):
                for name in rows[repeat % len(rows):] + rows[:repeat % len(rows)]:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    times[name].append(timed(run, name, batch, 100 + repeat))
                    if device.type == "cuda":
                        peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**20)
            base = statistics.median(times["plain diffusers"])
            for name in rows:
                seconds = statistics.median(times[name])
                mfu = step_flops * args.steps / seconds / ceiling
                peak = f"{peaks[name]:>9.0f}" if device.type == "cuda" else f"{'-':>9}"
                print(f"{name:<20}{batch:>6}{seconds / batch:>10.3f}{args.steps / seconds:>8.2f}"
                      f"{seconds / base:>8.2f}{peak}{max(0.0, once[name] - seconds):>8.1f}{mfu:>7.1%}")


def canvas_table(args) -> None:
    import torch.nn.functional as F
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
    from PIL import Image

    from t2i.sampling.hires import second_pass_schedule
    from t2i.sampling.img2img_steps import fill_masked
    from t2i.sampling.outpaint import pad_canvas, parse_sides

    side, steps = args.canvas_side, args.steps
    with tempfile.TemporaryDirectory() as scratch:
        divisor = SIZES[args.size][0]
        source = "tiny" if args.size == "tiny" else str(Path(scratch) / "model")
        if args.size != "tiny":
            make_model(Path(source), divisor)
        model = load_model(ModelConfig(model=source, device="cpu"))
        plain = StableDiffusionPipeline(**model.pipe.components)
        plain.set_progress_bar_config(disable=True)
        plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config, use_karras_sigmas=True)
        img2img = StableDiffusionImg2ImgPipeline(**plain.components)
        inpaint = StableDiffusionInpaintPipeline(**plain.components)
        for pipe in (img2img, inpaint):
            pipe.set_progress_bar_config(disable=True)
        init = Image.new("RGB", (side, side), (200, 120, 60))
        grow = side // 4
        total, strength = second_pass_schedule(steps, 0.6)

        def by_hand(kind: str, seed: int) -> None:
            prompt = f"a photo of object {seed}"
            if kind == "hires":
                latents = plain(prompt, num_inference_steps=steps, width=side // 2, height=side // 2,
                                generator=torch.Generator().manual_seed(seed), output_type="latent").images
                latents = F.interpolate(latents, scale_factor=2, mode="bilinear")
                img2img(prompt, image=latents, num_inference_steps=total, strength=strength,
                        generator=[torch.Generator().manual_seed(seed)])
            elif kind == "outpaint":
                canvas = pad_canvas(init, parse_sides(f"right={grow}"), feather=4)
                start = fill_masked(canvas.image, canvas.mask)
                made = inpaint(prompt, image=start, mask_image=canvas.mask, strength=1.0, num_inference_steps=steps,
                               width=canvas.image.width, height=canvas.image.height,
                               generator=[torch.Generator().manual_seed(seed)]).images[0]
                Image.composite(made, canvas.image, canvas.mask)
            else:  # plain txt2img at the outpainted size, for the cost of a canvas over it
                plain(prompt, num_inference_steps=steps, width=side + grow, height=side,
                      generator=torch.Generator().manual_seed(seed))

        def ours(kind: str, seed: int) -> None:
            fields = {"hires": dict(width=side // 2, height=side // 2, hires_scale=2, hires_denoise=0.6),
                      "outpaint": dict(init_image=init, outpaint=f"right={grow}", outpaint_mode="pad")}[kind]
            generate(model, GenerationConfig(prompts=(f"a photo of object {seed}",), seed=seed, steps=steps,
                                             **fields), progress=False)

        rows = {"hires x2 (Latent), diffusers by hand": (by_hand, "hires"), "hires x2 (Latent), t2i": (ours, "hires"),
                "outpaint right, diffusers by hand": (by_hand, "outpaint"), "outpaint right, t2i": (ours, "outpaint"),
                "txt2img at the outpainted size": (by_hand, "txt2img")}
        for fn, kind in rows.values():  # warm-up
            fn(kind, 0)
        times: dict[str, list[float]] = {name: [] for name in rows}
        names = list(rows)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                fn, kind = rows[name]
                times[name].append(timed(fn, kind, 100 + repeat))
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"(d) canvases, {args.size} model, {side} px, {steps} steps (hires: {steps} + {steps} at 0.6), CPU "
              f"{torch.get_num_threads()} threads, median of {args.repeats}")
        print(f"{'row':<40}{'s/image':>10}{'ratio':>8}")
        for name in names:
            pair = name.replace(", t2i", ", diffusers by hand")
            ratio = median[name] / median[pair] if name.endswith("t2i") else 1.0
            print(f"{name:<40}{median[name]:>10.3f}{ratio:>8.3f}")


def size_model(size: str, scratch: Path):
    """The --size model, loaded on the CPU (made in `scratch` unless it is the tiny preset)."""
    if size == "tiny":
        return load_model(ModelConfig(model="tiny", device="cpu"))
    make_model(scratch / "model", SIZES[size][0])
    return load_model(ModelConfig(model=str(scratch / "model"), device="cpu"))


def rotated_medians(rows: dict, repeats: int) -> dict[str, float]:
    """Each row's median seconds over `repeats` rounds (after one warm-up call each), the rows run in a rotated
    order each round, so that this CPU's drift falls on every row alike; row i's call gets seed 100 + round."""
    for fn in rows.values():
        fn(0)
    times: dict[str, list[float]] = {name: [] for name in rows}
    names = list(rows)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            times[name].append(timed(rows[name], 100 + repeat))
    return {name: statistics.median(values) for name, values in times.items()}


def _random_ip_adapter(unet, folder: Path, width: int = 32) -> Path:
    """A random h94-layout adapter for `unet` and a random CLIP vision encoder beside it (h94's layout)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, projection_dim=width, num_hidden_layers=2,
                                                   num_attention_heads=4, image_size=32, patch_size=4,
                                                   intermediate_size=37)).save_pretrained(folder / "image_encoder")
    cross = unet.config.cross_attention_dim
    tensors = {"image_proj.proj.weight": torch.randn(4 * cross, width) * 0.1,
               "image_proj.proj.bias": torch.zeros(4 * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            module = unet.get_submodule(name[:-len(".processor")])
            for kind in ("k", "v"):
                tensors[f"ip_adapter.{index}.to_{kind}_ip.weight"] = torch.randn(
                    getattr(module, f"to_{kind}").out_features, cross) * 0.1
    save_file(tensors, folder / "ip-adapter.safetensors")
    return folder / "ip-adapter.safetensors"


def guidance_table(args) -> None:
    """(e) Guidance on the --size model, each t2i row against diffusers' own pipeline over the same components:
    PAG (StableDiffusionPAGPipeline), IP-Adapter (`load_ip_adapter` of the same file, the picture encoded by the
    pipeline) and SAG (diffusers' deprecated StableDiffusionSAGPipeline, which takes DPM++ 2M); then each one's
    cost over plain CFG."""
    from diffusers import StableDiffusionPAGPipeline, StableDiffusionSAGPipeline
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    from t2i.sampling.ip_adapter import IPAdapterUnit

    side = SIZES[args.size][1]
    with tempfile.TemporaryDirectory() as scratch:
        model = size_model(args.size, Path(scratch))
        adapter = _random_ip_adapter(model.pipe.unet, Path(scratch))
        picture = Image.new("RGB", (48, 40), (200, 60, 30))
        components = {k: v for k, v in model.pipe.components.items()
                      if k not in ("image_encoder", "feature_extractor", "unet")}
        pag = StableDiffusionPAGPipeline(**model.pipe.components, pag_applied_layers=["mid"])
        sag = StableDiffusionSAGPipeline(**model.pipe.components)
        plain = StableDiffusionPipeline(**model.pipe.components)
        ip = StableDiffusionPipeline(**components, unet=type(model.pipe.unet).from_config(model.pipe.unet.config),
                                     image_encoder=CLIPVisionModelWithProjection.from_pretrained(
                                         Path(scratch) / "image_encoder"),
                                     feature_extractor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                             crop_size={"height": 32, "width": 32}))
        ip.unet.load_state_dict(model.pipe.unet.state_dict())
        ip.load_ip_adapter(scratch, subfolder="", weight_name="ip-adapter.safetensors", image_encoder_folder=None)
        for pipe in (pag, sag, plain, ip):
            pipe.set_progress_bar_config(disable=True)
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(model.scheduler_config, use_karras_sigmas=True)

        def theirs(pipe, **extra):
            def run(seed: int) -> None:
                pipe("a photo", num_inference_steps=args.steps, guidance_scale=4.0, width=side, height=side,
                     generator=torch.Generator().manual_seed(seed), **extra)
            return run

        def ours(**extra):
            def run(seed: int) -> None:
                generate(model, GenerationConfig(prompts=("a photo",), seed=seed, steps=args.steps, guidance_scale=4.0,
                                                 sampler="dpmpp-2m-karras", width=side, height=side, **extra),
                         progress=False)
            return run

        rows = {"PAG 3, diffusers": theirs(pag, pag_scale=3.0), "PAG 3, t2i": ours(pag_scale=3.0),
                "IP-Adapter, diffusers": theirs(ip, ip_adapter_image=picture),
                "IP-Adapter, t2i": ours(ip_adapters=(IPAdapterUnit(str(adapter), picture),)),
                "SAG 0.75, diffusers": theirs(sag, sag_scale=0.75), "SAG 0.75, t2i": ours(sag_scale=0.75),
                "CFG alone, diffusers": theirs(plain), "CFG alone, t2i": ours()}
        names, median = list(rows), rotated_medians(rows, args.repeats)
        print(f"(e) guidance, {args.size} model, {side} px, {args.steps} steps, CFG 4, CPU {torch.get_num_threads()} "
              f"threads, median of {args.repeats}")
        print(f"{'row':<40}{'s/image':>10}{'ratio':>8}")
        for name in names:
            ratio = median[name] / median[name.replace(", t2i", ", diffusers")] if name.endswith("t2i") else 1.0
            print(f"{name:<40}{median[name]:>10.3f}{ratio:>8.3f}")
        for kind in ("PAG 3", "IP-Adapter", "SAG 0.75"):
            cost = median[kind + ", t2i"] / median["CFG alone, t2i"]
            print(f"{kind + ' over CFG alone (t2i)':<40}{'':>10}{cost:>8.3f}")


def watching_table(args) -> None:
    """(f) Watching the denoising on the --size model: the strip (every 5 steps, decoded at the end), live
    previews every 10 steps (A1111's default interval) by the fitted colour map and by the VAE, and the
    cross-attention maps, each against the same generation unwatched; rows alternate, median of --repeats."""
    from t2i.sampling.generate import generate_iter

    side = SIZES[args.size][1]
    with tempfile.TemporaryDirectory() as scratch:
        model = size_model(args.size, Path(scratch))
        config = GenerationConfig(prompts=("a photo",), steps=args.steps, sampler="dpmpp-2m-karras", width=side,
                                  height=side, guidance_scale=7.0)

        def run(strip=None, every=0, mode="approx", maps=False):
            def once(seed: int) -> None:
                list(generate_iter(model, dataclasses.replace(config, strip=strip, seed=seed, attention_maps=maps),
                                   progress=False,
                                   on_preview=(lambda image: None) if every else None, preview_every=every,
                                   preview_mode=mode))
            return once

        rows = {"plain": run(), "strip every 5": run(strip=5), "previews every 10, approx": run(every=10),
                "previews every 10, full (VAE)": run(every=10, mode="full"), "attention maps": run(maps=True)}
        names, median = list(rows), rotated_medians(rows, args.repeats)
        print(f"(f) watching, {args.size} model, {side} px, {args.steps} steps, CPU {torch.get_num_threads()} threads, "
              f"median of {args.repeats}")
        print(f"{'row':<40}{'s/image':>10}{'x plain':>8}")
        for name in names:
            print(f"{name:<40}{median[name]:>10.3f}{median[name] / median['plain']:>8.3f}")


def editing_table(args) -> None:
    """(g) Editing on the --size model (its UNet has SD's cross-attention at 1/4 of the latent, so LEDITS++ uses
    its intersect mask): t2i's LEDITS++ against diffusers' own pipeline over the same components, A1111's
    img2img alternative test, and txt2img of --steps; rows alternate, median of --repeats."""
    from diffusers import LEditsPPPipelineStableDiffusion
    from PIL import Image

    from t2i.sampling.img2img_alt import Img2ImgAlt
    from t2i.sampling.ledits import EditConcept, has_quarter_attention
    from t2i.sampling.samplers import build_scheduler

    side = SIZES[args.size][1]
    picture = Image.new("RGB", (side, side), (200, 60, 30))
    edits = (EditConcept("blue"), EditConcept("red", remove=True))
    with tempfile.TemporaryDirectory() as scratch:
        model = size_model(args.size, Path(scratch))
        # diffusers' pipeline swaps its UNet's attention processors: its own UNet, the same weights
        components = {k: model.pipe.components[k] for k in ("vae", "text_encoder", "tokenizer")}
        components["unet"] = type(model.pipe.unet).from_config(model.pipe.unet.config)
        components["unet"].load_state_dict(model.pipe.unet.state_dict())

        def theirs(seed: int) -> None:
            pipe = LEditsPPPipelineStableDiffusion(
                **components, scheduler=build_scheduler("dpmpp-2m-sde", "normal", model.scheduler_config),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            pipe.invert(image=picture, num_inversion_steps=args.steps, generator=torch.Generator().manual_seed(seed))
            pipe(editing_prompt=["blue", "red"], reverse_editing_direction=[False, True],
                 use_intersect_mask=has_quarter_attention(model.pipe.unet.config))  # as t2i's auto mask

        def ours(**extra):
            def run(seed: int) -> None:
                generate(model, GenerationConfig(prompts=("",), seed=seed, steps=args.steps, width=side, height=side,
                                                 **extra), progress=False)
            return run

        rows = {"LEDITS++, diffusers": theirs,
                "LEDITS++, t2i": ours(init_image=picture, edits=edits, sampler="dpmpp-2m-sde", guidance_scale=3.5),
                "img2img alternative test, t2i": ours(init_image=picture, sampler="euler", guidance_scale=1.0,
                                                      img2img_alt=Img2ImgAlt(decode_steps=args.steps,
                                                                             sigma_adjustment=True)),
                "txt2img, t2i": ours(sampler="dpmpp-2m-sde", guidance_scale=7.0)}
        names, median = list(rows), rotated_medians(rows, args.repeats)
        print(f"(g) editing, {args.size} model, {side} px, {args.steps} steps, CPU {torch.get_num_threads()} threads, "
              f"median of {args.repeats}")
        print(f"{'row':<40}{'s/image':>10}{'ratio':>8}{'x txt2img':>10}")
        for name in names:
            ratio = median[name] / median["LEDITS++, diffusers"] if name.startswith("LEDITS") else 1.0
            print(f"{name:<40}{median[name]:>10.3f}{ratio:>8.3f}{median[name] / median['txt2img, t2i']:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", choices=SIZES, default="sd-shaped", help="the model of table (c)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--options", nargs="+", choices=OPTIONS, default=list(OPTIONS)[:8],
                        help="rows of table (c); offload-model needs a GPU")
    parser.add_argument("--only-options", action="store_true", help="table (c) alone")
    parser.add_argument("--only-canvas", action="store_true", help="table (d) alone")
    parser.add_argument("--canvas-side", type=int, default=128, help="table (d): the hires and outpainted side")
    parser.add_argument("--only-guidance", action="store_true", help="table (e) alone: PAG, IP-Adapter, SAG")
    parser.add_argument("--only-watching", action="store_true", help="table (f) alone: the strip, live previews")
    parser.add_argument("--only-editing", action="store_true", help="table (g) alone: LEDITS++, img2img alt test")
    args = parser.parse_args()
    if args.only_editing:
        return editing_table(args)
    if args.only_guidance:
        return guidance_table(args)
    if args.only_watching:
        return watching_table(args)
    if args.only_options:
        return options_table(args)
    if args.only_canvas:
        return canvas_table(args)

    plain = StableDiffusionPipeline(**tiny_components(), safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    model = load_model(ModelConfig(model="tiny", device="cpu"))
    plain_times, ours_times = [], []
    with tempfile.TemporaryDirectory() as out:
        timed(plain_diffusers, plain, "warm-up", 0, 2, Path(out))
        timed(t2i_generate, model, "warm-up", 0, 2, Path(out))
        for repeat in range(args.repeats):
            for index in range(args.images):
                prompt, seed = f"a photo of object {index}", 1000 + index
                plain_times.append(timed(plain_diffusers, plain, prompt, seed, args.steps, Path(out) / f"p{repeat}"))
                ours_times.append(timed(t2i_generate, model, prompt, seed, args.steps, Path(out) / f"t{repeat}"))
    plain_s, ours_s = statistics.median(plain_times), statistics.median(ours_times)

    python = sys.executable
    help_s = wall([python, "-m", "t2i", "--help"], args.repeats)
    samplers_s = wall([python, "-m", "t2i", "samplers"], args.repeats)
    diffusers_s = wall([python, "-c", "import diffusers.pipelines"], args.repeats)

    print(f"(a) seconds per image, {args.steps} steps, tiny model, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.images} images x {args.repeats} repeats")
    print(f"{'what':<34}{'seconds':>10}{'ratio':>10}")
    print(f"{'plain diffusers':<34}{plain_s:>10.3f}{1:>10.3f}")
    print(f"{'t2i generate (API)':<34}{ours_s:>10.3f}{ours_s / plain_s:>10.3f}")
    print(f"(b) start-up, fresh process, median of {args.repeats}")
    print(f"{'python -c import diffusers':<34}{diffusers_s:>10.3f}{1:>10.3f}")
    print(f"{'t2i --help':<34}{help_s:>10.3f}{help_s / diffusers_s:>10.3f}")
    print(f"{'t2i samplers':<34}{samplers_s:>10.3f}{samplers_s / diffusers_s:>10.3f}")
    options_table(args)
    canvas_table(args)


if __name__ == "__main__":
    main()
