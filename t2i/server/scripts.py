"""A1111's img2img scripts, as clients call them: `script_name` (the script's title, any case) and
`script_args` in the order of the script's UI. Each becomes GenerationConfig fields."""

from __future__ import annotations

from typing import Any, Callable

from t2i.errors import check
from t2i.sampling.outpaint import FILLS, SIDES

A1111_FILLS = ("fill", "original", "latent noise", "latent nothing")  # A1111's masked content, by index


def _poor_mans_outpainting(args: list[Any]) -> dict[str, Any]:
    """[pixels, mask_blur, inpainting_fill (index), directions]: A1111's "Poor man's outpainting"."""
    check(len(args) == 4, "script_args", f"{len(args)} values",
          "Poor man's outpainting takes 4: pixels, mask_blur, inpainting_fill, direction")
    pixels, blur, fill, directions = args
    for name, value, low, high in (("pixels", pixels, 8, 256), ("mask_blur", blur, 0, 64)):
        check(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
              f"script_args.{name}", value, f"must be a whole number from {low} to {high}")
    check(isinstance(fill, int) and not isinstance(fill, bool) and 0 <= fill < len(A1111_FILLS),
          "script_args.inpainting_fill", fill, "must be 0 (fill), 1 (original), 2 or 3")
    check(A1111_FILLS[fill] in FILLS, "script_args.inpainting_fill", fill,
          f"{A1111_FILLS[fill]} acts on latents, which t2i's outpainting does not", hint="use 0 (fill) or 1 (original)")
    check(isinstance(directions, list) and bool(directions) and all(d in SIDES for d in directions),
          "script_args.direction", directions, f"must be a list of {', '.join(SIDES)}")
    return {"outpaint": ",".join(f"{side}={pixels}" for side in SIDES if side in directions),
            "outpaint_mode": "poor-man", "mask_blur": blur, "fill": A1111_FILLS[fill]}


def _outpainting_mk2(args: list[Any]) -> dict[str, Any]:
    """[info placeholder, pixels, mask_blur, directions, noise_q, color_variation]: A1111's "Outpainting mk2"
    (the first value stands for the script's HTML note and is ignored, as A1111 ignores it)."""
    check(len(args) == 6, "script_args", f"{len(args)} values", "Outpainting mk2 takes 6: a placeholder, pixels, "
          "mask_blur, direction, noise_q, color_variation")
    _, pixels, blur, directions, noise_q, variation = args
    fields = _poor_mans_outpainting([pixels, blur, 1, directions])
    for name, value, high in (("noise_q", noise_q, 4), ("color_variation", variation, 1)):
        check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= high,
              f"script_args.{name}", value, f"must be a number from 0 to {high}")
    return {**fields, "outpaint_mode": "mk2", "outpaint_noise_q": float(noise_q),
            "outpaint_color_variation": float(variation)}


#: lower-case title -> script_args -> GenerationConfig fields (the init image goes in unresized); older
#: A1111 versions title mk2 "Outpainting"
IMG2IMG_SCRIPTS: dict[str, Callable[[list[Any]], dict[str, Any]]] = {
    "poor man's outpainting": _poor_mans_outpainting, "outpainting mk2": _outpainting_mk2,
    "outpainting": _outpainting_mk2,
}


def script_fields(name: str, args: list[Any]) -> dict[str, Any]:
    script = IMG2IMG_SCRIPTS.get(name.strip().lower())
    check(script is not None, "script_name", name, "not a script t2i runs", choices=list(IMG2IMG_SCRIPTS))
    return script(args)  # type: ignore[misc]
