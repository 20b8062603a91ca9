"""Writing results and reading them back: the outputs folder is the studio's history.

Each output is `<name>.mp4` (or .gif/.png) with `<name>.mp4.json` beside it (the full request, model, seed,
versions, timings and parent clips) and, for MP4s, `<name>.mp4.latents.safetensors` for chaining. Every file
is written under a temporary name and renamed into place; the JSON sidecar is written last, so an entry is
listed only once all its files are whole.

A file is never written over one that exists unless the caller asked for exactly that path (`overwrite`):
an output's names are claimed first by creating them exclusively, so simultaneous jobs, processes and a CLI
run beside the studio can never be given the same name. A write that fails (a full disk) removes what it
had placed. A crash leaves at most `.*.partial*` temporaries and files of an output whose sidecar never
came; both are swept at start, under a folder lock that waits for writers in other processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.request import GenerationRequest, unicode_problem

log = logging.getLogger("studio.outputs")

MEDIA_SUFFIXES = (".mp4", ".gif", ".png")
MAX_SIDECAR_BYTES = 16 << 20  # ours are a few KB; more is not a sidecar this studio wrote
MAX_SIDECAR_DEPTH = 32  # ours nest 4 deep; Gradio's JSON encoder (orjson) refuses 255
MAX_UPLOAD_NAME_BYTES = 120


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


LOCK_NAME = ".studio.lock"  # writers hold it shared, the sweep exclusively
MARKER_SUFFIX = ".writing"  # `.NAME.writing`: an output being written, and the files it claimed
STAGING_PREFIX = ".replacing-"  # where an overwrite writes the new output before it moves into place
PLANNER_FOLDER = ".planner"  # the planner's measurements of each model on this machine (pipelines/planner.py)


class OutputExists(FileExistsError):
    """A file of the output about to be written is already there."""

    def __str__(self) -> str:
        return f"{self.filename} already exists; nothing was written over it"


class DiskFull(OSError):
    """The disk ran out of space while an output was written; nothing of that output was kept."""

    def __str__(self) -> str:  # the sentence alone, without "[Errno 28]"
        return self.strerror


def claim_fresh(folder: Path, stem: str, claimed: str, beside: tuple[str, ...] = ()) -> Path:
    """`folder/STEM<claimed>`, or `STEM-2<claimed>`, `STEM-3<claimed>`...: the first whose `claimed` file and
    `beside` files (or folders) do not exist, claimed by creating it empty, so that it is never a file that
    exists, nor one another caller is given at the same moment."""
    for n in itertools.count(1):
        name = f"{stem}{'' if n == 1 else f'-{n}'}"
        if any(os.path.lexists(folder / f"{name}{suffix}") for suffix in beside):
            continue
        try:
            (folder / f"{name}{claimed}").open("x").close()
        except FileExistsError:
            continue
        return folder / f"{name}{claimed}"
    raise AssertionError("unreachable")


def sidecar_of(media: Path) -> Path:
    return media.with_suffix(media.suffix + ".json")


def latents_of(media: Path) -> Path:
    return media.with_suffix(media.suffix + ".latents.safetensors")


def files_of(out: Path, gif: bool, latents: bool) -> list[Path]:
    """The files one output consists of, in the order they are written (the sidecar last)."""
    files = [out]
    if out.suffix.lower() == ".mp4":
        files += [latents_of(out)] * latents + [out.with_suffix(".gif")] * gif
    return files + [sidecar_of(out)]


def name_problem(out: Path) -> str | None:
    """Why the files of output `out` cannot be created in its folder for the length of their names, or None.
    The longest name is a temporary one (`atomic_path`'s `.STEM.XXXXXXXX.partial.SUFFIX` of the latents)."""
    folder = out.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max(len(f".{p.stem}.XXXXXXXX.partial{p.suffix}".encode())
                  for p in files_of(out, gif=True, latents=True))
    if longest <= limit:
        return None
    return (f"its name is too long for this file system: at most {limit - (longest - len(out.name.encode()))} bytes "
            f"(it has {len(out.name.encode())})")


@contextlib.contextmanager
def _folder_lock(folder: Path, exclusive: bool) -> Iterator[None]:
    """The outputs folder's lock, where the folder has one (History makes it; a CLI --out elsewhere needs none)."""
    try:
        handle = os.open(folder / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(handle)  # releases the lock


def _claim(files: list[Path]) -> tuple[int, list[Path]]:
    """Create every file but the sidecar empty and exclusively (the sidecar, the last, is linked into place
    without replacing), so no two writers share a name. First a marker lists them, so that a crash's leftovers
    are known for what they are (`History.sweep`). Returns the marker's locked handle, and the marker and the
    files; raises OutputExists, having left nothing."""
    made: list[Path] = []
    try:
        if os.path.lexists(sidecar_of(files[0])):  # a link too, even one that points nowhere
            raise OutputExists(errno.EEXIST, "already exists", str(sidecar_of(files[0])))
        for path in [marker_of(files[0]), *files[:-1]]:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            made.append(path)
            if path != made[0]:
                os.close(handle)
                continue
            # The marker: locked while this writer lives (the sweep passes over a locked one), then the names
            # it is about to claim, before any is claimed.
            fcntl.flock(handle, fcntl.LOCK_EX)
            marker_handle = handle
            os.write(handle, "\n".join(f.name for f in files[:-1]).encode())
    except FileExistsError as error:
        for path in reversed(made):
            path.unlink(missing_ok=True)
        if made:
            os.close(marker_handle)
        raise OutputExists(errno.EEXIST, "already exists", error.filename) from None
    return marker_handle, made


def marker_of(media: Path) -> Path:
    return media.with_name(f".{media.name}{MARKER_SUFFIX}")


def _is_disk_full(error: BaseException) -> bool:
    # safetensors reports a full disk as a SafetensorError whose text carries the OS error
    return (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "os error 28" in str(error) or "No space left on device" in str(error)


def write_result(result: Any, out: Path, frames_out: str | None = None, gif: bool = False,
                 overwrite: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Video (and optionally a GIF copy), latent sidecar, optional PNG frames, then the JSON sidecar (with
    `extra`'s fields: where the output came from beyond its request, such as a variations grid).

    Without `overwrite`, raises OutputExists before writing anything if a file of the output exists, and a
    frame file already in `frames_out` is an error. With it, the new output is written aside and moved into
    place only once whole, so a failure leaves the one it was to replace as it was. On any failure the files
    written so far are removed; a full disk is raised as DiskFull.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out.parent, exclusive=False):
        if overwrite:
            return _replace(result, out, frames_out, gif, extra)
        handle, (marker, *claimed) = _claim(files_of(out, gif, latents=result.timeline is not None))
        try:
            return _write_files(result, out, frames_out, gif, replace=False, extra=extra)
        except BaseException as error:
            for path in claimed:
                path.unlink(missing_ok=True)
            raise _as_disk_full(error, out.parent, out.name) from error
        finally:
            marker.unlink(missing_ok=True)
            os.close(handle)  # unlocks it


def _replace(result: Any, out: Path, frames_out: str | None, gif: bool, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Write the output in a staging folder beside `out`, and its frames in one inside `frames_out` (each on
    its own file system), then move them into place: the old frames go only now, the sidecar moves last."""
    from pipelines.video_io import FRAME_FILES

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out.parent))
    frames_dir = Path(frames_out) if frames_out else None
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)
    staged_frames = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=frames_dir)) if frames_dir else None
    try:
        try:
            sidecar = _write_files(result, staging / out.name, frames_out, gif, replace=True, frames_at=staged_frames,
                                   extra=extra)
        except BaseException as error:
            raise _as_disk_full(error, out.parent, out.name) from error
        if frames_dir is not None:
            for old in frames_dir.glob(FRAME_FILES):
                old.unlink()
            for frame in sorted(staged_frames.glob(FRAME_FILES)):
                os.replace(frame, frames_dir / frame.name)
        for staged in files_of(staging / out.name, gif, latents=result.timeline is not None):
            os.replace(staged, out.parent / staged.name)
        return sidecar
    finally:
        for folder in (staging, staged_frames):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def _as_disk_full(error: BaseException, folder: Path, what: str) -> BaseException:
    """A full disk as the sentence a person reads (a DiskFull); any other error as it is."""
    if isinstance(error, DiskFull) or not _is_disk_full(error):
        return error
    return DiskFull(errno.ENOSPC, f"The disk holding {folder} is full, so {what} could not be saved (nothing of "
                                  "it was kept). Free some space and try again.")


def _write_files(result: Any, out: Path, frames_out: str | None, gif: bool, replace: bool,
                 frames_at: Path | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output's files at `out`; the frames at `frames_out` (or staged at `frames_at`), recorded as
    `frames_out`."""
    from pipelines.latents import save_timeline
    from pipelines.video_io import atomic_path, write_frames, write_gif, write_output

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
        "step_cache": result.step_cache,  # what reproduce turns on again (it changes the output)
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_output(out, result.frames, result.fps, audio_from=result.audio_source, audio_start=result.audio_start,
                 comment=json.dumps({"request": sidecar["request"], "model": result.model_id}))
    if result.timeline is not None and out.suffix.lower() == ".mp4":
        sidecar["latents"] = save_timeline(out, result.timeline).name
    if gif and out.suffix.lower() == ".mp4":
        write_gif(out.with_suffix(".gif"), result.frames, result.fps)
        sidecar["gif"] = out.with_suffix(".gif").name
    if frames_out:
        try:
            write_frames(frames_at or frames_out, result.frames, replace=replace)
        except BaseException as error:
            raise _as_disk_full(error, Path(frames_out), f"the PNG frames of {out.name}") from error
        sidecar["frames_out"] = str(frames_out)
    sidecar["bytes"] = out.stat().st_size  # History lists the output only while the file is this long
    with atomic_path(sidecar_of(out), replace=replace) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2))
    return sidecar


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


class BadEntry(ValueError):
    """Why a file in the outputs folder is not listed in the history (logged, never raised to a user)."""


def _plain(value: Any, repaired: list[str], depth: int = 0) -> Any:
    """A parsed sidecar value as every consumer can take it, or BadEntry: nesting at most MAX_SIDECAR_DEPTH,
    integers within 64 bits (what Gradio's JSON encoder takes), text in valid Unicode. Lone surrogates (an
    older version wrote prompts holding them) become U+FFFD, each repaired string counted in `repaired`."""
    if depth > MAX_SIDECAR_DEPTH:
        raise BadEntry(f"its sidecar nests more than {MAX_SIDECAR_DEPTH} levels deep")
    if isinstance(value, str):
        if unicode_problem(value) is None:
            return value
        repaired.append(value)
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
        raise BadEntry("its sidecar holds an integer beyond 64 bits")
    if isinstance(value, list):
        return [_plain(item, repaired, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_plain(k, repaired, depth + 1): _plain(v, repaired, depth + 1) for k, v in value.items()}
    return value


def _check_shape(data: Any) -> None:
    """The fields the studio reads from a sidecar, as it reads them: a valid request, a list of parent paths,
    whole numbers for sizes and counts."""
    if not isinstance(data, dict):
        raise BadEntry("its sidecar is not a JSON object")
    try:
        request = GenerationRequest.from_dict(data.get("request"))
    except (ValueError, TypeError) as error:  # TypeError: belt and braces, the request raises ValueError
        raise BadEntry(f"its request is not valid ({str(error)[:200]})") from None
    parents = data.get("parents", [])
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise BadEntry("its 'parents' is not a list of paths")
    if len(parents) > len(request.conditioning) + 1:  # a parent per source: lineage walks each of them
        raise BadEntry(f"it names {len(parents)} parents for {len(request.conditioning) + 1} sources at most")
    for key in ("bytes", "frames", "width", "height"):
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool)):
            raise BadEntry(f"its {key!r} is not a whole number")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise BadEntry("its 'notes' is not a list of texts")


def upload_name(name: str) -> str:
    """The name an upload is kept under: the creator's own, made safe to keep and to show. Control, format
    (bidirectional overrides, zero-width) and surrogate characters go, any space becomes a plain one, no leading
    dot, at most MAX_UPLOAD_NAME_BYTES bytes, the suffix in lower case (the media check reads it). Markdown and
    HTML in it stay, as they are the name; they are escaped wherever it is shown."""
    name = unicodedata.normalize("NFC", Path(name).name)
    name = "".join(" " if c.isspace() else c for c in name if unicodedata.category(c)[0] != "C")
    suffix = Path(name).suffix  # as the media check reads it ("....mp4" ends in ".mp4", for splitext in nothing)
    stem, suffix = name[:len(name) - len(suffix)].strip(" .") or "upload", suffix.lower()
    while len((stem + suffix).encode()) > MAX_UPLOAD_NAME_BYTES:
        stem = stem[:-1]
    return stem + suffix


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
        (self.folder / LOCK_NAME).touch()
        self._digests: dict[tuple[str, int, int], str] = {}
        self._reported: dict[str, tuple[str, tuple[int, int] | None]] = {}  # file -> what was logged, for which

    def sweep(self) -> list[Path]:
        """Delete what a crash left: `atomic_path` temporaries, and the files of an output (by this studio's
        own names only) whose sidecar never came. Waits for writers in other processes to finish first."""
        removed = []
        with _folder_lock(self.folder, exclusive=True):
            for folder in (self.folder, self.uploads):
                removed += (p for p in folder.glob(".*.partial*") if not p.is_dir())
            for marker in self.folder.glob(f".*{MARKER_SUFFIX}"):
                if marker.is_dir():
                    continue
                unfinished = self._unfinished(marker)
                if unfinished is not None:  # its writer is gone
                    removed += unfinished + [marker]
            for path in removed:
                path.unlink(missing_ok=True)
            for staging in self.folder.glob(f"{STAGING_PREFIX}*"):  # an --overwrite that never finished
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
        if removed:
            log.info("swept %d unfinished files from %s", len(removed), self.folder)
        return removed

    def _unfinished(self, marker: Path) -> list[Path] | None:
        """The files a marker lists, if its writer is gone (its lock is free) and its output never got its
        sidecar: a crash's, and only those (that output's own names, claimed when no file had them). None while
        the writer lives; [] for a marker that is not one of ours."""
        try:
            handle = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return []
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            names = os.read(handle, 1 << 16).decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        finally:
            os.close(handle)
        media = self.folder / names[0] if names and "/" not in names[0] else None
        if media is None or marker != marker_of(media) or media.suffix not in MEDIA_SUFFIXES or \
                os.path.lexists(sidecar_of(media)):
            return []
        own = {p.name for p in files_of(media, gif=True, latents=True)}
        return [self.folder / name for name in names if name in own]

    def write(self, result: Any, gif: bool = True, frames_out: str | None = None,
              extra: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
        """Save a result under a new name (time, mode, seed; "-2", "-3"... when taken): never over a file."""
        request = result.request
        suffix = ".png" if request.mode == "image" else ".mp4"
        stem = output_name(request.mode, request.seed)
        for n in itertools.count(1):
            out = self.folder / f"{stem}{'' if n == 1 else f'-{n}'}{suffix}"
            try:
                return out, write_result(result, out, frames_out, gif=gif, extra=extra)
            except OutputExists:
                continue
        raise AssertionError("unreachable")

    def keep_upload(self, path: str | Path) -> Path:
        """Where an input file lives for good: an output or an earlier upload with the same bytes (so a
        re-uploaded result keeps its lineage and saved latents), else a copy in uploads/<content hash>/ under
        the name it was uploaded with (Gradio's temporary copy keeps it): the folder makes the copy
        content-addressed, the name is what notes and lineage call it. The first name given to some bytes
        is the one kept."""
        from pipelines.video_io import atomic_path

        source = Path(path).resolve()
        if source.is_relative_to(self.folder):
            return source
        digest, size = _sha256(source), source.stat().st_size
        for entry in self.entries():
            try:
                if entry.media.stat().st_size == size and self._digest(entry.media) == digest:
                    return entry.media
            except OSError:  # deleted since it was listed
                continue
        folder = self.uploads / digest[:16]
        name = upload_name(source.name)
        if folder.is_dir():  # the first name kept for these bytes, with the suffix the media check passed
            kept = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_symlink()
                          and p.is_file() and p.suffix == Path(name).suffix)
            if kept:
                return kept[0]
        target = folder / name
        try:
            with atomic_path(target, scratch=self.uploads) as tmp:  # a crash's leftover lies where sweep looks
                shutil.copyfile(source, tmp)
        except BaseException as error:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: another name for the same bytes may be kept there
            raise _as_disk_full(error, self.folder, f"the upload {name}") from error
        return target

    def inside(self, path: str | Path) -> Path | None:
        """`path` resolved (links followed), if it is a regular file in the outputs folder or under its
        uploads: the only files the studio hands back to a browser. Else None."""
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if not (resolved.parent == self.folder or resolved.is_relative_to(self.uploads)) or not resolved.is_file():
            return None
        return resolved

    def _digest(self, media: Path) -> str:
        stat = media.stat()
        key = (str(media), stat.st_mtime_ns, stat.st_size)
        if key not in self._digests:
            self._digests[key] = _sha256(media)
        return self._digests[key]

    def entries(self) -> list[Entry]:
        """Whole outputs, newest first: those `read` accepts."""
        found = []
        for sidecar in self.folder.glob("*.json"):
            media = sidecar.with_suffix("")
            if media.suffix.lower() not in MEDIA_SUFFIXES or not os.path.lexists(media):
                continue
            entry = self.read(media)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.media.name, reverse=True)

    def read(self, media: str | Path) -> Entry | None:
        """The output `media` as an Entry, or None (with a log line) unless it is whole and well formed: a
        regular file in this folder (not a link), its sidecar a regular file that parses into the shape the
        studio reads (`_check_shape`, `_plain`) and records the file's size. The one place a sidecar is
        checked: everything that lists, shows, reproduces or walks the history can trust an Entry."""
        media = Path(os.path.abspath(media))
        try:
            return Entry(media, self._read(media))
        except BadEntry as why:
            self._report(media, f"skipping {media.name!r}: {why}")
            return None

    def _read(self, media: Path) -> dict[str, Any]:
        if media.parent != self.folder:
            raise BadEntry("it is not in the outputs folder")
        if unicode_problem(media.name) is not None:
            raise BadEntry("its file name is not valid Unicode")
        if media.is_symlink() or not media.is_file():
            raise BadEntry("it is not a regular file (a link, a folder or missing)")
        sidecar = sidecar_of(media)
        try:
            info = os.lstat(sidecar)
            if not stat.S_ISREG(info.st_mode):
                raise BadEntry("its sidecar is not a regular file (a link or a folder)")
            if info.st_size > MAX_SIDECAR_BYTES:
                raise BadEntry(f"its sidecar is {info.st_size} bytes, more than a sidecar holds")
            data = json.loads(sidecar.read_bytes().decode("utf-8"))
        except OSError as error:
            raise BadEntry(f"its sidecar cannot be read ({error.strerror or error})") from None
        except UnicodeDecodeError:
            raise BadEntry("its sidecar is not UTF-8 text") from None
        except RecursionError:
            raise BadEntry("its sidecar nests too deep to read") from None
        except ValueError as error:  # not JSON, or an integer of more digits than Python converts
            raise BadEntry(f"its sidecar is not valid JSON ({str(error)[:120]})") from None
        repaired: list[str] = []
        data = _plain(data, repaired)
        _check_shape(data)
        size = media.stat().st_size
        if data.get("bytes", size) != size:
            raise BadEntry(f"{size} bytes on disk, {data['bytes']} written (unfinished or changed)")
        if repaired:
            self._report(media, f"{media.name!r}: {len(repaired)} text(s) in its sidecar are not valid Unicode "
                                "(lone surrogates); shown with U+FFFD in their place")
        return data

    def _report(self, media: Path, message: str) -> None:
        """Log about a file once while it stays the same, not on every listing."""
        try:
            info = os.lstat(sidecar_of(media))
            state = (info.st_mtime_ns, info.st_size)
        except OSError:
            state = None
        if self._reported.get(str(media)) != (message, state):
            self._reported[str(media)] = (message, state)
            log.warning("%s", message)

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
                    entry = self.read(path) if path.parent == self.folder and sidecar_of(path).is_file() else None
                    parents.append(entry or path)
            if not parents:
                return levels
            levels.append(parents)

    def children(self, media: str | Path) -> list[Entry]:
        target = str(Path(media).resolve())
        return [e for e in self.entries() if target in (str(Path(p).resolve()) for p in e.parents)]
