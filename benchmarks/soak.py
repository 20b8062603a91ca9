"""Soak: many mixed-mode jobs through the served studio's API, about one in five cancelled mid-run.

    python -m benchmarks.soak --model MODEL [--jobs 50] [--cancel-every 5]

Starts `python launch.py` as a separate process (its memory is what is measured), then drives it with
gradio_client the way a script or a second browser would: text to video, one-frame images, animate,
extend both ways, loop, restyle and connect, in rotation, chained on earlier outputs. Every fifth job is a
long one cancelled once it reports a step. The server's resident memory is read after every job; drift is
the end against the mean of jobs 11-20 (by then the caches a first run fills are full). Prints a table;
exits 1 on a crash, an unexpected status, or drift over `--max-drift`.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.startup import free_port

ROOT = Path(__file__).resolve().parents[1]
SIZE = "1:1 · 32x32"


def _settings(seed: int, steps: int = 2, size: str = SIZE) -> tuple:
    return ("", seed, steps, 4.0, "default", size)  # negative, seed, steps, guidance, sampler, size


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(model: str, outputs: Path, log_path: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "launch.py", "--model", model, "--outputs", str(outputs),
                                "--port", str(port), "--device", "cpu"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the studio exited with {process.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the studio did not start in {timeout:g} s")


def job_arguments(kind: str, index: int, clips: list[str], still: str) -> tuple[str, tuple]:
    from gradio_client import handle_file

    seed = 1000 + index
    if kind == "t2v":
        return "/t2v", (f"a ball number {index}", *_settings(seed), 1.0, 8, False)
    if kind == "image":
        return "/t2v", (f"a still number {index}", *_settings(seed), 1.0, 8, True)
    if kind == "animate":
        return "/animate", (handle_file(still), "it starts to move", *_settings(seed), 1.0, 8)
    if kind in ("extend", "extend back", "loop"):
        direction = "backward" if kind == "extend back" else "forward"
        return "/extend", (handle_file(clips[-1]), direction, 5, kind == "loop", 1, "on it goes", *_settings(seed),
                           0.5, 8)
    if kind == "restyle":
        return "/restyle", (handle_file(clips[-1]), 0.6, "in pastel", *_settings(seed), 8)
    if kind == "connect":
        return "/connect", (handle_file(clips[-1]), handle_file(clips[0]), 5, 1, "meet", *_settings(seed), 0.375, 8)
    raise ValueError(kind)


KINDS = ("t2v", "image", "animate", "extend", "restyle", "extend back", "loop", "connect")


def soak(url: str, pid: int, jobs: int, cancel_every: int, still: str) -> list[dict]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    clips: list[str] = []
    rows = []
    for index in range(jobs):
        started = time.perf_counter()
        cancelled = cancel_every > 0 and index % cancel_every == cancel_every - 1
        if cancelled:
            kind = "t2v (cancelled)"
            job = client.submit("a long one", *_settings(index, steps=60, size="1:1 · 64x64"), 2.0, 8, False,
                                api_name="/t2v")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("step" in str(o[0]) for o in job.outputs()):
                time.sleep(0.02)
            client.predict(api_name="/cancel")
            result = job.result(timeout=120)[4]
        else:
            kind = KINDS[index % len(KINDS)] if clips else "t2v"
            api, arguments = job_arguments(kind, index, clips, still)
            result = client.predict(*arguments, api_name=api)[4]
            if result.get("status") == "done" and result["output"].endswith(".mp4"):
                clips.append(result["output"])
        rows.append({"job": index + 1, "kind": kind, "status": result.get("status"), "step": result.get("step"),
                     "seconds": round(time.perf_counter() - started, 2), "rss_mb": round(_rss_mb(pid), 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--cancel-every", type=int, default=5)
    parser.add_argument("--max-drift", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.jobs < 25:
        parser.error(f"--jobs {args.jobs} is too few to measure drift: at least 25")

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        still = scratch / "still.png"
        Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))).save(still)
        process, url = start_server(args.model, scratch / "outputs", scratch / "server.log")
        try:
            rows = soak(url, process.pid, args.jobs, args.cancel_every, str(still))
            alive = process.poll() is None
        finally:
            process.terminate()
            process.wait(30)
    for row in rows:
        print(f"{row['job']:>3}  {row['kind']:<16} {row['status']:<10} {row['seconds']:6.2f} s  {row['rss_mb']:7.1f} MB")
    warm = float(np.mean([r["rss_mb"] for r in rows[10:20]]))
    end = float(np.mean([r["rss_mb"] for r in rows[-5:]]))
    drift = (end - warm) / warm
    expected = ["cancelled" if "cancelled" in r["kind"] else "done" for r in rows]
    unexpected = [r for r, want in zip(rows, expected) if r["status"] != want]
    summary = {"jobs": len(rows), "cancelled": sum(r["status"] == "cancelled" for r in rows),
               "done": sum(r["status"] == "done" for r in rows), "unexpected": unexpected,
               "server_alive": alive, "rss_warm_mb": round(warm, 1), "rss_end_mb": round(end, 1),
               "drift": round(drift, 4), "max_rss_mb": max(r["rss_mb"] for r in rows)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0 if alive and not unexpected and drift < args.max_drift else 1


if __name__ == "__main__":
    sys.exit(main())
