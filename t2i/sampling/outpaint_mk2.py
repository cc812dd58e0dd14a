"""A1111's "Outpainting mk2" as a generation: one side at a time (left, right, up, down), each a full
inpainting of the image so far on a canvas of whole multiples of 64, the new part started from noise
matched to the image (t2i.sampling.outpaint.mk2_step), the mask blurred by 4 x the blur and the
original pasted back (A1111's img2img overlay), the result cut to the image so far plus the pixels.
Every side uses the image's own seed, as A1111's script does."""

from __future__ import annotations

import dataclasses
from typing import Iterator

from t2i.errors import check
from t2i.formats.images import describe, load_image
from t2i.sampling.config import MAX_SIDE, GenerationConfig
from t2i.sampling.img2img_steps import prepare
from t2i.sampling.outpaint import SIDES, mk2_step, parse_sides


def mk2_images(model, config: GenerationConfig, on_step=None, progress: bool = True) -> Iterator:
    """Every image `config` asks for, outpainted the mk2 way, each with its settings."""
    import secrets

    from t2i.sampling.generate import GeneratedImage, generate

    init = load_image(config.init_image, "init_image")
    sides = parse_sides(config.outpaint or "")
    final = (init.width + sides["left"] + sides["right"], init.height + sides["up"] + sides["down"])
    check(max(final) <= MAX_SIDE - 63, "outpaint", config.outpaint,
          f"makes a {final[0]}x{final[1]} image from {describe(config.init_image)}; each side must be at most "
          f"{MAX_SIDE - 63} (mk2 works on canvases rounded up to 64)")
    check((config.width in (None, final[0])) and (config.height in (None, final[1])), "width",
          f"{config.width}x{config.height}", f"outpainting makes a {final[0]}x{final[1]} image; leave width and "
          "height out")
    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    jobs = [(prompt, seed + i) for i, prompt in enumerate(p for p in config.prompts for _ in range(config.num_images))]
    for prompt, image_seed in jobs:
        image, settings = init, None
        for side in (s for s in SIDES if sides[s]):
            step = mk2_step(image, side, sides[side], config.mask_blur, config.outpaint_noise_q,
                            config.outpaint_color_variation)
            width, height = step.canvas.size
            inputs = prepare(step.canvas, step.mask, width=width, height=height, resize_mode=0,
                             mask_blur=4 * config.mask_blur, invert=False, fill=1, only_masked=False, padding=0)
            # the canvas and mask are prepared here already: the inner inpainting takes them as they are
            inner = dataclasses.replace(config, prompts=(prompt,), num_images=1, batch_size=1, seed=image_seed,
                                        init_image=inputs.image, mask=inputs.mask, outpaint=None, width=width,
                                        height=height, inpaint_prep="diffusers")
            made, = generate(model, inner, on_step, progress)
            canvas = inputs.finish(made.image)
            image, settings = canvas.crop((0, 0, *step.size)), made.settings
        assert settings is not None  # parse_sides refuses an outpaint that grows nothing
        record = dataclasses.replace(settings, init_image=config.init_image if isinstance(config.init_image, str)
                                     else None, mask=None, outpaint=config.outpaint, width=image.width,
                                     height=image.height, inpaint_prep=config.inpaint_prep)
        yield GeneratedImage(image, record)
