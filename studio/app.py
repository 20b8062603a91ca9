"""The browser studio: a tab per mode on the one shared pipeline, a shared result panel with "send to"
buttons, and a history with lineage and Reproduce.

Handlers are thin: widgets become a `GenerationRequest` (through `pipelines.modes`), the engine runs it,
the handler streams progress. Nothing here touches tensors.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines import modes
from pipelines.media_check import check_media
from pipelines.request import MAX_BEST_OF, MAX_SEED, GenerationRequest, default_guidance, frames_text
from pipelines.samplers import SAMPLERS
from studio.engine import Engine, Job, QueueFull
from studio.outputs import DiskFull, Entry, upload_name
from studio.creator_tools import LORA_KEYS, CreatorTools, build_picker
from studio.storyboard_tab import StoryboardTab, build_tab
from studio.variations_tab import VariationsPanel, build_controls, build_panel
from studio.widgets import ImageFile, VideoFile, number

log = logging.getLogger("studio.app")

MATCH_INPUT = "match the input"
BROWSER_MAX_SEED = 2**53 - 1  # the largest whole number a browser's Number widget (a JavaScript double) holds exactly
UPDATE_INTERVAL_S = 0.3  # progress updates to the page
BUILDING_AT_ONCE = 2  # requests whose inputs are checked and kept at the same time (see StudioApp.stream)
CANDIDATES = [1, 2, 4, 8]  # best_of choices for joins: each candidate costs a whole generation
CANDIDATES_LABEL = "Candidates (keeps the smoothest join)"
RATIOS = (("16:9", 16 / 9), ("1:1", 1.0), ("9:16", 9 / 16), ("4:3", 4 / 3), ("3:4", 3 / 4))
# The widgets every mode's tab has (besides its mode's own), by name; "candidates" only where a mode joins.
SHARED = ("prompt", "negative", "seed", "steps", "guidance", "sampler", "size", "seconds", "fps")
TYPED = ("prompt", "negative", "seed")  # typed widgets whose every keystroke would otherwise re-plan, for nothing
# Each built-in tab's API endpoint (/t2v, /animate, ...) takes its widgets in this order, kept as it was for
# API clients (a widget the loaded model lacks, such as a knob, is left out). A mode registered later gets a
# tab whose endpoint takes its media, its parameters, then the shared widgets.
API_ORDER = {
    "t2v": (*SHARED, "one_frame", "image_first"),
    "animate": ("image", *SHARED, "motion_bucket_id", "noise_aug_strength", "min_guidance_scale"),
    "extend": ("video", "direction", "context", "loop", "candidates", *SHARED),
    "restyle": ("video", "strength", *SHARED, "trim_from", "trim_to"),
    "connect": ("clip_a", "clip_b", "context", "candidates", *SHARED),
}
# A send-to button's target: (tab, the widget the output goes into), and its label.
SEND_TARGETS = {"extend": ("extend", "video"), "restyle": ("restyle", "video"), "connect_a": ("connect", "clip_a"),
                "connect_b": ("connect", "clip_b"), "animate": ("animate", "image")}
SEND_LABELS = {"extend": "→ Extend", "restyle": "→ Restyle", "connect_a": "→ Connect A", "connect_b": "→ Connect B",
               "animate": "→ Animate last frame"}


def tab_modes() -> dict[str, list[modes.ModeSpec]]:
    """The studio's mode registry: each tab's modes (`ModeSpec.home`), its own first."""
    found: dict[str, list[modes.ModeSpec]] = {}
    for spec in modes.SPECS.values():
        found.setdefault(spec.home, []).append(spec)
    return {tab: sorted(specs, key=lambda spec: spec.name != tab) for tab, specs in found.items()}


def tab_title(tab: str) -> str:
    return modes.SPECS[tab].title if tab in modes.SPECS else tab.capitalize()


def tab_params(tab: str) -> dict[str, modes.Param]:
    """The studio widgets of a tab's mode parameters, by widget name (modes of one tab share a widget)."""
    found: dict[str, modes.Param] = {}
    for spec in tab_modes()[tab]:
        for param in spec.params:
            if param.studio:
                found.setdefault(param.key, param)
    return found


def tab_inputs(tab: str, info: ModelInfo) -> list[str]:
    """The names of a tab's widgets for the loaded model, in its endpoint's order: its modes' media, their
    other parameters (knobs only where the model reads them), the checkboxes that pick a mode, the candidates
    where a mode joins, then the shared settings; a built-in tab in API_ORDER's order."""
    specs = tab_modes()[tab]
    params = {key: p for key, p in tab_params(tab).items() if not p.knob or p.name in info.knobs}
    names = [key for key, p in params.items() if p.is_media]
    names += [key for key in params if key not in names and key not in SHARED]
    names += [spec.switch for spec in specs if spec.switch] + (["candidates"] * any(spec.joins for spec in specs))
    names += [key for key in SHARED if key != "seconds" or key in params]
    if tab in API_ORDER:
        unplaced = set(names) - set(API_ORDER[tab])
        if unplaced:
            raise ValueError(f"the {tab} tab's endpoint has no place for {sorted(unplaced)}: add them to API_ORDER")
        names = [key for key in API_ORDER[tab] if key in names]
    return names


def mode_of(tab: str, values: dict[str, Any]) -> modes.ModeSpec:
    """The mode a tab's widgets ask for: the one whose checkbox is ticked, else the tab's own."""
    specs = tab_modes()[tab]
    return next((spec for spec in specs if spec.switch and values.get(spec.switch)), specs[0])


@dataclass(frozen=True)
class ModelInfo:
    """What the UI needs to know about the loaded model to offer only valid settings."""

    model_id: str
    width: int
    height: int
    num_frames: int
    fps: float
    steps: int
    guidance_scale: float
    grid: int
    temporal: int
    image_first: bool = False
    join_guidance_scale: float | None = None  # extend, loop and connect (None: guidance_scale)
    # Stable Video Diffusion's animate knobs (request.KNOBS) and their defaults: empty for models that read none.
    knobs: dict[str, float] = dataclasses.field(default_factory=dict)
    modes: dict[str, str | None] | None = None  # mode -> None where offered, else why not (None: every mode)
    samplers: tuple[str, ...] = tuple(SAMPLERS)  # the ones its family can run
    context_frames: int | None = None  # frames each clip of extend, loop and connect holds (None: the tab's)
    enhancer_style: str | None = None  # the prompt enhancer's system prompt (None: the general video style)

    @classmethod
    def of(cls, pipe: Any) -> ModelInfo:
        d = pipe.defaults
        knobs = {name: getattr(d, name) for name in pipe.family.knobs if getattr(d, name, None) is not None}
        return cls(pipe.model_id, d.width, d.height, d.num_frames, d.fps, d.steps, d.guidance_scale, pipe.grid,
                   pipe.temporal, d.image_first, d.join_guidance_scale, knobs,
                   dict(pipe.modes), tuple(s for s in SAMPLERS if s in pipe.family.samplers), d.context_frames,
                   d.enhancer_style)

    def guidance_for(self, tab: str) -> float:
        """A tab's default guidance: its mode's (the Extend tab's loops share extend's)."""
        return default_guidance(tab, self.guidance_scale, self.join_guidance_scale)

    def why_not(self, tab: str) -> str | None:
        """Why the model cannot do a tab's mode (the tab is named after it), or None when it can."""
        return (self.modes or {}).get(tab)

    def context_choices(self, at_end: bool) -> list[int]:
        """Context frames a clip may give: temporal*k+1 (1, 5, 9, ... for a 4x VAE), at least temporal+1 for a
        clip held at the window's end; only 1 for a model that holds single stills (Wan's image-to-video)."""
        if self.context_frames == 1:
            return [1]
        return [self.temporal * k + 1 for k in range(1 if at_end else 0, 5)]

    @property
    def context(self) -> int:
        """The context dropdowns' default."""
        return self.context_frames or 2 * self.temporal + 1

    @property
    def seconds(self) -> float:
        """The duration widgets' default: the one that gives the model's default frame count back (between the
        first and last frame, 5 s for Wan's 81 at 16 fps; counted per frame where the VAE has no temporal
        compression, 2 s for Stable Video Diffusion's 14 at 7)."""
        for seconds in (round((self.num_frames - 1) / self.fps, 2), round(self.num_frames / self.fps, 2)):
            if modes.frames_for_seconds(seconds, self.fps, "window", self.temporal) == self.num_frames:
                return seconds
        return round(self.num_frames / self.fps, 2)


# ---- sizes and lengths -----------------------------------------------------------------------------------
def size_presets(info: ModelInfo) -> dict[str, tuple[int, int]]:
    """Aspect ratios at the model's default area and at 1.5x its sides, every size on the model's grid. The
    model's own default size is always one of them (Wan 2.1's 832x480 is near 16:9, not on it)."""
    presets: dict[str, tuple[int, int]] = {}
    for label, scale in (("", 1.0), (" large", 1.5)):
        area = info.width * info.height * scale**2
        for name, ratio in RATIOS:
            if abs(info.width / info.height - ratio) < 0.02:
                width = round(info.width * scale / info.grid) * info.grid
                height = round(info.height * scale / info.grid) * info.grid
            else:
                width = max(info.grid, round((area * ratio) ** 0.5 / info.grid) * info.grid)
                height = max(info.grid, round((area / ratio) ** 0.5 / info.grid) * info.grid)
            presets[f"{name}{label} · {width}x{height}"] = (width, height)
    if (info.width, info.height) not in presets.values():
        presets = {f"model default · {info.width}x{info.height}": (info.width, info.height), **presets}
    return presets


def default_preset(info: ModelInfo) -> str:
    return next(k for k, v in size_presets(info).items() if v == (info.width, info.height))


def parse_size(label: str) -> tuple[int, int] | None:
    """(width, height) of a preset label, or None for "match the input"."""
    if label is not None and not isinstance(label, str):
        raise gr.Error(f"size {label!r} is not valid: a preset's label, or WIDTHxHEIGHT")
    found = re.search(r"(\d+)x(\d+)$", label or "")
    if not found:
        if label == MATCH_INPUT:
            return None
        raise gr.Error(f"unknown size {label!r}: pick one of the presets")
    return int(found.group(1)), int(found.group(2))


def _size_for(label: str, media: str | None, info: ModelInfo) -> tuple[int, int]:
    size = parse_size(label)
    if size is not None:
        return size
    if not media:
        return info.width, info.height
    return modes.size_for(media, info.width, info.height, info.grid)


def length_text(seconds: float, fps: float, kind: str, info: ModelInfo) -> str:
    """What a duration becomes: the valid frame count nearest to it."""
    if not fps or fps <= 0 or not seconds or seconds <= 0:
        return "Pick a positive duration and frame rate."
    frames = modes.frames_for_seconds(seconds, fps, kind, info.temporal)
    noun = "new frame" if kind != "window" else "frame"
    bridge = " (the bridge back to the start)" if kind == "loop" else ""
    return f"{frames_text(frames, noun)}{bridge} = {frames / fps:.2f} s at {fps:g} fps"


# ---- widgets -> request ----------------------------------------------------------------------------------
def _settings(negative: str, seed: float | None, steps: float, guidance: float, sampler: str,
              size: tuple[int, int]) -> dict[str, Any]:
    valid_seed = (f"a whole number from 0 to {BROWSER_MAX_SEED}, or -1 for a random one (larger seeds, up to "
                  f"{MAX_SEED}: the command line)")
    seed = number(seed, "Seed", valid_seed, whole=True)
    if seed == -1:  # the one value that means "pick one"
        seed = secrets.randbelow(2**31)
    if not 0 <= seed <= BROWSER_MAX_SEED:
        raise gr.Error(f"Seed {seed} is not valid: {valid_seed}")
    steps = number(steps, "Steps", "a whole number from 1 to 100", whole=True)
    return dict(negative_prompt=negative or "", seed=seed, steps=steps,
                guidance_scale=number(guidance, "Guidance", "a number from 0 to 15"), sampler=sampler,
                width=size[0], height=size[1])


def _fps(value: Any) -> float:
    return number(value, "Frames per second", "a number from 1 to 60")


def _seconds(value: Any, field: str = "Duration") -> float:
    seconds = number(value, field, "a number of seconds from 0.25 to 10")
    if seconds <= 0:
        raise gr.Error(f"{field} {seconds:g} is not valid: a number of seconds from 0.25 to 10")
    return seconds


def _trim_from(value: Any) -> float:
    return number(value, "Trim from", "0 or more seconds into the clip")


def _candidates(value: Any) -> int:
    return number(value, "Candidates", f"a whole number from 1 to {MAX_BEST_OF}", whole=True)


def _context(value: Any) -> int:
    return number(value, "Context frames", "one of the counts listed", whole=True)


def _media(value: Any, what: str) -> str:
    """A path from an upload widget's value, or a clear error when nothing was given."""
    if isinstance(value, dict):  # gradio_client sends {"path": ...} or {"video": {...}}
        value = value.get("video", value)
        value = value.get("path") if isinstance(value, dict) else value
    if not value:
        raise gr.Error(f"Add {what} first.")
    return str(value)


# ---- the app ---------------------------------------------------------------------------------------------
class StudioApp:
    def __init__(self, engine: Engine, info: ModelInfo, loras: Path | None = None, enhancer: str | None = None):
        self.engine = engine
        self.info = info
        self.history = engine.history
        self.presets = size_presets(info)
        self.previews = Path(tempfile.mkdtemp(prefix="studio-previews-"))  # in the temp folder Gradio reads from
        weakref.finalize(self, shutil.rmtree, self.previews, ignore_errors=True)  # at the latest, at exit
        self._building = threading.BoundedSemaphore(BUILDING_AT_ONCE)
        self.creator = CreatorTools(self.history, info, loras, enhancer)  # LoRAs, the enhancer (every tab's)
        self.storyboard = StoryboardTab(self)  # the Storyboard tab's handlers (studio/storyboard_tab.py)
        self.variations = VariationsPanel(self)  # the variations grid's (studio/variations_tab.py)

    # requests, one builder per tab ----------------------------------------------------------------------
    def _keep(self, value: Any, what: str) -> str:
        """Check an upload's headers (a rejection is a ValueError with the reason), then keep a copy."""
        path = _media(value, what)
        check_media(path)
        try:
            return str(self.history.keep_upload(path))
        except OSError as error:  # a full disk says so; the log has the rest
            log.error("could not keep the upload %s\n%s", Path(path).name, traceback.format_exc())
            raise gr.Error(str(error) if isinstance(error, DiskFull) else
                           f"The upload could not be kept in the outputs folder ({error.strerror or error}).") from None

    def page_values(self, tab: str, names: list[str], values: tuple, request: gr.Request | None) -> dict[str, Any]:
        """What a tab's endpoint was sent, by widget name, with its session's picks (its LoRAs and enhanced
        prompt, kept for it: CreatorTools); gr.Error for a tab the model lacks (an API call to a tab the page
        shows as unavailable gets the same reason)."""
        why = self.info.why_not(tab)
        if why:
            raise gr.Error(f"{tab_title(tab)} is not available for this model: {why}")
        return {**dict(zip(names, values, strict=True)), **self.creator.picks(request)}

    def request(self, tab: str, values: dict[str, Any], keep: bool = True) -> GenerationRequest:
        """The request a tab's widgets (`values`, by widget name) describe, made by its mode's spec; with
        keep=False uploads are read where the browser put them (a plan), not kept."""
        spec = mode_of(tab, values)
        fps = _fps(values.get("fps"))
        params: dict[str, Any] = {}
        for param in spec.params:
            if param.studio and (not param.knob or param.name in self.info.knobs):
                params[param.name] = self._param(spec, param, values, fps, keep)
        media = next((params[p.name] for p in spec.media() if p.name in params), None)
        settings = _settings(values.get("negative"), values.get("seed"), values.get("steps"), values.get("guidance"),
                             values.get("sampler"), _size_for(values.get("size"), media, self.info))
        if "candidates" in values:
            settings["best_of"] = _candidates(values["candidates"])
        prompt = values.get("prompt") or ""
        enhanced = values.get("enhanced")  # recorded only while the prompt is still the one the enhancer wrote
        enhanced_from = enhanced.get("original") if isinstance(enhanced, dict) and enhanced.get("prompt") == prompt \
            else None
        # The model's defaults (ModelInfo holds those of ModelDefaults and Geometry the builders read).
        return modes.build(spec.name, self.info, self.info, prompt=prompt, fps=fps, loras=self.creator.chosen_loras(values),
                           enhanced_from=enhanced_from, **settings, **params)

    def _param(self, spec: modes.ModeSpec, param: modes.Param, values: dict[str, Any], fps: float,
               keep: bool = True) -> Any:
        """A widget's value in its builder's units: an upload kept, seconds as frames, numbers checked."""
        value = values.get(param.key)
        if param.is_media and not keep:
            path = _media(value, param.help)
            check_media(path)
            return path
        if param.is_media:
            return self._keep(value, param.help)
        if param.kind == "length" and param.after:  # a trim's end, after its start
            start = _trim_from(values.get(spec.param(param.after).key))
            empty = value is None or (isinstance(value, str) and not value.strip())
            end = None if empty else number(value, "Trim to", "a time in seconds after 'from', or 0 for as far "
                                                               "as the model's window goes")
            return modes.trim(start, end or None, fps, self.info.temporal)[1]  # 0: as far as the window goes
        if param.kind == "length":
            return modes.frames_for_seconds(_seconds(value, param.caption), fps, param.count, self.info.temporal)
        if param.kind == "start":
            return modes.trim(_trim_from(value), None, fps,
                              self.info.temporal)[0]
        if param.kind == "context":
            return _context(value)
        if param.kind == "bool":
            return None if value is None else bool(value)
        if param.kind == "choice":
            if value not in param.choices:
                raise gr.Error(f"{param.caption} {value!r} is not valid: one of {', '.join(map(str, param.choices))}")
            return value
        whole = param.kind == "int"  # the range is the request's to check, and its error says what is valid
        return number(value, param.caption, "a whole number" if whole else "a number", whole=whole)

    def plan(self, tab: str, values: dict[str, Any]) -> str:
        """The line under a tab's Generate button: the predicted time and memory of what its widgets describe
        (empty until its inputs are given)."""
        spec = mode_of(tab, values)
        if any(values.get(p.key) in (None, "") for p in spec.media()):
            return ""
        try:
            with self._building:
                built = self.request(tab, values, keep=False)
        except gr.Error as error:
            return f"Cannot generate this: {error.message}"
        except ValueError as error:
            return f"Cannot generate this: {error}"
        return self.engine.plan(built)

    # running -------------------------------------------------------------------------------------------
    def stream(self, build, request: gr.Request | None, work: Any = None) -> Iterator[tuple]:
        """Build the request (errors become a message), run it (by `work`, if given: see Job.work), and yield
        (status, preview, video, downloads, result, last output, last seed) as it goes."""
        try:
            # Header checks and upload copies, a few at a time however many requests arrive at once (the
            # widgets decode nothing, so this is all the work a request costs before the engine's queue).
            with self._building:
                built: GenerationRequest = build()
                self.engine.pipe.check_request(built)
        except gr.Error:  # already the sentence for the user (gr.Error is a ValueError: str() would quote it)
            raise
        except ValueError as error:
            raise gr.Error(str(error)) from None
        session = request.session_hash if request is not None else ""
        try:
            job = self.engine.submit(built, session or "", work=work)
        except QueueFull as full:
            raise gr.Error(str(full)) from None
        # Progress counts every sampling pass; the status shows which pass and the user's own step count.
        passes = (built.best_of, 2 if self.engine.pipe.uses_image_first(built) else 1)
        shown = None  # the preview last sent: Gradio encodes an image on every yield, so only new ones go out
        sent = 0.0
        try:
            for state in self.engine.follow(job):
                # Updates at most every UPDATE_INTERVAL_S: each one costs the generation CPU time in Gradio.
                if not state.finished and time.monotonic() - sent >= UPDATE_INTERVAL_S:
                    sent = time.monotonic()
                    preview = self._preview_file(job) if state.preview is not shown else gr.skip()
                    shown = state.preview
                    yield (_status_html(state, self.engine.ahead_of(state), passes), preview, gr.skip(), gr.skip(),
                           gr.skip(), gr.skip(), built.seed)
            if job.status == "failed":
                raise gr.Error(job.message)
            if job.status == "cancelled":
                yield (_status_html(job), self._preview_file(job), gr.skip(), gr.skip(),
                       {"status": "cancelled", "step": job.step, "total": job.total}, gr.skip(), built.seed)
                return
            entry = job.entry
            downloads = [str(entry.media)] + ([str(entry.media.with_suffix(".gif"))] if entry.sidecar.get("gif") else [])
            result = {"status": "done", "output": str(entry.media), "sidecar": entry.sidecar}
            video = str(entry.media) if entry.media.suffix == ".mp4" else None
            yield (_status_html(job), str(entry.media) if video is None else self._preview_file(job), video,
                   downloads, result, str(entry.media), built.seed)
        finally:
            if not job.finished:  # the browser went away or Gradio cancelled the event
                self.engine.cancel(job_id=job.id)
            for sent_file in self.previews.glob(f"job{job.id}-*.png"):  # Gradio has its own copies by now
                sent_file.unlink(missing_ok=True)

    def _preview_file(self, job: Job) -> str | None:
        """The job's preview as a file of its own. Gradio stores an image value under its content's hash,
        rewriting that file in place each time, so two sessions showing the same preview (the same seed)
        could each be served the other's half-written file; a file value is copied into its cache
        atomically."""
        from pipelines.video_io import write_png

        if job.preview is None:
            return None
        path = self.previews / f"job{job.id}-{job.step}.png"
        write_png(path, job.preview)
        return str(path)

    def cancel(self, request: gr.Request | None = None) -> str:
        session = request.session_hash if request is not None else None
        # A caller without a session (a raw API call) has no jobs of its own: it cancels nothing.
        asked = self.engine.cancel(session=session) if session else 0
        return "Cancelling after the current step..." if asked else "Nothing is running."

    # send to -------------------------------------------------------------------------------------------
    def last_frame(self, output: str | None) -> str:
        from pipelines.video_io import read_media, write_png

        if not output:
            raise gr.Error("Generate a clip first.")
        frames = read_media(output, self.info.fps)
        target = self.history.uploads / upload_name(f"{Path(output).stem}.last.png")  # a long stem is cut
        write_png(target, frames[-1])
        return str(target)

    def entry(self, name: str) -> Any:
        """The output of this folder called `name` (studio.outputs.Entry); a path's folders are dropped, so
        that only outputs of this folder are ever read."""
        found = self.history.read(self.history.folder / Path(name).name)
        if found is None:
            raise gr.Error(f"{Path(name).name} is not in the history")
        return found

    def send_values(self, output: str | None, target: str,
                    missing: str = "Generate a clip first.") -> tuple[str, str, Any]:
        """(the target tab's input, the prompt, the seed) of an output sent to another tab: the clip itself,
        or for Animate its last frame. A one-frame result is an image, which only Animate takes."""
        if not output:
            raise gr.Error(missing)
        entry = self.entry(output)
        if target != "animate" and entry.media.suffix.lower() == ".png":
            raise gr.Error(f"{entry.media.name} is one frame (an image), not a clip: use \"→ Animate\" to make "
                           "a clip from it first.")
        media = self.last_frame(str(entry.media)) if target == "animate" else str(entry.media)
        return media, entry.prompt, entry.sidecar["request"].get("seed")

    def fitted(self, media: Any, size: str, fps: float | None = None) -> tuple[Any, str]:
        """The input as the model will see it: cover-scaled and centre-cropped to the chosen size, read at the
        tab's frame rate; the note says what changes (real footage is often far larger and faster)."""
        from pipelines.media_check import video_info
        from pipelines.video_io import fit_frames, is_image, media_size, read_image, read_video

        if not media:
            return None, ""
        path = _media(media, "a file")
        fps = float(fps) if fps and fps > 0 else self.info.fps
        try:
            width, height = _size_for(size, path, self.info)
            first = read_image(path) if is_image(path) else read_video(path, fps, max_frames=1)
            frame = fit_frames(first[:1], width, height)[0]
            source = video_info(path) if not is_image(path) and not Path(path).is_dir() else None
            source_size = media_size(path)
        except (ValueError, OSError) as error:
            return None, f"Cannot read this file: {error}"
        made = f"the model makes {width}x{height} (scaled to cover, centre cropped)"
        if source is None:
            what = "image is" if is_image(path) else "frames are"
            return frame, f"Your {what} {source_size[0]}x{source_size[1]}; {made}."
        rate = f" at {source.fps:g} fps" if source.fps else ""
        length = f", {source.seconds:.1f} s" if source.seconds else ""
        frames = f": {frames_text(round(source.seconds * fps))} of it" if source.seconds else ""
        return frame, f"Your clip is {source.width}x{source.height}{rate}{length}; {made} at {fps:g} fps{frames}."

    # history -------------------------------------------------------------------------------------------
    def history_rows(self) -> tuple[list[list[Any]], Any]:
        entries = self.history.entries()
        rows = [[e.media.name, e.mode, e.prompt[:80], e.sidecar.get("frames"), e.sidecar["request"].get("seed"),
                 ", ".join(Path(p).name for p in e.parents)] for e in entries]
        names = [e.media.name for e in entries]
        return rows, gr.update(choices=names, value=names[0] if names else None)

    def show_entry(self, name: str | None) -> tuple[Any, Any, str, dict]:
        if not name:
            return None, None, "", {}
        entry = self.entry(name)
        video = str(entry.media) if entry.media.suffix == ".mp4" else None
        image = str(entry.media) if video is None else None
        return video, image, _lineage_markdown(self.history.lineage(entry.media), self.history.children(entry.media),
                                               self.history.uploads), entry.sidecar

    def _default(self, param: modes.Param) -> Any:
        """A widget's value for a parameter left at its default (None: the widget keeps what it shows)."""
        if param.knob:
            return self.info.knobs[param.name]
        if param.model_default and param.kind not in ("length", "context"):
            return getattr(self.info, param.model_default, None)
        return None if param.kind in ("length", "context") else param.default

    def reproduce_values(self, name: str | None, request: gr.Request | None = None) -> dict[str, Any]:
        """The settings of an output as values for its tab's widgets (by widget name)."""
        if not name:
            raise gr.Error("Pick an output in the history first.")
        entry = self.entry(name)
        r = GenerationRequest.from_dict(entry.sidecar["request"])
        missing: list[str] = []

        def source(path: str | None, what: str) -> str | None:
            """Only a file in the outputs folder goes back: a sidecar may name any path (see History.inside)."""
            kept = self.history.inside(path) if path else None
            if path and kept is None:
                missing.append(what)
            return None if kept is None else str(kept)

        spec = modes.spec_of(r.mode)
        try:
            made = spec.values(r)
        except ValueError as error:
            raise gr.Error(f"{name}'s sidecar is not one this studio wrote: {error}") from None
        tab = spec.home
        size = f"{r.width}x{r.height}"
        label = next((k for k, v in self.presets.items() if v == (r.width, r.height)), f"custom · {size}")
        values: dict[str, Any] = dict(tab=tab, prompt=r.prompt, negative=r.negative_prompt, seed=r.seed,
                                      steps=r.steps, guidance=r.guidance_scale, sampler=r.sampler, size=label,
                                      fps=r.fps)
        specs = tab_modes()[tab]
        values.update({other.switch: other is spec for other in specs if other.switch})
        if any(other.joins for other in specs):
            values["candidates"] = r.best_of
        for param in spec.params:
            if not param.studio or (param.knob and param.name not in self.info.knobs):
                continue
            value = made.get(param.name)
            if param.is_media:
                value = source(value, re.sub(r"^an? ", "the ", param.help))
            elif param.kind == "length" and param.after:  # shown as the time the trim ends at
                value = None if value is None else (made.get(param.after, 0) + value) / r.fps
            elif param.kind in ("length", "start"):
                value = None if value is None else value / r.fps
            elif value is None:
                value = self._default(param)
            values[param.key] = value
        for key, param in tab_params(tab).items():  # the tab's other modes' widgets go back to their defaults
            if key not in values and (not param.knob or param.name in self.info.knobs):
                values[key] = self._default(param)
        lora_values, lost_loras = self.creator.lora_values(r.loras, request)
        values.update(lora_values)
        values["enhanced"] = {"prompt": r.prompt, "original": r.enhanced_from} if r.enhanced_from is not None else None
        if r.seed > BROWSER_MAX_SEED:  # the page would round it and silently make another clip
            values["seed"] = None
            values["note"] = (f"Its seed, {r.seed}, is larger than a browser holds exactly, so the seed was not "
                              f"loaded: reproduce it with `python launch.py generate reproduce`. ")
        if missing:
            one = len(missing) == 1
            what = " and ".join(missing)
            values["note"] = values.get("note", "") + (
                f"{what[:1].upper() + what[1:]} {'is' if one else 'are'} not in the outputs folder, so only "
                f"the other settings were loaded: add {'it' if one else 'them'} again.")
        if lost_loras:
            it = "it" if len(lost_loras) == 1 else "them"
            values["note"] = (values.get("note", "") + f" No file in the LoRA folder or uploaded by this page is "
                              f"{', '.join(lost_loras)} (by its contents' sha256), so the settings were loaded "
                              f"without {it}: add {it} to the folder, or upload {it}, to reproduce this output.").lstrip()
        return values


def _status_html(job: Job, ahead: int = 0, passes: tuple[int, int] = (1, 1)) -> str:
    """The status line; `passes` is (candidates, stages per candidate) of the job's sampling."""
    if job.status == "waiting":
        return f"<div class='studio-status'>In the queue: {ahead} generation{'s' * (ahead != 1)} before this one.</div>"
    if job.status in ("cancelled", "failed", "done"):
        return f"<div class='studio-status studio-{job.status}'>{html.escape(job.message)}</div>"
    if job.message and not job.total:  # running, before its first step (the planner timing the model)
        return f"<div class='studio-status'>{html.escape(job.message)}</div>"
    total = max(job.total, 1)
    eta = job.eta
    rate = job.seconds_per_step
    detail = _step_text(job.step, job.total, *passes)
    if rate is not None:
        detail += f" · {rate:.2f} s/step · about {eta:.0f} s left"
    return (f"<div class='studio-status'><progress value='{job.step}' max='{total}'></progress> "
            f"<span>{detail}</span></div>")


def _step_text(step: int, total: int, candidates: int = 1, stages: int = 1) -> str:
    """"stage 1/2 (the first frame) · step 3/20": the engine counts the steps of every sampling pass
    (candidates, image-first's two stages) as one run; people set the steps of one pass."""
    count = candidates * stages
    if not total or count == 1 or total % count:
        return f"step {step}/{total or '?'}"
    per = total // count
    done = max(step - 1, 0) // per  # passes finished before this step
    parts = []
    if candidates > 1:
        parts.append(f"candidate {done // stages + 1}/{candidates}")
    if stages > 1:
        parts.append(f"stage {done % stages + 1}/{stages} ({'the first frame' if done % stages == 0 else 'the clip'})")
    return " · ".join(parts + [f"step {step - done * per}/{per}"])


def _literal(text: str) -> str:
    """`text` as Markdown that shows it as it is: every ASCII punctuation mark backslash-escaped (CommonMark and
    marked, Gradio's renderer, take an escape before any of them), so a prompt or a file name forms no image,
    link, URL, HTML tag, entity or emphasis; line breaks become spaces."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", " ".join(text.split()))


def _lineage_markdown(levels: list[list[Any]], children: list[Entry], uploads: Path | None = None) -> str:
    """Prompts and file names come from whoever made the outputs: all of them are shown literally."""
    if not levels:
        return ""
    lines = []
    for depth, level in enumerate(levels):
        for node in level:
            if isinstance(node, Entry):
                text = f"**{_literal(node.media.name)}** ({node.mode}: {_literal(node.prompt[:60])})"
            else:
                where = "uploaded" if uploads is not None and Path(node).is_relative_to(uploads) else "not an output"
                text = f"{_literal(Path(node).name)} ({where})"
            lines.append(f"{'  ' * depth}- {'' if depth == 0 else 'made from '}{text}")
    if children:
        lines.append("")
        lines.append("Used by: " + ", ".join(_literal(c.media.name) for c in children))
    return "\n".join(lines)


CSS = """
.studio-status progress { width: 60%; vertical-align: middle; }
.studio-cancelled { color: #b45309; } .studio-failed { color: #b91c1c; }
"""


def build(engine: Engine, info: ModelInfo, loras: Path | None = None, enhancer: str | None = None) -> gr.Blocks:
    app = StudioApp(engine, info, loras, enhancer)
    presets = list(app.presets)
    size_choices = presets + [MATCH_INPUT]

    with gr.Blocks(title="Video Studio") as demo:
        last_output = gr.State(None)
        last_seed = gr.State(None)
        shown = Path(info.model_id).name if Path(info.model_id).is_absolute() else info.model_id  # a folder: its name
        gr.Markdown(f"## Video Studio\nModel: `{shown}` · default {info.width}x{info.height}, "
                    f"{info.num_frames} frames at {info.fps:g} fps")
        widgets: dict[str, dict[str, Any]] = {}  # per tab: its widgets by name (SHARED, the specs' Param.key)
        buttons: dict[str, gr.Button] = {}
        plans: dict[str, gr.Markdown] = {}  # per tab, the planner's line under its button
        grid_controls: dict[str, dict[str, Any]] = {}  # per tab, its variations grid's seeds, draft and button
        plan_updates: dict[str, tuple[Any, list[Any]]] = {}  # per tab, (handler, its widgets)
        fitted_views = []

        def shared(tab: str, found: dict[str, Any], length: modes.Param | None, switches: list[modes.ModeSpec]) -> None:
            """The settings every tab has; `length`: the mode's duration widget, if it has one (seconds)."""
            media_input = bool(tab_modes()[tab][0].media())
            with gr.Row():
                found["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="a red ball bounces on a floor",
                                             elem_id=f"{tab}-prompt", scale=8)
                enhance = gr.Button("Enhance", size="sm", scale=0, min_width=90, elem_id=f"{tab}-enhance",
                                    interactive=bool(app.creator.enhancer_source))
            # Queued, one at a time: a language model's answer takes seconds.
            enhance.click(app.creator.enhance, found["prompt"], found["prompt"], concurrency_limit=1,
                          api_visibility="private")
            with gr.Row():
                found["size"] = gr.Dropdown(size_choices if media_input else presets, label="Aspect ratio and size",
                                            value=MATCH_INPUT if media_input else default_preset(info),
                                            allow_custom_value=True, elem_id=f"{tab}-size")
                if length is not None:
                    found["seconds"] = gr.Slider(0.25, 10.0, value=length.seconds or info.seconds, step=0.25,
                                                 label=length.caption)
                found["fps"] = gr.Number(value=info.fps, label="Frames per second", minimum=1, maximum=60)
            if length is not None:  # what the duration becomes, under the rule of the mode the checkboxes pick
                def note(seconds: float, fps: float, *ticked: bool) -> str:
                    picked = mode_of(tab, dict(zip((spec.switch for spec in switches), ticked)))
                    rule = next(p for p in picked.params if p.kind == "length")
                    return length_text(seconds, fps, rule.count, info)

                frames_note = gr.Markdown(note(length.seconds or info.seconds, info.fps, *[False] * len(switches)))
                inputs = [found["seconds"], found["fps"], *(found[spec.switch] for spec in switches)]
                for widget in inputs:
                    widget.change(note, inputs, frames_note, queue=False, api_visibility="private")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed (-1: random)", elem_id=f"{tab}-seed")  # no precision: it would round
                gr.Button("Random", size="sm", scale=0).click(lambda: -1, None, seed, queue=False,
                                                              api_visibility="private")
                gr.Button("Reuse last", size="sm", scale=0).click(
                    lambda last: -1 if last is None else last, last_seed, seed, queue=False, api_visibility="private")
                found["seed"] = seed
            with gr.Accordion("Advanced", open=False, elem_id=f"{tab}-advanced"):
                found["negative"] = gr.Textbox(label="Negative prompt", placeholder="what to steer away from")
                found["steps"] = gr.Slider(1, 100, value=info.steps, step=1, label="Steps", elem_id=f"{tab}-steps")
                found["guidance"] = gr.Slider(0.0, 15.0, value=info.guidance_for(tab), step=0.5,
                                              elem_id=f"{tab}-guidance",
                                              label="Guidance (classifier-free; <= 1 turns it off)")
                found["sampler"] = gr.Dropdown(list(info.samplers), value="default", label="Sampler")
                for key, param in tab_params(tab).items():  # the model's knobs, if it reads any (Stable Video Diffusion)
                    if param.knob and param.name in info.knobs:
                        found[key] = param_widget(tab, param)

        def param_widget(tab: str, param: modes.Param) -> Any:
            """A mode parameter's widget, made from its spec."""
            elem_id = f"{tab}-{param.key.replace('_', '-')}"
            low, high, step = param.limits or (None, None, None)
            if param.kind == "image":
                return ImageFile(label=param.caption, type="filepath", height=200)
            if param.kind == "clip":
                return VideoFile(label=param.caption, format=None, height=180)
            if param.kind == "choice":
                return gr.Radio(list(param.choices), value=param.default, label=param.caption, elem_id=elem_id)
            if param.kind == "context":
                return gr.Dropdown(info.context_choices(param.at_end), value=info.context, label=param.caption,
                                   elem_id=elem_id)
            if param.kind == "bool":
                value = getattr(info, param.model_default, None) if param.model_default else param.default
                return gr.Checkbox(label=param.caption, value=bool(value), elem_id=elem_id)
            if param.kind in ("start", "length"):  # a trim's in and out points, in seconds
                return gr.Number(value=0, label=param.caption, minimum=0, elem_id=elem_id)
            value = info.knobs.get(param.name) if param.knob else param.default
            if param.limits:
                return gr.Slider(low, high, value=value, step=step, label=param.caption, elem_id=elem_id)
            return gr.Number(value=value, label=param.caption, elem_id=elem_id)

        def unavailable(tab: str) -> None:
            """A tab whose mode the model lacks says why at its top (its button stays off)."""
            why = info.why_not(tab)
            if why:
                gr.Markdown(f"**{tab_title(tab)} is not available for this model:** {why}",
                            elem_id=f"{tab}-unavailable")

        def fitted_view(media: gr.components.Component, found: dict[str, Any]) -> None:
            view = gr.Image(label="As the model sees it", interactive=False, height=160)
            note = gr.Markdown()
            for trigger in (media.change, found["size"].change, found["fps"].change):
                trigger(app.fitted, [media, found["size"], found["fps"]], [view, note], queue=False,
                        api_visibility="private")
            fitted_views.append(view)

        def mode_tab(tab: str) -> None:
            """A tab's widgets: its modes' media, their options and the checkboxes that pick a mode, the shared
            settings, and the button (whose label follows the checkboxes)."""
            specs = tab_modes()[tab]
            params = tab_params(tab)
            switches = [spec for spec in specs if spec.switch]
            found: dict[str, Any] = {}
            unavailable(tab)
            media = [key for key, p in params.items() if p.is_media]
            with gr.Row():
                for key in media:
                    found[key] = param_widget(tab, params[key])
            options = [key for key, p in params.items() if key not in media and not p.knob and key != "seconds"]
            with gr.Row():
                for key in options:
                    found[key] = param_widget(tab, params[key])
                for spec in switches:
                    found[spec.switch] = gr.Checkbox(label=spec.title, elem_id=f"{tab}-{spec.switch.replace('_', '-')}")
                if any(spec.joins for spec in specs):
                    found["candidates"] = gr.Dropdown(CANDIDATES, value=1, label=CANDIDATES_LABEL,
                                                      allow_custom_value=True)
            shared(tab, found, params.get("seconds"), switches)
            if media:
                fitted_view(found[media[0]], found)
            if set(found) != set(tab_inputs(tab, info)):  # the widgets are the specs' (and SHARED), no more, no less
                raise ValueError(f"the {tab} tab's widgets {sorted(found)} are not its inputs {tab_inputs(tab, info)}")
            widgets[tab] = found
            buttons[tab] = gr.Button(specs[0].action, variant="primary", elem_id=f"{tab}-generate",
                                     interactive=info.why_not(tab) is None)
            plans[tab] = gr.Markdown("", elem_id=f"{tab}-plan")
            grid_controls[tab] = build_controls(tab)
            names = tab_inputs(tab, info)

            def plan(*values: Any) -> str:
                return app.plan(tab, dict(zip(names, values, strict=True)))

            plan_updates[tab] = (plan, [found[key] for key in names])
            for key in names:
                if key not in TYPED:  # not on each keystroke: a prompt's length changes no plan much
                    found[key].change(plan, plan_updates[tab][1], plans[tab], queue=False, api_visibility="private")
            if switches:
                def action(*ticked: bool) -> Any:
                    picked = mode_of(tab, dict(zip((spec.switch for spec in switches), ticked)))
                    return gr.update(value=picked.action)

                for spec in switches:
                    found[spec.switch].change(action, [found[s.switch] for s in switches], buttons[tab], queue=False,
                                              api_visibility="private")

        with gr.Row():
            with gr.Column(scale=3):
                lora_widgets = build_picker(app.creator)  # shared by every tab (CREATOR)
                with gr.Tabs() as tabs:
                    for tab in tab_modes():
                        with gr.Tab(tab_title(tab), id=tab):
                            mode_tab(tab)
                    with gr.Tab("History", id="history"):
                        refresh = gr.Button("Refresh", size="sm")
                        table = gr.Dataframe(headers=["file", "mode", "prompt", "frames", "seed", "made from"],
                                             interactive=False, wrap=True)
                        picked = gr.Dropdown([], label="Output", allow_custom_value=False)
                        with gr.Row():
                            hist_video = gr.Video(label="Clip", interactive=False, format=None, height=220)
                            hist_image = gr.Image(label="Image", interactive=False, height=220)
                        lineage = gr.Markdown()
                        reproduce = gr.Button("Reproduce (load its settings into its tab)")
                        with gr.Row():  # the selected entry, as the result panel's buttons send the last result
                            entry_send = {target: gr.Button(label, size="sm") for target, label in SEND_LABELS.items()}
                        with gr.Accordion("Sidecar", open=False):
                            sidecar = gr.JSON()
                    with gr.Tab("Storyboard", id="storyboard"):
                        storyboard = build_tab(app.storyboard, info)
            with gr.Column(scale=2):
                queue_info = gr.Markdown("", elem_id="queue-info")
                status = gr.HTML("<div class='studio-status'>Ready.</div>", elem_id="status")
                preview = gr.Image(label="Preview", interactive=False, height=220, elem_id="preview")
                video = gr.Video(label="Result", interactive=False, format=None, autoplay=True, loop=True,
                                 elem_id="result-video")
                downloads = gr.File(label="Download (MP4, GIF)", file_count="multiple", interactive=False)
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                with gr.Row():
                    send_buttons = {target: gr.Button(label, size="sm") for target, label in SEND_LABELS.items()}
                    send_storyboard = gr.Button("→ Storyboard", size="sm", elem_id="send-storyboard")
                grid_panel = build_panel(app.variations)
                result = gr.JSON(label="Result", visible=False)

        outputs = [status, preview, video, downloads, result, last_output, last_seed]
        # The engine queues and orders generations (one on the device at a time); Gradio only streams them.
        run_args = dict(outputs=outputs, concurrency_limit=None, show_progress="minimal", show_progress_on=[queue_info])

        def handler(tab: str, names: list[str]):
            def run(request: gr.Request, *values):  # Gradio passes the request first (by its type)
                given = app.page_values(tab, names, values, request)
                yield from app.stream(lambda: app.request(tab, given), request)

            return run

        events = [buttons[tab].click(handler(tab, tab_inputs(tab, info)),
                                     [widgets[tab][key] for key in tab_inputs(tab, info)], api_name=tab, **run_args)
                  for tab in widgets]
        for tab, event in zip(widgets, events):
            event.then(app.history_rows, None, [table, picked], queue=False, api_visibility="private")
            # The first generation under --memory auto measured the model: its plan can be shown now.
            event.then(*plan_updates[tab], plans[tab], queue=False, api_visibility="private")
            # "Cancelling after the current step..." (or any note) ends with the job.
            event.then(lambda: "", None, queue_info, queue=False, api_visibility="private")
        # Variations: a tab's grid (into the shared panel), a picked cell shown, and its final rendered in full.
        def grid_handler(tab: str, names: list[str]):
            def run(request: gr.Request, seeds: Any, draft: Any, *values: Any):
                yield from app.variations.run(tab, app.page_values(tab, names, values, request), seeds, draft, request)

            return run

        for tab in widgets:
            controls = grid_controls[tab]
            inputs = [controls["seeds"], controls["draft"], *(widgets[tab][key] for key in tab_inputs(tab, info))]
            controls["button"].click(
                grid_handler(tab, tab_inputs(tab, info)), inputs, [status, grid_panel["sheet"], grid_panel["cell"]],
                api_name=f"{tab}_grid", concurrency_limit=None, show_progress="minimal",
                show_progress_on=[queue_info],
            ).then(app.history_rows, None, [table, picked], queue=False, api_visibility="private")
        grid_panel["cell"].change(app.variations.show, grid_panel["cell"], [video, last_output, last_seed],
                                  queue=False, api_visibility="private")

        def render_final(request: gr.Request, name: str | None):
            yield from app.variations.final(name, request)

        grid_panel["final"].click(render_final, grid_panel["cell"], api_name="render_final", **run_args).then(
            app.history_rows, None, [table, picked], queue=False, api_visibility="private")

        # Not queued: a cancel must get through when the queue is full.
        cancel.click(app.cancel, None, queue_info, api_name="cancel", queue=False, show_progress="hidden")

        # send to: the result (or the selected History entry) moves into another tab's input with its prompt
        # and seed, and that tab opens
        def sender(target: str, missing: str):
            def send(output: str | None):
                return (gr.Tabs(selected=SEND_TARGETS[target][0]), *app.send_values(output, target, missing))
            return send

        for target, (tab, key) in SEND_TARGETS.items():
            into = [tabs, widgets[tab][key], widgets[tab]["prompt"], widgets[tab]["seed"]]
            send_buttons[target].click(sender(target, "Generate a clip first."), last_output, into, queue=False,
                                       api_name=f"send_to_{target}")
            entry_send[target].click(sender(target, "Pick an output in the history first."), picked, into,
                                     queue=False, api_name=f"send_entry_to_{target}")

        send_storyboard.click(lambda output: (gr.Tabs(selected="storyboard"), *app.storyboard.send(output)),
                              last_output, [tabs, storyboard["prompt"], storyboard["note"]], queue=False,
                              api_name="send_to_storyboard")
        for event in storyboard["events"]:
            event.then(app.history_rows, None, [table, picked], queue=False, api_visibility="private")

        # history
        demo.load(app.history_rows, None, [table, picked], queue=False, api_visibility="private")
        for tab, (plan, inputs) in plan_updates.items():
            demo.load(plan, inputs, plans[tab], queue=False, api_visibility="private")
        refresh.click(app.history_rows, None, [table, picked], queue=False, api_name="history")
        picked.change(app.show_entry, picked, [hist_video, hist_image, lineage, sidecar], queue=False,
                      api_name="show_entry")

        every_widget = list({id(w): w for found in widgets.values() for w in found.values()}.values())  # shared once

        def load_settings(name: str | None, request: gr.Request):
            values = app.reproduce_values(name, request)
            tab = values.pop("tab")
            if "note" in values:
                gr.Warning(values.pop("note"))
            app.creator.remember(request, enhanced=values.pop("enhanced"))
            updates: dict[Any, Any] = {tabs: gr.Tabs(selected=tab)}
            updates |= {lora_widgets[key]: values.pop(key) for key in LORA_KEYS}  # their change records them
            for key, value in values.items():
                widget = widgets[tab].get(key)
                if widget is None or value is None:
                    continue
                if key == "size" and value not in widget.choices:
                    updates[widget] = gr.update(choices=[*size_choices, value], value=value)
                else:
                    updates[widget] = value
            return updates

        reproduce.click(load_settings, picked, [tabs, *every_widget, *lora_widgets.values()], queue=False,
                        api_visibility="private")
        # The same, as plain values for API clients.
        gr.api(app.reproduce_values, api_name="reproduce")
    demo.queue(default_concurrency_limit=None)
    return demo
