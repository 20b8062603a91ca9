"""What a model part was trained in, segment by segment, across warm starts and sessions.

A segment is one training run of one part: {"part": "vae" | "transformer", "steps", "minutes", and the run's
last logged figures}. Checkpoints carry the segments of the models they started from as "history"; export
writes every segment to the model folder's training.json, and the model card reads them from there.
"""

from __future__ import annotations

import json
from pathlib import Path

FIGURES = {"vae": ("psnr", "foreground_psnr", "temporal"), "transformer": ("loss",)}


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def wall_seconds(records: list[dict]) -> float:
    """Sum of wall time over resumed segments of one log (each resume's elapsed_s restarts at 0)."""
    total, previous = 0.0, 0.0
    for record in records:
        if record["elapsed_s"] < previous:
            total += previous
        previous = record["elapsed_s"]
    return total + previous


def run_segment(part: str, steps: int, log: Path) -> dict:
    """This run's segment: its steps, wall time and last figures from its log (None where it has none)."""
    records = _records(log)
    last = records[-1] if records else {}
    segment = {"part": part, "steps": steps, "minutes": round(wall_seconds(records) / 60, 1) if records else None}
    segment.update({k: last.get(k) for k in FIGURES[part]})
    return segment


def checkpoint_history(state: dict, part: str) -> list[dict]:
    """The earlier segments a checkpoint carries (older checkpoints kept only a step count)."""
    if "history" in state:
        return list(state["history"])
    earlier = state.get("earlier_steps", 0)
    return [{"part": part, "steps": earlier}] if earlier else []


def folder_history(folder: Path, part: str) -> list[dict]:
    """The segments a saved model's `part` was trained in, oldest first, from its training.json."""
    info_file = Path(folder) / "training.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    segments = [s for s in info.get("history", []) if s.get("part") == part]
    if not segments and info.get(f"{part}_steps"):
        segments = [{"part": part, "steps": info[f"{part}_steps"]}]
    if segments and info.get(f"{part}_weights"):  # the folder shipped a soup, not its last run's weights
        segments[-1] = {**segments[-1], "shipped_weights": info[f"{part}_weights"]}
    return segments


def total_steps(history: list[dict]) -> int:
    return sum(int(s["steps"]) for s in history)
