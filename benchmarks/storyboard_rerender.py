"""Re-rendering one shot of a storyboard take in place: are the other shots untouched, and how smooth are its joins?

    python -m benchmarks.storyboard_rerender [--model embedded] [--seeds 5] [--size 64] [--steps 20] [--best-of 1] [--held-noise 0] [--anchor-frames N]

Per seed: a 5-shot take of continuing shots (2, 1, 2, 1, 1 s), then shot 3 re-rendered with another prompt and
seed. Prints, per seed, whether every frame outside shot 3 is bit-identical, the scores of shot 3's two joins
(its opening join to shot 2 and its closing join into shot 4: each a step over the take's median frame step,
pipelines/seams.py) before and after, and the worst join of the whole take.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHOTS = [("a red ball on green grass", 2.0), ("a red ball on green grass", 1.0), ("a red ball on blue grass", 2.0),
         ("a red ball on green grass", 1.0), ("a red ball on green grass", 1.0)]


def run(argv: list[str] | None = None) -> dict:
    from pipelines import VideoPipeline
    from pipelines.storyboard import Settings, Shot, Storyboard, layout, read_take, render, rerender_shot

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--best-of", type=int, default=1, help="candidates per continuing window (the plan's best_of)")
    p.add_argument("--held-noise", type=float, default=0.0, help="the plan's held_noise")
    p.add_argument("--anchor-frames", type=int, default=None, help="the plan's anchor_frames")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = VideoPipeline.from_pretrained(args.model, device="cpu")
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            plan = Storyboard.from_dict({"seed": seed, "width": args.size, "height": args.size, "steps": args.steps,
                                         "best_of": args.best_of, "held_noise": args.held_noise,
                                         "anchor_frames": args.anchor_frames,
                                         "shots": [{"prompt": a, "seconds": b} for a, b in SHOTS]})
            shot3 = layout(plan, Settings.of(plan, pipe))[2]
            out = Path(folder) / f"take-{seed}.mp4"
            first = render(pipe, plan, out)
            before = read_take(out)
            edited = plan.replace(shots=plan.shots[:2] + (Shot("a red ball on purple grass", 2.0, seed=1000 + seed),)
                                  + plan.shots[3:])
            again = rerender_shot(pipe, edited, out, 3)
            after = read_take(out)
            inside = slice(shot3.start, shot3.start + shot3.frames)
            others = np.ones(len(before), bool)
            others[inside] = False

            def shot3_joins(take) -> list[float]:
                opening = next(r for r in take.records if r["shot"] == 3)
                closing = next(r for r in take.records if r["shot"] == 4)
                return [opening["join"], closing["join"]]

            rows.append({"seed": seed, "others_identical": bool(np.array_equal(before[others], after[others])),
                         "shot3_changed": not np.array_equal(before[inside], after[inside]),
                         "joins_before": shot3_joins(first), "joins_after": shot3_joins(again),
                         "worst_join_after": max(r["join"] for r in again.records if r["joined"])})
            print(rows[-1])
    worst = [max(r["joins_after"]) for r in rows]
    result = {"model": pipe.model_id, "size": args.size, "best_of": args.best_of, "held_noise": args.held_noise,
              "anchor_frames": args.anchor_frames, "steps": args.steps or pipe.defaults.steps, "rows": rows,
              "all_others_identical": all(r["others_identical"] for r in rows),
              "shot3_worst_join_mean": round(float(np.mean(worst)), 3), "shot3_worst_join_max": max(worst),
              "seconds": round(time.perf_counter() - started, 1)}
    print(f"re-rendered shot 3 of a 5-shot take, {args.seeds} seeds: other shots bit-identical in every run: "
          f"{result['all_others_identical']}; shot 3's worst join: mean {result['shot3_worst_join_mean']:.2f}, "
          f"max {result['shot3_worst_join_max']:.2f} (x the median frame step)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
