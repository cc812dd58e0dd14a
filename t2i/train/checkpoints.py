"""Training checkpoints: accelerate's save_state/load_state, in folders that appear whole or not at all.

accelerate writes the optimizer, scaler and RNG states; t2i's hooks write the trained weights
themselves (a LoRA checkpoint holds the adapter's megabytes, not a copy of the whole UNet).
Two things are kept by hand because accelerate cannot do them: it writes into the folder it is
given, file by file, so a run killed mid-save would leave a checkpoint that looks complete; and
`ProjectConfiguration(total_limit=...)` prunes only its own automatically named folders, in
place. So each checkpoint is saved into a hidden `.checkpoint-NNNNNN.part` folder, renamed into
place once whole, and the newest K are kept here.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Callable

from t2i.errors import InvalidInput, NotFound, TrainingError
from t2i.files import write_text

log = logging.getLogger("t2i")
NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "state.json"


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def install_weight_hooks(accelerator, save_weights: Callable[[Path], None], load_weights: Callable[[Path], None]):
    """Route the model part of save_state/load_state through t2i's own weight files."""
    def on_save(models, weights, output_dir):
        if accelerator.is_main_process:
            save_weights(Path(output_dir))
        weights.clear()  # accelerate then writes no full copy of the model

    def on_load(models, input_dir):
        load_weights(Path(input_dir))
        models.clear()

    accelerator.register_save_state_pre_hook(on_save)
    accelerator.register_load_state_pre_hook(on_load)


def _disk_full(exc: BaseException) -> bool:
    """torch.save on a full disk fails with "[enforce fail at inline_container.cc] . unexpected pos N vs M"
    (its zip writer's short write), not with ENOSPC."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "No space left" in str(exc))


def save_checkpoint(accelerator, folder: Path, step: int, state: dict, keep: int) -> Path:
    """Save the run's state as `checkpoint-<step>`; collective: every rank calls it. A save that fails
    leaves no partial folder behind, and a full disk is said as such, with the checkpoint still intact."""
    final = folder / f"checkpoint-{step:06d}"
    partial = folder / f".{final.name}.part"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()  # every rank's files are in before the folder becomes visible
        if accelerator.is_main_process:
            write_text(partial / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if not _disk_full(exc):
            raise
        intact = checkpoints(folder)
        last = f"{intact[-1].name} is intact" if intact else "no checkpoint is intact yet"
        raise TrainingError(f"the disk holding {folder} is full: checkpoint {step} was not written (its partial "
                            f"folder is removed); {last}", hint="free some space, then go on with {resume} latest") \
            from exc
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint: %s", final)
    accelerator.wait_for_everyone()
    return final


def resume_candidates(folder: Path, resume: str) -> list[Path]:
    """The checkpoints to try, in order: for 'latest' every complete one under `folder`, newest first
    (an empty list before the first one is written); otherwise the one named."""
    if resume == "latest":
        return checkpoints(folder)[::-1]
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise NotFound("no such checkpoint folder", field="resume", value=resume, hint="use 'latest'")
    if not (path / STATE_FILE).is_file():
        raise InvalidInput(f"not a t2i checkpoint folder (no {STATE_FILE})", field="resume", value=resume,
                           hint="use 'latest' or a checkpoint-NNNNNN folder")
    return [path]


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def check_same_settings(checkpoint: Path, state: dict, current: dict, defaults: dict | None = None) -> None:
    """A resumed run must draw the same batches and train the same way: refuse changed settings. A
    setting the checkpoint does not record (it predates it) ran at its default."""
    defaults = defaults or {}
    changed = [k for k, value in current.items() if state["settings"].get(k, defaults.get(k)) != value]
    if changed:
        raise InvalidInput(f"the checkpoint was made with other {', '.join(changed)}", field="resume",
                           value=checkpoint, hint="resume with the same settings or start a new output folder")
