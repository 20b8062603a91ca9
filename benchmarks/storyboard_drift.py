"""Drift over a long take, with and without the storyboard's switches (pipelines/storyboard.py).

    python -m benchmarks.storyboard_drift [--model embedded] [--windows 8] [--seeds 5] [--size 64] [--steps 20]

One shot of one unchanging scene, rendered as `--windows` continuous windows, per seed, under each set of
switches (a column):
- plain: each window conditioned on the previous one's re-encoded pixels, no colour anchoring (chained
  extension as a plain tool does it);
- latents: conditioned on the saved latents;
- latents+noise: and the held frames held at strength 1 - 0.1;
- latents+anchor: and each window's colours matched to the first window's;
- all: the three together;
- latents+anchor+best3, all+best3: keeping the smoothest of 3 candidates per continuing window;
- all+ease4: all three, the anchor eased in over 4 frames rather than the whole window (+best3: and
  the best of 3).
Drift is the last window's mean colour against the first window's (the mean over channels of the change of
the channel means, in 8-bit levels), measured on the take's frames; its ratio to plain's is printed per
column, with each join's score (its frame step over the take's median step, pipelines/seams.py): the worst
and the mean over joins. Figures are means over seeds (min and max beside them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COLUMNS = {
    "plain": dict(saved_latents=False, held_noise=0.0, colour_anchor=False),
    "latents": dict(saved_latents=True, held_noise=0.0, colour_anchor=False),
    "latents+noise": dict(saved_latents=True, held_noise=0.1, colour_anchor=False),
    "latents+anchor": dict(saved_latents=True, held_noise=0.0, colour_anchor=True),
    "all": dict(saved_latents=True, held_noise=0.1, colour_anchor=True),
    # the same, keeping the smoothest of 3 candidates per continuing window (3x the work)
    "latents+anchor+best3": dict(saved_latents=True, held_noise=0.0, colour_anchor=True, best_of=3),
    "all+best3": dict(saved_latents=True, held_noise=0.1, colour_anchor=True, best_of=3),
    # all three, the anchor eased in over 4 frames instead of the whole window
    "all+ease4": dict(saved_latents=True, held_noise=0.1, colour_anchor=True, anchor_frames=4),
    "all+ease4+best3": dict(saved_latents=True, held_noise=0.1, colour_anchor=True, anchor_frames=4, best_of=3),
}
PROMPT = "a red ball resting on green grass under a blue sky, still camera"


def take_figures(frames: np.ndarray, records: list[dict]) -> dict[str, float | list[float]]:
    """Drift of the last window against the first, and the score of every join, from a take's frames."""
    from pipelines.seams import join_ratios
    from pipelines.storyboard import colour_stats, drift

    first, last = records[0], records[-1]
    anchor = colour_stats(frames[first["start"]:first["start"] + first["frames"]])
    seams = [r["start"] for r in records if r["joined"]]
    return {"drift": drift(frames[last["start"]:last["start"] + last["frames"]], anchor)["mean"],
            "joins": [round(x, 3) for x in join_ratios(frames, seams, wraps=False)]}


def run(argv: list[str] | None = None) -> dict:
    from pipelines import VideoPipeline
    from pipelines.storyboard import Settings, Storyboard, layout, read_take, render

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="the model's default when omitted")
    p.add_argument("--columns", default=",".join(COLUMNS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for tiny windows on a "
                   "loaded machine)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    columns = args.columns.split(",")
    pipe = VideoPipeline.from_pretrained(args.model, device="cpu")
    d = pipe.defaults
    settings = Settings.of(Storyboard.from_dict({"seed": 0, "shots": [{"prompt": "x", "seconds": 1}]}), pipe)
    frames = d.num_frames + (args.windows - 1) * (settings.window - settings.context)
    seconds = frames / d.fps
    results: dict[str, list[dict]] = {c: [] for c in columns}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            for column in columns:  # interleaved: each seed runs every column before the next seed
                plan = Storyboard.from_dict({"seed": seed, "width": args.size, "height": args.size, "steps": args.steps,
                                             "shots": [{"prompt": PROMPT, "seconds": seconds}], **COLUMNS[column]})
                windows = layout(plan, Settings.of(plan, pipe))[0].windows
                assert len(windows) == args.windows, (len(windows), args.windows)
                out = Path(folder) / f"{column}-{seed}.mp4"
                take = render(pipe, plan, out)
                results[column].append(take_figures(read_take(out), take.records))
            print(f"seed {seed + 1}/{args.seeds} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    base = np.mean([r["drift"] for r in results[columns[0]]])
    table = {}
    print(f"{args.windows} continuous windows of one scene, {args.size}x{args.size}, {args.steps or d.steps} steps, "
          f"{args.seeds} seeds ({pipe.model_id}); drift: the last window's mean colour against the first's "
          "(8-bit levels); joins: step over the median frame step")
    print(f"| column | drift mean (min-max) | drift / {columns[0]} | worst join mean (max) | mean join |")
    print("|---|---|---|---|---|")
    for column in columns:
        drifts = [r["drift"] for r in results[column]]
        worst = [max(r["joins"]) for r in results[column]]
        mean_join = float(np.mean([np.mean(r["joins"]) for r in results[column]]))
        row = {"drift_mean": round(float(np.mean(drifts)), 3), "drift_min": min(drifts), "drift_max": max(drifts),
               "drift_ratio": round(float(np.mean(drifts)) / max(base, 1e-9), 3),
               "worst_join_mean": round(float(np.mean(worst)), 3), "worst_join_max": max(worst),
               "mean_join": round(mean_join, 3), "runs": results[column]}
        table[column] = row
        print(f"| {column} | {row['drift_mean']:.2f} ({row['drift_min']:.2f}-{row['drift_max']:.2f}) | "
              f"{row['drift_ratio']:.2f} | {row['worst_join_mean']:.2f} ({row['worst_join_max']:.2f}) | "
              f"{row['mean_join']:.2f} |")
    result = {"model": pipe.model_id, "windows": args.windows, "seeds": args.seeds, "size": args.size,
              "steps": args.steps or d.steps, "columns": table, "seconds": round(time.perf_counter() - started, 1)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
