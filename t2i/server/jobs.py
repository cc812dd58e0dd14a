"""Jobs: one generation at a time, a bounded line of waiting requests, progress, interrupt and skip.

All torch work, loading included, runs in one worker thread, always the same one: generating in
another thread than the one that loaded the model measured 15% slower on this CPU (torch's OpenMP
thread teams are per calling thread). The event
loop keeps answering `progress`, `interrupt` and every listing meanwhile. A job whose client has
gone away is stopped at its next denoising step.

Every job has a task id (A1111's `force_task_id`, else one made here): a client asks for its own
job's progress and place in line (`/internal/progress`, as A1111's page does) and interrupts or
cancels only its own job; A1111's plain `/interrupt` still stops whatever runs. An interrupt is
seen inside a denoising step too, at every UNet block (`watch_blocks`), so that a step of minutes
on a CPU does not delay it.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from PIL import Image

from t2i.formats.png import png_base64
from t2i.sampling.generate import SkipBatch

DISCONNECT_POLL_S = 0.25
FINISHED_KEPT = 256  # task ids remembered as completed, for a client that polls once more after its answer


class QueueFull(Exception):
    """More requests are waiting than the server takes (--max-queue)."""


class Stopped(Exception):
    """The running job was interrupted, or its client went away."""


class Cancelled(Stopped):
    """A waiting job was cancelled by its task id before its turn came."""


def new_task_id() -> str:
    return f"task({secrets.token_hex(8)})"


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
    task_id: str = field(default_factory=new_task_id)
    cancelled: asyncio.Event | None = None  # set to take a waiting job out of the line (made in the event loop)
    preview: Image.Image | None = None  # the latest live preview (/progress's current_image)
    preview_id: int = 0  # how many previews it has had

    @property
    def stopping(self) -> bool:
        return self.interrupted or self.abandoned

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
        if self.stopping:
            raise Stopped(self.name)
        if self.skipped:
            self.skipped = False
            raise SkipBatch()

    def show_preview(self, image: Image.Image) -> None:
        """The generation's preview callback (from the worker thread; one assignment, read whole)."""
        self.preview, self.preview_id = image, self.preview_id + 1

    def image_done(self) -> None:
        self.done, self.step = self.done + 1, 0

    def textinfo(self) -> str:
        return f"step {self.step}/{self.steps}, batch {min(self.done // self.batch_size + 1, self.batches)}/" \
               f"{self.batches}" if self.steps else "starting"


# the job the worker thread is running, for the block hooks: other threads (the CLI, the Python API) have none
_running = threading.local()


def _check_running_job(_module, _inputs) -> None:
    job = getattr(_running, "job", None)
    if job is not None and job.stopping:
        raise Stopped(job.name)


def watch_blocks(unet) -> None:
    """Check the running job's interrupt flag before every ResNet and transformer block of `unet`
    (once per model: the hooks live on the shared modules, which every per-call view shares)."""
    if getattr(unet, "_t2i_watched", False):
        return
    for module in unet.modules():
        if type(module).__name__ in ("ResnetBlock2D", "Transformer2DModel"):
            module.register_forward_pre_hook(_check_running_job)
    unet._t2i_watched = True


def run_watched(job: Job, work: Callable[[Job], Any]) -> Any:
    """`work(job)` with `job` as the worker thread's running job, which the block hooks check."""
    _running.job = job
    try:
        return work(job)
    finally:
        _running.job = None


class JobQueue:
    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.waiting = 0
        self.current: Job | None = None
        self.line: list[Job] = []  # waiting jobs, first come first
        self.finished: OrderedDict[str, bool] = OrderedDict()  # task id -> interrupted, the newest kept
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
        job.cancelled = asyncio.Event()
        try:
            self.waiting += 1
            self.line.append(job)
            try:
                await self._wait_for_turn(job, watcher)
            finally:
                self.waiting -= 1
                self.line.remove(job)
            try:
                if job.abandoned:  # its client left while it waited
                    raise Stopped(job.name)
                job.started, self.current = time.monotonic(), job
                return await asyncio.get_running_loop().run_in_executor(self._worker, run_watched, job, work)
            finally:
                self.current = None
                self._turn.release()
        finally:
            self._remember(job)
            if watcher is not None:
                watcher.cancel()

    def _remember(self, job: Job) -> None:
        self.finished[job.task_id] = job.stopping
        while len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)

    async def _wait_for_turn(self, job: Job, watcher: asyncio.Task | None) -> None:
        """Take the turn; a client that leaves while waiting gives up its place in the line at once
        (Stopped), so abandoned requests do not hold queue slots until the running job ends."""
        assert self._turn is not None and job.cancelled is not None
        acquire = asyncio.ensure_future(self._turn.acquire())
        cancel = asyncio.ensure_future(job.cancelled.wait())
        leave = {cancel} | ({watcher} if watcher is not None else set())
        try:
            await asyncio.wait({acquire, *leave}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
        if acquire.done() and not job.cancelled.is_set():
            return  # its turn came (a disconnect seen meanwhile is handled by the caller's check)
        gone = Cancelled if job.cancelled.is_set() else Stopped
        acquire.cancel()
        try:
            await acquire
        except asyncio.CancelledError:
            raise gone(job.name) from None
        self._turn.release()  # acquired just as it was cancelled: the turn goes to the next in line
        raise gone(job.name)

    async def _watch(self, job: Job, is_disconnected) -> None:
        while True:
            await asyncio.sleep(DISCONNECT_POLL_S)
            if await is_disconnected():
                job.abandoned = True
                return

    def interrupt(self, task_id: str | None = None) -> bool:
        """Stop the running job (A1111's interrupt), or with `task_id` only that job: running, it stops
        at its next block; waiting, it leaves the line. Whether a job was found."""
        if task_id is None or (self.current is not None and self.current.task_id == task_id):
            if self.current is not None:
                self.current.interrupted = True
            return self.current is not None
        for job in self.line:
            if job.task_id == task_id:
                job.interrupted = True
                if job.cancelled is not None:
                    job.cancelled.set()
                return True
        return False

    def task_progress(self, task_id: str) -> dict[str, Any]:
        """A1111's `/internal/progress` answer for one task, with its place in line."""
        answer: dict[str, Any] = {"active": False, "queued": False, "completed": False, "progress": None,
                                  "eta": None, "live_preview": None, "id_live_preview": -1, "textinfo": None,
                                  "queue_position": None}
        job = self.current
        if job is not None and job.task_id == task_id:
            progress = self.progress()
            preview = progress["current_image"]
            return {**answer, "active": True, "progress": progress["progress"], "eta": progress["eta_relative"],
                    "textinfo": job.textinfo(), "id_live_preview": job.preview_id if preview else -1,
                    "live_preview": f"data:image/png;base64,{preview}" if preview else None}
        for position, waiting in enumerate(self.line, 1):
            if waiting.task_id == task_id:
                ahead = position - 1 + (self.current is not None)
                return {**answer, "queued": True, "queue_position": position,
                        "textinfo": f"in line: {ahead} job(s) ahead"}
        if task_id in self.finished:
            return {**answer, "completed": True, "progress": 1.0,
                    "textinfo": "interrupted" if self.finished[task_id] else "done"}
        return {**answer, "textinfo": "not known to this server (yet)"}

    def jobs(self) -> list[dict[str, Any]]:
        """The running job and the line, in order: what a queue panel lists."""
        running = [] if self.current is None else [self.current]
        return [{"id_task": job.task_id, "name": job.name, "state": "running" if job is self.current else "queued",
                 "position": index, "images": job.images} for index, job in enumerate(running + self.line)]

    def skip(self) -> None:
        if self.current is not None:
            self.current.skipped = True

    def progress(self, skip_current_image: bool = False) -> dict[str, Any]:
        """A1111's /progress answer; `current_image` is the running job's latest live preview (base64 PNG)."""
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
        preview = job.preview
        image = None if skip_current_image or preview is None else png_base64(preview)
        return {"progress": round(progress, 4), "eta_relative": round(eta, 2) if eta is not None else None,
                "state": state, "current_image": image, "textinfo": None}
