"""Variations in the studio: each tab's "Generate variations" renders a grid (the prompt's `{a|b}` choices times
seeds) as one engine job, each cell an ordinary output in the History (studio/grid.py); the contact sheet grows
as cells land, a cell is picked to see it (and send it on), and "Render final" renders the picked cell at the
grid's full steps with the step cache off, as an ordinary generation."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from html import escape
from typing import Any

import gradio as gr

from pipelines import variations
from studio import grid as grid_files
from studio.widgets import number

DRAFT_LABEL = "Draft (fewer steps, the step cache on)"


def _status(text: str, kind: str = "") -> str:
    return f"<div class='studio-status {kind}'>{escape(text)}</div>"


class VariationsPanel:
    """The handlers, on a StudioApp (its engine, history, request builder and previews folder)."""

    def __init__(self, app: Any):
        self.app = app
        self.engine = app.engine
        self.history = app.history

    def _work(self, grid: grid_files.Grid):
        """The engine job's work: every cell in turn, each written as it finishes (a cancel keeps them)."""
        previews = self.app.previews

        def work(pipe: Any, job: Any, on_step: Any) -> tuple[Any, str]:
            started = time.perf_counter()
            job.windows = len(grid.cells)
            with pipe.step_cache_as(grid.step_cache(pipe)):
                for cell in grid.cells:
                    job.request = grid.request(cell)
                    result = pipe.generate(job.request, callback=on_step)
                    out, _ = self.history.write(result, gif=True, extra=grid.lineage(cell))
                    grid.add(cell, out, result.frames)
                    job.window = len(grid.done)
                    shown = previews / f"job{job.id}-sheet{job.window}.png"
                    shutil.copyfile(grid.sheet, shown)  # the sheet is rewritten in place; the page gets a copy
                    job.latest = str(shown)
                    job._notify()
            return out, f"Done in {time.perf_counter() - started:.1f} s: {len(grid.cells)} cells."

        return work

    def run(self, tab: str, values: dict[str, Any], seeds: Any, draft: Any,
            request: gr.Request | None) -> Iterator[tuple]:
        """Yield (status, contact sheet, the cell picker) as the grid renders."""
        from studio.engine import QueueFull


        seeds = number(seeds, "Seeds per variant", f"a whole number from 1 to {variations.MAX_SEEDS}", whole=True)
        try:
            with self.app._building:
                base = self.app.request(tab, values)
                cells = variations.cells(base.prompt, base.seed, seeds)
                self.engine.pipe.check_request(base)
        except gr.Error:
            raise
        except ValueError as error:
            raise gr.Error(str(error)) from None
        count = len(cells)
        grid = grid_files.Grid(base, cells, bool(draft), *grid_files.claim(self.history.folder, base.seed))
        record = grid.record
        session = getattr(request, "session_hash", "") or ""
        try:
            job = self.engine.submit(grid.request(grid.cells[0]), session, work=self._work(grid))
        except QueueFull as full:
            record.unlink(missing_ok=True)
            raise gr.Error(str(full)) from None
        def describe(state: Any) -> str:
            cell = grid.cells[min(state.window, count - 1)]
            return f"Cell {cell.index + 1} of {count} ({cell.label}): step {state.step} of {state.total}."

        try:
            for text, latest in self.engine.follow_parts(job, describe):
                yield _status(text), gr.skip() if latest is None else latest, gr.skip()
            picker = gr.update(choices=[(f"{d['cell']}. {d['label']}", d["output"]) for d in grid.done],
                               value=grid.done[0]["output"] if grid.done else None)
            if job.status == "failed":
                kept = f" The {len(grid.done)} finished cells are kept." if grid.done else ""
                yield _status(job.message + kept, "studio-failed"), job.latest, picker
                return
            if job.status == "cancelled":
                yield (_status(f"Cancelled after {len(grid.done)} of {count} cells: the finished cells are kept.",
                               "studio-cancelled"), job.latest, picker)
                return
            after = " Pick one, then Render final renders it in full." if grid.draft else " Pick one to see it."
            yield _status(job.message + after), job.latest, picker
        finally:
            if not job.finished:  # the browser went away
                self.engine.cancel(job_id=job.id)
            if job.finished and not grid.done:
                record.unlink(missing_ok=True)
            for copy in self.app.previews.glob(f"job{job.id}-sheet*.png"):  # Gradio has its own copies by now
                copy.unlink(missing_ok=True)

    def show(self, name: str | None) -> tuple[Any, Any, Any]:
        """(the result video, the last output, the last seed) for a picked cell, so that it plays and the
        send-to buttons take it."""
        if not name:
            return gr.skip(), gr.skip(), gr.skip()
        entry = self.app.entry(name)
        return (str(entry.media) if entry.media.suffix == ".mp4" else None), str(entry.media), \
            entry.sidecar["request"]["seed"]

    def final(self, name: str | None, request: gr.Request | None) -> Iterator[tuple]:
        """The picked cell rendered in full: its prompt and seed at its grid's steps, the step cache off; an
        ordinary generation, streamed as the Generate buttons' are."""
        from pipelines.request import GenerationRequest

        if not name:
            raise gr.Error("Pick a cell of a grid first.")
        entry = self.app.entry(name)
        if "grid" not in entry.sidecar:
            raise gr.Error(f"{entry.media.name} is not a cell of a grid.")
        built = GenerationRequest.from_dict(entry.sidecar["request"])
        built = built.replace(steps=grid_files.final_steps(entry.sidecar) or self.app.info.steps)

        def work(pipe: Any, job: Any, on_step: Any) -> tuple[Any, str]:
            with pipe.step_cache_as(None):
                return self.engine.generation(job, on_step, extra={"final_of": entry.media.name})

        yield from self.app.stream(lambda: built, request, work=work)


def build_panel(panel: VariationsPanel) -> dict[str, Any]:
    """The shared panel (in the result column): the sheet, the cell picker and Render final."""
    with gr.Accordion("Variations", open=True, elem_id="variations"):
        sheet = gr.Image(label="Contact sheet (first, middle and last frame of each cell)", interactive=False,
                         height=240, elem_id="grid-sheet")
        with gr.Row():
            cell = gr.Dropdown([], label="Cell", elem_id="grid-cell", scale=3)
            final = gr.Button("Render final", elem_id="grid-final", scale=1)
    return {"sheet": sheet, "cell": cell, "final": final}


def build_controls(tab: str) -> dict[str, Any]:
    """A tab's grid controls, under its Generate button."""
    with gr.Accordion("Variations", open=False, elem_id=f"{tab}-variations"):
        gr.Markdown("A grid of this tab's settings: each `{a|b}` group in the prompt gives its choices, each with "
                    "this many seeds (the seed, the seed + 1, ...).")
        with gr.Row():
            seeds = gr.Number(2, label="Seeds per variant", minimum=1, maximum=variations.MAX_SEEDS,
                              elem_id=f"{tab}-grid-seeds")
            draft = gr.Checkbox(True, label=DRAFT_LABEL, elem_id=f"{tab}-draft")
            button = gr.Button("Generate variations", elem_id=f"{tab}-grid")
    return {"seeds": seeds, "draft": draft, "button": button}
