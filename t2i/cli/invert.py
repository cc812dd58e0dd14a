"""`t2i invert`: the noise a real image comes from (DDIM inversion), and its reconstruction from that noise."""

from __future__ import annotations

from pathlib import Path

import typer

from t2i.cli import app, log, prepare_environment
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
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InvalidInput("is a file, not a folder", field="out", value=out)

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
