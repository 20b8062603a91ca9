"""`python launch.py generate MODE ... --grid [--seeds N] [--draft]`: a grid of variations of one request on
one load of the model (pipelines/variations.py): each cell an ordinary output with its sidecar, then a
contact sheet and the grid's record beside them. Ctrl-C keeps the finished cells and sheets them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from studio.cli import DEFAULT_OUTPUTS, UsageError, _generate_and_write


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", action="store_true",
                   help="make a grid of variations: each {a|b} group of the prompt gives its choices, times --seeds")
    p.add_argument("--seeds", type=int, default=1, help="--grid: seeds per prompt variant (seed, seed+1, ...)")
    p.add_argument("--draft", action="store_true",
                   help="--grid: draft each cell cheaply (fewer steps, the step cache on); render the chosen one "
                        "with `generate reproduce --request CELL.json --final`")
    p.add_argument("--final", action="store_true",
                   help="reproduce: render a draft cell in full (--steps, else the model's; the step cache off)")


def check(args: argparse.Namespace) -> None:
    """Refuse grid options out of place, before anything loads."""
    if (args.seeds != 1 or args.draft) and not args.grid:
        raise UsageError("--seeds and --draft make a grid: add --grid")
    if args.final and args.mode != "reproduce":
        raise UsageError("--final renders a drafted output in full: use it with `generate reproduce --request`")
    if args.grid and args.mode in ("reproduce", "batch", "storyboard"):
        raise UsageError(f"--grid makes variations of one request: not with {args.mode}")
    if args.grid and args.frames_out:
        raise UsageError("--frames-out is for one output: not with --grid")


def paths(out: Path | None, count: int, seed: int) -> tuple[list[Path | None], Path, Path]:
    """(each cell's output, the contact sheet, the grid's record): beside --out (OUT.1.mp4, ...,
    OUT.sheet.png, OUT.grid.json), or fresh names in outputs/ for the cells and a fresh grid name there."""
    if out is not None:
        cells = [out.with_name(f"{out.stem}.{k + 1}{out.suffix}") for k in range(count)]
        return cells, out.with_name(f"{out.stem}.sheet.png"), out.with_name(f"{out.stem}.grid.json")
    from studio.outputs import output_name

    stem = output_name("grid", seed)  # milliseconds in it; a clash is refused before anything runs
    return [None] * count, DEFAULT_OUTPUTS / f"{stem}.sheet.png", DEFAULT_OUTPUTS / f"{stem}.grid.json"


def run_grid(pipe: Any, built: Any, out: Path | None, args: argparse.Namespace) -> Path:
    """Generate every cell of the grid `built` and the options describe; returns the contact sheet's path."""
    from pipelines import variations
    from pipelines.request import GenerationRequest
    from pipelines.video_io import read_video, write_png

    if not isinstance(built, GenerationRequest):
        raise UsageError(f"--grid needs the clip to {built.mode} (give it with --video)")
    grid = variations.cells(built.prompt, built.seed, args.seeds)
    cell_paths, sheet, record = paths(out, len(grid), built.seed)
    for path in [*(p for p in cell_paths if p is not None), sheet, record]:
        if path.exists():
            raise UsageError(f"{path} exists: choose another --out")
    if args.draft and args.step_cache is None:
        pipe.accelerate(step_cache=variations.DRAFT_STEP_CACHE)
    steps = variations.draft_steps(built.steps) if args.draft else built.steps
    print(f"grid: {len(grid)} cells ({', '.join(c.label for c in grid)}), {steps} steps each"
          f"{' (draft, step cache on)' if args.draft else ''}")
    done, clips = [], []
    try:
        for cell, path in zip(grid, cell_paths):
            request = built.replace(prompt=cell.prompt, seed=cell.seed, steps=steps)
            written, sidecar = _generate_and_write(pipe, request, path, None, args.quiet, overwrite=False)
            print(f"cell {cell.index + 1}/{len(grid)} ({cell.label}): {written}")
            clips.append(_still(written) if written.suffix == ".png" else read_video(written, request.fps))
            done.append({"cell": cell.index + 1, "label": cell.label, "output": written.name, "prompt": cell.prompt,
                         "seed": cell.seed, "steps": steps})
    finally:  # a cancel keeps the cells made so far, and sheets them
        if clips:
            write_png(sheet, variations.contact_sheet(clips, [d["label"] for d in done]))
            record.write_text(json.dumps(variations.summary(done, args.draft, len(grid)), indent=2))
            print(f"wrote the contact sheet {sheet} and the grid's record {record.name}")
            if args.draft:
                print(f"render a cell in full: python launch.py generate reproduce --request CELL.json --final "
                      f"--steps {built.steps}")
    return sheet


def _still(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))[None]  # (1, H, W, 3)
