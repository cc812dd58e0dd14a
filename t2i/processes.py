"""The process group a launcher (`accelerate launch`, `torchrun`) started this process in."""

from __future__ import annotations

import os


def launched() -> bool:
    """True under a launcher that started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state():
    """accelerate's PartialState for this process: its rank, the world size, its device.

    Without cpu=True, CPU processes started by a launcher would each run alone (accelerate forms
    a CPU group only when asked to); with a GPU, accelerate picks the backend and the process's
    own GPU itself.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def share(count: int, rank: int, world: int) -> slice:
    """Process `rank`'s contiguous block of `count` work items (the blocks differ in size by at most one)."""
    return slice(count * rank // world, count * (rank + 1) // world)
