"""The planner's accuracy: predicted against measured time and peak device memory of whole generations.

Six windows around the model's default (the default, one frame, twice the side, four times the length, both,
and the largest the model takes: four times the side at the default length for the embedded model, its
16x token limit), each planned and then generated in a fresh process, so that one run's peak does not hide
another's. A round calibrates first (in its own fresh process, into the round's own cache) and then runs the
windows; rounds alternate the order of the windows. Measured: the whole `generate` call's wall time, and its
peak: the process's resident set (VmHWM, reset just before it) on a CPU, `torch.cuda.max_memory_allocated`
on CUDA, both read as the planner reads them (`pipelines.planner.Meter`).

Printed: a table per window (predicted and measured seconds and GB, the median of the rounds, and the ratios)
and the worst relative errors; the targets are time within 25 % and peak within 20 %. On a machine shared
with other work the speed drifts between a calibration and a run by tens of %: a round's prediction and
measurement can differ by that alone, hence the rounds and the medians.

    python -m benchmarks.planner                        # embedded model, this machine's device
    python -m benchmarks.planner --steps 10 --rounds 2 --memory full,low --device cuda
    python -m benchmarks.planner --memory full,low,minimal --windows 512x512x17 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a red ball bounces on a floor"


def windows(pipe) -> list[tuple[int, int, int]]:
    """Six (width, height, frames) around the model's default, the last the largest its token limit allows
    at the default length and aspect."""
    d, grid, t = pipe.defaults, pipe.grid, pipe.temporal
    longer = 1 + 4 * (d.num_frames - 1) if d.num_frames > 1 else 1 + 4 * t
    sizes = [(d.width, d.height, d.num_frames), (d.width, d.height, 1), (2 * d.width, 2 * d.height, d.num_frames),
             (d.width, d.height, longer), (2 * d.width, 2 * d.height, longer)]
    k = 1
    while pipe.latent_tokens((k + 1) * d.width, (k + 1) * d.height, d.num_frames) <= pipe.max_latent_tokens:
        k += 1
    largest = (k * d.width, k * d.height, d.num_frames)
    fine = [s for s in sizes if pipe.latent_tokens(*s) <= pipe.max_latent_tokens and s[0] % grid == 0]
    return fine[:5] + [largest]


def child(args: argparse.Namespace) -> dict:
    """In a fresh process: load, calibrate (--calibrate) or plan and generate one window."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pipelines import VideoPipeline, planner

    pipe = VideoPipeline.from_pretrained(args.model, device=args.device, memory=args.memory)
    if args.calibrate:
        started = time.perf_counter()
        calibration = planner.Calibration(pipe, args.cache)
        for section in ("text", "step", "decode"):
            calibration.section(section)
        return {"seconds": time.perf_counter() - started, "windows": windows(pipe), "key": calibration.key}
    width, height, frames = args.window
    request = pipe.request("image" if frames == 1 else "t2v", prompt=PROMPT, width=width, height=height,
                           **({} if frames == 1 else {"num_frames": frames}), steps=args.steps, seed=0)
    forwards = []  # denoiser calls while planning: none when the calibration comes from the cache
    hook = pipe.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    plan = planner.plan(pipe, request, args.memory, cache=args.cache)
    hook.remove()
    meter = planner.Meter(pipe.device)
    base = meter.start()
    started = meter.clock()
    result = pipe.generate(request)
    seconds = meter.clock() - started
    peak = meter.peak()
    meter.stop()
    return {"window": [width, height, frames], "tokens": plan.tokens, "memory": args.memory,
            "predicted_seconds": plan.seconds, "seconds": seconds, "predicted_peak": plan.peak, "peak": peak,
            "base": base, "plan": plan.describe(), "planning_forwards": len(forwards),
            "stages": {"predicted": plan.time, "measured": result.timings}}


def run_child(args: argparse.Namespace, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "benchmarks.planner", "--child", "--model", args.model, "--steps",
               str(args.steps), "--threads", str(args.threads)] + (["--device", args.device] if args.device else []) \
        + extra
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--memory", default="full", help="memory modes to plan and run, comma-separated (full,low,minimal)")
    p.add_argument("--windows", help="WIDTHxHEIGHTxFRAMES,... instead of the six")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--window", type=int, nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    rows: dict[tuple, list[dict]] = {}
    calibrations = []
    modes = args.memory.split(",")
    with tempfile.TemporaryDirectory(prefix="planner-bench-") as scratch:
        for round_ in range(args.rounds):
            cache = str(Path(scratch) / f"round{round_}")
            calibrated = run_child(args, ["--calibrate", "--cache", cache, "--memory", "full"])
            calibrations.append(calibrated["seconds"])
            chosen = [tuple(map(int, w.split("x"))) for w in args.windows.split(",")] if args.windows else \
                [tuple(w) for w in calibrated["windows"]]
            order = [(w, m) for w in chosen for m in modes]
            for window, mode in order if round_ % 2 == 0 else order[::-1]:
                row = run_child(args, ["--cache", cache, "--memory", mode, "--window", *map(str, window)])
                assert row["planning_forwards"] == 0, "a window's plan recalibrated: the cache was not used"
                rows.setdefault((window, mode), []).append(row)
                print(f"round {round_ + 1}: {window[0]}x{window[1]}x{window[2]} {mode}: predicted "
                      f"{row['predicted_seconds']:.1f} s / {row['predicted_peak'] / 2**30:.2f} GB, measured "
                      f"{row['seconds']:.1f} s / {row['peak'] / 2**30:.2f} GB; stages {row['stages']}", flush=True)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    memory_name = "max_memory_allocated" if device.startswith("cuda") else "peak RSS"
    print(f"\n{args.model} on {device} ({args.threads or torch.get_num_threads()} threads), {args.steps} steps, "
          f"guidance on; median of {args.rounds} rounds; calibration took "
          f"{', '.join(f'{s:.1f}' for s in calibrations)} s")
    print(f"| window | tokens | memory | predicted s | measured s | ratio | predicted {memory_name} GB | "
          f"measured GB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst_time, worst_peak, table = (0.0, ""), (0.0, ""), []
    for (window, mode), runs in rows.items():
        predicted_s = statistics.median(r["predicted_seconds"] for r in runs)
        measured_s = statistics.median(r["seconds"] for r in runs)
        predicted_m = statistics.median(r["predicted_peak"] for r in runs)
        measured_m = statistics.median(r["peak"] for r in runs)
        name = f"{window[0]}x{window[1]}x{window[2]}"
        time_error = abs(predicted_s / measured_s - 1)
        peak_error = abs(predicted_m / measured_m - 1)
        worst_time = max(worst_time, (time_error, name + " " + mode))
        worst_peak = max(worst_peak, (peak_error, name + " " + mode))
        print(f"| {name} | {runs[0]['tokens']:,} | {mode} | {predicted_s:.1f} | {measured_s:.1f} "
              f"(min {min(r['seconds'] for r in runs):.1f}) | {predicted_s / measured_s:.2f} | "
              f"{predicted_m / 2**30:.3f} | {measured_m / 2**30:.3f} | {predicted_m / measured_m:.2f} |")
        table.append({"window": window, "memory": mode, "runs": runs})
    print(f"\nworst time error {worst_time[0]:.0%} ({worst_time[1]}; target 25 %), worst peak error "
          f"{worst_peak[0]:.0%} ({worst_peak[1]}; target 20 %)")
    for round_ in range(args.rounds):  # each round against its own calibration: the drift between rounds shows
        ran = [runs[round_] for runs in rows.values() if len(runs) > round_]
        time_errors = [abs(r["predicted_seconds"] / r["seconds"] - 1) for r in ran]
        peak_errors = [abs(r["predicted_peak"] / r["peak"] - 1) for r in ran]
        print(f"round {round_ + 1} alone (calibrated in {calibrations[round_]:.1f} s): worst time error "
              f"{max(time_errors):.0%}, worst peak error {max(peak_errors):.0%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"calibration_seconds": calibrations, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
