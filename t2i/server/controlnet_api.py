"""A1111's ControlNet extension over HTTP: units in `alwayson_scripts.controlnet.args` on txt2img and
img2img, and the answers of the extension's `/controlnet/*` routes (t2i.server.controlnet_routes).

Unit fields keep the extension's names and old aliases (`input_image`, `guidance`, `lowvram`, `guessmode`).
A model is named as `/controlnet/model_list` lists it ("name [hash]", the hash optional) and resolves
only to a file or folder in the server's `--controlnet-dir`. A field t2i cannot honour (an effective-region
mask, per-block advanced weights, union control types, IP-Adapter embeddings sent as pickles) is
refused by name when it is set, never dropped in silence. A unit whose module is an IP-Adapter one
(`ip-adapter_clip_sd15`, ...) is an IP-Adapter unit, as in the extension: its model is an adapter file in
the same folder, its image the picture used as a prompt, its weight and guidance window the adapter's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from t2i.errors import InvalidInput, T2IError, check
from t2i.formats.hashes import file_sha256
from t2i.formats.png import png_base64
from t2i.sampling.control import MAX_UNITS, ControlUnit
from t2i.sampling.control_maps import control_map, detect
from t2i.sampling.control_modules import DEFAULT_PROCESSOR_RES, PREPROCESSORS
from t2i.sampling.ip_adapter import MAX_ADAPTERS, IPAdapterUnit, is_ip_module
from t2i.sampling.ip_adapter import MODULES as IP_MODULES
from t2i.server.img2img import decode_image

API_VERSION = 2  # what clients check /controlnet/version against (the extension's API generation)
SCRIPT = "controlnet"
# A1111 unit field -> (ControlUnit field, its old aliases)
UNIT_FIELDS = {"module": "module", "weight": "weight", "resize_mode": "resize_mode", "processor_res": "processor_res",
               "threshold_a": "threshold_a", "threshold_b": "threshold_b", "guidance_start": "guidance_start",
               "guidance_end": "guidance_end", "control_mode": "control_mode", "pixel_perfect": "pixel_perfect"}
ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram"}
# fields read elsewhere (enabled, model, image, guessmode) and fields that change nothing here: memory hints,
# UI state, the hires pass (refused with ControlNet), batch and loopback options of the extension's UI
OTHER_FIELDS = {"enabled", "model", "image", "guessmode", "low_vram", "save_detected_map", "hr_option",
                "inpaint_crop_input_image", "is_ui", "input_mode", "batch_images", "output_dir", "loopback",
                "use_preview_as_input", "batch_image_dir", "batch_mask_dir", "batch_input_gallery",
                "batch_mask_gallery", "generated_image", "mask_image_fg", "pulid_mode", "animatediff_batch",
                "batch_modifiers", "batch_keyframe_idx", "image_fg"}
# set to anything but these, a field asks for something t2i does not do
REFUSED = {"mask": (None, ""), "mask_image": (None, ""), "advanced_weighting": (None, []),
           "effective_region_mask": (None, ""), "ipadapter_input": (None, []),
           "union_control_type": (None, "Unknown", "")}
# the error fields ControlUnit names (the command line's) -> the unit field a client sent
CLI_FIELDS = {"control": "weight", "ip_scale": "weight", "ip_start": "guidance_start", "ip_end": "guidance_end",
              "ip_image": "image", "control_module": "module", "control_resize": "resize_mode",
              "control_res": "processor_res", "control_threshold_a": "threshold_a",
              "control_threshold_b": "threshold_b", "control_start": "guidance_start",
              "control_end": "guidance_end", "control_mode": "control_mode"}
CONTROL_TYPES = {"Canny": ("canny", ("canny", "invert", "none")),
                 "Scribble/Sketch": ("scribble_xdog", ("scribble_xdog", "invert", "threshold", "none")),
                 "Tile/Blur": ("tile_resample", ("tile_resample", "blur_gaussian", "none")),
                 "Segmentation": ("none", ("none", "threshold", "invert"))}


class ControlNetFolder:
    """The ControlNets a server offers: files and diffusers folders in --controlnet-dir, titled as A1111
    titles them (`name [first 8 hex of the file's SHA-256]`); hashes computed once a file version."""

    SUFFIXES = (".safetensors", ".pth", ".ckpt", ".bin")

    def __init__(self, folder: str | None, allow_pickle: bool):
        self.folder = Path(folder).expanduser() if folder else None
        self.allow_pickle = allow_pickle
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def entries(self) -> dict[str, Path]:
        if self.folder is None or not self.folder.is_dir():
            return {}
        found = {}
        for path in sorted(self.folder.iterdir()):
            usable = path.suffix == ".safetensors" or (self.allow_pickle and path.suffix in self.SUFFIXES)
            if (path.is_file() and usable) or (path / "config.json").is_file():
                found[path.stem if path.is_file() else path.name] = path
        return found

    def title(self, name: str, path: Path) -> str:
        if not path.is_file():
            return name
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key not in self._hashes:
                self._hashes[key] = file_sha256(path)[:8]
            return f"{name} [{self._hashes[key]}]"

    def titles(self) -> list[str]:
        return [self.title(name, path) for name, path in self.entries().items()]

    def find(self, wanted: str, field: str) -> str:
        name = wanted.rpartition(" [")[0] if wanted.endswith("]") and " [" in wanted else wanted
        entries = self.entries()
        for key in (name, Path(name).stem):
            if key in entries:
                return str(entries[key])
        raise InvalidInput("no such ControlNet or IP-Adapter on this server", field=field, value=wanted,
                       choices=list(entries)[:20] or ["(none: start the server with --controlnet-dir)"],
                       hint="GET /controlnet/model_list lists them")


@dataclass(frozen=True)
class RequestControls:
    units: tuple[ControlUnit, ...] = ()
    shown: tuple[ControlUnit, ...] = ()  # units whose maps the response appends (A1111's save_detected_map)
    ip_adapters: tuple[IPAdapterUnit, ...] = ()

    def detected_maps(self, size: tuple[int, int]) -> list[Image.Image]:
        return [control_map(u.image, u.module, size, u.resize_mode, u.processor_res, u.threshold_a, u.threshold_b,
                            u.pixel_perfect) for u in self.shown]


def _unit_image(unit: dict, field: str, init: Image.Image | None) -> Image.Image:
    """The unit's image: base64, {"image", "mask"} or [image, mask]; without one, the img2img init image."""
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):
        image = image.get("image")
    elif isinstance(image, (list, tuple)):
        image = image[0] if image else None
    if image in (None, ""):
        check(init is not None, f"{field}.image", None, "this unit has no image",
              hint="send one (base64), or use img2img, whose init image a unit without one reads")
        assert init is not None
        return init
    check(isinstance(image, str), f"{field}.image", None, "must be a base64-encoded image")
    return decode_image(image, f"{field}.image")


def _renamed(exc: T2IError, field: str) -> T2IError:
    exc.field = f"{field}.{CLI_FIELDS.get(exc.field or '', exc.field)}"
    return exc


def _one_unit(raw: Any, field: str, folder: ControlNetFolder,
              init: Image.Image | None) -> ControlUnit | IPAdapterUnit | None:
    check(isinstance(raw, dict), field, None, "must be a ControlNet unit (a JSON object)")
    raw = {ALIASES.get(key, key): value for key, value in raw.items()}
    if raw.get("enabled", True) is False:
        return None
    unknown = [key for key in raw if key not in UNIT_FIELDS and key not in OTHER_FIELDS and key not in REFUSED]
    check(not unknown, f"{field}.{unknown[0] if unknown else ''}", None, "not a ControlNet unit field t2i knows",
          choices=sorted(UNIT_FIELDS))
    for key, off in REFUSED.items():
        check(raw.get(key) in off, f"{field}.{key}", None, "t2i's ControlNet does not take it",
              hint="leave it out or null")
    model = raw.get("model", "None")
    check(isinstance(model, str) and model not in ("", "None"), f"{field}.model", model,
          "names no ControlNet model", hint="GET /controlnet/model_list lists them")
    options = {UNIT_FIELDS[key]: value for key, value in raw.items() if key in UNIT_FIELDS}
    for key in ("threshold_a", "threshold_b"):  # -1: the preprocessor's own default
        if options.get(key) == -1:
            options[key] = None
    if options.get("processor_res") == -1:
        options["processor_res"] = DEFAULT_PROCESSOR_RES
    for key in ("resize_mode", "control_mode"):  # the extension takes the modes' indexes too
        if isinstance(options.get(key), int) and not isinstance(options.get(key), bool):
            options[key] = str(options[key])
    if raw.get("guessmode") is True and "control_mode" not in options:  # its old name for cfg injection
        options["control_mode"] = "ControlNet is more important"
    for key, value in options.items():
        if key == "pixel_perfect":
            good, kind = isinstance(value, bool), "true or false"
        elif key in ("module", "resize_mode", "control_mode"):
            good, kind = isinstance(value, str), "a string"
        else:  # a threshold may also be null: the preprocessor's default
            good = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
                value is None and key.startswith("threshold"))
            kind = "a number"
        check(good, f"{field}.{key}", value, f"must be {kind}")
    if "processor_res" in options:
        options["processor_res"] = int(options["processor_res"])
    path = folder.find(model, f"{field}.model")
    image = _unit_image(raw, field, init)
    try:
        if is_ip_module(options.get("module", "none")):  # the map settings mean nothing to an adapter
            return IPAdapterUnit(model=path, image=image, scale=options.get("weight", 1.0),
                                 start=options.get("guidance_start", 0.0), end=options.get("guidance_end", 1.0))
        return ControlUnit(model=path, image=image, **options)
    except T2IError as exc:
        raise _renamed(exc, field) from None


def request_controls(scripts: dict, folder: ControlNetFolder, init: Image.Image | None) -> RequestControls:
    """The units of a request's `alwayson_scripts` (any case of "controlnet"), checked; those that do not
    set save_detected_map false have their maps appended to the response."""
    key = next((k for k in scripts if k.lower() == SCRIPT), None)
    if key is None:
        return RequestControls()
    value = scripts[key]
    args = value.get("args", []) if isinstance(value, dict) else value
    field = f"alwayson_scripts.{key}.args"
    check(isinstance(args, list), field, None, "must be a list of ControlNet units")
    check(len(args) <= MAX_UNITS, field, f"{len(args)} units", f"this server takes at most {MAX_UNITS}")
    units, shown, adapters = [], [], []
    for index, raw in enumerate(args):
        if raw in (False, None):  # a client's placeholder for an unused slot
            continue
        unit = _one_unit(raw, f"{field}[{index}]", folder, init)
        if isinstance(unit, IPAdapterUnit):
            adapters.append(unit)
            check(len(adapters) <= MAX_ADAPTERS, f"{field}[{index}]", None,
                  f"this server takes at most {MAX_ADAPTERS} IP-Adapter units")
        elif unit is not None:
            units.append(unit)
            if raw.get("save_detected_map", True) is not False:
                shown.append(unit)
    return RequestControls(tuple(units), tuple(shown), tuple(adapters))


def _sliders(module: str) -> list[dict]:
    spec = PREPROCESSORS[module]
    sliders = [{"name": "Preprocessor Resolution", "value": DEFAULT_PROCESSOR_RES, "min": 64, "max": 2048}] \
        if spec.uses_resolution else []
    for slider in (spec.threshold_a, spec.threshold_b):
        if slider is not None:
            sliders.append({"name": slider.name, "value": slider.default, "min": slider.low, "max": slider.high})
    return sliders


def module_list(alias_names: bool = False) -> dict:
    aliases = {"invert": "invert (from white bg & black line)"} if alias_names else {}
    names = [aliases.get(name, name) for name in PREPROCESSORS]
    detail = {aliases.get(name, name): {"model_free": True, "sliders": _sliders(name)} for name in PREPROCESSORS}
    detail.update({name: {"model_free": False, "sliders": []} for name in IP_MODULES})
    return {"module_list": names + list(IP_MODULES), "module_detail": detail}


def control_types(models: list[str]) -> dict:
    types = {"All": {"module_list": list(PREPROCESSORS), "model_list": ["None", *models], "default_option": "none",
                     "default_model": "None"}}
    for label, (default, modules) in {**CONTROL_TYPES, "IP-Adapter": ("ip-adapter-auto", IP_MODULES)}.items():
        word = label.split("/")[0].lower()
        matching = [m for m in models if word in m.lower()]
        types[label] = {"module_list": list(modules), "model_list": ["None", *matching], "default_option": default,
                        "default_model": matching[0] if matching else "None"}
    return {"control_types": types}


def detect_maps(body: dict, max_images: int) -> dict:
    """POST /controlnet/detect: each input image's map (`controlnet_*` fields, as the extension names them)."""
    images = body.get("controlnet_input_images") or []
    check(isinstance(images, list) and len(images) > 0, "controlnet_input_images", None, "send a list of base64 images")
    check(len(images) <= max_images, "controlnet_input_images", f"{len(images)} images",
          f"this server's limit is {max_images} a request")
    check(not body.get("controlnet_masks"), "controlnet_masks", None, "t2i's preprocessors take no masks")
    module = body.get("controlnet_module", "none")
    check(isinstance(module, str), "controlnet_module", module, "must be a preprocessor name",
          choices=list(PREPROCESSORS))
    resolution = body.get("controlnet_processor_res", DEFAULT_PROCESSOR_RES)
    thresholds = [body.get(f"controlnet_threshold_{side}", -1) for side in ("a", "b")]
    for name, value in (("controlnet_processor_res", resolution), ("controlnet_threshold_a", thresholds[0]),
                        ("controlnet_threshold_b", thresholds[1])):
        check(isinstance(value, (int, float)) and not isinstance(value, bool), name, value, "must be a number")
    resolution = DEFAULT_PROCESSOR_RES if resolution == -1 else int(resolution)
    check(64 <= resolution <= 2048, "controlnet_processor_res", resolution, "must be from 64 to 2048")
    a, b = (None if t == -1 else float(t) for t in thresholds)
    try:
        maps = [detect(decode_image(image, f"controlnet_input_images[{i}]"), module, resolution, a, b)
                for i, image in enumerate(images)]
    except InvalidInput as exc:
        exc.field = {"control_module": "controlnet_module", "control_threshold_a": "controlnet_threshold_a",
                     "control_threshold_b": "controlnet_threshold_b"}.get(exc.field or "", exc.field)
        raise
    return {"images": [png_base64(m) for m in maps], "info": "Success"}
