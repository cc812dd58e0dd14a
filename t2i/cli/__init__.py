"""The `t2i` command line (typer): parse, build a config, call one library function, print the result.

No torch or diffusers import at module level: `t2i --help` and `t2i samplers` answer instantly,
and `--offline` can set HF_HUB_OFFLINE before huggingface_hub is first imported. Library errors
carry the config field they are about; `main` words them with this command line's flag names.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path

import typer

from t2i.errors import InvalidInput, NotFound, T2IError, first_line

app = typer.Typer(name="t2i", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Text-to-image with Stable Diffusion 1.x models: generate, fine-tune, inspect.")
log = logging.getLogger("t2i")

# config field -> the flag (or argument) that sets it, where it is not --<field-with-dashes>
FLAGS = {"out_dir": "--out", "loras": "--lora", "prompts": "PROMPTS", "colours": "--colour", "image": "IMAGE",
         "validation_prompts": "--validation-prompt", "export_kohya": "--export", "out": "OUT",
         "guidance_scales": "--guidance-scale", "metrics": "--metric"}
USAGE_ERRORS = (InvalidInput, NotFound)  # exit 2, as click does for bad arguments; the rest exit 1


class Interrupted(BaseException):
    """Ctrl-C. Raised in place of KeyboardInterrupt, which typer turns into a silent exit 130; `advice`
    is what the command adds (finetune: the intact checkpoint and the command that goes on from it)."""

    def __init__(self, advice: str = ""):
        super().__init__(advice)
        self.advice = advice


def _interrupt(_signum, _frame) -> None:
    raise Interrupted()


def flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def out_folder(out: str) -> Path:
    """The output folder, checked before any work: an existing file there is a usage error."""
    folder = Path(out).expanduser()
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InvalidInput(f"{blocking} is a file, not a folder", field="out_dir", value=out,
                           hint="choose a folder for the images")
    return folder


def default_of(config_class, name: str):
    """A config dataclass's default for a field: the CLI never restates a default."""
    return next(f.default for f in fields(config_class) if f.name == name)


class RuntimeOptions:
    """How the loaded model runs (ModelConfig's runtime fields): one definition for every command
    that loads a model, so their flags and help cannot drift apart."""

    compile = typer.Option(False, "--compile", help="torch.compile the UNet and VAE decoder: the first image of a "
                           "size compiles (minutes), later ones run faster.")
    channels_last = typer.Option(False, "--channels-last", help="NHWC memory layout for the convolutions.")
    fuse_qkv = typer.Option(False, "--fuse-qkv", help="One matmul for attention's q, k, v projections.")
    attention_slicing = typer.Option(False, "--attention-slicing", help="Attention in slices: less memory, "
                                     "usually slower than the default (PyTorch SDPA).")
    offload = typer.Option(None, help="model or sequential: keep weights in CPU memory, moved to the GPU when "
                           "they run (small GPUs; sequential is the slowest and smallest).")


def prepare_environment(offline: bool) -> None:
    # read once when huggingface_hub is imported, so it must be set before the first heavy import
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def given(ctx: typer.Context) -> dict:
    """The options the user typed (typer vendors click, so compare the parameter source by name)."""
    def typed(name: str) -> bool:
        return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")

    return {name: value for name, value in ctx.params.items() if typed(name)}


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (it is replaced under test runners)."""

    def emit(self, record: logging.LogRecord) -> None:
        # one write a line: processes of a launch share stderr, and print's separate newline write let
        # another process's line land in the middle of this one
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


# the commands register themselves on `app` when imported
from t2i.cli import control, evaluate, finetune, generate, grid, invert, serve, shapes  # noqa: E402,F401


def main() -> None:
    if not log.handlers:  # t2i's own messages only; libraries keep their own verbosity
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("t2i: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the caller ignores Ctrl-C
        signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except Interrupted as exc:
        print("t2i: interrupted" + (f"; {exc.advice}" if exc.advice else ""), file=sys.stderr)
        sys.exit(130)
    except T2IError as exc:
        if os.environ.get("T2I_DEBUG"):
            raise
        print(f"t2i: error: {exc.render(flag)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, USAGE_ERRORS) else 1)
    except Exception as exc:  # a bug or an environment failure: still one line unless debugging
        if os.environ.get("T2I_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            print(f"t2i: error: the disk is full (writing {exc.filename or 'a file'}); free some space and run "
                  "again", file=sys.stderr)
        else:
            print(f"t2i: error: {type(exc).__name__}: {first_line(exc)} (T2I_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
        sys.exit(1)
