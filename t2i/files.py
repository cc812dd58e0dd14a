"""Writing files atomically: a reader (or a crash) never sees half a file, and nothing is overwritten by surprise.

Every file t2i writes goes through here: PNGs, LoRA files, configs, logs, cache entries.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator


def _new_file(folder: Path, name: str) -> str:
    """Create an empty, uniquely named file with an ordinary file's mode: 0o666 less the process's
    umask, which the kernel applies (mkstemp would make it private, and reading the umask means
    setting it, which races with other threads)."""
    while True:
        path = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.part")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


@contextmanager
def scratch_file(folder: Path, name: str) -> Iterator[Path]:
    """A temporary file in `folder` (so that renaming it into place is atomic), removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(folder, name)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _flush(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(final: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` fills a temporary file, which then replaces `final` whole."""
    with scratch_file(final.parent, final.name) as tmp:
        write(tmp)
        _flush(tmp)
        os.replace(tmp, final)
    return final


def write_text(final: Path, text: str) -> Path:
    return atomic_write(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_new(folder: Path, names: Iterable[str], write: Callable[[Path], object]) -> Path:
    """Write a file under the first of `names` that does not exist yet; never replaces a file.

    The file is linked into place, and a link fails instead of overwriting, so two writers racing
    for one name both succeed under different names.
    """
    with scratch_file(folder, "new") as tmp:
        write(tmp)
        _flush(tmp)
        for name in names:
            try:
                os.link(tmp, folder / name)
                return folder / name
            except FileExistsError:
                continue
    raise FileExistsError(f"every candidate name in {folder} is taken")
