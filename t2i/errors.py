"""One exception family for the library. Errors carry data, and each front end words them.

A `T2IError` says what is wrong (`problem`), with which setting (`field`, the config field name)
and value, the valid `choices` and a `hint`. The library never names a CLI flag or an HTTP field:
where a message mentions another setting it writes `{field_name}`, and `render(name)` fills in
each front end's own name for it (`--init-image` on the command line, `init_images` over HTTP).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Callable, Sequence

_UNSET = object()


class T2IError(Exception):
    """A failure the user can act on."""

    def __init__(self, problem: str, *, field: str | None = None, value: Any = _UNSET,
                 choices: Sequence[Any] = (), hint: str | None = None):
        super().__init__(problem)
        self.problem, self.field, self.value, self.choices, self.hint = problem, field, value, tuple(choices), hint

    @property
    def has_value(self) -> bool:
        return self.value is not _UNSET

    def render(self, name: Callable[[str], str] = str) -> str:
        """One line: '<field> <value>: <problem>; choose one of ...; <hint>', setting names by `name`."""
        shown = self.has_value and self.value is not None
        head = " ".join(part for part in (name(self.field) if self.field else "", _show(self.value) if shown else "")
                        if part)
        text = _fill(self.problem, name)
        if self.choices:
            text += f"; choose one of {', '.join(map(str, self.choices))}"
        if self.hint:
            text += f"; {_fill(self.hint, name)}"
        return f"{head}: {text}" if head else text

    def __str__(self) -> str:
        return self.render()

    def to_dict(self) -> dict[str, Any]:
        """The data, for a machine-readable answer (the HTTP front end's JSON body)."""
        data = {"kind": type(self).__name__, "problem": self.problem, "field": self.field,
                "choices": list(self.choices), "hint": self.hint}
        if self.has_value:
            data["value"] = _show(self.value)
        return data


class InvalidInput(T2IError):
    """A setting or an input file holds something t2i cannot use."""


class NotFound(T2IError):
    """A named file, folder, model or checkpoint does not exist."""


class LoadError(T2IError):
    """A file exists but could not be loaded (corrupt, foreign, or an incompatible model)."""


class TrainingError(T2IError):
    """Training could not go on (a non-finite loss, processes out of step)."""


class MissingExtra(T2IError):
    """An optional part of t2i is used without its dependencies installed."""


_PLACEHOLDER = re.compile(r"\{([a-z][a-z_]*)\}")


def _fill(text: str, name: Callable[[str], str]) -> str:
    """`{field}` placeholders become the front end's name for that setting; other text stays as it is."""
    return _PLACEHOLDER.sub(lambda match: name(match.group(1)), text)


def _show(value: Any) -> str:
    return "''" if value == "" else str(value)


def check(condition: bool, field: str | None, value: Any, problem: str, **details) -> None:
    """Raise InvalidInput(problem) about `field`'s `value` (None: no value to show) unless `condition` holds."""
    if not condition:
        raise InvalidInput(problem, field=field, value=value, **details)


def first_line(exc: BaseException) -> str:
    """The first line of a library's error, for a one-line message (T2I_DEBUG=1 shows the rest)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require_extra(extra: str, *modules: str) -> None:
    """Fail in one line, naming the extra to install, when an optional dependency is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"this needs the [{extra}] extra ({', '.join(missing)} not installed)",
                           hint=f"pip install 't2i[{extra}]'")
