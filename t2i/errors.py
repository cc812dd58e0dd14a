"""One exception family for the whole package: the CLI turns it into a one-line message."""


class T2IError(Exception):
    """A failure the user can act on. The message names the bad value and the fix."""

    exit_code = 1


class UsageError(T2IError):
    """The command line or config asked for something invalid (exit code 2, like click)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of a library's error, for a one-line message (T2I_DEBUG=1 shows the rest)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
