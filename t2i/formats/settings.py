"""One image's settings as a record, and back: the `t2i` JSON chunk of a PNG <-> the configs that made it.

Writing and reading live together so that whatever a record holds, re-making the image from it
(`t2i generate --from-image`, or `configs_from_png` in Python) reads it back the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t2i import __version__
from t2i.errors import InvalidInput
from t2i.formats.png import read_png_text

# record key -> the types it may hold; every key is checked when a record is read back
_GENERATION_KEYS = {"prompt": (str,), "negative_prompt": (str,), "steps": (int,), "guidance_scale": (int, float),
                    "seed": (int,), "width": (int,), "height": (int,), "sampler": (str,),
                    "clip_skip": (int, type(None)), "strength": (int, float, type(None)),
                    "init_image": (str, type(None)), "mask": (str, type(None)), "loras": (list,), "mode": (str,)}
_MODEL_KEYS = {"model": (str,), "vae": (str, type(None)), "dtype": (str,), "device": (str,)}


def image_record(model, config, prompt: str, seed: int, width: int, height: int, loras: list[dict],
                 embeddings: list = (), vae_tile_size: int | None = None) -> dict:
    """Every resolved setting of one image: enough to re-make it exactly (`vae_tile_size`: the
    tiles it was decoded in, asked for or after running out of memory)."""
    def source(value):
        return value if isinstance(value, (str, type(None))) else None  # an image given in memory has no path

    return {
        "version": __version__, "mode": config.mode, "prompt": prompt, "negative_prompt": config.negative_prompt,
        "steps": config.steps, "guidance_scale": config.guidance_scale, "seed": seed, "width": width,
        "height": height, "sampler": config.sampler, "schedule": config.schedule, "clip_skip": config.clip_skip,
        "strength": config.effective_strength if config.mode != "txt2img" else None,
        "init_image": source(config.init_image), "mask": source(config.mask), "loras": loras,
        "emphasis": config.emphasis, "embeddings_dir": config.embeddings_dir,
        "embeddings": [{"name": e.name, "path": str(e.path), "hash": e.hash} for e in embeddings],
        "vae_tile_size": vae_tile_size, "cache_interval": config.cache_interval,
        "model": model.config.model, "model_name": model.name, "model_hash": model.hash, "vae": model.config.vae,
        "dtype": model.dtype_name, "device": model.device.type,
    }


def fields_from_record(record: dict[str, Any], origin: str) -> tuple[dict, dict]:
    """(ModelConfig fields, GenerationConfig fields) that re-make the recorded image alone.

    `origin` names where the record came from in errors: every value is checked like the same
    setting given directly, and a missing or mistyped one names the file and the key.
    """
    for key, types in {**_GENERATION_KEYS, **_MODEL_KEYS}.items():
        if key not in record:
            raise InvalidInput(f"its t2i settings lack {key!r}", field="image", value=origin)
        value = record[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise InvalidInput(f"its t2i setting {key!r} holds {value!r}, not a {types[0].__name__}",
                               field="image", value=origin)
    model = {key: record[key] for key in _MODEL_KEYS}
    generation = {key: record[key] for key in ("negative_prompt", "steps", "guidance_scale", "seed", "width",
                                               "height", "sampler", "clip_skip", "init_image", "mask")}
    generation["prompts"] = (record["prompt"],)
    generation["loras"] = tuple(f"{lora['path']}:{lora['scale']}" for lora in record["loras"])
    if record["mode"] != "txt2img":
        generation["strength"] = record["strength"]
    # written since schedules are picked apart from samplers; older records join them ("dpmpp-2m-karras")
    if isinstance(record.get("schedule"), str):
        generation["schedule"] = record["schedule"]
    if isinstance(record.get("embeddings_dir"), str):
        generation["embeddings_dir"] = record["embeddings_dir"]
    if isinstance(record.get("cache_interval"), int):  # written since t2i reuses UNet features
        generation["cache_interval"] = record["cache_interval"]
    if isinstance(record.get("vae_tile_size"), int):  # written since t2i decodes in tiles
        generation.update(vae_tiling=True, vae_tile_size=record["vae_tile_size"])
    if "emphasis" in record:  # written since t2i parses A1111 prompt syntax; older images used none
        generation["emphasis"] = record["emphasis"]
    else:
        generation["emphasis"] = "none"
    return model, generation


def fields_from_png(path: str | Path) -> tuple[dict, dict]:
    """The recorded settings of a t2i PNG, as config fields (see `fields_from_record`)."""
    _, record = read_png_text(path)
    if record is None:
        raise InvalidInput("no t2i settings in this image (was it made by t2i?)", field="image", value=path)
    return fields_from_record(record, str(path))


def configs_from_png(path: str | Path, **overrides):
    """(ModelConfig, GenerationConfig) that re-make a t2i PNG; `overrides` replace recorded fields."""
    from t2i.models.config import ModelConfig
    from t2i.sampling.config import GenerationConfig

    model, generation = fields_from_png(path)
    model.update({k: v for k, v in overrides.items() if k in model or k in ("offline", "allow_pickle")})
    generation.update({k: v for k, v in overrides.items() if k not in model and k not in ("offline", "allow_pickle")})
    return ModelConfig(**model), GenerationConfig(**generation)
