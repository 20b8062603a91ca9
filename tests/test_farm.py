"""The studio in front of a farm (studio/farm.py): two local Ray Serve replicas of the embedded model, one CPU
each, driven through gradio_client like the single-process studio, and compared with it frame for frame."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

pytest.importorskip("ray.serve", reason="the farm runs on Ray Serve: pip install -e '.[farm]'")
from gradio_client import Client  # noqa: E402

from conftest import free_port  # noqa: E402
from pipelines.request import GenerationRequest  # noqa: E402
from pipelines.video_io import read_media  # noqa: E402

REPLICAS = 2
QUEUE = 4  # waiting places: room for REPLICAS + QUEUE jobs
SIZE = "1:1 · 128x128"


def t2v(prompt: str, seed: int, steps: int = 2, seconds: float = 1.0) -> tuple:
    """The /t2v endpoint's arguments: prompt, negative, seed, steps, guidance, sampler, size, seconds, fps, one frame.
    100 steps of 2 s last long enough to be cancelled or killed mid-way."""
    return prompt, "", seed, steps, 4.0, "default", SIZE, seconds, 8, False


@pytest.fixture(scope="module")
def farm(tmp_path_factory, one_torch_thread):
    """The farm's studio on a free port: (url, history, engine); Ray is started once for the module."""
    import ray
    from ray import serve

    from studio import farm as farm_module
    from studio.serve import build_parser, launch_kwargs

    outputs = tmp_path_factory.mktemp("farm-outputs")
    args = build_parser().parse_args(["--outputs", str(outputs), "--port", str(free_port()), "--farm"])
    demo, history, engine = farm_module.create("embedded", outputs, REPLICAS, 1, queue_size=QUEUE, device="cpu")
    try:
        demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(args, history))
        yield demo.local_url, history, engine
    finally:
        demo.close()
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def local():
    """The single-process studio's engine on the same model, in this process (one torch thread, as a replica)."""
    from studio.engine import Engine
    from studio.outputs import History
    from studio.serve import load_pipeline

    pipe = load_pipeline("embedded", "cpu")

    def run(request: GenerationRequest, folder: Path):
        job = Engine(pipe, History(folder)).run(request)
        assert job.status == "done", job.message
        return job.out
    return run


def same_frames(farm_out: str | Path, local_out: Path) -> None:
    """The same clip: the saved latents bit for bit, and the GIFs' frames (lossless) exactly."""
    farm_out = Path(farm_out)
    assert load_file(f"{farm_out}.latents.safetensors")["latents"].equal(
        load_file(f"{local_out}.latents.safetensors")["latents"])
    assert np.array_equal(read_media(farm_out.with_suffix(".gif"), 8), read_media(local_out.with_suffix(".gif"), 8))


def started(job, deadline_s: float = 120) -> None:
    """Wait until a submitted /t2v job shows a step of its progress."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and not any("step" in str(o[0]) for o in job.outputs()):
        time.sleep(0.05)
    assert any("step" in str(o[0]) for o in job.outputs()), "the job never started"


def test_the_benchmark_times_one_and_two_replicas_and_cancel(tmp_path):
    """benchmarks/farm.py end to end on tiny settings (first in the module: it starts its own Ray instance,
    before the module's)."""
    out = tmp_path / "farm.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.farm", "--rounds", "1", "--jobs", "2", "--steps", "2",
                           "--frames", "9", "--cancels", "1", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert all(row["min"] > 0 for row in result["jobs_per_minute"].values())
    assert set(result["cores"]) == {"1", "2"} and result["ratio_2_over_1"]["median"] > 0
    plain = result["plain_processes"]  # the machine's own scaling, in the same round
    assert all(len(v) == 1 and v[0] > 0 for v in plain["seconds"].values()) and plain["ratio_2_over_1"][0] > 0
    cancel = result["cancels"][0]
    assert cancel["stopped_at_step"] - cancel["reached_at_step"] <= 1
    assert "| 2 / 1 |" in done.stdout and "2 plain processes / 1" in done.stdout


def test_six_jobs_complete_with_the_frames_of_one_machine(farm, local, tmp_path):
    url, history, engine = farm
    clients = [Client(url, verbose=False) for _ in range(6)]
    jobs = [c.submit(*t2v(f"a red ball moves right {k}", seed), api_name="/t2v")
            for k, (c, seed) in enumerate(zip(clients, range(11, 17)))]
    results = [job.result(timeout=300)[4] for job in jobs]
    assert [r["status"] for r in results] == ["done"] * 6
    assert len(set(engine.replica_pids.values())) == REPLICAS  # both replicas ran some of them
    for result in results:
        request = GenerationRequest.from_dict(result["sidecar"]["request"])
        same_frames(result["output"], local(request, tmp_path / "local"))
    listed = {e.media.name for e in history.entries()}
    assert {Path(r["output"]).name for r in results} <= listed


def test_cancel_reaches_the_replica_and_stops_it_within_a_step(farm):
    url, _, engine = farm
    client = Client(url, verbose=False)
    job = client.submit(*t2v("a long one", 5, 100, 2.0), api_name="/t2v")
    started(job)
    assert client.predict(api_name="/cancel") == "Cancelling after the current step..."
    result = job.result(timeout=120)[4]
    assert result["status"] == "cancelled" and 0 < result["step"] < result["total"] == 100
    reached, stopped = engine.cancel_steps[max(engine.cancel_steps)]
    assert stopped - reached <= 1 and stopped == result["step"]


def test_with_room_for_n_n_plus_k_submissions_are_refused_k_times(farm):
    url, _, engine = farm
    room, extra = REPLICAS + QUEUE, 2
    clients = [Client(url, verbose=False) for _ in range(room + extra)]
    jobs = [c.submit(*t2v(f"busy {k}", k, 100, 2.0), api_name="/t2v") for k, c in enumerate(clients)]
    try:
        refused = []
        for job in jobs:  # a refusal ends its job at once; an accepted one shows its place or its steps
            deadline = time.time() + 60
            while time.time() < deadline and not job.done() and not job.outputs():
                time.sleep(0.05)
            if job.done():
                try:
                    job.result()
                except Exception as error:  # noqa: BLE001 - gradio_client raises the page's gr.Error
                    refused.append(str(error))
        assert len(refused) == extra and all("queue is full" in why.lower() for why in refused), refused
        shown = [str(o[0]) for job in jobs for o in job.outputs()]
        assert any("In the queue: 4 generations before this one" in text for text in shown)  # the last of six
    finally:
        for client in clients:
            client.predict(api_name="/cancel")
        for job in jobs:
            try:
                job.result(timeout=120)
            except Exception:  # noqa: BLE001 - the refused ones
                pass


def test_a_replica_killed_mid_job_is_retried_with_the_same_frames_or_fails(farm, local, tmp_path):
    url, history, engine = farm
    client = Client(url, verbose=False)
    job = client.submit(*t2v("a ball that survives", 21, 30, 2.0), api_name="/t2v")
    started(job)
    running = max(engine.replica_pids)
    killed = engine.replica_pids[running]
    os.kill(killed, signal.SIGKILL)
    try:
        outputs = job.result(timeout=300)
    except Exception as error:  # noqa: BLE001 - failing with a message is allowed; a partial output is not
        assert "failed twice on the farm" in str(error)
        outputs = None
    if outputs is not None:
        result = outputs[4]
        assert result["status"] == "done"
        request = GenerationRequest.from_dict(result["sidecar"]["request"])
        assert request.seed == 21 and engine.replica_pids[running] != killed  # run again, on another replica
        same_frames(result["output"], local(request, tmp_path / "local"))
    whole = {e.media.name for e in history.entries()}
    media = {p.name for p in history.folder.iterdir() if p.suffix in (".mp4", ".png") and not p.name.startswith(".")}
    assert media == whole  # no clip without its sidecar


def test_the_studio_survives_a_restart_of_the_serve_application(farm, local, tmp_path):
    from ray import serve

    from studio import farm as farm_module

    url, history, engine = farm
    client = Client(url, verbose=False)
    serve.delete(farm_module.APP)  # as an operator would, to redeploy it
    job = client.submit(*t2v("after the restart", 31), api_name="/t2v")
    time.sleep(1.0)
    assert not job.done()  # it waits for the application to come back
    farm_module.start("embedded", history.folder, REPLICAS, 1, device="cpu")
    result = job.result(timeout=300)[4]
    assert result["status"] == "done"
    same_frames(result["output"], local(GenerationRequest.from_dict(result["sidecar"]["request"]), tmp_path / "local"))
