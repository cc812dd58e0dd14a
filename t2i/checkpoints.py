"""Training checkpoints as folders that appear whole or not at all, newest K kept.

A checkpoint is written into a hidden `.checkpoint-NNNNNN.part` folder and renamed into place, so
a run killed mid-write leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

from t2i.errors import UsageError

NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "state.json"


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(folder: Path, step: int, state: dict, write: Callable[[Path], None], keep: int) -> Path:
    """`write(tmp)` fills a folder with weights and optimizer state; `state` goes to state.json."""
    final = folder / f"checkpoint-{step:06d}"
    partial = folder / f".{final.name}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    (partial / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(folder: Path, resume: str) -> Path:
    """`resume` is 'latest' (newest complete checkpoint under `folder`) or a checkpoint path."""
    if resume == "latest":
        found = checkpoints(folder)
        if not found:
            raise UsageError(f"--resume latest: no checkpoint in {folder}; start without --resume")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise UsageError(f"--resume {resume}: not a t2i checkpoint folder (no {STATE_FILE}); use 'latest' or a "
                         f"checkpoint-NNNNNN folder")
    return path


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def check_same_settings(checkpoint: Path, state: dict, current: dict) -> None:
    """A resumed run must draw the same batches with the same model: refuse changed settings."""
    changed = [k for k, value in current.items() if state["settings"].get(k) != value]
    if changed:
        raise UsageError(f"--resume {checkpoint}: the checkpoint was made with other {', '.join(changed)}; "
                         "resume with the same settings or start a new --output")
