"""Storyboards: a take of any length planned as shots, rendered window by window through the one pipeline.

A `Storyboard` is a plan of requests, not a new pipeline: each shot (a prompt, a duration, keyframes, a
transition) becomes windows of the model's default length, and each window one `GenerationRequest`:
- a shot that starts fresh (the first, or a cut) opens with text to video, or animate when an image keyframe
  sits at its frame 0; a keyframe later in a shot closes a continuing window, held (a conditioning item)
  over its last latent's frames;
- every other window is an `extend` of the previous window, conditioned on its saved latents (the latent
  sidecar of the previous window's frame folder, pipelines/latents.py), so no VAE round trip creeps in;
- re-rendering one shot ends it with a join to its unchanged successor: `connect` from the previous window,
  or a backward extension when the shot is one fresh window.

Frame counts follow the causal VAE (pipelines/modes.py): a fresh shot has 4k+1 frames, a continuing one adds
a multiple of 4; each shot's note says how its seconds were snapped.

Everything a take needs to resume or to re-render a shot lives beside it: `TAKE.mp4.storyboard.json` (the
manifest: the plan, the settings, one record per finished window with its seed, drift and join) and
`TAKE.mp4.windows/` (each window's frames as lossless PNGs with the window's latents). Each window's seed is
derived from the plan's seed (or its shot's), the shot and the window's index in it, so a resumed take and a
re-rendered shot give the frames an uninterrupted run gives. The MP4 is streamed as windows finish; only the
window being made and the one it continues are in memory.

Drift (the creep of colour over many windows) is measured per window against an anchor (the shot's first
window, or a reference image), and three switches hold it: conditioning on saved latents instead of
re-encoded pixels, a little noise on the held frames (their hold strength below 1), and colour anchoring, which
brings each window's per-channel mean and spread to the anchor's (the sliding-window colour correction of
Wan2GP, in RGB), eased in along the window so that the joins stay smooth.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.modes import DEFAULT_CONTEXT_FRAMES, MAX_SECONDS, frames_for_seconds
from pipelines.request import MAX_PROMPT_CHARS, MAX_SEED, ConditioningItem

TRANSITIONS = ("continue", "cut")
PLAN_FORMAT = 1
MANIFEST_SUFFIX = ".storyboard.json"
WINDOWS_SUFFIX = ".windows"
DEFAULT_MAX_SHOT_SECONDS = 600.0
MAX_SHOTS = 1000


def _fail(where: str, field_name: str, value: Any, valid: str) -> None:
    raise ValueError(f"{where}: {field_name} = {value!r} is not valid: {valid}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _seed_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


@dataclass(frozen=True)
class Keyframe:
    """An image or a clip placed `at` seconds from its shot's start."""

    source: str
    at: float = 0.0
    kind: str = "image"  # "image" or "clip"

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: self.source, "at": self.at}


@dataclass(frozen=True)
class Shot:
    prompt: str
    seconds: float
    transition: str = "continue"  # how the shot begins; the first shot's is ignored
    keyframes: tuple[Keyframe, ...] = ()
    seed: int | None = None  # None: derived from the plan's seed

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"prompt": self.prompt, "seconds": self.seconds, "transition": self.transition,
                                "keyframes": [k.to_dict() for k in self.keyframes]}
        if self.seed is not None:
            data["seed"] = self.seed
        return data


@dataclass(frozen=True)
class Storyboard:
    """A take planned as shots. The switches (`saved_latents`, `held_noise`, `colour_anchor`) hold drift;
    `reference` is an image the drift meter and the colour anchor use instead of each shot's first window."""

    seed: int
    shots: tuple[Shot, ...]
    negative_prompt: str = ""
    max_shot_seconds: float = DEFAULT_MAX_SHOT_SECONDS
    width: int | None = None  # None: the model's defaults
    height: int | None = None
    fps: float | None = None
    steps: int | None = None
    context_frames: int | None = None  # frames of the previous window each window sees
    best_of: int = 1  # candidates per continuing window, the smoothest join kept
    saved_latents: bool = True
    held_noise: float = 0.0  # 0: the held frames are held exactly; 0.1: their hold strength is 0.9
    colour_anchor: bool = True
    anchor_frames: int | None = None  # frames the colour anchor eases in over (None: the whole window)
    reference: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.shots, list):
            object.__setattr__(self, "shots", tuple(self.shots))
        self.validate()

    # ---- checks that need no model -----------------------------------------------------------------------
    def validate(self) -> None:
        if not _seed_ok(self.seed):
            _fail("the plan", "seed", self.seed, f"an integer from 0 to {MAX_SEED}")
        if not _number(self.max_shot_seconds) or not 0 < self.max_shot_seconds <= MAX_SECONDS:
            _fail("the plan", "max_shot_seconds", self.max_shot_seconds, f"a number of seconds in (0, {MAX_SECONDS}]")
        if not self.shots:
            raise ValueError("the plan: shots = [] is not valid: at least one shot")
        if len(self.shots) > MAX_SHOTS:
            _fail("the plan", "shots", f"{len(self.shots)} shots", f"at most {MAX_SHOTS}")
        if not _number(self.held_noise) or not 0 <= self.held_noise < 1:
            _fail("the plan", "held_noise", self.held_noise, "a number in [0, 1) (0 holds the frames exactly)")
        if self.anchor_frames is not None and (not isinstance(self.anchor_frames, int) or
                                               isinstance(self.anchor_frames, bool) or self.anchor_frames < 1):
            _fail("the plan", "anchor_frames", self.anchor_frames, "none (the whole window) or a whole number >= 1")
        if not isinstance(self.best_of, int) or isinstance(self.best_of, bool) or not 1 <= self.best_of <= 16:
            _fail("the plan", "best_of", self.best_of, "an integer from 1 to 16")
        for number, shot in enumerate(self.shots, start=1):
            where = f"shot {number}"
            if not isinstance(shot.prompt, str) or not shot.prompt.strip() or len(shot.prompt) > MAX_PROMPT_CHARS:
                _fail(where, "prompt", shot.prompt, f"a non-empty text of at most {MAX_PROMPT_CHARS} characters")
            if not _number(shot.seconds) or shot.seconds <= 0:
                _fail(where, "seconds", shot.seconds, "a positive number of seconds")
            if shot.seconds > self.max_shot_seconds:
                raise ValueError(f"{where}: seconds = {shot.seconds:g} is more than this plan allows: at most "
                                 f"{self.max_shot_seconds:g} (max_shot_seconds)")
            if shot.transition not in TRANSITIONS:
                _fail(where, "transition", shot.transition, " or ".join(TRANSITIONS))
            if shot.seed is not None and not _seed_ok(shot.seed):
                _fail(where, "seed", shot.seed, f"none, or an integer from 0 to {MAX_SEED}")
            for k, key in enumerate(shot.keyframes, start=1):
                if key.kind not in ("image", "clip") or not isinstance(key.source, str) or not key.source:
                    _fail(where, f"keyframes[{k}]", key.to_dict(), 'an object with "image" or "clip" (a path) and "at"')
                if not _number(key.at) or key.at < 0:
                    _fail(where, f"keyframes[{k}].at", key.at, "seconds from the shot's start, >= 0")
                if key.at > shot.seconds:
                    raise ValueError(f"{where}: keyframes[{k}].at = {key.at:g} s is after the shot's end "
                                     f"({shot.seconds:g} s); valid: 0 to {shot.seconds:g}")
            ats = sorted((key.at, k) for k, key in enumerate(shot.keyframes, start=1))
            for (a, i), (b, j) in zip(ats, ats[1:]):
                if a == b:
                    raise ValueError(f"{where}: keyframes[{i}] and keyframes[{j}] overlap (both at {a:g} s); "
                                     "place them apart")

    # ---- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {"format": PLAN_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        data["shots"] = [shot.to_dict() for shot in self.shots]
        if self.anchor_frames is None:  # as plans recorded before it existed, so their takes still resume
            del data["anchor_frames"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Storyboard:
        if not isinstance(data, dict):
            _fail("the plan", "plan", type(data).__name__, 'a JSON object with "seed" and "shots"')
        data = dict(data)
        version = data.pop("format", PLAN_FORMAT)
        if version != PLAN_FORMAT:
            _fail("the plan", "format", version, f"{PLAN_FORMAT}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            _fail("the plan", "keys", unknown, f"only {', '.join(sorted(known))}")
        if "seed" not in data:
            data["seed"] = 0
        raw_shots = data.get("shots", [])
        if not isinstance(raw_shots, list):
            _fail("the plan", "shots", raw_shots, "a list of shots")
        data["shots"] = tuple(_shot_from(raw, n) for n, raw in enumerate(raw_shots, start=1))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Storyboard:
        return cls.from_dict(json.loads(text))

    @classmethod
    def read(cls, path: str | Path) -> Storyboard:
        """A plan file; its keyframes' relative paths are read from the plan's folder."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"the plan {str(path)!r} cannot be read: {error}") from None
        for shot in data.get("shots", []) if isinstance(data, dict) else []:
            for key in shot.get("keyframes", []) if isinstance(shot, dict) else []:
                for kind in ("image", "clip"):
                    if isinstance(key, dict) and isinstance(key.get(kind), str) and not Path(key[kind]).is_absolute():
                        key[kind] = str(path.parent / key[kind])
        reference = data.get("reference") if isinstance(data, dict) else None
        if isinstance(reference, str) and not Path(reference).is_absolute():
            data["reference"] = str(path.parent / reference)
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Storyboard:
        return dataclasses.replace(self, **changes)


def _shot_from(raw: Any, number: int) -> Shot:
    where = f"shot {number}"
    if not isinstance(raw, dict):
        _fail(where, "shot", raw, 'an object with "prompt" and "seconds"')
    allowed = {"prompt", "seconds", "transition", "keyframes", "seed"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        _fail(where, "keys", unknown, f"only {', '.join(sorted(allowed))}")
    for needed in ("prompt", "seconds"):
        if needed not in raw:
            raise ValueError(f"{where}: {needed} is missing: a shot needs a prompt and seconds")
    keys = raw.get("keyframes", [])
    if not isinstance(keys, list):
        _fail(where, "keyframes", keys, "a list of keyframes")
    keyframes = []
    for k, key in enumerate(keys, start=1):
        kinds = [kind for kind in ("image", "clip") if isinstance(key, dict) and kind in key]
        if len(kinds) != 1 or set(key) - {"image", "clip", "at"}:
            _fail(where, f"keyframes[{k}]", key, 'an object with one of "image" or "clip" (a path), and "at"')
        keyframes.append(Keyframe(key[kinds[0]], key.get("at", 0.0), kinds[0]))
    return Shot(raw["prompt"], raw["seconds"], raw.get("transition", "continue"), tuple(keyframes), raw.get("seed"))


# ---- layout: shots -> windows -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One request of the take: `frames` new frames of shot `shot` (0-based), starting at take frame `start`."""

    index: int  # in the take
    shot: int
    number: int  # in its shot
    kind: str  # "t2v", "animate", "clip" (a clip copied; all three fresh) or "extend"
    start: int
    frames: int
    keyframe: str | None = None  # animate's still, or the still that closes an extension


@dataclass(frozen=True)
class Settings:
    """What the plan leaves to the model, resolved: they decide the frames as much as the plan does."""

    model_id: str
    width: int
    height: int
    fps: float
    steps: int
    window: int  # the model's default window, 4k+1 frames
    context: int  # frames of the previous window each continuing window sees, 4k+1
    temporal: int

    @classmethod
    def of(cls, plan: Storyboard, pipe: Any) -> Settings:
        d, t = pipe.defaults, pipe.temporal
        context = plan.context_frames or d.context_frames or default_context(d.num_frames, t)
        if context == 1 or (context - 1) % t or context + t > d.num_frames:
            raise ValueError(f"the plan: context_frames = {context} is not valid for this model: {t}k+1 frames, "
                             f"from {t + 1} to {d.num_frames - t} (its window is {d.num_frames} frames)")
        return cls(pipe.model_id, plan.width or d.width, plan.height or d.height, float(plan.fps or d.fps),
                   plan.steps or d.steps, d.num_frames, context, t)


def context_choices(window: int, temporal: int) -> list[int]:
    """Context frames a continuing window may see: temporal*k+1 from temporal+1, leaving at least `temporal`
    new frames in a window of `window` frames."""
    return list(range(temporal + 1, window - temporal + 1, temporal))


def default_context(window: int, temporal: int) -> int:
    """DEFAULT_CONTEXT_FRAMES, or the most a short window allows."""
    fitting = [c for c in context_choices(window, temporal) if c <= DEFAULT_CONTEXT_FRAMES]
    return fitting[-1] if fitting else DEFAULT_CONTEXT_FRAMES


@dataclass(frozen=True)
class ShotLayout:
    start: int
    frames: int
    windows: tuple[Window, ...]
    note: str


def fresh(plan: Storyboard, index: int) -> bool:
    return index == 0 or plan.shots[index].transition == "cut"


def layout(plan: Storyboard, settings: Settings) -> list[ShotLayout]:
    """Each shot's frames, snapped to the VAE's rule, split into windows; the note says how it was snapped."""
    t, fps = settings.temporal, settings.fps
    step = settings.window - settings.context  # new frames of a full continuing window
    shots, start, index = [], 0, 0
    for s, shot in enumerate(plan.shots):
        where = f"shot {s + 1}"
        is_fresh = fresh(plan, s)
        frames = frames_for_seconds(shot.seconds, fps, "window" if is_fresh else "extend", t)
        rule = f"{t}k+1 frames (a fresh shot)" if is_fresh else f"a multiple of {t} frames (continuing)"
        exact = shot.seconds * fps
        how = "exact" if abs(exact - frames) < 1e-9 else f"{exact:g} snapped to {frames}"
        note = f"{where}: {shot.seconds:g} s at {fps:g} fps = {frames} frames ({how}; {rule})"
        for k, key in enumerate(shot.keyframes, start=1):
            at = round(key.at * fps)
            if at >= frames:
                raise ValueError(f"{where}: keyframes[{k}].at = {key.at:g} s is after the shot's end "
                                 f"({frames} frames = {frames / fps:g} s once snapped); valid: 0 to "
                                 f"{(frames - 1) / fps:g}")
            if key.kind == "clip" and (at != 0 or not is_fresh):
                raise ValueError(f"{where}: keyframes[{k}] (a clip) at {key.at:g} s is not valid: a clip opens a "
                                 "shot (at 0 s of a shot that is a cut, or of the first shot) and the shot continues "
                                 "it; later keyframes are images")
        ats = sorted(round(key.at * fps) for key in shot.keyframes)
        if len(set(ats)) < len(ats):
            raise ValueError(f"{where}: keyframes overlap at {fps:g} fps (two fall on one frame); place them apart")
        windows, pos, number = [], start, 0
        opening = next((key for key in shot.keyframes if is_fresh and round(key.at * fps) == 0), None)
        if opening is not None and opening.kind == "clip":  # its frames open the shot, the rest continue it
            first = min(frames, _clip_frames(opening.source, fps, t, f"{where}: keyframes[1] (a clip)"))
            windows.append(Window(index, s, 0, "clip", start, first, opening.source))
            note += f"; the clip opens it ({first} frames)"
            index, number, pos = index + 1, 1, start + first
        elif is_fresh:
            first = min(frames, settings.window)
            windows.append(Window(index, s, 0, "animate" if opening else "t2v", start, first,
                                  opening.source if opening else None))
            index, number, pos = index + 1, 1, start + first
        held = [(k, key) for k, key in enumerate(shot.keyframes, start=1) if key is not opening]
        for k, key in sorted(held, key=lambda pair: pair[1].at):
            # A later still closes a continuing window: the VAE holds it as one latent of `t` frames, the
            # window's last, so the window ends `t` frames after the still's first frame, on the latent grid.
            at = start + round(key.at * fps)
            new = t * round((at - pos) / t) + t
            soonest = (pos - start + t) / fps  # its first held frame, after `t` frames of motion
            while new > step - step % t:  # plain windows up to the one the still closes
                plain = min(step - step % t, new - 2 * t)
                windows.append(Window(index, s, number, "extend", pos, plain))
                index, number, pos, new = index + 1, number + 1, pos + plain, new - plain
            if new < 2 * t or pos + new > start + frames:
                latest = (frames - t) / fps
                raise ValueError(f"{where}: keyframes[{k}].at = {key.at:g} s cannot be held there: a still is held "
                                 f"for {t} frames at the end of a continuing window, after at least {t} frames of "
                                 f"motion (valid here: {soonest:g} to {latest:g} s)")
            windows.append(Window(index, s, number, "extend", pos, new, key.source))
            note += f"; keyframes[{k}] ({key.at:g} s) held at {(pos + new - t - start) / fps:g}-" \
                    f"{(pos + new - 1 - start) / fps:g} s"
            index, number, pos = index + 1, number + 1, pos + new
        left = start + frames - pos
        while left > 0:
            new = min(step - step % t, left)
            windows.append(Window(index, s, number, "extend", start + frames - left, new))
            index, number, left = index + 1, number + 1, left - new
        shots.append(ShotLayout(start, frames, tuple(windows), note))
        start += frames
    return shots


def _clip_frames(source: str, fps: float, temporal: int, what: str) -> int:
    """The frames of a clip that opens a shot: as many as it has at the take's fps, down to temporal*k+1 so
    that the windows continuing it add whole latents."""
    try:
        stat = Path(source).stat()
        have = _count_frames(str(Path(source).resolve()), stat.st_mtime_ns, stat.st_size, fps)
    except (OSError, ValueError) as error:
        raise ValueError(f"{what}: {Path(source).name} cannot be read as a clip ({error})") from None
    if have < temporal + 1:
        raise ValueError(f"{what}: {Path(source).name} has {have} frames at {fps:g} fps; a clip that opens a shot "
                         f"needs at least {temporal + 1}")
    return temporal * ((have - 1) // temporal) + 1


@functools.lru_cache(maxsize=64)
def _count_frames(path: str, mtime_ns: int, size: int, fps: float) -> int:
    """A clip's frames at `fps`, decoded once per version of the file: a take lays its plan out several
    times (the tab's summary, the render, a re-render), and counting decodes the whole clip."""
    from pipelines.video_io import count_frames

    return count_frames(path, fps)


def sizing_request(pipe: Any, plan: Storyboard) -> Any:
    """The request a take is sized by (the memory planner's): a full window of the model's length at the
    plan's size and steps, as long as any window of a render (an extension holds its context within it)."""
    s = Settings.of(plan, pipe)
    return pipe.request("t2v", prompt=plan.shots[0].prompt, num_frames=s.window, width=s.width, height=s.height,
                        fps=s.fps, steps=s.steps, seed=plan.seed)


def window_seed(plan: Storyboard, shot: int, number: int) -> int:
    """The seed of window `number` of shot `shot` (0-based): from the shot's seed where it has one (so that
    changing it changes that shot alone), else from the plan's."""
    base = plan.shots[shot].seed
    key = f"shot-seed:{base}:{number}" if base is not None else f"plan-seed:{plan.seed}:{shot}:{number}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % (MAX_SEED + 1)


# ---- drift: colour statistics against an anchor ------------------------------------------------------------
def colour_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, H, W, 3) uint8 -> per-channel mean and standard deviation, (3,) float64 each."""
    pixels = frames.reshape(-1, 3).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def drift(frames: np.ndarray, anchor: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """How far a window's colour has crept from the anchor's: the mean over channels of the absolute change
    of the channel means and of their spreads, in 8-bit levels."""
    mean, std = colour_stats(frames)
    return {"mean": round(float(np.abs(mean - anchor[0]).mean()), 4),
            "std": round(float(np.abs(std - anchor[1]).mean()), 4)}


def anchor_colours(frames: np.ndarray, anchor: tuple[np.ndarray, np.ndarray], tail: int = 4,
                   ease: int | None = None) -> np.ndarray:
    """The frames with each channel's mean and spread brought to the anchor's. The correction is the one that
    matches the window's last `tail` frames, eased in over the window's first `ease` frames (None: all of
    them): little on its first frame, whose predecessor (the previous window's end) was corrected already,
    all of it from frame `ease` on, so the join keeps the model's own step and the next window starts from
    anchored frames (correcting the whole window at once moved it by the drift it had gathered: a step at
    every join). A shorter ease holds the colour closer within the window, with larger steps while it eases."""
    mean, std = colour_stats(frames[-tail:])
    scale = anchor[1] / np.maximum(std, 1e-6)
    pixels = frames.astype(np.float64)
    corrected = (pixels - mean) * scale + anchor[0]
    ease = min(ease or len(frames), len(frames))
    weight = np.minimum(1.0, np.arange(1, len(frames) + 1) / ease).reshape(-1, 1, 1, 1)
    return np.clip(pixels + weight * (corrected - pixels), 0, 255).round().astype(np.uint8)


# ---- rendering -----------------------------------------------------------------------------------------------
class TakeMismatch(ValueError):
    """An existing take was made from another plan or with other settings."""


def manifest_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + MANIFEST_SUFFIX)


def windows_folder(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + WINDOWS_SUFFIX)


@dataclass
class Take:
    out: Path
    plan: Storyboard
    settings: Settings
    records: list[dict[str, Any]]  # one per finished window, in take order
    notes: list[str]
    finished: bool
    shots: list[dict[str, Any]] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(r["frames"] for r in self.records)


WindowCallback = Callable[[dict[str, Any], int], None]  # (a finished window's record, windows in the take)


class _Renderer:
    """Renders windows into the take's folder and manifest; one per render or re-render."""

    def __init__(self, pipe: Any, plan: Storyboard, out: Path, settings: Settings):
        self.pipe, self.plan, self.out, self.settings = pipe, plan, Path(out), settings
        self.folder = windows_folder(out)
        self.reference = None
        if plan.reference:
            from pipelines.video_io import read_media

            image = read_media(plan.reference, settings.fps, max_frames=1, size=(settings.width, settings.height))
            self.reference = colour_stats(image)

    # one window ---------------------------------------------------------------------------------------------
    def request(self, w: Window, previous: Path | None, closing: Path | None = None) -> Any:
        """The window's request: fresh, an extension of `previous`, or (re-rendering) a join of `previous` to
        `closing` (connect; a backward extension when there is no previous)."""
        from pipelines.video_io import count_frames

        plan, s = self.plan, self.settings
        shot = plan.shots[w.shot]
        # A window continuing a short one (a fresh shot or an opening clip of fewer frames than the context)
        # sees all of it: its frame count is 4k+1 like the context's.
        context = s.context if previous is None else min(s.context, count_frames(previous, s.fps))
        common = dict(prompt=shot.prompt, negative_prompt=plan.negative_prompt, width=s.width, height=s.height,
                      fps=s.fps, steps=s.steps, seed=window_seed(plan, w.shot, w.number),
                      use_saved_latents=plan.saved_latents)
        if closing is not None:
            best = dict(best_of=plan.best_of)
            if previous is None:
                request = self.pipe.request("extend", clip=str(closing), direction="backward", new_frames=w.frames - 1,
                                            context_frames=context, **common, **best)
            else:
                request = self.pipe.request("connect", clip_a=str(previous), clip_b=str(closing),
                                            new_frames=w.frames - 1, context_frames=context, **common, **best)
        elif previous is None:
            if w.kind == "animate":
                request = self.pipe.request("animate", image=w.keyframe, num_frames=w.frames, **common)
            else:
                request = self.pipe.request("t2v", num_frames=w.frames, **common)
        else:
            request = self.pipe.request("extend", clip=str(previous), new_frames=w.frames, context_frames=context,
                                        best_of=plan.best_of, **common)
        if plan.held_noise and request.mode in ("extend", "connect"):
            held = tuple(dataclasses.replace(item, strength=1.0 - plan.held_noise) for item in request.conditioning)
            request = request.replace(conditioning=held, mode_params=request.mode_params)
        if w.keyframe is not None and w.kind == "extend" and closing is None:
            still = self.still_clip(w.keyframe)
            item = ConditioningItem(str(still), frame_index=request.num_frames - s.temporal - 1,
                                    source_count=s.temporal + 1)
            request = request.replace(conditioning=(*request.conditioning, item), mode_params=request.mode_params)
        return request

    def still_clip(self, image: str) -> Path:
        """A still as the clip of `temporal + 1` frames a later latent is encoded from (the first only warms
        the causal encoder), so that the window holds it over its last `temporal` frames."""
        from pipelines.video_io import read_media, write_frames

        s = self.settings
        frame = read_media(image, s.fps, max_frames=1, size=(s.width, s.height))[:1]
        folder = self.folder / f"still-{hashlib.sha256(frame.tobytes()).hexdigest()[:16]}"
        if not folder.is_dir():
            write_frames(folder, np.repeat(frame, s.temporal + 1, axis=0))
        return folder

    def render_window(self, w: Window, previous: Path | None, anchor: tuple | None, callback=None,
                      closing: Path | None = None) -> tuple[dict[str, Any], np.ndarray, Path]:
        """Generate a window, store its frames and latents, and return (its record, its new frames, its folder)."""
        from pipelines.latents import LatentTimeline, save_timeline
        from pipelines.video_io import count_frames, write_frames

        if w.kind == "clip":
            return self.clip_window(w)
        request = self.request(w, previous, closing)
        result = self.pipe.generate(request, callback)
        # Extend and connect copy the previous window whole, then the new frames.
        before = count_frames(previous, self.settings.fps) if previous is not None else 0
        new = result.frames[before:before + w.frames]
        window = result.frames[result.window_offset:result.window_offset + request.num_frames].copy()
        record: dict[str, Any] = {"index": w.index, "shot": w.shot + 1, "number": w.number, "mode": request.mode,
                                  "seed": request.seed, "start": w.start, "frames": w.frames,
                                  "joins": result.join_ratios, "joined": previous is not None}
        anchor_stats = self.reference or anchor
        if anchor_stats is not None:
            record["drift_before"] = drift(new, anchor_stats)
            # A closing window is held at both ends (its frames run into the next shot's, which stay as they
            # are), and one that closes on a keyframe holds the still there: anchoring would move them.
            if self.plan.colour_anchor and closing is None and not (w.kind == "extend" and w.keyframe):
                new = anchor_colours(new, anchor_stats, ease=self.plan.anchor_frames)
                # The window's stored frames are what the take shows: the next window copies them through
                # and their difference from the latents' decode is carried into its frames (pipelines/seams.py).
                generated = slice(before - result.window_offset, before - result.window_offset + w.frames)
                window[generated] = new
            record["drift"] = drift(new, anchor_stats)
        # Named by what made it: a re-rendered window never overwrites the one the manifest still lists
        # until the re-render finishes.
        made = hashlib.sha256(request.to_json().encode()).hexdigest()[:16]
        folder = self.folder / f"w{w.index:05d}-{made}"
        if folder.exists():
            shutil.rmtree(folder)
        write_frames(folder, window)
        save_timeline(folder, LatentTimeline(result.latents, 0, len(window), float(self.settings.fps),
                                             self.pipe.model_id, self.settings.temporal))
        record["folder"] = folder.name
        record["skip"] = before - result.window_offset  # frames of the folder before the new ones
        record["notes"] = [n for n in result.notes if "saved latents" not in n or "re-encoded" in n]
        return record, new, folder

    def clip_window(self, w: Window) -> tuple[dict[str, Any], np.ndarray, Path]:
        """A clip that opens its shot, as a window: its frames at the take's size and fps, copied (the shot's
        anchor; the next window continues it from its pixels, as it has no saved latents)."""
        from pipelines.video_io import read_media, write_frames

        s = self.settings
        frames = read_media(w.keyframe, s.fps, max_frames=w.frames, size=(s.width, s.height))[:w.frames]
        made = hashlib.sha256(frames.tobytes()).hexdigest()[:16]
        folder = self.folder / f"w{w.index:05d}-clip-{made}"
        if not folder.is_dir():
            write_frames(folder, frames)
        record = {"index": w.index, "shot": w.shot + 1, "number": w.number, "mode": "clip", "seed": None,
                  "start": w.start, "frames": w.frames, "joins": [], "joined": False, "folder": folder.name,
                  "skip": 0, "notes": []}
        return record, frames, folder

    def new_frames(self, record: dict[str, Any]) -> np.ndarray:
        """A finished window's frames in the take, read back from its folder (lossless)."""
        from pipelines.video_io import read_media

        frames = read_media(self.folder / record["folder"], self.settings.fps)
        return frames[record["skip"]:record["skip"] + record["frames"]]

    def anchor_of(self, records: list[dict[str, Any]], shot: int) -> tuple | None:
        """The shot's anchor: the reference image's statistics, else its first window's (None for that window)."""
        if self.reference is not None:
            return self.reference
        first = next((r for r in records if r["shot"] == shot + 1 and r["number"] == 0), None)
        return colour_stats(self.new_frames(first)) if first is not None else None

    # the manifest -------------------------------------------------------------------------------------------
    def save(self, records: list[dict[str, Any]], finished: bool, notes: list[str]) -> None:
        from pipelines.video_io import atomic_path

        data = {"format": PLAN_FORMAT, "plan": self.plan.to_dict(), "settings": dataclasses.asdict(self.settings),
                "finished": finished, "notes": notes, "windows": records, "shots": shot_summary(self.plan, records)}
        with atomic_path(manifest_path(self.out)) as tmp:
            tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")

    def stream(self, records: list[dict[str, Any]], writer: Any, joins: JoinMeter) -> None:
        for record in records:
            frames = self.new_frames(record)
            writer.write(frames)
            joins.add(frames, join=record["joined"])


class JoinMeter:
    """Frame steps of the take as it streams (one float a frame): the join where each continuing window
    meets the frames before it, scored as pipelines/seams.py scores joins, over the whole take's median step.
    A cut is no join."""

    def __init__(self):
        self.steps: list[float] = []
        self.joins: list[int] = []  # indices into steps
        self.last: np.ndarray | None = None

    def add(self, frames: np.ndarray, join: bool) -> None:
        from pipelines.seams import frame_steps

        if self.last is not None:
            if join:
                self.joins.append(len(self.steps))
            self.steps.append(float(frame_steps(np.stack([self.last, frames[0]]))[0]))
        self.steps.extend(float(x) for x in frame_steps(frames))
        self.last = frames[-1]

    def ratios(self) -> list[float]:
        median = max(float(np.median(self.steps)), 1e-6) if self.steps else 1.0
        return [round(self.steps[j] / median, 3) for j in self.joins]


def shot_summary(plan: Storyboard, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shot: its windows' drift (the worst and the last) and its worst join, as the studio shows them."""
    summary = []
    for s in range(len(plan.shots)):
        mine = [r for r in records if r["shot"] == s + 1]
        drifts = [r["drift"]["mean"] for r in mine if "drift" in r]
        unheld = [r["drift_before"]["mean"] for r in mine if "drift_before" in r]
        joins = [r["join"] for r in mine if r.get("join") is not None]
        summary.append({"shot": s + 1, "windows": len(mine), "frames": sum(r["frames"] for r in mine),
                        "drift_max": max(drifts, default=None), "drift_last": drifts[-1] if drifts else None,
                        "drift_before_anchoring_max": max(unheld, default=None),
                        "join_max": max(joins, default=None)})
    return summary


def _load_manifest(out: Path) -> dict[str, Any] | None:
    path = manifest_path(out)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TakeMismatch(f"{path.name} cannot be read ({error}); remove it to start the take again") from None


def render(pipe: Any, plan: Storyboard, out: str | Path, on_window: WindowCallback | None = None,
           callback: Any = None) -> Take:
    """Render the plan into `out` (an .mp4), resuming from the last finished window of an earlier run of the
    same plan. A GenerationCancelled raised by `on_window` or `callback` stops it after writing the frames
    finished so far; run again to resume."""
    from pipelines.sampling import GenerationCancelled
    from pipelines.video_io import Mp4Writer

    out = Path(out)
    settings = Settings.of(plan, pipe)
    shots = layout(plan, settings)
    windows = [w for shot in shots for w in shot.windows]
    notes = [shot.note for shot in shots]
    renderer = _Renderer(pipe, plan, out, settings)
    records: list[dict[str, Any]] = []
    manifest = _load_manifest(out)
    if manifest is not None:
        if manifest.get("plan") != plan.to_dict() or manifest.get("settings") != dataclasses.asdict(settings):
            raise TakeMismatch(f"{out.name} was made from another plan or with other settings: choose another "
                               f"--out, remove {manifest_path(out).name}, or re-render one shot with --shot")
        records = manifest["windows"]
        if any(not (renderer.folder / r["folder"]).is_dir() for r in records):
            raise TakeMismatch(f"{renderer.folder.name} lacks windows its manifest lists: remove "
                               f"{manifest_path(out).name} to start the take again")
    renderer.folder.mkdir(parents=True, exist_ok=True)
    joins = JoinMeter()
    finished = False
    with Mp4Writer(out, settings.width, settings.height, settings.fps) as writer:
        renderer.stream(records, writer, joins)  # what an earlier run finished
        previous = renderer.folder / records[-1]["folder"] if records else None
        try:
            for w in windows[len(records):]:
                anchor = renderer.anchor_of(records, w.shot)
                record, new, folder = renderer.render_window(w, None if w.number == 0 and fresh(plan, w.shot)
                                                             else previous, anchor, callback)
                writer.write(new)
                joins.add(new, join=record["joined"])
                records.append(record)
                renderer.save(records, False, notes)
                previous = folder
                if on_window is not None:
                    on_window(record, len(windows))
            finished = True
        except (GenerationCancelled, KeyboardInterrupt):
            notes = notes + [f"cancelled after window {len(records)} of {len(windows)}: run again to resume"]
            raise
        finally:
            for record, ratio in zip([r for r in records if r["joined"]], joins.ratios()):
                record["join"] = ratio
            renderer.save(records, finished, notes)
    return Take(out, plan, settings, records, notes, finished, shot_summary(plan, records))


def rerender_shot(pipe: Any, plan: Storyboard, out: str | Path, shot_number: int, callback: Any = None) -> Take:
    """Re-render shot `shot_number` (1-based) of the finished take `out` under `plan`, which may change that
    shot's prompt, seed or keyframes but not its length or the other shots. The shot is joined to its
    unchanged neighbours: it continues the shot before (unless it is a cut) and, when the shot after continues
    it, its last window is a connect into that shot's first frames. Every other shot's frames are kept
    bit for bit."""
    from pipelines.video_io import Mp4Writer, write_frames

    out = Path(out)
    manifest = _load_manifest(out)
    if manifest is None or not manifest.get("finished"):
        raise ValueError(f"{out.name} has no finished take to re-render a shot of (its manifest "
                         f"{manifest_path(out).name} is missing or the take is unfinished: render it first)")
    old = Storyboard.from_dict(manifest["plan"])
    if not 1 <= shot_number <= len(plan.shots):
        raise ValueError(f"--shot {shot_number} is not valid: a shot from 1 to {len(plan.shots)}")
    k = shot_number - 1
    changed = [i + 1 for i, (a, b) in enumerate(zip(old.shots, plan.shots)) if a != b and i != k]
    if len(old.shots) != len(plan.shots) or changed:
        raise ValueError(f"the plan differs from the take's outside shot {shot_number} (shots "
                         f"{', '.join(map(str, changed)) or 'added or removed'}): only shot {shot_number} may change")
    if old.shots[k].seconds != plan.shots[k].seconds or old.shots[k].transition != plan.shots[k].transition:
        raise ValueError(f"shot {shot_number}: its seconds and transition must stay as the take has them "
                         f"({old.shots[k].seconds:g} s, {old.shots[k].transition}); render a new take to change them")
    if dataclasses.replace(old, shots=plan.shots) != plan:
        raise ValueError("the plan's settings differ from the take's: only one shot's prompt, seed or keyframes "
                         "may change")
    settings = Settings.of(plan, pipe)
    if manifest.get("settings") != dataclasses.asdict(settings):
        raise TakeMismatch(f"{out.name} was made with other settings (model, size, fps or steps)")
    shots = layout(plan, settings)
    renderer = _Renderer(pipe, plan, out, settings)
    records = manifest["windows"]
    before = [r for r in records if r["shot"] < shot_number]
    after = [r for r in records if r["shot"] > shot_number]
    windows = list(shots[k].windows)
    closing = None
    if k + 1 < len(plan.shots) and not fresh(plan, k + 1):
        # The shot's last frame and the next shot's first frames close its last window; the first of them
        # lies in a generated latent (it only warms the causal encoder: pipelines/modes.py), so it is the
        # shot's own last frame, and the next shot's frames are copied through untouched.
        head = np.concatenate([renderer.new_frames(r) for r in after[:1 + settings.context // settings.temporal]])
        tail = renderer.new_frames([r for r in records if r["shot"] == shot_number][-1])[-1:]
        closing = renderer.folder / f"head-{shot_number}"
        if closing.exists():
            shutil.rmtree(closing)
        write_frames(closing, np.concatenate([tail, head[:settings.context - 1]]))
    if closing is not None and windows[-1].kind == "extend" and windows[-1].keyframe:
        raise ValueError(f"shot {shot_number}: its last window closes on a keyframe, and re-rendering it must also "
                         f"join it to shot {shot_number + 1}: move the keyframe earlier, or render a new take")
    new_records: list[dict[str, Any]] = []
    previous = renderer.folder / before[-1]["folder"] if before and not fresh(plan, k) else None
    for i, w in enumerate(windows):
        anchor = renderer.anchor_of(new_records, k)
        last = i == len(windows) - 1
        record, _, folder = renderer.render_window(w, previous, anchor, callback, closing if last else None)
        new_records.append(record)
        previous = folder
    records = before + new_records + after
    for index, record in enumerate(records):  # a changed keyframe may change how many windows the shot has
        record["index"] = index
    joins = JoinMeter()
    with Mp4Writer(out, settings.width, settings.height, settings.fps) as writer:
        renderer.stream(records, writer, joins)
    for record, ratio in zip([r for r in records if r["joined"]], joins.ratios()):
        record["join"] = ratio
    notes = [shot.note for shot in shots] + [f"shot {shot_number} re-rendered"]
    renderer.save(records, True, notes)
    if closing is not None:
        shutil.rmtree(closing, ignore_errors=True)
    kept = {r["folder"] for r in records}
    for r in manifest["windows"]:
        if r["folder"] not in kept:  # the shot's earlier windows
            shutil.rmtree(renderer.folder / r["folder"], ignore_errors=True)
    return Take(out, plan, settings, records, notes, True, shot_summary(plan, records))


def read_take(out: str | Path, fps: float | None = None) -> np.ndarray:
    """Every frame of a take, losslessly, from its windows (tests and benchmarks: a long take is large)."""
    from pipelines.video_io import read_media

    out = Path(out)
    manifest = _load_manifest(out)
    if manifest is None:
        raise ValueError(f"{out.name} has no storyboard manifest")
    folder = windows_folder(out)
    fps = fps or manifest["settings"]["fps"]
    return np.concatenate([read_media(folder / r["folder"], fps)[r["skip"]:r["skip"] + r["frames"]]
                           for r in manifest["windows"]])
