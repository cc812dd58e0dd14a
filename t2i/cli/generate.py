"""`t2i generate`, `t2i info`, `t2i samplers`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

import typer

from t2i.cli import RuntimeOptions, app, default_of, given, log, out_folder, prepare_environment
from t2i.cli.control import ControlOptions, IPAdapterOptions, control_units, ip_adapter_units
from t2i.errors import InvalidInput, T2IError
from t2i.models.config import DEFAULT_MODEL, DEVICES, DTYPE_NAMES, ModelConfig
from t2i.sampling.config import GenerationConfig
from t2i.sampling.samplers import SAMPLERS, SCHEDULES

MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
GENERATION_FIELDS = {f.name for f in fields(GenerationConfig)}
NOT_CONFIG = {"out", "from_image"}  # options of the command itself


def _default(name: str, config_class=GenerationConfig):
    return default_of(config_class, name)


def _read_prompts(prompts: list[str] | None, prompts_file: Path | None) -> tuple[str, ...]:
    found = list(prompts or [])
    if prompts_file is not None:
        try:
            lines = prompts_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read it ({exc})", field="prompts_file", value=prompts_file) from exc
        found += [line.strip() for line in lines if line.strip()]
    return tuple(found)


def _size(text: str, field: str) -> tuple[int, int]:
    """'640x480' -> (640, 480); a side may be 0."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.strip().isdigit() and height.strip().isdigit()):
        raise InvalidInput("must be WIDTHxHEIGHT, e.g. 1024x768 (0 for a side: it follows the aspect)", field=field,
                           value=text)
    return int(width), int(height)


def build_configs(options: dict) -> tuple[ModelConfig, GenerationConfig]:
    """The configs `t2i generate` runs: a PNG's recorded settings (--from-image) with the typed
    options over them, or the typed options alone."""
    typed = {("loras" if k == "lora" else k): v for k, v in options.items() if k not in NOT_CONFIG}
    if "prompts" in typed or "prompts_file" in typed:
        typed["prompts"] = _read_prompts(typed.get("prompts"), typed.pop("prompts_file", None))
    if "loras" in typed:
        typed["loras"] = tuple(typed["loras"] or ())
    if "attention_words" in typed:
        typed["attention_words"] = tuple(typed["attention_words"] or ())
    if "pag_layers" in typed:
        typed["pag_layers"] = tuple(typed["pag_layers"] or ())
    controls = control_units(typed)
    if controls is not None:
        typed["controls"] = controls
    ip_adapters = ip_adapter_units(typed)
    if ip_adapters is not None:
        typed["ip_adapters"] = ip_adapters
    if typed.get("from_noise"):  # the inversion's settings, for what was not typed: it reconstructs as it stands
        from t2i.sampling.inversion import load_noise

        inversion = load_noise(typed["from_noise"]).settings
        for name in ("steps", "guidance_scale", "width", "height", "sampler", "schedule", "model"):
            typed.setdefault(name, inversion[name])
    if "hires_resize" in typed:
        typed["hires_resize_x"], typed["hires_resize_y"] = _size(typed.pop("hires_resize"), "hires_resize")
    if options.get("from_image"):
        from t2i.sampling.settings import settings_from_png

        try:
            recorded = settings_from_png(options["from_image"])
        except T2IError as exc:
            exc.field = "from_image" if exc.field == "image" else exc.field
            raise
        return recorded.configs(**typed)
    typed.setdefault("prompts", ())
    return (ModelConfig(**{k: v for k, v in typed.items() if k in MODEL_FIELDS}),
            GenerationConfig(**{k: v for k, v in typed.items() if k in GENERATION_FIELDS}))


@app.command()
def generate(
    ctx: typer.Context,
    prompts: Optional[List[str]] = typer.Argument(None, help="One or more prompts.", show_default=False),
    prompts_file: Optional[Path] = typer.Option(None, help="A text file with one prompt per line."),
    negative_prompt: str = typer.Option(_default("negative_prompt"), help="What the images should not show."),
    model: str = typer.Option(DEFAULT_MODEL, help="Hub id, diffusers folder, .safetensors file, or a preset: "
                              "'demo' (shapes, offline) or 'tiny' (noise, for tests)."),
    vae: Optional[str] = typer.Option(None, help="Use this VAE (folder or .safetensors) instead of the model's."),
    sampler: str = typer.Option(_default("sampler"), help="See `t2i samplers`; A1111/ComfyUI names work."),
    schedule: Optional[str] = typer.Option(None, help="A1111's Schedule type / ComfyUI's scheduler: automatic, "
                                           f"{', '.join(SCHEDULES)} (see `t2i samplers`)."),
    steps: int = typer.Option(_default("steps")),
    guidance_scale: float = typer.Option(_default("guidance_scale"), help="Classifier-free guidance (CFG) scale."),
    seed: Optional[int] = typer.Option(None, help="Image i of the run uses seed+i. Default: random."),
    num_images: int = typer.Option(_default("num_images"), help="Images per prompt."),
    batch_size: int = typer.Option(_default("batch_size")),
    width: Optional[int] = typer.Option(None, help="Multiple of 8. Default: the model's native size."),
    height: Optional[int] = typer.Option(None, help="Multiple of 8. Default: the model's native size."),
    lora: Optional[List[str]] = typer.Option(None, help="PATH[:SCALE] of a LoRA file or training folder; repeatable."),
    lora_dir: str = typer.Option(_default("lora_dir"), help="Where <lora:NAME:WEIGHT> tags in prompts find NAME."),
    embeddings_dir: Optional[str] = typer.Option(None, help="Textual-inversion embeddings (A1111's embeddings/ "
                                                 "folder): a file's name in a prompt inserts its vectors."),
    clip_skip: Optional[int] = typer.Option(None, help="A1111 convention: 2 = penultimate CLIP layer."),
    emphasis: str = typer.Option(_default("emphasis"), help="(word:1.3) weights, as A1111: original, no-norm, or "
                                 "none (brackets are text)."),
    init_image: Optional[str] = typer.Option(None, help="img2img: start from this image."),
    strength: Optional[float] = typer.Option(None, help="img2img/inpaint: how much to change, in (0, 1]."),
    mask: Optional[str] = typer.Option(None, help="Inpainting mask for --init-image: white is repainted."),
    out: str = typer.Option("outputs", help="Output folder; existing files are never overwritten."),
    from_image: Optional[str] = typer.Option(None, help="Re-make a t2i PNG from its settings; flags given override."),
    cache_interval: int = typer.Option(_default("cache_interval"), help="DeepCache-style reuse: the whole UNet "
                                       "every N steps, its outer level alone between (faster, a little off; 1: off)."),
    outpaint: Optional[str] = typer.Option(None, help="Outpaint --init-image: SIDE=PIXELS pairs, e.g. "
                                           "left=128,right=128 (left, right, up, down, all)."),
    outpaint_mode: str = typer.Option(_default("outpaint_mode"), help="poor-man (A1111's canvas, rounded to 64), "
                                      "mk2 (A1111's Outpainting mk2: a side at a time from matched noise) or pad "
                                      "(ComfyUI's: exactly the pixels asked, a grey border)."),
    outpaint_noise_q: float = typer.Option(_default("outpaint_noise_q"), help="mk2's fall-off exponent (lower: "
                                           "more detail)."),
    outpaint_color_variation: float = typer.Option(_default("outpaint_color_variation"), help="mk2's colour "
                                                   "variation of the starting noise, 0 to 1."),
    mask_blur: int = typer.Option(_default("mask_blur"), help="A1111's Mask blur in pixels: the inpainting and "
                                  "outpainting seam (pad: the feathering)."),
    fill: str = typer.Option(_default("fill"), help="A1111's Masked content: what the repainted area starts from, "
                             "fill (nearby colours) or original (the image)."),
    inpaint_area: str = typer.Option(_default("inpaint_area"), help="whole (the picture) or masked (A1111's Only "
                                     "masked: the masked box at full resolution)."),
    inpaint_padding: int = typer.Option(_default("inpaint_padding"), help="Pixels around the box with "
                                        "--inpaint-area masked."),
    resize_mode: int = typer.Option(_default("resize_mode"), help="Inpainting's resize to the output size: 0 just "
                                    "resize, 1 crop and resize, 2 resize and fill."),
    mask_invert: bool = typer.Option(_default("mask_invert"), "--mask-invert", help="Repaint the black of the mask."),
    inpaint_prep: str = typer.Option(_default("inpaint_prep"), help="a1111 (unmasked pixels kept exactly, as A1111 "
                                     "and t2i serve do) or diffusers (the pipeline's output as it is)."),
    hires_scale: Optional[float] = typer.Option(None, help="Hires fix: upscale the first pass this much, then "
                                                "refine it with an img2img pass (A1111's Upscale by)."),
    hires_resize: Optional[str] = typer.Option(None, help="Hires fix to WxH instead of a scale; 0 for a side "
                                               "follows the aspect (A1111's Resize width/height to)."),
    hires_upscaler: str = typer.Option(_default("hires_upscaler"), help="Latent, Latent (antialiased), Latent "
                                       "(bicubic), Latent (bicubic antialiased), Latent (nearest), Latent "
                                       "(nearest-exact), Lanczos, Nearest or None."),
    hires_steps: int = typer.Option(_default("hires_steps"), help="Steps of the hires pass (0: as many as --steps)."),
    hires_denoise: float = typer.Option(_default("hires_denoise"), help="The hires pass's denoising strength."),
    hires_sampler: Optional[str] = typer.Option(None, help="The hires pass's sampler (default: --sampler)."),
    hires_schedule: Optional[str] = typer.Option(None, help="The hires pass's schedule."),
    hires_prompt: Optional[str] = typer.Option(None, help="The hires pass's prompt (default: the prompt)."),
    hires_negative_prompt: Optional[str] = typer.Option(None, help="The hires pass's negative prompt."),
    control: Optional[List[str]] = ControlOptions.control,
    control_module: Optional[List[str]] = ControlOptions.module,
    control_resize: Optional[List[str]] = ControlOptions.resize,
    control_res: Optional[List[int]] = ControlOptions.res,
    control_threshold_a: Optional[List[float]] = ControlOptions.threshold_a,
    control_threshold_b: Optional[List[float]] = ControlOptions.threshold_b,
    control_start: Optional[List[float]] = ControlOptions.start,
    control_end: Optional[List[float]] = ControlOptions.end,
    control_mode: Optional[List[str]] = ControlOptions.mode,
    control_pixel_perfect: bool = ControlOptions.pixel_perfect,
    controlnet_dir: Optional[str] = ControlOptions.folder,
    ip_adapter: Optional[List[str]] = IPAdapterOptions.adapter,
    ip_image: Optional[List[str]] = IPAdapterOptions.image,
    ip_scale: Optional[List[float]] = IPAdapterOptions.scale,
    ip_start: Optional[List[float]] = IPAdapterOptions.start,
    ip_end: Optional[List[float]] = IPAdapterOptions.end,
    image_encoder: Optional[str] = IPAdapterOptions.encoder,
    pag_scale: float = typer.Option(_default("pag_scale"), help="Perturbed-Attention Guidance scale (0: off; 3 is "
                                    "the paper's, with a low CFG)."),
    pag_adaptive: float = typer.Option(_default("pag_adaptive"), help="PAG's scale falls by this much a timestep "
                                       "towards the end (diffusers' adaptive scale; 0: constant)."),
    pag_layers: Optional[List[str]] = typer.Option(None, help="Self-attention layers PAG perturbs, as diffusers "
                                                   "matches them (default mid; e.g. down_blocks.2); repeatable."),
    sag_scale: float = typer.Option(_default("sag_scale"), help="Self-Attention Guidance scale, any sampler (0: off; "
                                    "0.75 is diffusers' and A1111's)."),
    sag_threshold: float = typer.Option(_default("sag_threshold"), help="SAG's mask threshold (A1111's; 1: keys "
                                        "attended more than average are blurred)."),
    sag_blur_sigma: float = typer.Option(_default("sag_blur_sigma"), help="SAG's blur, in latent pixels."),
    attention_maps: bool = typer.Option(False, "--attention-maps", help="Save each word's cross-attention map "
                                        "beside each image (NNNNN-SEED-attention.png, .safetensors)."),
    attention_words: Optional[List[str]] = typer.Option(None, help="Only these words' maps (repeatable)."),
    from_noise: Optional[str] = typer.Option(None, help="Start from inverted noise (`t2i invert`) instead of a "
                                             "seed's: its steps, size, CFG, DDIM and model unless given."),
    strip: Optional[int] = typer.Option(None, help="Save the denoising strip beside each image: the predicted "
                                        "clean image every STRIP steps, then the image (NNNNN-SEED-strip.png)."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="Decode in overlapping tiles: large images in "
                                    "little GPU memory."),
    vae_tile_size: Optional[int] = typer.Option(None, help="Tile side in pixels (multiple of 8). Default: the "
                                                "VAE's own (512 for SD 1.x)."),
    vae_slicing: bool = typer.Option(False, "--vae-slicing", help="Decode a batch an image at a time."),
    dtype: str = typer.Option(_default("dtype", ModelConfig), help=f"{', '.join(DTYPE_NAMES)}; auto = bf16 on "
                              "GPUs that have it, else fp16 on CUDA, fp32 elsewhere."),
    device: str = typer.Option(_default("device", ModelConfig), help=", ".join(DEVICES)),
    compile: bool = RuntimeOptions.compile,
    channels_last: bool = RuntimeOptions.channels_last,
    fuse_qkv: bool = RuntimeOptions.fuse_qkv,
    attention_slicing: bool = RuntimeOptions.attention_slicing,
    offload: Optional[str] = RuntimeOptions.offload,
    offline: bool = typer.Option(False, help="Never touch the network (same as HF_HUB_OFFLINE=1)."),
    allow_pickle: bool = typer.Option(False, help="Allow pickled .ckpt/.bin/.pt checkpoints and embeddings "
                                      "(they can run code)."),
):
    """Generate images: txt2img, img2img (--init-image) or inpainting (--init-image --mask), each steered by
    ControlNet units (--control) and pictures as prompts (--ip-adapter) if given."""
    prepare_environment(offline)
    options = given(ctx)
    model_config, config = build_configs(options)  # checks every value before the slow imports
    out_dir = out_folder(out)

    from t2i.formats.png import save_png
    from t2i.models.loading import load_model
    from t2i.processes import launched, process_state
    from t2i.sampling.generate import generate_iter

    rank, world = 0, 1
    if launched():  # accelerate launch / torchrun: each process makes its share, on its own device
        state = process_state()
        rank, world = state.process_index, state.num_processes
        if model_config.device == "auto":
            model_config = dataclasses.replace(model_config, device=state.device.type)
    loaded = load_model(model_config)
    written = 0
    for result in generate_iter(loaded, config, rank=rank, world=world):
        path = save_png(result.image, result.settings, out_dir)
        print(path, flush=True)
        if result.strip:
            from t2i.formats.png import save_strip

            print(save_strip(result.strip, path), flush=True)
        if result.attention is not None:
            from t2i.formats.png import save_attention

            for written_path in save_attention(result.attention, result.image, path):
                print(written_path, flush=True)
        written += 1
    log.info("wrote %d image(s) to %s", written, out_dir)


@app.command()
def samplers():
    """List the samplers with their A1111 and ComfyUI names (* not in A1111), then the schedules."""
    def table(rows):
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])

    table([("sampler", "A1111", "ComfyUI", "automatic", "summary")] + [
        (name, spec.a1111 + ("" if spec.in_a1111 else " *"), spec.comfy or "-", spec.automatic, spec.summary)
        for name, spec in SAMPLERS.items()])
    print("* A1111 has no such sampler and reads this label as DPM++ 2M; t2i --from-image re-makes it exactly")
    print()
    table([("schedule", "A1111", "ComfyUI", "samplers", "summary")] + [
        (name, spec.a1111, spec.comfy or "-",
         str(sum(name in s.schedules for s in SAMPLERS.values())) + f"/{len(SAMPLERS)}", spec.summary)
        for name, spec in SCHEDULES.items()])
    print("--schedule automatic picks A1111's default for the sampler; names like 'DPM++ 2M Karras' still work")


@app.command()
def info(image: str = typer.Argument(..., help="A PNG written by t2i or A1111, or a JPEG or WebP from A1111.")):
    """Print the generation settings stored in a PNG."""
    from t2i.formats.png import read_png_text

    text, settings = read_png_text(image)
    if text is None and settings is None:
        raise InvalidInput("no generation settings stored in this image", field="image", value=image)
    if text:
        print(text)
    if settings:
        print(json.dumps(settings, indent=2, ensure_ascii=False))
