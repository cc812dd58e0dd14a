"""What DDIM inversion keeps in the shapes world, and what a prompt edit on inverted noise, or a LEDITS++ edit,
changes.

Held-out renders of "a <colour> <shape>" are inverted on `demo` under their caption; sampling back with the
same caption should give the same colour, shape and place (the analyser's reading, the foreground's centroid
in pixels, the mean pixel error), and sampling back with another colour word ("red" -> "blue") should change
the colour while shape and place stay. Bootstrap intervals over images.
"""

from __future__ import annotations

import numpy as np

from t2i.eval.metrics import Estimate, bootstrap_many
from t2i.shapes.analyser import analyse, foreground
from t2i.shapes.world import Shape, make_image


def _centroid(image) -> np.ndarray | None:
    mask = foreground(image)
    return np.argwhere(mask).mean(axis=0) if mask.any() else None


def _regenerate(model, noise_file: str, prompt: str, steps: int, guidance: float):
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate

    return generate(model, GenerationConfig(prompts=(prompt,), steps=steps, sampler="ddim", schedule="normal",
                                            guidance_scale=guidance, from_noise=noise_file, seed=0),
                    progress=False)[0].image


def inversion_agreement(model, specs: list[Shape], folder, steps: int = 50, edit_to: str | None = None,
                        guidance: float = 1.0) -> dict[str, Estimate]:
    """Invert each render, sample back with its caption (or with its colour word replaced by `edit_to`):
    `colour` (the expected colour read back), `shape`, `centroid_px` and `pixel_error` (mean |difference| of
    0-255 pixels against the render)."""
    from pathlib import Path

    from t2i.sampling.inversion import invert, save_noise

    rows = []
    for index, spec in enumerate(specs):
        render = make_image(spec)
        caption = f"a {spec.colour} {spec.shape}"
        noise_file = Path(folder) / f"{index}.safetensors"
        save_noise(invert(model, render, caption, steps), noise_file)
        colour = edit_to or spec.colour
        image = _regenerate(model, str(noise_file), f"a {colour} {spec.shape}", steps, guidance)
        rows.append(_agreement(image, render, colour, spec.shape))
    return _estimates(rows)


def ledits_agreement(model, specs: list[Shape], edits: tuple, new_colour: str | None, steps: int = 30,
                     sampler: str = "dpmpp-2m-sde", captioned: bool = False) -> dict[str, Estimate]:
    """LEDITS++ each render with `edits` (t2i.sampling.ledits.EditConcept), inverted under the empty prompt (or,
    `captioned`, under its caption at CFG 3.5): `colour` (the render's colour read back, or `new_colour` for an
    edit that should change it), `shape`, `centroid_px` and `pixel_error` against the render, as
    `inversion_agreement` measures them."""
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate

    rows = []
    for index, spec in enumerate(specs):
        render = make_image(spec)
        config = GenerationConfig(prompts=(f"a {spec.colour} {spec.shape}" if captioned else "",), init_image=render,
                                  steps=steps,
                                  sampler=sampler, guidance_scale=3.5, seed=index, edits=tuple(edits))
        image = generate(model, config, progress=False)[0].image
        rows.append(_agreement(image, render, new_colour or spec.colour, spec.shape))
    return _estimates(rows)


def _agreement(image, render, colour: str, shape: str) -> tuple[bool, bool, float, float]:
    """(colour as expected, shape as expected, centroid distance in pixels, mean pixel error) of `image`."""
    seen_colour, seen_shape = analyse(image)
    ours, theirs = _centroid(image), _centroid(render)
    distance = float(np.linalg.norm(ours - theirs)) if ours is not None and theirs is not None else 32.0
    error = float(np.abs(np.asarray(image, dtype=np.float64) - np.asarray(render, dtype=np.float64)).mean())
    return seen_colour == colour, seen_shape == shape, distance, error


def _estimates(rows: list) -> dict[str, Estimate]:
    table = np.array(rows, dtype=np.float64)
    names = ("colour", "shape", "centroid_px", "pixel_error")
    return bootstrap_many(lambda t: {n: float(t[:, i].mean()) for i, n in enumerate(names)}, table,
                          bounds={"colour": (0, 1), "shape": (0, 1), "centroid_px": (0, np.inf),
                                  "pixel_error": (0, 255)})


def alt_agreement(model, specs: list[Shape], new_colour: str | None = None, steps: int = 50,
                  sigma_adjustment: bool = False) -> dict[str, Estimate]:
    """A1111's img2img alternative test on each render (t2i.sampling.img2img_alt): the noise found under its
    caption at decode CFG 1, sampled with Euler under its caption (or with its colour word replaced by
    `new_colour`) at CFG 1; measured as `inversion_agreement` measures."""
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate
    from t2i.sampling.img2img_alt import Img2ImgAlt

    rows = []
    for index, spec in enumerate(specs):
        render = make_image(spec)
        colour = new_colour or spec.colour
        found = Img2ImgAlt(decode_prompt=f"a {spec.colour} {spec.shape}", decode_steps=steps,
                           sigma_adjustment=sigma_adjustment)
        config = GenerationConfig(prompts=(f"a {colour} {spec.shape}",), init_image=render, steps=steps,
                                  sampler="euler", guidance_scale=1.0, seed=index, img2img_alt=found)
        rows.append(_agreement(generate(model, config, progress=False)[0].image, render, colour, spec.shape))
    return _estimates(rows)
