"""The studio's one worker: it owns the shared pipeline, runs one generation at a time on the device in the
order they came, turns requests away when the queue is full, streams progress (step, ETA, a latent preview)
and cancels cooperatively between denoising steps.

The queue lives here rather than in Gradio's so that the browser, the API and scripts share one bound and
one order, and so that control calls (Cancel) are never refused by a full queue.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.request import frames_text
from studio.outputs import DiskFull, Entry, History

log = logging.getLogger("studio.engine")

PREVIEW_INTERVAL_S = 0.5  # a preview costs a small matmul; no need for one every step of a fast model


class QueueFull(Exception):
    """More generations are waiting than the studio was started to hold."""


@dataclass
class Job:
    """One generation, as its handler and the Cancel button see it."""

    id: int
    session: str
    request: Any  # GenerationRequest
    out: Path | None = None  # named when the result is written
    status: str = "waiting"  # waiting | running | done | cancelled | failed
    step: int = 0
    total: int = 0
    started: float | None = None
    step_times: list[float] = field(default_factory=list)
    preview: np.ndarray | None = None
    entry: Entry | None = None
    message: str = ""
    # A job that is not one plain request (a storyboard take, a variations grid): work(pipe, job, on_step)
    # does it on the device in the job's turn and returns (the output, the message); `request` then only
    # sizes it for the memory planner.
    work: Any = None
    window: int = 0  # parts finished, of `windows` (a storyboard take's windows, a grid's cells)
    windows: int = 0
    latest: str | None = None  # the last finished part (a window's clip, a grid's sheet), shown as it lands
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")

    @property
    def seconds_per_step(self) -> float | None:
        recent = self.step_times[-5:]
        return (recent[-1] - recent[0]) / (len(recent) - 1) if len(recent) > 1 else None

    @property
    def eta(self) -> float | None:
        rate = self.seconds_per_step
        return None if rate is None else rate * (self.total - self.step)

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()


class Engine:
    def __init__(self, pipe: Any, history: History, max_waiting: int = 8,
                 preview_interval: float = PREVIEW_INTERVAL_S, max_per_session: int | None = None,
                 memory: str = "full", planner_cache: Path | None = None):
        self.pipe = pipe
        self.history = history
        # The memory mode (pipelines/memory.py); "auto": the planner picks one before each generation, timing
        # the model on the first (its measurements kept in planner_cache).
        self.memory = memory
        self.planner_cache = planner_cache
        self.max_waiting = max_waiting
        self.max_per_session = max_per_session  # unfinished jobs one session may have (None: no bound)
        self.preview_interval = preview_interval
        self.slots = 1  # jobs on the device at once (a farm's engine has one per replica: studio/farm.py)
        self._jobs: dict[int, Job] = {}  # unfinished jobs, in arrival order
        self._ids = itertools.count(1)
        self._registry = threading.Condition()  # guards _jobs; notified when the device frees up

    def plan(self, request: Any) -> str:
        """The request's predicted time and memory ("about 40 s, 9.1 of 24 GB"), as far as the planner has
        measured the model: it times nothing here, since a generation may be running on the pipeline."""
        if not getattr(self.pipe, "loaded", True):
            return "The model is loading."
        from pipelines import planner

        try:
            chosen = planner.plan(self.pipe, request, self.memory, cache=self.planner_cache, calibrate=False)
        except ValueError as error:
            return f"Cannot generate this: {error}"
        if chosen is None and self.memory == "auto":
            return "Time and memory: measured on this model's first generation (once per model and device)."
        if chosen is None:  # a mode given by hand never times the model
            return ("Time and memory: not measured for this model on this device (`python launch.py generate "
                    "... --plan-only` measures them once).")
        where = "any memory mode" if self.memory == "auto" else f"memory mode {chosen.mode}"
        fits = "" if chosen.fits else f" It does not fit in {where}: lower the size or the length."
        return f"Time and memory: {chosen.line} (memory {chosen.mode}).{fits}"

    # ---- submitting and following ----------------------------------------------------------------------
    def submit(self, request: Any, session: str = "", work: Any = None) -> Job:
        """Start a job on a worker thread; it waits its turn for the device. Raises QueueFull."""
        with self._registry:
            # Counted from unfinished jobs, not from their threads' progress, so that the bound holds the
            # same however fast the worker threads start: those on the device plus max_waiting.
            unfinished = sum(not j.finished for j in self._jobs.values())
            if unfinished >= self.slots + self.max_waiting:
                raise QueueFull(f"The queue is full: {unfinished - self.slots} generations are already waiting for the "
                                "device. Try again when one has finished.")
            mine = sum(not j.finished and j.session == session for j in self._jobs.values())
            if session and self.max_per_session is not None and mine >= self.max_per_session:
                # one page or script must not take every place in a queue others share
                raise QueueFull(f"You have {mine} generation{'s' * (mine != 1)} in the queue already, the most one "
                                "session may have while others share the studio. Try again when one has finished.")
            job = Job(next(self._ids), session, request, work=work)
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), name=f"generation-{job.id}", daemon=True).start()
        return job

    def follow(self, job: Job, interval: float = 0.25) -> Iterator[Job]:
        """Yield the job whenever it changes (or every `interval` s) until it has finished, then once more."""
        while not job.finished:
            with job.changed:
                job.changed.wait(interval)
            yield job
        yield job

    def follow_parts(self, job: Job, describe) -> Iterator[tuple[str, str | None]]:
        """For a job of parts (a take's windows, a grid's cells), until it has finished: (its status line, its
        latest finished part when that is new since the last, else None). `describe(job)` words a running job."""
        shown = None
        for state in self.follow(job):
            if state.finished:
                return
            text = f"Waiting for the device ({self.ahead_of(state)} ahead)." if state.status == "waiting" else \
                describe(state)
            latest = state.latest if state.latest != shown else None
            shown = state.latest
            yield text, latest

    def ahead_of(self, job: Job) -> int:
        """How many jobs must finish before this one starts (the running one included; none once it runs)."""
        with self._registry:
            return max(0, sum(other < job.id for other in self._jobs) - (self.slots - 1))

    def cancel(self, session: str | None = None, job_id: int | None = None) -> int:
        """Ask a session's unfinished jobs (or the one job `job_id`, of that session when one is given) to
        stop; they stop after the current step. Returns how many were asked. With neither, none is asked:
        leaving the session out must never reach other people's jobs."""
        if not session and job_id is None:
            return 0
        with self._registry:
            chosen = [j for j in self._jobs.values() if not j.finished and
                      (job_id is None or j.id == job_id) and (not session or j.session == session)]
        for job in chosen:
            job.cancel.set()
            job._notify()
        with self._registry:
            self._registry.notify_all()  # a waiting job that was cancelled leaves the queue at once
        return len(chosen)

    def run(self, request: Any, session: str = "") -> Job:
        """Submit and wait: the blocking form for scripts and tests."""
        job = self.submit(request, session)
        for _ in self.follow(job):
            pass
        return job

    # ---- the worker ------------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        try:
            with self._registry:  # first come, first served: wait until every earlier job has finished
                while job.id not in sorted(self._jobs)[:self.slots] and not job.cancel.is_set():
                    self._registry.wait(1.0)
            if job.cancel.is_set():
                job.status, job.message = "cancelled", "Cancelled before it started."
                return
            job.status, job.started = "running", time.perf_counter()
            job._notify()
            self._generate(job)
        finally:
            if not job.finished:  # only a BaseException gets here; a follower must still see an end
                job.status, job.message = "failed", "The generation was interrupted. The log has the details."
            with self._registry:
                self._jobs.pop(job.id, None)
                self._registry.notify_all()
            job._notify()

    def _generate(self, job: Job) -> None:
        from pipelines.sampling import GenerationCancelled

        last_preview = [0.0]

        def on_step(step: int, total: int, latents: Any) -> None:
            now = time.perf_counter()
            job.step, job.total = step, total
            job.step_times.append(now)
            if now - last_preview[0] >= self.preview_interval or step == total:
                job.preview = self.pipe.preview(latents)
                last_preview[0] = now
            job._notify()
            if job.cancel.is_set():
                raise GenerationCancelled(f"cancelled at step {step} of {total}")

        status, message = self._attempt(job, on_step)
        # Published only once the job's tensors are gone (the exception and its frames died with
        # _attempt's return): whoever sees "failed" or "cancelled" may start the next job at once.
        _free_memory()
        job.status, job.message = status, message

    def _attempt(self, job: Job, on_step) -> tuple[str, str]:
        """(status, message) of one generation; every error is turned into a message here."""
        from pipelines.sampling import GenerationCancelled

        try:
            if self.memory == "auto":  # refused here (a ValueError naming what fits) before any step
                from pipelines import planner

                if planner.plan(self.pipe, job.request, "auto", cache=self.planner_cache, calibrate=False) is None:
                    job.message = "Timing this model on this device first (once per model and device)..."
                    job._notify()
                planner.prepare(self.pipe, job.request, "auto", cache=self.planner_cache)
                job.message = ""
            work = job.work or (lambda pipe, job, on_step: self.generation(job, on_step))
            job.out, message = work(self.pipe, job, on_step)
            job.entry = self.history.read(job.out)
            return "done", message
        except GenerationCancelled as stop:
            return "cancelled", f"Cancelled ({stop})."
        except ValueError as error:  # a request this model cannot take: the message says what is valid
            log.info("job %d refused: %s", job.id, str(error))  # the text only: a record must not hold frames
            return "failed", f"Cannot generate this: {error}"
        except Exception as error:  # noqa: BLE001 - the studio must keep serving; the log has the traceback
            # The traceback as text: a LogRecord holding exc_info would keep the job's tensors alive in any
            # handler that retains records.
            log.error("job %d failed\n%s", job.id, traceback.format_exc())
            return "failed", _plain(error)


    def generation(self, job: Job, on_step, extra: dict[str, Any] | None = None) -> tuple[Path, str]:
        """(the output, the message) of the job's request generated and written to the history under a new
        name (with `extra` sidecar fields): a plain job's work, and a step of others' (variations)."""
        result = self.pipe.generate(job.request, callback=on_step)
        if job.cancel.is_set():  # pressed during the decode: the clip exists, keep it
            log.info("job %d: cancel arrived after sampling; keeping the clip", job.id)
        out, _ = self.history.write(result, gif=True, extra=extra)
        seconds = time.perf_counter() - (job.started or time.perf_counter())
        message = f"Done in {seconds:.1f} s: {frames_text(len(result.frames))} at {result.fps:g} fps."
        return out, message + "".join(f" Note: {n}" for n in result.notes)


def _plain(error: Exception) -> str:
    """One sentence for the user; the traceback goes to the log."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return ("The GPU ran out of memory. Lower the resolution or the number of frames, or restart the "
                "studio with --low-vram.")
    if isinstance(error, (RuntimeError, MemoryError)) and (isinstance(error, MemoryError) or
                                                           "can't allocate memory" in str(error)):
        return "The machine ran out of memory. Lower the resolution or the number of frames."
    if isinstance(error, DiskFull):
        return str(error)
    if isinstance(error, OSError):
        return f"A file could not be read or written: {error}"
    return f"Generation failed ({type(error).__name__}: {error}). The log has the details."


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # a device in a failed state: the job's own message matters more
            log.error("could not empty the CUDA cache\n%s", traceback.format_exc())
