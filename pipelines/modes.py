"""Every mode as a request: conditioning items plus a starting noise level (no mode samples on its own).

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
from pathlib import Path
from typing import Any

from pipelines.request import ConditioningItem, GenerationRequest, frames_text, nearest_valid
from pipelines.video_io import count_frames

DEFAULT_CONTEXT_FRAMES = 9
# New frames extend, loop and connect make when none are asked for, in seconds.
DEFAULT_NEW_SECONDS = {"extend": 2.0, "loop": 1.0, "connect": 1.0}
# Restyle's default strength, read by the CLI and the studio. Measured on the embedded model (a 17-frame
# moving square, two prompts, seeds 0-1, 20 steps), against the input: strength 0.3 kept 15.6-16.4 dB PSNR and
# a luminance-gradient correlation of 0.33 (the VAE's own round trip: 17.1 dB, 0.39); 0.4 kept 0.07-0.14 and
# 0.5-0.7 nothing (0.00-0.03, 9.4-13.3 dB): above 0.3 the footage is no longer recognisable.
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


def text_to_video(prompt: str, **settings: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, mode="t2v", **settings)


def text_to_image(prompt: str, **settings: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, mode="image", **{**settings, "num_frames": 1})


def animate(image: str, prompt: str = "", strength: float = 1.0, **settings: Any) -> GenerationRequest:
    """The still becomes frame 0 of the clip. The prompt may be left out for a model that reads none (Stable
    Video Diffusion); the others refuse an empty prompt (VideoPipeline.check_request)."""
    item = ConditioningItem(source=image, frame_index=0, strength=strength, source_count=1)
    return GenerationRequest(prompt=prompt, mode="animate", conditioning=(item,), **settings)


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
    return GenerationRequest(prompt=prompt, mode="extend", num_frames=context + new_frames, fps=fps,
                             conditioning=(item,), **settings)


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
    return GenerationRequest(prompt=prompt, mode=mode, num_frames=context_a + new_frames + context_b, fps=fps,
                             conditioning=items, **settings)


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
    return GenerationRequest(prompt=prompt, mode="restyle", init_video=video, init_strength=strength,
                             init_start=start, num_frames=num_frames, fps=fps, **settings)


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


BUILDERS = {
    "t2v": text_to_video,
    "image": text_to_image,
    "animate": animate,
    "extend": extend,
    "loop": loop,
    "restyle": restyle,
    "connect": connect,
}


SOURCES = {"animate": ("image",), "extend": ("clip",), "loop": ("clip",), "restyle": ("video",),
           "connect": ("clip_a", "clip_b")}  # each builder's input parameters, in order


def build(mode: str, defaults: Any, geometry: Any, **params: Any) -> GenerationRequest:
    """A request of `mode` for a model with these defaults (`pipelines.loading.ModelDefaults`) and geometry
    (`pipelines.families.Geometry`): every parameter left out, or None, takes the model's own value. The one
    place a request's unset fields are filled; the CLI, the studio and `VideoPipeline.request` call it."""
    if mode not in BUILDERS:
        raise ValueError(f"mode = {mode!r} is not valid: one of {', '.join(BUILDERS)}")
    params = {k: v for k, v in params.items() if v is not None}
    builder = BUILDERS[mode]
    accepted = inspect.signature(builder).parameters
    fps = params.setdefault("fps", defaults.fps)
    if "temporal" in accepted:
        params["temporal"] = geometry.temporal
    if "new_frames" in accepted and "new_frames" not in params:
        params["new_frames"] = frames_for_seconds(DEFAULT_NEW_SECONDS[mode], fps, mode, geometry.temporal)
    if "window" in accepted:
        params.setdefault("window", defaults.num_frames)
    if "context_frames" in accepted and getattr(defaults, "context_frames", None) is not None:
        params.setdefault("context_frames", defaults.context_frames)
    if mode in ("t2v", "animate"):
        params.setdefault("num_frames", defaults.num_frames)
    source = next((params.get(name) for name in SOURCES.get(mode, ())), None)
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
    return builder(**params)
