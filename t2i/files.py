"""Writing files atomically: a reader (or a crash) never sees half a file, and nothing is overwritten by surprise.

Every file t2i writes goes through here: PNGs, LoRA files, configs, logs, cache entries.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def scratch_file(folder: Path, name: str) -> Iterator[Path]:
    """A temporary file in `folder` (so that renaming it into place is atomic), removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary files
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
