"""Writing results and reading them back: the outputs folder is the studio's history.

Each output is `<name>.mp4` (or .gif/.png) with `<name>.mp4.json` beside it (the full request, model, seed,
versions, timings and parent clips) and, for MP4s, `<name>.mp4.latents.safetensors` for chaining. Every file
is written under a temporary name and renamed into place; the JSON sidecar is written last, so an entry is
listed only once all its files are whole. A crash leaves at most `.*.partial*` files, swept at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("studio.outputs")

MEDIA_SUFFIXES = (".mp4", ".gif", ".png")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": sys.version.split()[0]}
    for name in ("torch", "diffusers", "transformers", "accelerate", "av", "numpy", "safetensors", "gradio"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def output_name(mode: str, seed: int, when: datetime | None = None) -> str:
    return f"{(when or datetime.now()):%Y%m%d-%H%M%S-%f}"[:-3] + f"-{mode}-{seed}"


def write_result(result: Any, out: Path, frames_out: str | None = None, gif: bool = False) -> dict[str, Any]:
    """Video (and optionally a GIF copy), latent sidecar, optional PNG frames, then the JSON sidecar."""
    from pipelines.latents import save_timeline
    from pipelines.video_io import atomic_path, write_frames, write_gif, write_output

    out = Path(out)
    sidecar: dict[str, Any] = {
        "request": result.request.to_dict(),
        "model": result.model_id,
        "frames": int(len(result.frames)),
        "width": int(result.frames.shape[2]),
        "height": int(result.frames.shape[1]),
        "fps": result.fps,
        "parents": result.parents,
        "timings": result.timings,
        "versions": versions(),
        "notes": result.notes,
        "joins": result.join_ratios,  # each join's step over the clip's median step (1 = as smooth as the clip)
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    write_output(out, result.frames, result.fps, audio_from=result.audio_source,
                 comment=json.dumps({"request": sidecar["request"], "model": result.model_id}))
    if result.timeline is not None and out.suffix.lower() == ".mp4":
        sidecar["latents"] = save_timeline(out, result.timeline).name
    if gif and out.suffix.lower() == ".mp4":
        write_gif(out.with_suffix(".gif"), result.frames, result.fps)
        sidecar["gif"] = out.with_suffix(".gif").name
    if frames_out:
        write_frames(frames_out, result.frames)
        sidecar["frames_out"] = str(frames_out)
    sidecar["bytes"] = out.stat().st_size  # History lists the output only while the file is this long
    with atomic_path(sidecar_of(out)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2))
    return sidecar


def sidecar_of(media: Path) -> Path:
    return media.with_suffix(media.suffix + ".json")


@dataclass(frozen=True)
class Entry:
    """One whole output in the history."""

    media: Path
    sidecar: dict[str, Any]

    @property
    def mode(self) -> str:
        return self.sidecar["request"]["mode"]

    @property
    def prompt(self) -> str:
        return self.sidecar["request"]["prompt"]

    @property
    def parents(self) -> list[str]:
        return list(self.sidecar.get("parents", []))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class History:
    """The outputs folder: generated clips, their sidecars, and copies of the uploads they were made from."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.uploads = self.folder / "uploads"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(exist_ok=True)
        self._digests: dict[tuple[str, int, int], str] = {}

    def sweep(self) -> list[Path]:
        """Delete files a crash left half-written (`atomic_path` temporaries)."""
        removed = []
        for folder in (self.folder, self.uploads):
            for leftover in folder.glob(".*.partial*"):
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
        if removed:
            log.info("swept %d unfinished files from %s", len(removed), self.folder)
        return removed

    def new_path(self, mode: str, seed: int) -> Path:
        suffix = ".png" if mode == "image" else ".mp4"
        return self.folder / (output_name(mode, seed) + suffix)

    def keep_upload(self, path: str | Path) -> Path:
        """Where an input file lives for good: an output or an earlier upload with the same bytes (so a
        re-uploaded result keeps its lineage and saved latents), else a content-addressed copy in uploads/."""
        from pipelines.video_io import atomic_path

        source = Path(path).resolve()
        if source.is_relative_to(self.folder):
            return source
        digest = _sha256(source)
        for entry in self.entries():
            if entry.media.stat().st_size == source.stat().st_size and self._digest(entry.media) == digest:
                return entry.media
        target = self.uploads / f"{digest[:16]}{source.suffix.lower()}"
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        return target

    def _digest(self, media: Path) -> str:
        stat = media.stat()
        key = (str(media), stat.st_mtime_ns, stat.st_size)
        if key not in self._digests:
            self._digests[key] = _sha256(media)
        return self._digests[key]

    def entries(self) -> list[Entry]:
        """Whole outputs, newest first: those whose sidecar parses and whose media file exists."""
        found = []
        for sidecar in self.folder.glob("*.json"):
            media = sidecar.with_suffix("")
            if media.suffix.lower() not in MEDIA_SUFFIXES or not media.is_file():
                continue
            entry = self.read(media)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.media.name, reverse=True)

    def read(self, media: str | Path) -> Entry | None:
        media = Path(media)
        try:
            data = json.loads(sidecar_of(media).read_text())
        except (OSError, json.JSONDecodeError) as error:
            log.warning("skipping %s: unreadable sidecar (%s)", media.name, error)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
            return None
        size = media.stat().st_size if media.is_file() else -1
        if data.get("bytes", size) != size:
            log.warning("skipping %s: %d bytes on disk, %d written", media.name, size, data["bytes"])
            return None
        return Entry(media.resolve(), data)

    def lineage(self, media: str | Path) -> list[list[Entry | Path]]:
        """Generations back from `media`: [[media], [its parents], [their parents], ...]; a parent that is
        not an output (an upload) is given as its path."""
        start = self.read(media)
        if start is None:
            return []
        levels: list[list[Entry | Path]] = [[start]]
        seen = {start.media}
        while True:
            parents: list[Entry | Path] = []
            for node in levels[-1]:
                if not isinstance(node, Entry):
                    continue
                for parent in node.parents:
                    path = Path(parent).resolve()
                    if path in seen:
                        continue
                    seen.add(path)
                    entry = self.read(path) if sidecar_of(path).is_file() else None
                    parents.append(entry or path)
            if not parents:
                return levels
            levels.append(parents)

    def children(self, media: str | Path) -> list[Entry]:
        target = str(Path(media).resolve())
        return [e for e in self.entries() if target in (str(Path(p).resolve()) for p in e.parents)]
