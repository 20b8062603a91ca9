"""A variations grid as files, for the command line (`--grid`) and the studio alike: each cell an ordinary output
whose sidecar names its grid (its lineage to the job), and beside them the contact sheet and the grid's record,
rewritten as each cell lands so that a cancel keeps what is finished. What a grid is (cells, drafts, the sheet's
picture) is pipelines/variations.py's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import variations
from studio.outputs import claim_fresh, output_name


def claim(folder: Path, seed: int) -> tuple[Path, Path]:
    """(the contact sheet, the grid's record) under a fresh name in `folder`, claimed by creating the record."""
    record = claim_fresh(folder, output_name("grid", seed), ".grid.json", beside=(".sheet.png",))
    return record.with_name(record.name.removesuffix(".grid.json") + ".sheet.png"), record


@dataclass
class Grid:
    """One grid job: `base` is the request as the user set it (its steps are the final's), each cell the same
    with the cell's prompt and seed, at a draft's steps when `draft`."""

    base: Any  # GenerationRequest
    cells: list[variations.Cell]
    draft: bool
    sheet: Path
    record: Path
    done: list[dict[str, Any]] = field(default_factory=list)
    clips: list[np.ndarray] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return variations.draft_steps(self.base.steps) if self.draft else self.base.steps

    def step_cache(self, pipe: Any) -> float | None:
        """The step cache its cells run with: a draft's, unless one is on already (the user's own) or the model
        has too few blocks for one (a draft then has only fewer steps)."""
        current = pipe.step_cache
        return (current or variations.DRAFT_STEP_CACHE) if self.draft and pipe.can_step_cache else current

    def request(self, cell: variations.Cell) -> Any:
        # an enhanced prompt's original is kept only while the prompt is the one the enhancer wrote
        enhanced_from = self.base.enhanced_from if cell.prompt == self.base.prompt else None
        return self.base.replace(prompt=cell.prompt, seed=cell.seed, steps=self.steps, enhanced_from=enhanced_from)

    def lineage(self, cell: variations.Cell) -> dict[str, Any]:
        """What a cell's sidecar records of its grid (and "render final" reads back)."""
        return {"grid": {"record": self.record.name, "cell": cell.index + 1, "of": len(self.cells),
                         "label": cell.label, "draft": self.draft, "final_steps": self.base.steps}}

    def add(self, cell: variations.Cell, output: Path, frames: np.ndarray) -> None:
        """A finished cell: the sheet and the record now show it."""
        from pipelines.video_io import atomic_path, write_png

        self.done.append({"cell": cell.index + 1, "label": cell.label, "output": output.name, "prompt": cell.prompt,
                          "seed": cell.seed, "steps": self.steps})
        self.clips.append(frames)
        write_png(self.sheet, variations.contact_sheet(self.clips, [d["label"] for d in self.done]))
        with atomic_path(self.record, replace=True) as tmp:
            Path(tmp).write_text(json.dumps(variations.summary(self.done, self.draft, len(self.cells)), indent=2))

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.cells)


def final_steps(sidecar: Any) -> int | None:
    """The steps a drafted cell's final renders at, as its sidecar records them (None: not a grid cell, or a
    record that is not a whole number of steps)."""
    grid = sidecar.get("grid") if isinstance(sidecar, dict) else None
    steps = grid.get("final_steps") if isinstance(grid, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= 1000 else None
