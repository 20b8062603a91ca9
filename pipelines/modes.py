"""Every mode as a request: conditioning items plus a starting noise level (no mode samples on its own).

A mode is one `ModeSpec` in `SPECS`: its builder, its parameters as people give them (`Param`: type, default,
limits, help), and how an older request's parameters are read back from its layout. The CLI's options, the
studio's widgets and Reproduce are made from the specs; `build` is the one place a request's unset fields take
the loaded model's defaults. A request records the parameters it was built from (`mode_params`).

Window geometry follows the causal VAE (`temporal` = 4 for Wan): the window has 4k+1 frames; a clip held at
frame 0 has 4a+1 frames; a clip held at the end has 4b+1 frames and starts on a multiple of 4. Hence:
- extend (either way) adds a multiple of 4 frames;
- connect and loop generate 4g-1 frames between the two held clips.
Extend, loop and connect copy the source clips through (`output="source"`); a clip that closes the window
may be copied from its second frame, its first lying in a generated latent (pipelines/seams.py).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.request import KNOBS, ConditioningItem, GenerationRequest, frames_text, nearest_valid
from pipelines.video_io import count_frames

DEFAULT_CONTEXT_FRAMES = 9
# Restyle's default strength: the highest at which the embedded model still keeps the footage recognisable
# (measured in training/NOTES.md, "Restyle strength").
DEFAULT_RESTYLE_STRENGTH = 0.3
MAX_SECONDS = 3600  # longer than any clip the media check takes: a bound for durations typed anywhere
MAX_ASPECT = 4.0  # widest (and tallest) output shape size_for picks from an input: 4:1


def clip_length(path: str, fps: float) -> int:
    """Frames of a clip (or 1 for an image) as the pipeline will read it at `fps`."""
    return count_frames(path, fps)


def new_frame_counts(mode: str, temporal: int = 4) -> tuple[int, int]:
    """(first valid count, step) of generated frames for extend, loop and connect."""
    return (temporal, temporal) if mode == "extend" else (temporal - 1, temporal)


def _check_seconds(seconds: float, name: str, minimum: float = 0.0) -> None:
    if not math.isfinite(seconds) or not minimum <= seconds <= MAX_SECONDS:
        raise ValueError(f"{name} = {seconds:g} s is not valid: a number of seconds from {minimum:g} to {MAX_SECONDS}")


def frames_for_seconds(seconds: float, fps: float, kind: str, temporal: int = 4) -> int:
    """The valid frame count nearest to `seconds` at `fps` (halves go up): 4k+1 for a whole clip
    (kind "window"), else the new frames of extend, loop or connect."""
    _check_seconds(seconds, "seconds")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps = {fps:g} is not valid: a positive number of frames per second")
    first, step = (1, temporal) if kind == "window" else new_frame_counts(kind, temporal)
    return max(first, first + math.floor((seconds * fps - first) / step + 0.5) * step)


def check_new_frames(mode: str, frames: int, temporal: int = 4) -> None:
    first, step = new_frame_counts(mode, temporal)
    if not isinstance(frames, int) or frames < first or (frames - first) % step:
        near = nearest_valid(frames, step, offset=first % step, minimum=first) if isinstance(frames, int) else [first]
        raise ValueError(f"frames = {frames!r} is not valid for {mode}: {first}, {first + step}, {first + 2 * step}, ... "
                         f"new frames (nearest: {' or '.join(map(str, near))})")


def _context(requested: int | None, available: int, at_end: bool, temporal: int, name: str) -> int:
    """Context frames of a clip: temporal*k+1, at least temporal+1 when held at the window's end."""
    minimum = temporal + 1 if at_end else 1
    if requested is None:
        requested = min(DEFAULT_CONTEXT_FRAMES, available)
        requested -= (requested - 1) % temporal
    # A single frame may close the window (a still, for the checkpoints that hold stills themselves; where
    # frames are held as latents the pipeline refuses it, naming the rule).
    if (requested < minimum and requested != 1) or (requested - 1) % temporal:
        raise ValueError(f"context_frames = {requested} is not valid: {temporal}k+1 frames"
                         f"{f', at least {minimum}' if minimum > 1 else ''} "
                         f"({', '.join(str(temporal * k + 1) for k in range(4))}, ... for this VAE)")
    if requested > available:
        raise ValueError(f"context_frames = {requested} is more than {name} has ({frames_text(available)})")
    return requested


def size_for(media: str, default_width: int, default_height: int, grid: int) -> tuple[int, int]:
    """Output size for an input image or clip: its own size when it is already on the model's grid and
    near the default area, else its aspect ratio at about the default area, on the grid."""
    from pipelines.video_io import media_size

    width, height = media_size(media)
    area = default_width * default_height
    if width % grid == 0 and height % grid == 0 and area / 2 <= width * height <= area * 2:
        return width, height
    aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)  # a 10000x1 strip is cropped, not followed
    snapped_w = max(grid, round((area * aspect) ** 0.5 / grid) * grid)
    snapped_h = max(grid, round((area / aspect) ** 0.5 / grid) * grid)
    return snapped_w, snapped_h


def text_to_video(prompt: str, num_frames: int | None = None, image_first: bool | None = None,
                  **settings: Any) -> GenerationRequest:
    """`image_first` means nothing for one frame (there is no clip to make from it), so it is dropped there."""
    if num_frames is not None:
        settings["num_frames"] = num_frames
    if settings.get("num_frames") == 1:
        image_first = None
    made = {"num_frames": settings.get("num_frames"), "image_first": image_first}
    return GenerationRequest(prompt=prompt, mode="t2v", image_first=image_first, mode_params=made, **settings)


def text_to_image(prompt: str, **settings: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, mode="image", **{**settings, "num_frames": 1})


def animate(image: str, prompt: str = "", strength: float = 1.0, num_frames: int | None = None,
            **settings: Any) -> GenerationRequest:
    """The still becomes frame 0 of the clip. The prompt may be left out for a model that reads none (Stable
    Video Diffusion); the others refuse an empty prompt (VideoPipeline.check_request)."""
    if num_frames is not None:
        settings["num_frames"] = num_frames
    item = ConditioningItem(source=image, frame_index=0, strength=strength, source_count=1)
    made = {"image": image, "strength": strength, "num_frames": settings.get("num_frames"),
            **{knob: settings.get(knob) for knob in KNOBS}}
    return GenerationRequest(prompt=prompt, mode="animate", conditioning=(item,), mode_params=made, **settings)


def extend(clip: str, prompt: str, new_frames: int, direction: str = "forward", context_frames: int | None = None,
           temporal: int = 4, fps: float = 16.0, **settings: Any) -> GenerationRequest:
    """Forward: the clip's last frames open the window. Backward: its first frames close it."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction = {direction!r} is not valid: forward or backward")
    check_new_frames("extend", new_frames, temporal)
    length = clip_length(clip, fps)
    forward = direction == "forward"
    context = _context(context_frames, length, not forward, temporal, "the clip")
    if forward:
        item = ConditioningItem(clip, frame_index=0, source_start=length - context, source_count=context, output="source")
    else:
        item = ConditioningItem(clip, frame_index=new_frames, source_start=0, source_count=context, output="source")
    made = {"clip": clip, "direction": direction, "new_frames": new_frames, "context_frames": context}
    return GenerationRequest(prompt=prompt, mode="extend", num_frames=context + new_frames, fps=fps,
                             conditioning=(item,), mode_params=made, **settings)


def connect(clip_a: str, clip_b: str, prompt: str, new_frames: int, context_frames: int | None = None,
            temporal: int = 4, fps: float = 16.0, mode: str = "connect", **settings: Any) -> GenerationRequest:
    """A's tail opens the window, B's head closes it, the transition is generated between them."""
    check_new_frames(mode, new_frames, temporal)
    length_a, length_b = clip_length(clip_a, fps), clip_length(clip_b, fps)
    context_a = _context(context_frames, length_a, False, temporal, "clip A")
    context_b = _context(context_frames, length_b, True, temporal, "clip B")
    # In a loop the bridge ends on the clip's own first frames: the player wraps to them, so they are cut.
    b_output = "omit" if mode == "loop" else "source"
    items = (
        ConditioningItem(clip_a, frame_index=0, source_start=length_a - context_a, source_count=context_a, output="source"),
        ConditioningItem(clip_b, frame_index=context_a + new_frames, source_start=0, source_count=context_b,
                         output=b_output),
    )
    made = {"clip_a": clip_a, "clip_b": clip_b} if mode == "connect" else {"clip": clip_a}
    made |= {"new_frames": new_frames, "context_frames": context_a}
    return GenerationRequest(prompt=prompt, mode=mode, num_frames=context_a + new_frames + context_b, fps=fps,
                             conditioning=items, mode_params=made, **settings)


def loop(clip: str, prompt: str, new_frames: int, context_frames: int | None = None, temporal: int = 4,
         fps: float = 16.0, **settings: Any) -> GenerationRequest:
    """Make a clip loop: a bridge from its end back to its start; the output is the clip plus the bridge."""
    return connect(clip, clip, prompt, new_frames, context_frames, temporal, fps, mode="loop", **settings)


def restyle(video: str, prompt: str, strength: float = DEFAULT_RESTYLE_STRENGTH, num_frames: int | None = None,
            temporal: int = 4, fps: float = 16.0, start: int = 0, window: int | None = None,
            **settings: Any) -> GenerationRequest:
    """SDEdit: noise the clip to `strength` and denoise it under the new prompt. The window starts on the
    clip's frame `start` (the trim's in point); by default it is the longest 4k+1 frames the clip holds from
    there, at most `window` (the model's own length, so that long footage is not one huge window)."""
    length = clip_length(video, fps)
    left = length - start
    if left < 1:
        raise ValueError(f"the trim starts at {start / fps:g} s, after the clip's end ({length / fps:.2f} s)")
    if num_frames is None:
        num_frames = left if window is None else min(left, window)
        num_frames -= (num_frames - 1) % temporal
    elif num_frames > left:
        raise ValueError(f"the trim {start / fps:g}-{(start + num_frames) / fps:g} s goes past the clip's end "
                         f"({length / fps:.2f} s at {fps:g} fps)")
    made = {"video": video, "strength": strength, "start": start, "num_frames": num_frames}
    return GenerationRequest(prompt=prompt, mode="restyle", init_video=video, init_strength=strength,
                             init_start=start, num_frames=num_frames, fps=fps, mode_params=made, **settings)


def trim(start_s: float, end_s: float | None, fps: float, temporal: int = 4) -> tuple[int, int | None]:
    """(first frame, window frames) of a trim given in seconds: the window is the longest 4k+1 frames from
    `start_s` that end by `end_s` (None: the clip's end, left to the builder)."""
    _check_seconds(start_s, "trim start")
    start = round(start_s * fps)
    if end_s is None:
        return start, None
    _check_seconds(end_s, "trim end")
    if end_s <= start_s:
        raise ValueError(f"trim end = {end_s:g} s is not valid: after the start ({start_s:g} s)")
    span = round(end_s * fps) - start
    if span < 1:
        raise ValueError(f"the trim {start_s:g}-{end_s:g} s holds no frame at {fps:g} fps")
    return start, span - (span - 1) % temporal


# ---- the specs -------------------------------------------------------------------------------------------
PARAM_KINDS = {
    "image": "a path to an image",
    "clip": "a path to a video file or a folder of PNG frames",
    "length": "a frame count (given as frames or seconds, snapped to the counts the VAE takes)",
    "start": "a frame of the source clip (given in seconds)",
    "context": "frames of each source clip the model sees",
    "choice": "one of the choices",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false (None: the model's default)",
}


@dataclass(frozen=True)
class Param:
    """One of a mode's parameters as people give it; the CLI's options, the studio's widgets and Reproduce
    are made from these (studio/cli.py, studio/app.py)."""

    name: str  # the builder's keyword, and its key in the request's mode_params
    kind: str  # one of PARAM_KINDS
    help: str  # for a media parameter, what it is as a noun ("a clip to extend")
    label: str | None = None  # the studio widget's (None: the help, capitalised)
    studio: bool = True  # offered by the studio (else only by the CLI; the builder's default applies there)
    default: Any = None  # None: the builder's, or the model's (`model_default`)
    choices: tuple[Any, ...] = ()
    limits: tuple[float, float, float] | None = None  # the studio widget's (minimum, maximum, step)
    flag: str | None = None  # the CLI's option (None: --name)
    widget: str | None = None  # the studio's widget, which is also Reproduce's key (None: name)
    count: str = "window"  # a length's rule: a whole "window" (temporal*k+1), or extend/loop/connect's new frames
    seconds: float | None = None  # a length's default in seconds (None: the model's window)
    after: str | None = None  # a length the studio shows as the time it ends at, after this "start" parameter
    model_default: str | None = None  # the ModelDefaults attribute that is its default, when the model has one
    knob: bool = False  # a request field only families that read it take (request.KNOBS, Family.knobs)
    at_end: bool = False  # a context whose clip closes the window (at least temporal+1 frames)

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"Param {self.name!r}: kind = {self.kind!r} is not valid: one of {', '.join(PARAM_KINDS)}")

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return self.widget or self.name

    @property
    def is_media(self) -> bool:
        """An input file: an image or a clip."""
        return self.kind in ("image", "clip")

    @property
    def caption(self) -> str:
        return self.label or self.help[:1].upper() + self.help[1:]

    def check(self, value: Any) -> Any:
        """`value` as recorded in a request (a sidecar may be crafted): a ValueError unless it is of this kind."""
        whole = self.kind in ("length", "start", "context", "int")
        ok = (value is None or
              (self.is_media and isinstance(value, str) and value != "") or
              (whole and isinstance(value, int) and not isinstance(value, bool) and value >= 0) or
              (self.kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
               and math.isfinite(value)) or
              (self.kind == "bool" and isinstance(value, bool)) or
              (self.kind == "choice" and value in self.choices))
        if not ok:
            valid = f"one of {', '.join(map(str, self.choices))}" if self.choices else PARAM_KINDS[self.kind]
            raise ValueError(f"mode_params.{self.name} = {value!r:.80} is not valid: {valid}")
        return value


@dataclass(frozen=True)
class ModeSpec:
    """Everything the studio, the CLI and Reproduce know of a mode."""

    name: str
    title: str  # the studio's tab; for a mode another tab offers, the label of the checkbox that picks it
    builder: Callable[..., GenerationRequest]
    params: tuple[Param, ...] = ()
    action: str = "Generate"  # the studio's button
    tab: str | None = None  # the studio tab that offers it, when not its own
    switch: str | None = None  # that tab's checkbox that picks this mode over the tab's own
    frames: int | None = None  # a mode that always makes this many frames (image: 1)
    held: int = 0  # conditioning items its requests hold (request validation)
    joins: bool = False  # its new frames meet copied-through clips at joins (extend, loop, connect)
    promptless: bool = False  # a model that reads no text runs it without a prompt (Stable Video Diffusion)
    base: str | None = None  # without its clip, this mode first makes one from the prompt (the CLI's loop)
    # Its parameters read back from a request written before requests recorded them (format 1 sidecars).
    legacy: Callable[[GenerationRequest], dict[str, Any]] | None = None

    @property
    def home(self) -> str:
        """The studio tab that offers it."""
        return self.tab or self.name

    def media(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.is_media)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def values(self, request: GenerationRequest) -> dict[str, Any]:
        """The parameters `request` was built from: those it records, checked against this spec; else (a
        request from before they were recorded, or a record that does not fit, as a crafted or hand-edited
        sidecar may hold) read off its layout, where the mode can."""
        try:
            return self._checked(request.mode_params)
        except ValueError:
            if self.legacy is None:
                raise
        return self._checked(self.legacy(request))

    def _checked(self, recorded: dict[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(recorded) - set(known))
        if unknown or (not recorded and known):
            raise ValueError(f"mode_params {unknown or '{}'} are not the parameters of {self.name}: "
                             f"{', '.join(known) or 'it has none'}")
        return {name: known[name].check(value) for name, value in recorded.items()}


def _new_frames(request: GenerationRequest) -> int:
    return request.num_frames - sum(item.source_count or 0 for item in request.conditioning)


def _legacy_join(request: GenerationRequest) -> dict[str, Any]:
    first = request.conditioning[0]
    found = {"new_frames": _new_frames(request), "context_frames": first.source_count}
    if request.mode == "connect":
        return found | {"clip_a": first.source, "clip_b": request.conditioning[1].source}
    found["clip"] = first.source
    if request.mode == "extend":
        found["direction"] = "forward" if first.frame_index == 0 else "backward"
    return found


LENGTH_HELP = "length of the clip"
NEW_HELP = "new frames"
CONTEXT_HELP = "frames of each clip the model sees"
_KNOB_PARAMS = (
    Param("motion_bucket_id", "int", "how much motion (0-1023, more is more)", flag="--motion-bucket",
          label="Motion bucket (more is more motion)", limits=(0, 255, 1), model_default="motion_bucket_id",
          knob=True),
    Param("noise_aug_strength", "float", "noise added to the still before it is encoded (more departs further "
          "from it)", flag="--noise-aug", label="Noise augmentation (more departs further from the still)",
          limits=(0.0, 1.0, 0.01), model_default="noise_aug_strength", knob=True),
    Param("min_guidance_scale", "float", "the first frame's guidance, rising to the guidance at the last",
          flag="--min-guidance", label="First frame's guidance (rising to Guidance at the last)",
          limits=(0.0, 15.0, 0.5), model_default="min_guidance_scale", knob=True),
)

SPECS: dict[str, ModeSpec] = {}


def register(spec: ModeSpec) -> ModeSpec:
    """Add a mode: the CLI offers it, the studio lists it, Reproduce reads it back."""
    if spec.name in SPECS or spec.name in ("reproduce", "batch", "storyboard"):  # the CLI's own commands
        raise ValueError(f"a mode named {spec.name!r} exists already")
    SPECS[spec.name] = spec
    return spec


for _spec in (
    ModeSpec("t2v", "Text to Video", text_to_video, (
        Param("num_frames", "length", LENGTH_HELP, label="Duration (s)", widget="seconds", model_default="num_frames"),
        Param("image_first", "bool", "sample the first frame alone, then the clip with it held",
              label="Image first (the first frame, then the clip from it)", model_default="image_first"),
    ), legacy=lambda r: {"num_frames": r.num_frames, "image_first": r.image_first}),
    ModeSpec("image", "One frame (an image)", text_to_image, tab="t2v", switch="one_frame", frames=1,
             legacy=lambda r: {}),
    ModeSpec("animate", "Animate Image", animate, (
        Param("image", "image", "an image to animate", label="Still (becomes the first frame)"),
        Param("strength", "float", "how firmly the still is held", default=1.0, studio=False),
        Param("num_frames", "length", LENGTH_HELP, label="Duration (s)", widget="seconds", model_default="num_frames"),
        *_KNOB_PARAMS,
    ), action="Animate", held=1, promptless=True, legacy=lambda r: {
        "image": r.conditioning[0].source, "strength": r.conditioning[0].strength, "num_frames": r.num_frames,
        **{knob: getattr(r, knob) for knob in KNOBS}}),
    ModeSpec("extend", "Extend & Loop", extend, (
        Param("clip", "clip", "a clip to extend", label="Clip", flag="--video", widget="video"),
        Param("direction", "choice", "which way", label="Direction", default="forward", choices=("forward", "backward")),
        Param("new_frames", "length", NEW_HELP, label="Seconds to add", widget="seconds", count="extend", seconds=2.0),
        Param("context_frames", "context", CONTEXT_HELP, label="Context frames the model sees", widget="context",
              model_default="context_frames"),
    ), action="Extend", held=1, joins=True, legacy=_legacy_join),
    ModeSpec("loop", "Make it loop (bridge the end back to the start)", loop, (
        Param("clip", "clip", "a clip to loop", label="Clip", flag="--video", widget="video"),
        Param("new_frames", "length", NEW_HELP + " (the bridge back to the start)", label="Seconds to add",
              widget="seconds", count="loop", seconds=1.0),
        Param("context_frames", "context", CONTEXT_HELP, label="Context frames the model sees", widget="context",
              model_default="context_frames"),
    ), action="Loop", tab="extend", switch="loop", held=2, joins=True, base="t2v", legacy=_legacy_join),
    ModeSpec("restyle", "Restyle", restyle, (
        Param("video", "clip", "a clip to restyle", label="Footage"),
        Param("strength", "float", "how far the footage is noised before repainting", default=DEFAULT_RESTYLE_STRENGTH,
              label="Strength (how far the footage is noised before repainting)", limits=(0.05, 1.0, 0.05)),
        Param("start", "start", "where in the footage the window starts, in seconds (the trim's in point)",
              label="Trim: from (s)", default=0, widget="trim_from"),
        Param("num_frames", "length", "length of the window (default: as far as the model's window goes)",
              label="to (s; 0: as far as the model's window goes)", widget="trim_to", after="start"),
    ), action="Restyle", legacy=lambda r: {"video": r.init_video, "strength": r.init_strength,
                                             "start": r.init_start, "num_frames": r.num_frames}),
    ModeSpec("connect", "Connect", connect, (
        Param("clip_a", "clip", "clip A", label="Clip A (before)", flag="--video"),
        Param("clip_b", "clip", "clip B", label="Clip B (after)", flag="--video-b"),
        Param("new_frames", "length", NEW_HELP + " (the transition)", label="Transition length (s)", widget="seconds",
              count="connect", seconds=1.0),
        Param("context_frames", "context", CONTEXT_HELP, label="Context frames of each clip", widget="context",
              model_default="context_frames", at_end=True),
    ), action="Connect", held=2, joins=True, legacy=_legacy_join),
):
    register(_spec)


def spec_of(mode: str) -> ModeSpec:
    if mode not in SPECS:
        raise ValueError(f"mode = {mode!r} is not valid: one of {', '.join(SPECS)}")
    return SPECS[mode]


def build(mode: str, defaults: Any, geometry: Any, **params: Any) -> GenerationRequest:
    """A request of `mode` for a model with these defaults (`pipelines.loading.ModelDefaults`) and geometry
    (`pipelines.families.Geometry`): every parameter left out, or None, takes the model's own value. The one
    place a request's unset fields are filled; the CLI, the studio and `VideoPipeline.request` call it."""
    spec = spec_of(mode)
    params = {k: v for k, v in params.items() if v is not None}
    accepted = inspect.signature(spec.builder).parameters
    fps = params.setdefault("fps", defaults.fps)
    if "temporal" in accepted:
        params["temporal"] = geometry.temporal
    if "window" in accepted:
        params.setdefault("window", defaults.num_frames)
    for p in spec.params:
        if p.name in params or p.kind not in ("length", "context"):
            continue  # the rest keep the builder's default, or None for the model's at generation time
        if p.seconds is not None:
            params[p.name] = frames_for_seconds(p.seconds, fps, p.count, geometry.temporal)
        elif p.model_default and getattr(defaults, p.model_default, None) is not None:
            params[p.name] = getattr(defaults, p.model_default)
    source = next((params.get(p.name) for p in spec.media()), None)
    if "width" not in params and "height" not in params:
        params["width"], params["height"] = defaults.width, defaults.height
        # Follow the input's aspect ratio, unless the model takes one size only (CogVideoX-5B-I2V).
        if source and Path(source).exists() and not getattr(geometry, "fixed_size", None):
            params["width"], params["height"] = size_for(source, defaults.width, defaults.height, geometry.grid)
    params.setdefault("width", defaults.width)
    params.setdefault("height", defaults.height)
    params.setdefault("steps", defaults.steps)
    params.setdefault("guidance_scale", defaults.guidance_for(mode))
    if getattr(defaults, "guidance_scale_2", None) is not None:
        params.setdefault("guidance_scale_2", defaults.guidance_scale_2)
    request = spec.builder(**params)
    # What the builder resolved itself (a context from the clip's length) wins over what it was given.
    given = {p.name: params.get(p.name) for p in spec.params}
    return request.replace(mode_params={**given, **request.mode_params})
