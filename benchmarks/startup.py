"""Startup: seconds from `python launch.py` to a usable page, to the first denoising step of the first
generation (its first preview), and to the first finished clip; then the same for a second clip, which shows
that weights are loaded once and not per request.

    python -m benchmarks.startup                    # the embedded model, or its architecture
    python -m benchmarks.startup --model DIR
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.cpu_vs_diffusers import default_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, process: subprocess.Popen, limit: float) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the studio exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"no page at {url} after {limit:.0f} s")


def generate(client, defaults: list) -> tuple[float, float]:
    """(seconds to the first step's progress, seconds to the finished clip) of one text-to-video run with
    the tab's default settings: (prompt, negative, seed, steps, guidance, sampler, size, seconds, fps, image)."""
    values = list(defaults)
    values[0], values[2], values[7] = "a red ball bounces on a floor", 0, 2.0
    begin = time.perf_counter()
    job = client.submit(*values, api_name="/t2v")
    first = None
    while not job.done():
        if first is None and any("step" in str(o[0]) for o in job.outputs()):
            first = time.perf_counter() - begin
        time.sleep(0.02)
    result = job.result()[4]
    if result.get("status") != "done":
        raise SystemExit(f"generation did not finish: {result}")
    return (first or time.perf_counter() - begin), time.perf_counter() - begin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers folder (default: the embedded model or its architecture)")
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args(argv)
    from gradio_client import Client

    with tempfile.TemporaryDirectory() as tmp:
        model, label = (args.model, args.model) if args.model else default_model(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        begin = time.perf_counter()
        process = subprocess.Popen([sys.executable, "launch.py", "--model", model, "--port", str(port),
                                    "--outputs", str(Path(tmp) / "outputs"), "--device", "cpu"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_page(url, process, 300)
            page = time.perf_counter() - begin
            client = Client(url, verbose=False)
            info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/t2v"]["parameters"]
            defaults = [p["parameter_default"] for p in info]
            first_step, first_clip = generate(client, defaults)
            second_step, second_clip = generate(client, defaults)
        finally:
            process.terminate()
            process.wait(30)
    result = {"model": label, "page_s": page, "first_step_after_page_s": first_step,
              "first_clip_after_page_s": first_clip, "second_step_s": second_step, "second_clip_s": second_clip}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"model: {label}; a 2 s clip at the model's default size, steps and guidance")
    print("| measure | seconds |")
    print("|---|---|")
    print(f"| `python launch.py` to a usable page | {page:.1f} |")
    print(f"| then to the first denoising step | {first_step:.1f} |")
    print(f"| then to the first finished clip | {first_clip:.1f} |")
    print(f"| a second clip: first step / finished | {second_step:.1f} / {second_clip:.1f} |")


if __name__ == "__main__":
    main()
