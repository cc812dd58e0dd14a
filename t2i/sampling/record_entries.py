"""The entries of an image's settings record for what a generation used beyond plain values: each LoRA, each
embedding, each ControlNet unit and IP-Adapter unit as it ran, with how each reads back from a record's JSON
and how each is written in A1111's infotext (t2i.sampling.settings holds the record itself)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from t2i.errors import check

NONE = type(None)


@dataclass(frozen=True)
class LoraUse:
    name: str  # as A1111 writes it in <lora:NAME:SCALE>
    path: str  # the weights file that was loaded
    scale: float
    hash: str  # A1111's `Lora hashes` value
    from_tag: bool = False  # named by a <lora:...> tag in the prompt (which then carries it), not by --lora


@dataclass(frozen=True)
class EmbeddingUse:
    name: str
    path: str
    hash: str  # A1111's `TI hashes` value


@dataclass(frozen=True)
class ControlUse:
    """One ControlNet unit as it ran (t2i.sampling.control.ControlUnit, resolved)."""

    model: str  # the file, folder or hub id that was loaded
    title: str  # A1111's `Model:` value, "name [hash]"
    image: str | None  # the control image's path; None for an image given in memory
    image_hash: str  # of its pixels (t2i.sampling.control_run.image_hash)
    module: str
    weight: float
    resize_mode: str
    processor_res: int
    threshold_a: float | None
    threshold_b: float | None
    guidance_start: float
    guidance_end: float
    control_mode: str
    pixel_perfect: bool

    _TYPES = {"model": (str,), "title": (str,), "image": (str, NONE), "image_hash": (str,), "module": (str,),
              "weight": (int, float), "resize_mode": (str,), "processor_res": (int,),
              "threshold_a": (int, float, NONE), "threshold_b": (int, float, NONE), "guidance_start": (int, float),
              "guidance_end": (int, float), "control_mode": (str,), "pixel_perfect": (bool,)}

    @classmethod
    def from_dict(cls, item, origin: str) -> ControlUse:
        return unit_entry(cls, item, origin, "ControlNet unit")

    def infotext(self) -> str:
        """The value of A1111's `ControlNet N` key."""
        from t2i.sampling.control_modules import PREPROCESSORS

        spec = PREPROCESSORS[self.module]
        pairs = {"Module": self.module, "Model": self.title, "Weight": number_text(self.weight),
                 "Resize Mode": self.resize_mode, "Processor Res": self.processor_res,
                 "Threshold A": number_text(spec.threshold_a.default if self.threshold_a is None
                                            else self.threshold_a) if spec.threshold_a else None,
                 "Threshold B": number_text(spec.threshold_b.default if self.threshold_b is None
                                            else self.threshold_b) if spec.threshold_b else None,
                 "Guidance Start": number_text(self.guidance_start), "Guidance End": number_text(self.guidance_end),
                 "Pixel Perfect": self.pixel_perfect, "Control Mode": self.control_mode}
        return ", ".join(f"{key}: {value}" for key, value in pairs.items() if value is not None)

    def unit(self, image=None):
        """The ControlUnit that re-makes it, reading `image` (default: the recorded path)."""
        from t2i.sampling.control import ControlUnit

        check(image is not None or self.image is not None, "controls", self.title,
              "its control image was given in memory, not as a file", hint="give the control image again")
        return ControlUnit(model=self.model, image=image if image is not None else self.image, weight=self.weight,
                           module=self.module, resize_mode=self.resize_mode, processor_res=self.processor_res,
                           threshold_a=self.threshold_a, threshold_b=self.threshold_b,
                           guidance_start=self.guidance_start, guidance_end=self.guidance_end,
                           control_mode=self.control_mode, pixel_perfect=self.pixel_perfect)


@dataclass(frozen=True)
class IPAdapterUse:
    """One IP-Adapter unit as it ran (t2i.sampling.ip_adapter.IPAdapterUnit, resolved)."""

    model: str  # the adapter file that was loaded
    title: str  # "name [hash]", as A1111's ControlNet extension shows its models
    image: str | None  # the reference image's path; None for an image given in memory
    image_hash: str  # of its pixels
    scale: float
    start: float
    end: float
    encoder: str  # the image encoder that embedded the image
    module: str  # A1111's preprocessor name for that encoder

    _TYPES = {"model": (str,), "title": (str,), "image": (str, NONE), "image_hash": (str,), "scale": (int, float),
              "start": (int, float), "end": (int, float), "encoder": (str,), "module": (str,)}

    @classmethod
    def from_dict(cls, item, origin: str) -> IPAdapterUse:
        return unit_entry(cls, item, origin, "IP-Adapter unit")

    def infotext(self) -> str:
        """The value of A1111's `ControlNet N` key, which its ControlNet extension writes for IP-Adapter units."""
        return (f"Module: {self.module}, Model: {self.title}, Weight: {number_text(self.scale)}, "
                f"Guidance Start: {number_text(self.start)}, Guidance End: {number_text(self.end)}")

    def unit(self, image=None):
        """The IPAdapterUnit that re-makes it, reading `image` (default: the recorded path)."""
        from t2i.sampling.ip_adapter import IPAdapterUnit

        check(image is not None or self.image is not None, "ip_adapters", self.title,
              "its reference image was given in memory, not as a file", hint="give the reference image again")
        return IPAdapterUnit(model=self.model, image=image if image is not None else self.image, scale=self.scale,
                             start=self.start, end=self.end)


def unit_entry(cls, item, origin: str, what: str):
    """A ControlUse, IPAdapterUse, EditConcept or Img2ImgAlt from a record's dict, every field of its `_TYPES`
    present and typed."""
    if isinstance(item, cls):
        return item
    good = isinstance(item, dict) and all(
        isinstance(item.get(name), types) and (not isinstance(item.get(name), bool) or bool in types)
        for name, types in cls._TYPES.items())
    check(good, "image", origin, f"its t2i settings hold a {what} without one of {', '.join(cls._TYPES)}")
    return cls(**{name: item[name] for name in cls._TYPES})


def number_text(value: float) -> str:
    return f"{value:g}"


def plain_entry(cls, item, origin: str):
    """A LoraUse or EmbeddingUse from a record's dict; a field added since (one with a default) may be missing."""
    required = [f.name for f in fields(cls) if f.default is MISSING]
    if isinstance(item, cls):
        return item
    check(isinstance(item, dict) and all(isinstance(item.get(n), (str, int, float)) for n in required), "image",
          origin, f"its t2i settings hold a {cls.__name__} entry without {', '.join(required)}")
    optional = {f.name: item[f.name] for f in fields(cls) if f.default is not MISSING and f.name in item}
    for name, value in optional.items():
        check(isinstance(value, type(getattr(cls, name))), "image", origin,
              f"its t2i settings hold a {cls.__name__} entry whose {name} is {value!r}")
    return cls(**{n: item[n] for n in required}, **optional)
