"""The farm's side on Ray (studio/farm.py is the studio's side): the Serve deployment whose replicas each hold
one loaded pipeline and run one job at a time, and the cancel board through which Cancel reaches them.

A replica runs its job with the studio's own `Engine` (planner, History's atomic writes, messages), so a job
on the farm is made exactly as on one machine; it streams the job's progress and previews back as dicts.
Only the farm imports this module (it imports Ray).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import ray
from ray import serve

from studio.farm import APP, BOARD, NAMESPACE

POLL_S = 0.05  # how often a replica looks at its job; a step of any real model takes far longer


@ray.remote(num_cpus=0, max_restarts=-1)
class CancelBoard:
    """Where a front end asks for a job to stop (by the job's key), and where the replica running it waits
    for that: one call each way, no polling. Restarted by Ray if its process dies (pending cancels are lost:
    the user presses Cancel again)."""

    def __init__(self):
        self._asked: dict[str, tuple[asyncio.Event, list[bool]]] = {}

    def _of(self, key: str) -> tuple[asyncio.Event, list[bool]]:
        return self._asked.setdefault(key, (asyncio.Event(), [False]))

    async def wait(self, key: str) -> bool:
        """Returns True when the job is to stop, False when it was forgotten (it ended)."""
        event, cancelled = self._of(key)
        await event.wait()
        return cancelled[0]

    async def cancel(self, key: str) -> None:
        event, cancelled = self._of(key)
        cancelled[0] = True
        event.set()

    async def forget(self, key: str) -> None:
        event, _ = self._asked.pop(key, (None, None))
        if event is not None:
            event.set()


def board() -> Any:
    """The farm's cancel board, made on first use (detached: front ends and CLI runs share it)."""
    return CancelBoard.options(name=BOARD, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


class Generator:
    """One replica: one pipeline, one job at a time (Serve's max_ongoing_requests=1)."""

    def __init__(self, model: str, outputs: str, device: str, memory: str, threads: int | None,
                 preview_interval: float, speed: dict[str, Any] | None = None):
        import argparse

        import torch

        if threads:  # the replica's own cores; torch would otherwise start one thread per core of the node
            torch.set_num_threads(threads)
        from studio.engine import Engine
        from studio.outputs import PLANNER_FOLDER, History
        from studio.serve import load_pipeline

        # speed: launch.py's --attention, --compile, --step-cache, applied as the studio applies them
        self.pipe = load_pipeline(model, device, memory, None if speed is None else argparse.Namespace(**speed))
        # max_waiting 1: after a stream is dropped Serve may route the next job while the last step of the
        # dropped one still runs; the engine then starts it when that step ends.
        self.engine = Engine(self.pipe, History(outputs), max_waiting=1, memory=memory,
                             planner_cache=Path(outputs) / PLANNER_FOLDER, preview_interval=preview_interval)
        self.board = board()

    async def generate(self, request_json: str, key: str):
        """Run one request; yield {"event": "started"|"progress"|"finished", ...} dicts as it goes."""
        from pipelines.request import GenerationRequest

        try:
            request = GenerationRequest.from_json(request_json)
        except ValueError as error:  # a front end of another version; the sentence says what was wrong
            yield {"event": "finished", "status": "failed", "message": f"Cannot generate this: {error}", "step": 0,
                   "total": 0, "cancel_at": None, "preview": None, "out": None}
            return
        job = self.engine.submit(request, session=key)
        asked = asyncio.wrap_future(self.board.wait.remote(key).future())
        cancel_at = None  # steps the job had finished when the cancel reached this replica
        yield {"event": "started", "pid": os.getpid()}
        sent_step, sent_preview = 0, None
        try:
            while not job.finished:
                if asked.done():  # answered (or the board failed: then Cancel cannot reach this job)
                    await asyncio.sleep(POLL_S)
                else:
                    await asyncio.wait({asked}, timeout=POLL_S)
                if cancel_at is None and asked.done() and asked.exception() is None and asked.result():
                    cancel_at = job.step
                    self.engine.cancel(job_id=job.id)
                if (job.step != sent_step or job.preview is not sent_preview) and not job.finished:
                    sent_step, sent_preview = job.step, job.preview
                    yield {"event": "progress", "step": job.step, "total": job.total, "preview": job.preview,
                           "message": job.message}
        finally:
            if not job.finished:  # the stream was dropped (Serve cancelled it): stop at the next step
                self.engine.cancel(job_id=job.id)
            asked.cancel()
        yield {"event": "finished", "status": job.status, "message": job.message, "step": job.step,
               "total": job.total, "cancel_at": cancel_at, "preview": job.preview,
               "out": None if job.out is None else str(job.out)}


def application(model: str, outputs: str, replicas: int, replica_cpus: int, gpus: bool, memory: str,
                preview_interval: float, speed: dict[str, Any] | None = None) -> Any:
    """The Serve application: `replicas` Generators, one GPU each on a GPU cluster, else `replica_cpus` cores."""
    options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": replica_cpus}
    deployment = serve.deployment(Generator, name="Generator", num_replicas=replicas, max_ongoing_requests=1,
                                  ray_actor_options=options)
    return deployment.bind(model, outputs, "cuda" if gpus else "cpu", memory, None if gpus else replica_cpus,
                           preview_interval, speed)


def deploy(app: Any) -> None:
    serve.start(proxy_location="Disabled")  # the studio's page is the front end, not Serve's HTTP
    serve.run(app, name=APP, route_prefix=None, blocking=False)
