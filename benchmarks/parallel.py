"""One clip on several processes (pipelines/parallel.py) against one process: the denoising time of each
parallel layout over the single-process one, and how far its frames are from the single-process frames.

    python -m benchmarks.parallel --model wan2.1-t2v-1.3b --device cuda --layouts ulysses=2 ring=2 ulysses=2,ring=2 cfg
    python -m benchmarks.parallel --model embedded --size 128x128 --frames 17     # CPU, gloo

Each layout runs `torchrun --standalone --nproc-per-node N launch.py generate t2v ... --parallel LAYOUT` with the
same seed as the single-process run; the denoising seconds are read from each output's sidecar (the `denoise`
stage, so loading and decoding, repeated on every rank, are left out). A layout the device cannot run (ring
on CPU: diffusers' CPU attention returns no log-sum-exp) prints the refusal instead of figures. On CPU the
ranks share the machine's cores, so the ratio says little there; the figures that matter are from GPUs
(one rank per GPU, NCCL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def ranks_of(layout: str) -> int:
    from pipelines.parallel import parse

    return parse(layout).ranks


def generate(out: Path, args: argparse.Namespace, layout: str | None) -> subprocess.CompletedProcess:
    width, height = args.size.split("x")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(ranks_of(layout))] if layout else [sys.executable]
    command += ["launch.py", "generate", "t2v", "--model", args.model, "--prompt", args.prompt, "--seed", "1",
                "--width", width, "--height", height, "--frames", str(args.frames), "--steps", str(args.steps),
                "--memory", "full", "--quiet", "--out", str(out / "clip.mp4"), "--frames-out", str(out / "frames")]
    if args.device:
        command += ["--device", args.device]
    if layout:
        command += ["--parallel", layout]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]).astype(np.float64) / 255


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--device", help="cuda or cpu (default: as launch.py picks)")
    p.add_argument("--layouts", nargs="+", default=["ulysses=2", "cfg"], help="--parallel layouts to run")
    p.add_argument("--size", default="128x128", help="WIDTHxHEIGHT")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompt", default="a red ball bounces on a green background")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    layouts = args.layouts
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        single = Path(folder) / "single"
        done = generate(single, args, None)
        if done.returncode != 0:
            raise SystemExit(f"the single-process run failed:\n{done.stderr[-2000:]}")
        base = json.loads((single / "clip.mp4.json").read_text())["timings"]["denoise"]
        reference = frames(single / "frames")
        print(f"{args.model}, {args.size} x {args.frames} frames, {args.steps} steps; one process: denoising {base:.2f} s")
        print("| layout | ranks | denoising s | / one process | frames' mean abs error |")
        print("|---|---|---|---|---|")
        for layout in layouts:
            out = Path(folder) / layout.replace("=", "").replace(",", "-")
            done = generate(out, args, layout)
            if done.returncode != 0:
                said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
                reason = said[0].removeprefix("error: ") if said else "failed (its log: rerun the command)"
                rows[layout] = {"refused": reason}
                print(f"| {layout} | {ranks_of(layout)} | - | - | refused: {reason} |")
                continue
            seconds = json.loads((out / "clip.mp4.json").read_text())["timings"]["denoise"]
            error = float(np.abs(frames(out / "frames") - reference).mean())
            rows[layout] = {"ranks": ranks_of(layout), "denoise_s": seconds, "ratio": round(seconds / base, 3),
                            "mean_abs_error": error}
            print(f"| {layout} | {ranks_of(layout)} | {seconds:.2f} | {seconds / base:.2f} | {error:.2e} |")
    result = {"model": args.model, "size": args.size, "frames": args.frames, "steps": args.steps,
              "single_denoise_s": base, "layouts": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
