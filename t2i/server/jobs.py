"""Jobs: one generation at a time, a bounded line of waiting requests, progress, interrupt and skip.

All torch work, loading included, runs in one worker thread, always the same one: generating in
another thread than the one that loaded the model measured 15% slower on this CPU (torch's OpenMP
thread teams are per calling thread). The event
loop keeps answering `progress`, `interrupt` and every listing meanwhile. A job whose client has
gone away is stopped at its next denoising step.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from t2i.sampling.generate import SkipBatch

DISCONNECT_POLL_S = 0.25


class QueueFull(Exception):
    """More requests are waiting than the server takes (--max-queue)."""


class Stopped(Exception):
    """The running job was interrupted, or its client went away."""


@dataclass
class Job:
    name: str
    images: int = 1  # what the job makes, for its progress
    batch_size: int = 1
    started: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d%H%M%S"))
    done: int = 0  # images finished
    step: int = 0
    steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    abandoned: bool = False  # the client disconnected

    @property
    def batches(self) -> int:
        return -(-self.images // self.batch_size)

    @property
    def progress(self) -> float:
        in_batch = min(self.batch_size, self.images - self.done)
        fraction = self.step / self.steps if self.steps else 0.0
        return min((self.done + in_batch * fraction) / self.images, 1.0)

    def on_step(self, step: int, steps: int) -> None:
        """The generation's step callback: records progress, and stops or skips when asked."""
        self.step, self.steps = step, steps
        if self.interrupted or self.abandoned:
            raise Stopped(self.name)
        if self.skipped:
            self.skipped = False
            raise SkipBatch()

    def image_done(self) -> None:
        self.done, self.step = self.done + 1, 0


class JobQueue:
    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.waiting = 0
        self.current: Job | None = None
        self._turn: asyncio.Lock | None = None  # made inside the server's event loop
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="t2i-generation")

    def run_now(self, work: Callable[[], Any]) -> Any:
        """Run `work()` in the worker thread and wait for it: for loading before the server starts."""
        return self._worker.submit(work).result()

    async def run(self, job: Job, work: Callable[[Job], Any], is_disconnected=None) -> Any:
        """Run `work(job)` in a worker thread when its turn comes; QueueFull when the line is full."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        if self._turn.locked() and self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are already waiting (the server's --max-queue)")
        watcher = asyncio.create_task(self._watch(job, is_disconnected)) if is_disconnected else None
        try:
            self.waiting += 1
            try:
                await self._wait_for_turn(job, watcher)
            finally:
                self.waiting -= 1
            try:
                if job.abandoned:  # its client left while it waited
                    raise Stopped(job.name)
                job.started, self.current = time.monotonic(), job
                return await asyncio.get_running_loop().run_in_executor(self._worker, work, job)
            finally:
                self.current = None
                self._turn.release()
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _wait_for_turn(self, job: Job, watcher: asyncio.Task | None) -> None:
        """Take the turn; a client that leaves while waiting gives up its place in the line at once
        (Stopped), so abandoned requests do not hold queue slots until the running job ends."""
        assert self._turn is not None
        acquire = asyncio.ensure_future(self._turn.acquire())
        if watcher is None:
            await acquire
            return
        await asyncio.wait({acquire, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if acquire.done():
            return  # its turn came (a disconnect seen meanwhile is handled by the caller's check)
        acquire.cancel()
        try:
            await acquire
        except asyncio.CancelledError:
            raise Stopped(job.name) from None
        self._turn.release()  # acquired just as it was cancelled: the turn goes to the next in line
        raise Stopped(job.name)

    async def _watch(self, job: Job, is_disconnected) -> None:
        while True:
            await asyncio.sleep(DISCONNECT_POLL_S)
            if await is_disconnected():
                job.abandoned = True
                return

    def interrupt(self) -> None:
        if self.current is not None:
            self.current.interrupted = True

    def skip(self) -> None:
        if self.current is not None:
            self.current.skipped = True

    def progress(self) -> dict[str, Any]:
        """A1111's /progress answer."""
        job = self.current
        if job is None:
            state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                     "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
                     "queued": self.waiting}
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        progress = job.progress
        elapsed = time.monotonic() - job.started
        eta = elapsed / progress - elapsed if progress > 0 else None
        state = {"skipped": job.skipped, "interrupted": job.interrupted, "stopping_generation": job.interrupted,
                 "job": job.name, "job_count": job.batches, "job_timestamp": job.timestamp,
                 "job_no": min(job.done // job.batch_size, job.batches - 1), "sampling_step": job.step,
                 "sampling_steps": job.steps, "queued": self.waiting}
        return {"progress": round(progress, 4), "eta_relative": round(eta, 2) if eta is not None else None,
                "state": state, "current_image": None, "textinfo": None}
