"""Editing real images: `t2i invert` (the noise an image comes from, by DDIM inversion, and its reconstruction
from that noise) and `t2i edit` (LEDITS++: words added to or taken away from the image)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from t2i.cli import app, log, out_folder, prepare_environment
from t2i.models.config import DEFAULT_MODEL


@app.command()
def invert(
    image: str = typer.Argument(..., help="The image to invert (PNG, JPEG, WebP)."),
    prompt: str = typer.Option("", help="What the image shows: the prompt the inversion runs under."),
    steps: int = typer.Option(50, help="DDIM steps (more: a closer reconstruction)."),
    guidance_scale: float = typer.Option(1.0, help="CFG during inversion (1: none, the most exact)."),
    model: str = typer.Option(DEFAULT_MODEL, help="The model, as t2i generate's --model."),
    width: int = typer.Option(0, help="Resize to this width first (0: the image's own, rounded down to 8)."),
    height: int = typer.Option(0, help="Resize to this height first (0: the image's own, rounded down to 8)."),
    out: str = typer.Option("outputs", help="Folder for NAME-noise.safetensors and the reconstruction (never "
                            "overwritten)."),
    device: str = typer.Option("auto"),
    offline: bool = typer.Option(False, help="Never touch the network."),
):
    """Invert IMAGE to the noise it comes from; `t2i generate PROMPT --from-noise FILE` samples from it again
    (the same prompt reconstructs the image, an edited one changes it)."""
    prepare_environment(offline)
    from t2i.errors import InvalidInput

    for name, value in (("width", width), ("height", height)):
        if value and (value < 8 or value % 8):
            raise InvalidInput("must be a positive multiple of 8 (or 0: the image's own)", field=name, value=value)
    if steps < 1:
        raise InvalidInput("must be at least 1", field="steps", value=steps)
    folder = out_folder(out)

    from t2i.files import write_new
    from t2i.formats.images import load_image
    from t2i.formats.png import save_png
    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate
    from t2i.sampling.inversion import invert as run_invert
    from t2i.sampling.inversion import save_noise

    picture = load_image(image, "image")
    loaded = load_model(ModelConfig(model=model, device=device, offline=offline))
    size = (width or picture.width // 8 * 8, height or picture.height // 8 * 8)
    inverted = run_invert(loaded, picture, prompt, steps, guidance_scale, size)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(image).stem[:40] or "image"  # the user's file name, not prompt text
    names = [f"{stem}-noise.safetensors"] + [f"{stem}-noise-{n}.safetensors" for n in range(1, 1000)]
    noise_path = write_new(folder, names, lambda tmp: save_noise(inverted, tmp))
    print(noise_path, flush=True)
    settings = inverted.settings
    config = GenerationConfig(prompts=(prompt,), steps=steps, guidance_scale=guidance_scale, sampler="ddim",
                              schedule="normal", width=settings["width"], height=settings["height"],
                              from_noise=str(noise_path), seed=0)
    result = generate(loaded, config, progress=False)[0]
    print(save_png(result.image, result.settings, folder), flush=True)
    log.info("inverted %s in %d steps; the PNG is its reconstruction", image, steps)


@app.command()
def edit(
    image: str = typer.Argument(..., help="The image to edit (PNG, JPEG, WebP)."),
    edit: Optional[List[str]] = typer.Option(None, "--edit", help='Words to add ("+blue") or take away ("-red"); '
                                             "repeatable, at most 4."),
    edit_scale: Optional[List[float]] = typer.Option(None, help="How strongly each edit steers (default 5; 0 "
                                                     "reconstructs the image): once for all or once an edit."),
    edit_threshold: Optional[List[float]] = typer.Option(None, help="Each edit's mask keeps the latent above this "
                                                         "quantile of its guidance (default 0.9: a tenth of it)."),
    edit_warmup: Optional[List[int]] = typer.Option(None, help="Steps before each edit starts (default 0)."),
    edit_cooldown: Optional[List[int]] = typer.Option(None, help="The step each edit stops at (default: the end)."),
    prompt: str = typer.Option("", help="What the image shows (the source prompt; empty: no guidance while "
                               "inverting)."),
    steps: int = typer.Option(50, help="Inversion steps (the edit samples back as many)."),
    guidance_scale: float = typer.Option(3.5, help="CFG of the source prompt while inverting (LEDITS++'s 3.5)."),
    edit_skip: float = typer.Option(0.15, help="Share of the noisiest steps left out: less, the more the edit may "
                                    "change."),
    edit_mask: str = typer.Option("auto", help="auto, intersect (LEDITS++'s), attention or noise: where an edit "
                                  "acts (auto: intersect if the UNet has cross-attention at 1/4 of the latent, else "
                                  "noise)."),
    sampler: str = typer.Option("dpmpp-2m-sde", help="dpmpp-2m-sde or ddim (LEDITS++ supports these two; any "
                                "other runs as dpmpp-2m-sde, with a warning)."),
    seed: Optional[int] = typer.Option(None, help="Seeds the inversion's noise; image i of the run uses seed+i."),
    num_images: int = typer.Option(1, help="Edits of the image, each from its own seed."),
    lora: Optional[List[str]] = typer.Option(None, help="PATH[:SCALE] of a LoRA file or training folder."),
    model: str = typer.Option(DEFAULT_MODEL, help="The model, as t2i generate's --model."),
    width: Optional[int] = typer.Option(None, help="Resize to this width first, a multiple of 32 (default: the "
                                        "image's own, rounded down to 32)."),
    height: Optional[int] = typer.Option(None, help="Resize to this height first, a multiple of 32."),
    out: str = typer.Option("outputs", help="Output folder; existing files are never overwritten."),
    device: str = typer.Option("auto"),
    offline: bool = typer.Option(False, help="Never touch the network."),
):
    """Edit IMAGE with LEDITS++: invert it, then sample it back steered towards the +words and away from the
    -words, each where its own mask says it acts. `t2i generate --from-image EDITED.png` re-makes an edit."""
    prepare_environment(offline)
    from t2i.cli.control import per_unit
    from t2i.errors import InvalidInput
    from t2i.formats.lora import LoraRef
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.ledits import EditConcept, parse_edit

    if not edit:
        raise InvalidInput("give at least one edit", field="edit", value=None,
                           hint='e.g. --edit "+blue" --edit "-red"')
    typed = {name: values for name, values in (("edit_scale", edit_scale), ("edit_threshold", edit_threshold),
                                               ("edit_warmup", edit_warmup), ("edit_cooldown", edit_cooldown))
             if values}
    fields = {"edit_scale": "scale", "edit_threshold": "threshold", "edit_warmup": "warmup",
              "edit_cooldown": "cooldown"}
    settings = per_unit(typed, fields, len(edit), "edits", "--edit")
    concepts = tuple(EditConcept(*parse_edit(text), **each) for text, each in zip(edit, settings))
    config = GenerationConfig(prompts=(prompt,), init_image=image, edits=concepts, steps=steps,
                              guidance_scale=guidance_scale, edit_skip=edit_skip, edit_mask=edit_mask, sampler=sampler,
                              schedule=None, seed=seed, num_images=num_images, width=width, height=height,
                              loras=tuple(LoraRef.parse(text) for text in lora or ()))
    folder = out_folder(out)

    from t2i.formats.png import save_png
    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model
    from t2i.sampling.generate import generate_iter

    loaded = load_model(ModelConfig(model=model, device=device, offline=offline))
    for result in generate_iter(loaded, config):
        print(save_png(result.image, result.settings, folder), flush=True)
    log.info("edited %s with %s", image, ", ".join(c.written for c in concepts))
