"""What the cross-attention maps show in the shapes world: whether a word's map sits on the drawn object.

For "a <colour> <shape>" on `demo`, each image's object mask is the analyser's foreground; per word (and for
a padding position after the prompt, which carries no word) two readings: the pointing game (is the map's
peak inside the object?) and the energy ratio (the map's mean inside the object over its mean outside), at
the latent's resolution, where the maps are computed. Bootstrap intervals over images.
"""

from __future__ import annotations

import numpy as np

from t2i.eval.metrics import Estimate, bootstrap_many
from t2i.shapes.analyser import foreground


def _readings(heat: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    peak = np.unravel_index(int(heat.argmax()), heat.shape)
    outside = heat[~mask].mean() if (~mask).any() else np.nan
    return float(mask[peak]), float(heat[mask].mean() / max(outside, 1e-12)) if mask.any() else np.nan


def localisation(model, colour: str, shape: str, seeds: range, steps: int = 20) -> dict[str, Estimate]:
    """`pointing_<word>` and `ratio_<word>` (median over images) for the colour, the shape and `padding`."""
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.generate import generate

    rows = []
    for seed in seeds:
        result = generate(model, GenerationConfig(prompts=(f"a {colour} {shape}",), seed=seed, steps=steps,
                                                  sampler="euler", attention_maps=True), progress=False)[0]
        maps = result.attention
        latent = maps.tokens.shape[-2:]
        factor = result.image.height // latent[0]
        mask = foreground(result.image).reshape(latent[0], factor, latent[1], factor).mean(axis=(1, 3)) > 0.5
        by_word = {w.text: maps.tokens[list(w.positions)].sum(0).numpy() for w in maps.words}
        last = max(p for w in maps.words for p in w.positions)
        by_word["padding"] = maps.tokens[last + 3].numpy()  # past the end token: padding
        rows.append([value for word in (colour, shape, "padding") for value in _readings(by_word[word], mask)])
    table = np.array(rows, dtype=np.float64)
    names = [f"{kind}_{word}" for word in ("colour", "shape", "padding") for kind in ("pointing", "ratio")]
    return bootstrap_many(lambda t: {name: float(np.nanmedian(t[:, i]) if name.startswith("ratio") else
                                                 np.nanmean(t[:, i])) for i, name in enumerate(names)},
                          table, bounds={name: (0, np.inf) for name in names})
