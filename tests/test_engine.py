"""The studio's worker under load and faults, on the real tiny pipeline: a bounded queue, cancellation
within a step, and out-of-memory errors (injected, since this machine has no GPU to exhaust)."""

from __future__ import annotations

import gc
import time

import pytest
import torch

from pipelines import text_to_video
from studio.engine import Engine, QueueFull
from studio.outputs import History


def live_tensor_bytes() -> int:
    """Bytes held by every tensor Python can still reach (storages counted once)."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


PROMPT = "a red ball"  # one prompt for the jobs whose memory is compared: the text encoder caches by prompt


def quick(prompt: str = PROMPT, **settings):
    return text_to_video(prompt, **{"num_frames": 5, "steps": 2, "seed": 1, "width": 32, "height": 32, **settings})


def long(prompt: str = PROMPT):
    return quick(prompt, steps=100, width=64, height=64, num_frames=9)


@pytest.fixture
def engine(wan21, tmp_path) -> Engine:
    engine = Engine(wan21, History(tmp_path / "outputs"), max_waiting=2, preview_interval=0.0)
    assert engine.run(quick()).status == "done"  # the previewer and caches exist from here on
    return engine


def wait_for_step(job, step: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while job.step < step and not job.finished and time.monotonic() < deadline:
        time.sleep(0.005)
    assert job.step >= step, f"job never reached step {step} ({job.status}: {job.message})"


@pytest.mark.parametrize("extra", [1, 3])
def test_n_plus_k_submissions_with_room_for_n_refuse_exactly_k(engine, extra):
    room = engine.max_waiting + 1  # one on the device, max_waiting in line
    accepted, refused = [], []
    for index in range(room + extra):
        try:
            accepted.append(engine.submit(quick(f"job {index}", seed=index)))
        except QueueFull as full:
            refused.append(str(full))
    assert len(accepted) == room and len(refused) == extra
    assert all("queue is full" in message and "Try again" in message for message in refused)
    for job in accepted:
        for _ in engine.follow(job):
            pass
    assert [job.status for job in accepted] == ["done"] * room
    assert len(engine.history.entries()) == 1 + room  # the warm-up and every accepted job


def test_cancel_stops_within_one_step_frees_memory_and_the_next_job_runs(engine):
    baseline = live_tensor_bytes()
    job = engine.submit(long())
    wait_for_step(job, 3)
    asked_at = job.step
    assert engine.cancel(job_id=job.id) == 1
    for _ in engine.follow(job):
        pass
    assert job.status == "cancelled" and f"at step {job.step} of 100" in job.message
    assert job.step - asked_at <= 1, (asked_at, job.step)
    assert live_tensor_bytes() == baseline
    assert engine.run(quick("after the cancel")).status == "done"
    # a cancelled job leaves no files: the folder holds the two finished outputs and nothing else of its own
    folder = engine.history.folder
    assert job.out is None and len(list(folder.glob("*.mp4.json"))) == 2
    assert all((folder / f"{m.name}.json").is_file() for m in folder.glob("*.mp4"))


def test_a_waiting_job_cancelled_leaves_the_queue_at_once(engine):
    running = engine.submit(long())
    wait_for_step(running, 1)
    waiting = engine.submit(quick("in line"))
    engine.cancel(job_id=waiting.id)
    for _ in engine.follow(waiting):
        pass
    assert waiting.status == "cancelled" and running.status == "running"
    engine.cancel(job_id=running.id)
    for _ in engine.follow(running):
        pass


@pytest.mark.parametrize("error, advice", [
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "GPU ran out of memory"),
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"),
     "machine ran out of memory"),
])
def test_out_of_memory_fails_the_job_with_advice_and_the_next_job_runs(engine, error, advice):
    baseline = live_tensor_bytes()
    calls = []

    def exhaust(module, args):
        calls.append(torch.empty(8 << 20, dtype=torch.uint8))  # the job had memory in use when it failed
        if len(calls) == 3:
            calls.clear()
            raise error()

    hook = engine.pipe.transformer.register_forward_pre_hook(exhaust)
    try:
        job = engine.run(long())
    finally:
        hook.remove()
    assert job.status == "failed" and advice in job.message and "Lower the resolution" in job.message
    assert "Traceback" not in job.message
    assert live_tensor_bytes() == baseline
    assert engine.run(quick("after the failure")).status == "done"
