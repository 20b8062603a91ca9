"""Variations: one request made into a grid of cells (prompt variants written inline as `{red|blue}`, times
N seeds), drafted cheaply, compared on a contact sheet, and the chosen cell rendered in full.

A draft runs a fraction of the steps with the step cache on (First Block Cache, pipelines/acceleration.py),
as FramePack advises drafting with TeaCache and rendering the final without; its final is the same request
at the model's full steps with the cache off (`python launch.py generate reproduce --final`).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_CELLS = 64
MAX_SEEDS = 16
DRAFT_STEPS = 0.4  # a draft's share of the steps
DRAFT_STEP_CACHE = 0.1  # the step cache's threshold for drafts (pipelines/acceleration.py)
GROUP = re.compile(r"\{([^{}]*\|[^{}]*)\}")  # {a|b|c}: braces holding at least one bar


@dataclass(frozen=True)
class Cell:
    index: int
    prompt: str
    seed: int
    label: str  # what sets it apart: "red, seed 3"


def expand(prompt: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every prompt the `{a|b}` groups make (their product, first group slowest), with the choices made.
    Braces without a bar are left as written."""
    groups = [match.group(1).split("|") for match in GROUP.finditer(prompt)]
    for options in groups:
        if any(not option.strip() for option in options):
            raise ValueError(f"prompt variant {{{'|'.join(options)}}} is not valid: each choice between the bars "
                             "needs some text, as in {red|blue}")
    prompts = []
    for choice in itertools.product(*groups):
        picked = iter(choice)
        prompts.append((GROUP.sub(lambda _: next(picked).strip(), prompt), tuple(c.strip() for c in choice)))
    return prompts


def cells(prompt: str, seed: int, seeds: int) -> list[Cell]:
    """The grid's cells: each prompt variant with `seeds` seeds (seed, seed + 1, ...), variants first."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise ValueError(f"seeds = {seeds} is not valid: 1 to {MAX_SEEDS} per prompt variant")
    variants = expand(prompt)
    if len(variants) * seeds > MAX_CELLS:
        raise ValueError(f"{len(variants)} prompt variants x {seeds} seeds = {len(variants) * seeds} cells is too "
                         f"many: at most {MAX_CELLS}")
    out = []
    for (text, choice), k in itertools.product(variants, range(seeds)):
        label = ", ".join([*choice, f"seed {seed + k}"])
        out.append(Cell(len(out), text, seed + k, label))
    return out


def draft_steps(steps: int) -> int:
    return max(1, math.ceil(steps * DRAFT_STEPS))


def contact_sheet(clips: list[np.ndarray], labels: list[str], columns: int | None = None,
                  thumb: int = 160) -> np.ndarray:
    """(H, W, 3) uint8: a row of thumbnails per cell (its first, middle and last frame) under its label, cells
    in `columns` columns (default: as square a grid as fits)."""
    from PIL import Image, ImageDraw

    columns = columns or math.ceil(math.sqrt(len(clips)))
    rows = math.ceil(len(clips) / columns)
    h, w = clips[0].shape[1:3]
    scale = thumb / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    pad, caption = 6, 16
    cell_w, cell_h = 3 * tw + 4 * pad, th + caption + 2 * pad
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for k, (frames, label) in enumerate(zip(clips, labels)):
        x0, y0 = (k % columns) * cell_w, (k // columns) * cell_h
        picks = [frames[0], frames[len(frames) // 2], frames[-1]]  # (H, W, 3) each
        for j, frame in enumerate(picks):
            image = Image.fromarray(frame).resize((tw, th), Image.Resampling.BILINEAR)
            sheet.paste(image, (x0 + pad + j * (tw + pad), y0 + pad))
        draw.text((x0 + pad, y0 + pad + th + 2), f"{k + 1}. {label}"[:60], fill=(230, 230, 230))
    return np.asarray(sheet)


def summary(cells_done: list[dict[str, Any]], draft: bool, total: int) -> dict[str, Any]:
    """The grid's record (written beside its contact sheet): its cells' outputs, prompts and seeds."""
    return {"format": 1, "draft": draft, "cells": cells_done, "finished": len(cells_done) == total, "of": total}
