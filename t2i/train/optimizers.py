"""The optimizers kohya users name, each from the package that maintains it.

`--optimizer adamw|adamw8bit|prodigy|adafactor|lion` and `--optimizer-args key=value ...`, the
value a Python literal as kohya reads it (`weight_decay=0.01`, `betas=(0.9,0.99)`,
`decouple=True`); a bare word is taken as a string. Names are checked against the optimizer's
own signature before any work, so a typo is a usage error, not a crash an hour in.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass

from t2i.errors import InvalidInput, MissingExtra, first_line


@dataclass(frozen=True)
class OptimizerSpec:
    module: str
    cls: str
    package: str  # what `pip install` takes
    defaults: tuple[tuple[str, object], ...] = ()  # t2i's choices where the class's own would surprise
    cuda_only: bool = False


OPTIMIZERS = {
    "adamw": OptimizerSpec("torch.optim", "AdamW", "torch"),
    "adamw8bit": OptimizerSpec("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", cuda_only=True),
    "prodigy": OptimizerSpec("prodigyopt", "Prodigy", "prodigyopt"),
    # transformers' defaults pick their own step size (relative_step) and ignore --learning-rate; t2i's keep
    # the learning rate and its schedule, the setting kohya's documentation gives for LoRA training
    "adafactor": OptimizerSpec("transformers.optimization", "Adafactor", "transformers",
                               defaults=(("scale_parameter", False), ("relative_step", False),
                                         ("warmup_init", False))),
    "lion": OptimizerSpec("lion_pytorch", "Lion", "lion-pytorch"),
}
# arguments t2i sets itself: the parameters, and the learning rate (--learning-rate, --text-encoder-lr)
RESERVED = ("params", "lr")


def default_learning_rate(optimizer: str, lora: bool) -> float:
    """Prodigy estimates its own step size and wants lr 1.0; the others start from the usual rates."""
    if optimizer == "prodigy":
        return 1.0
    return 1e-4 if lora else 1e-5


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string, as a shell user means it


def parse_optimizer_args(pairs: tuple[str, ...]) -> dict[str, object]:
    """('weight_decay=0.01', 'betas=(0.9,0.99)') -> {'weight_decay': 0.01, 'betas': (0.9, 0.99)}."""
    parsed: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InvalidInput("must be key=value, e.g. weight_decay=0.01", field="optimizer_args", value=pair)
        if key in RESERVED:
            raise InvalidInput(f"{key} is set by t2i", field="optimizer_args", value=pair,
                               hint="give the learning rate with {learning_rate} (and {text_encoder_lr})")
        parsed[key] = _literal(value.strip())
    return parsed


def optimizer_class(name: str, device_type: str):
    """The optimizer's class, imported; a missing package or a CUDA-only optimizer off CUDA is said."""
    spec = OPTIMIZERS[name]
    if spec.cuda_only and device_type != "cuda":
        raise InvalidInput(f"{spec.package}'s 8-bit optimizers run on CUDA GPUs only, and this run is on "
                           f"{device_type}", field="optimizer", value=name, hint="use adamw (or prodigy, lion)")
    return _imported(name)


def _imported(name: str):
    spec = OPTIMIZERS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise MissingExtra(f"the {name} optimizer needs the {spec.package} package ({first_line(exc)})",
                           field="optimizer", value=name, hint=f"pip install {spec.package}") from exc
    return getattr(module, spec.cls)


def optimizer_kwargs(name: str, args: tuple[str, ...], cls) -> dict[str, object]:
    """t2i's defaults under the user's arguments, each checked against the class's signature."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *RESERVED)]
    given = parse_optimizer_args(args)
    for key in given:
        if key not in accepted:
            raise InvalidInput(f"{cls.__name__} takes no argument {key!r}", field="optimizer_args",
                               value=f"{key}={given[key]}", choices=accepted)
    return {**dict(OPTIMIZERS[name].defaults), **given}


def make_optimizer(name: str, args: tuple[str, ...], param_groups: list[dict], device_type: str):
    """The optimizer over `param_groups` (each with its own lr)."""
    cls = optimizer_class(name, device_type)
    kwargs = optimizer_kwargs(name, args, cls)
    try:
        return cls(param_groups, **kwargs)
    except (ValueError, TypeError) as exc:  # a value the optimizer itself refuses (betas out of range, ...)
        raise InvalidInput(f"{cls.__name__} refused its arguments ({first_line(exc)})", field="optimizer_args",
                           value=" ".join(args) or "(none)") from exc


def kohya_name(name: str, args: tuple[str, ...]) -> str:
    """`ss_optimizer` as kohya writes it: the class's module path and name, then its arguments."""
    spec = OPTIMIZERS[name]
    module = spec.module
    try:  # the defining module, as kohya's class.__module__ gives it (torch.optim.adamw.AdamW)
        module = _imported(name).__module__
    except MissingExtra:
        pass
    kwargs = {**dict(spec.defaults), **parse_optimizer_args(args)}
    listed = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{module}.{spec.cls}" + (f"({listed})" if listed else "")
