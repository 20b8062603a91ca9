"""A long storyboard take in flat memory, and a cancelled take resumed to the same frames.

    python -m benchmarks.storyboard_memory [--model embedded] [--windows 60] [--cancel-at 30] [--size 64] [--steps 2]

Renders one shot of `--windows` continuous windows, reading this process's resident memory after every
window: the peak (ru_maxrss) and the current (VmRSS). Then renders the same plan again, cancelled after window
`--cancel-at` and resumed, and compares its frames and its MP4 with the uncancelled take's. Prints the peaks
after window 10 and after the last, their ratio, and whether the resumed take is identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rss_mb() -> tuple[float, float]:
    """(peak, current) resident memory of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/status") as status:
        current = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    return peak, current


def run(argv: list[str] | None = None) -> dict:
    from pipelines import VideoPipeline
    from pipelines.sampling import GenerationCancelled
    from pipelines.storyboard import Settings, Storyboard, layout, read_take, render

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--windows", type=int, default=60)
    p.add_argument("--cancel-at", type=int, default=30)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = VideoPipeline.from_pretrained(args.model, device="cpu")
    probe = Storyboard.from_dict({"seed": 0, "shots": [{"prompt": "x", "seconds": 1}]})
    s = Settings.of(probe, pipe)
    seconds = (s.window + (args.windows - 1) * (s.window - s.context)) / s.fps
    plan = Storyboard.from_dict({"seed": 11, "width": args.size, "height": args.size, "steps": args.steps,
                                 "shots": [{"prompt": "a red ball rolls across green grass", "seconds": seconds}]})
    assert len(layout(plan, Settings.of(plan, pipe))[0].windows) == args.windows
    memory: list[dict] = []
    started = time.perf_counter()

    def measure(record: dict, total: int) -> None:
        peak, current = rss_mb()
        memory.append({"window": record["index"] + 1, "peak_mb": round(peak, 1), "rss_mb": round(current, 1)})

    with tempfile.TemporaryDirectory() as folder:
        whole = Path(folder) / "whole.mp4"
        render(pipe, plan, whole, on_window=measure)
        render_s = time.perf_counter() - started

        def cancel(record: dict, total: int) -> None:
            if record["index"] + 1 == args.cancel_at:
                raise GenerationCancelled()

        cut = Path(folder) / "cut.mp4"
        try:
            render(pipe, plan, cut, on_window=cancel)
            cancelled = False
        except GenerationCancelled:
            cancelled = True
        render(pipe, plan, cut)
        same_frames = bool(np.array_equal(read_take(whole), read_take(cut)))
        same_bytes = hashlib.sha256(whole.read_bytes()).digest() == hashlib.sha256(cut.read_bytes()).digest()
        frames = len(read_take(whole))
    at = {m["window"]: m for m in memory}
    tenth, last = at[min(10, args.windows)], at[args.windows]
    result = {"model": pipe.model_id, "windows": args.windows, "frames": frames, "size": args.size,
              "steps": args.steps, "render_s": round(render_s, 1), "peak_mb_after_10": tenth["peak_mb"],
              "peak_mb_after_last": last["peak_mb"], "peak_ratio": round(last["peak_mb"] / tenth["peak_mb"], 4),
              "rss_mb_after_10": tenth["rss_mb"], "rss_mb_after_last": last["rss_mb"],
              "cancelled_at": args.cancel_at if cancelled else None, "resumed_same_frames": same_frames,
              "resumed_same_mp4_bytes": same_bytes, "memory": memory}
    print(f"{args.windows} windows ({frames} frames, {args.size}x{args.size}, {args.steps} steps) in "
          f"{render_s:.0f} s; peak RSS after window 10: {tenth['peak_mb']:.0f} MiB, after window {args.windows}: "
          f"{last['peak_mb']:.0f} MiB (ratio {result['peak_ratio']:.3f}); current RSS {tenth['rss_mb']:.0f} -> "
          f"{last['rss_mb']:.0f} MiB")
    print(f"cancelled after window {args.cancel_at} and resumed: frames identical: {same_frames}, MP4 bytes "
          f"identical: {same_bytes}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if run()["resumed_same_frames"] else 1)
