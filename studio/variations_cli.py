"""`python launch.py generate MODE ... --grid [--seeds N] [--draft]`: a grid of variations of one request on
one load of the model (pipelines/variations.py): each cell an ordinary output with its sidecar, then a
contact sheet and the grid's record beside them. Ctrl-C keeps the finished cells and sheets them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines import variations
from studio import grid as grid_files
from studio.cli import DEFAULT_OUTPUTS, UsageError, _generate_and_write


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", action="store_true",
                   help="make a grid of variations: each {a|b} group of the prompt gives its choices, times --seeds")
    p.add_argument("--seeds", type=int, default=1, help="--grid: seeds per prompt variant (seed, seed+1, ...)")
    p.add_argument("--draft", action="store_true",
                   help="--grid: draft each cell cheaply (fewer steps, the step cache on); render the chosen one "
                        "with `generate reproduce --request CELL.json --final`")
    p.add_argument("--final", action="store_true",
                   help="reproduce: render a draft cell in full (--steps, else its grid's, else the model's; the "
                        "step cache off)")


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
    if out is None:
        DEFAULT_OUTPUTS.mkdir(parents=True, exist_ok=True)
        return [None] * count, *grid_files.claim(DEFAULT_OUTPUTS, seed)
    cells = [out.with_name(f"{out.stem}.{k + 1}{out.suffix}") for k in range(count)]
    sheet, record = out.with_name(f"{out.stem}.sheet.png"), out.with_name(f"{out.stem}.grid.json")
    for path in [*cells, sheet]:
        if path.exists():
            raise UsageError(f"{path} exists: choose another --out")
    try:
        record.open("x").close()
    except FileExistsError:
        raise UsageError(f"{record} exists: choose another --out") from None
    return cells, sheet, record


def run_grid(pipe: Any, built: Any, out: Path | None, args: argparse.Namespace) -> Path:
    """Generate every cell of the grid `built` and the options describe; returns the contact sheet's path."""
    from pipelines.request import GenerationRequest
    from pipelines.video_io import read_video

    if not isinstance(built, GenerationRequest):
        raise UsageError(f"--grid needs the clip to {built.mode} (give it with --video)")
    cells = variations.cells(built.prompt, built.seed, args.seeds)  # a bad grid is refused before naming files
    count = len(cells)
    cell_paths, sheet, record = paths(out, count, built.seed)
    grid = grid_files.Grid(built, cells, args.draft, sheet, record)
    cache = grid.step_cache(pipe)
    how = f" (draft{', step cache on' if cache else ''})" if args.draft else ""
    print(f"grid: {count} cells ({', '.join(c.label for c in grid.cells)}), {grid.steps} steps each{how}")
    try:
        with pipe.step_cache_as(cache):
            for cell, path in zip(grid.cells, cell_paths, strict=True):
                written, _ = _generate_and_write(pipe, grid.request(cell), path, None, args.quiet, overwrite=False,
                                                 extra=grid.lineage(cell))
                print(f"cell {cell.index + 1}/{count} ({cell.label}): {written}")
                clip = _still(written) if written.suffix == ".png" else read_video(written, built.fps)
                grid.add(cell, written, clip)
    finally:  # a cancel keeps the cells made so far, sheeted
        if not grid.done:
            record.unlink(missing_ok=True)
    print(f"wrote the contact sheet {sheet} and the grid's record {record.name}")
    if args.draft:
        print(f"render a cell in full: python launch.py generate reproduce --request CELL.json --final "
              f"(at {built.steps} steps, the grid's own)")
    return sheet


def _still(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))[None]  # (1, H, W, 3)
