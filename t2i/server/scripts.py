"""A1111's img2img scripts, as clients call them: `script_name` (the script's title, any case) and
`script_args` in the order of the script's UI. Each becomes GenerationConfig fields (the outpainting scripts'
with `outpaint`, the img2img alternative test's with `img2img_alt`)."""

from __future__ import annotations

from typing import Any, Callable

from t2i.errors import T2IError, check
from t2i.sampling.img2img_alt import TITLE as ALT_TITLE
from t2i.sampling.img2img_alt import Img2ImgAlt
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


def _img2img_alternative(args: list[Any]) -> dict[str, Any]:
    """A1111's "img2img alternative test": [info placeholder, override_sampler, override_prompt, original_prompt,
    original_negative_prompt, override_steps, decode steps, override_strength, decode CFG, randomness,
    sigma_adjustment] and, since A1111 1.6, [second_order_correction, noise_sigma_intensity]. The overrides become
    the generation's own fields (Euler; the prompts; the steps; `strength` 1, else the request's stands)."""
    check(len(args) in (11, 13), "script_args", f"{len(args)} values", "the img2img alternative test takes 13 (11 "
          "before A1111 1.6): a placeholder, override_sampler, override_prompt, original_prompt, "
          "original_negative_prompt, override_steps, st, override_strength, cfg, randomness, sigma_adjustment, "
          "second_order_correction, noise_sigma_intensity")
    names = ("override_sampler", "override_prompt", "original_prompt", "original_negative_prompt", "override_steps",
             "st", "override_strength", "cfg", "randomness", "sigma_adjustment", "second_order_correction",
             "noise_sigma_intensity")
    given = dict(zip(names, args[1:]))
    for name in ("override_sampler", "override_prompt", "override_steps", "override_strength", "sigma_adjustment"):
        check(isinstance(given[name], bool), f"script_args.{name}", given[name], "must be true or false")
    for name in ("original_prompt", "original_negative_prompt"):
        check(isinstance(given[name], str), f"script_args.{name}", given[name], "must be text")
    try:
        settings = Img2ImgAlt(decode_prompt=given["original_prompt"],
                              decode_negative_prompt=given["original_negative_prompt"], decode_cfg=given["cfg"],
                              decode_steps=given["st"], randomness=given["randomness"],
                              sigma_adjustment=given["sigma_adjustment"],
                              **{name: given[name] for name in ("second_order_correction", "noise_sigma_intensity")
                                 if name in given})
    except T2IError as exc:  # named as the script's UI names it
        ours = (exc.field or "").removeprefix("img2img_alt.")
        exc.field = "script_args." + {"decode_cfg": "cfg", "decode_steps": "st"}.get(ours, ours)
        raise
    fields: dict[str, Any] = {"img2img_alt": settings}
    if given["override_sampler"]:
        fields.update(sampler="euler", schedule="automatic")
    if given["override_prompt"]:
        fields.update(prompts=(settings.decode_prompt,), negative_prompt=settings.decode_negative_prompt)
    if given["override_steps"]:
        fields["steps"] = settings.decode_steps
    if given["override_strength"]:
        fields["strength"] = 1.0
    return fields


#: lower-case title -> script_args -> GenerationConfig fields (the init image goes in unresized); older
#: A1111 versions title mk2 "Outpainting"
IMG2IMG_SCRIPTS: dict[str, Callable[[list[Any]], dict[str, Any]]] = {
    "poor man's outpainting": _poor_mans_outpainting, "outpainting mk2": _outpainting_mk2,
    "outpainting": _outpainting_mk2, ALT_TITLE: _img2img_alternative,
}


def script_fields(name: str, args: list[Any]) -> dict[str, Any]:
    script = IMG2IMG_SCRIPTS.get(name.strip().lower())
    check(script is not None, "script_name", name, "not a script t2i runs", choices=list(IMG2IMG_SCRIPTS))
    return script(args)  # type: ignore[misc]
