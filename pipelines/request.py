"""The one description of a generation: `GenerationRequest`.

The UI, the CLI, the tests and every output's metadata build or serialise this type. It validates on
construction and raises `ValueError` naming the field and what is valid; it never rounds or clamps.
Checks that depend on the loaded model (grid multiples, frame counts the VAE takes) live in
`VideoPipeline.check_request`, which raises the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.lora import Lora

CONDITIONING_STRATEGIES = ("per_token", "replace")
ITEM_OUTPUTS = ("window", "source", "omit")
REQUEST_FORMAT = 1
MAX_SEED = 2**64 - 1
MAX_BEST_OF = 16
MAX_CONDITIONING_ITEMS = 64  # keyframes and clips one window holds; far above any mode's
# The text encoders read at most max_sequence_length tokens (512 for Wan's umT5, about 2,000 characters of
# English) and drop the rest, so a longer prompt only costs tokenising and sidecar space.
MAX_PROMPT_CHARS = 4000
# Optional request fields only some families read (None: the model's default). A family lists the ones it reads
# in `Family.knobs`; VideoPipeline.check_request refuses a set knob the loaded family does not read.
KNOBS = ("motion_bucket_id", "noise_aug_strength", "min_guidance_scale")
# The fields a mode's parameters decide (see `GenerationRequest.replace`).
LAYOUT_FIELDS = {"mode", "num_frames", "conditioning", "init_video", "init_strength", "init_start", "image_first",
                 *KNOBS}
MAX_MODE_PARAMS = 32  # parameters a request records having been built from (far above any mode's)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode, or None. A lone surrogate (a raw API's JSON may carry "\\ud800", a
    shell's undecodable bytes become \\udc80-\\udcff) is not a character: no file or JSON encoder takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"it holds a lone surrogate, U+{ord(text[error.start]):04X}, which is not a character"
    return None


def _require_text(value: Any, name: str, valid: str) -> None:
    _require(isinstance(value, str), name, value, valid)
    problem = unicode_problem(value)
    _require(problem is None, name, value, f"text in valid Unicode; {problem} (type it again, or send it as UTF-8)")


def _require(ok: bool, name: str, value: Any, valid: str) -> None:
    if not ok:
        raise ValueError(f"{name} = {value!r} is not valid: {valid}")


def frames_text(count: int, noun: str = "frame") -> str:
    """"1 frame", "9 frames": counts shown to people."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def nearest_valid(value: int, multiple: int, offset: int = 0, minimum: int = 1) -> list[int]:
    """The valid values (offset + k * multiple, at least `minimum`) next to `value`."""
    below = max(minimum, offset + ((value - offset) // multiple) * multiple)
    return sorted({below, below + multiple} - {value})


def default_guidance(mode: str, guidance_scale: float, join_guidance_scale: float | None) -> float:
    """A mode's default guidance: a model's join guidance, where it sets one, for extend, loop and connect."""
    from pipelines.modes import SPECS

    joins = mode in SPECS and SPECS[mode].joins
    return join_guidance_scale if joins and join_guidance_scale is not None else guidance_scale


def check_grid(request: GenerationRequest, grid: int, temporal: int) -> None:
    """Model-dependent checks: sizes on the latent-patch grid, window lengths the causal VAE takes."""
    for name in ("width", "height"):
        value = getattr(request, name)
        _require(value % grid == 0, name, value, f"a multiple of {grid} for this model "
                 f"(nearest: {' or '.join(map(str, nearest_valid(value, grid, minimum=grid)))})")
    frames = request.num_frames
    _require((frames - 1) % temporal == 0, "num_frames", frames, f"{temporal}k+1 frames for this model's VAE "
             f"(nearest: {' or '.join(map(str, nearest_valid(frames, temporal, offset=1)))})")


@dataclass(frozen=True)
class ConditioningItem:
    """Known pixels placed in the output timeline.

    `source` is an image or a clip (a video file or a folder of PNG frames). `source_start` and
    `source_count` select frames of that clip after it was read at the request's fps and fitted to its
    size (`source_count=None`: to the end). The first selected frame sits at window frame `frame_index`.
    `strength` 1 holds the frames exactly; lower values let the model depart from them.
    `output` says what the assembled clip shows for them: the decoded `window` frames, the `source` clip
    copied through untouched (the whole clip, aligned: extend and connect; a clip after frame 0 perhaps from
    its second frame, its first lying in a generated latent: see pipelines/seams.py), or nothing (`omit`:
    the head of a clip a loop wraps back to).
    """

    source: str
    frame_index: int = 0
    strength: float = 1.0
    source_start: int = 0
    source_count: int | None = None
    output: str = "window"

    def __post_init__(self) -> None:
        _require(isinstance(self.source, str) and self.source != "", "conditioning.source", self.source,
                 "a path to an image, a video file or a folder of PNG frames")
        _require(_is_int(self.frame_index) and self.frame_index >= 0, "conditioning.frame_index", self.frame_index,
                 "an integer frame index >= 0")
        _require(_is_number(self.strength) and 0.0 < self.strength <= 1.0, "conditioning.strength", self.strength,
                 "a number in (0, 1]")
        _require(_is_int(self.source_start) and self.source_start >= 0, "conditioning.source_start",
                 self.source_start, "an integer >= 0")
        _require(self.source_count is None or (_is_int(self.source_count) and self.source_count >= 1),
                 "conditioning.source_count", self.source_count, "None (to the end) or an integer >= 1")
        _require(self.output in ITEM_OUTPUTS, "conditioning.output", self.output, f"one of {', '.join(ITEM_OUTPUTS)}")


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides a generation's output; serialises to JSON and back exactly.

    `num_frames` is the length of the window the model samples. Modes that splice source clips (extend,
    loop, connect) return more frames than that: see `ConditioningItem.output`. `best_of` > 1 samples that
    many candidates (seeds `seed`, `seed + 1`, ...) and keeps the one whose joins are smoothest.
    `init_start` is the frame of `init_video` (read at `fps`) that a restyle's window starts on: the trim's
    in point.
    `image_first` samples a text-to-video clip in two stages, its first frame alone and then the clip with
    that frame held (None: the model's default; see `VideoPipeline.generate`).
    `mode_params` records the parameters of its mode's builder it was made from (see `pipelines.modes.ModeSpec`),
    which Reproduce reads back; they decide nothing of the output, so two requests that differ only there are
    equal.
    `prompt` may be empty for animate only, and only models that read no text (Stable Video Diffusion) take that.
    The KNOBS (None: the model's default) are Stable Video Diffusion's micro-conditioning (Blattmann et al.,
    arXiv 2311.15127): `motion_bucket_id` (more is more motion), `noise_aug_strength` (noise added to the still
    before it is encoded: more departs further from it) and `min_guidance_scale`, the guidance of the first
    frame, rising linearly to `guidance_scale` at the last. The frame rate it is conditioned on is `fps`.
    """

    prompt: str
    negative_prompt: str = ""
    mode: str = "t2v"
    width: int = 832
    height: int = 480
    num_frames: int = 81
    fps: float = 16.0
    steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None  # a two-expert model's low-noise expert (None: guidance_scale)
    seed: int = 0
    sampler: str = "default"
    shift: float | None = None
    conditioning: tuple[ConditioningItem, ...] = field(default_factory=tuple)
    conditioning_strategy: str | None = None
    init_video: str | None = None
    init_strength: float | None = None
    init_start: int = 0
    use_saved_latents: bool = True
    best_of: int = 1
    image_first: bool | None = None
    motion_bucket_id: int | None = None
    noise_aug_strength: float | None = None
    min_guidance_scale: float | None = None
    loras: tuple[Lora, ...] = field(default_factory=tuple)  # LoRA adapters on the denoiser (pipelines/lora.py)
    mode_params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        from pipelines.lora import loras_of
        from pipelines.modes import SPECS  # the registries name the valid modes and samplers
        from pipelines.samplers import SAMPLERS

        object.__setattr__(self, "loras", loras_of(self.loras))  # JSON objects become Lora, checked
        if isinstance(self.conditioning, list):
            object.__setattr__(self, "conditioning", tuple(self.conditioning))
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:  # not _require: the message must not repeat it
                raise ValueError(f"{name} is {len(text):,} characters long: at most {MAX_PROMPT_CHARS:,} (the text "
                                 "encoder reads only the first few hundred words)")
        _require_text(self.prompt, "prompt", "a non-empty text describing the video")
        _require(isinstance(self.mode, str) and self.mode in SPECS, "mode", self.mode, f"one of {', '.join(SPECS)}")
        spec = SPECS[self.mode]
        _require(self.prompt.strip() != "" or spec.promptless, "prompt", self.prompt,
                 "a non-empty text describing the video (only animate may leave it empty, on a model that reads "
                 "no prompt)")
        _require_text(self.negative_prompt, "negative_prompt", "a text (may be empty)")
        for name in ("width", "height"):
            value = getattr(self, name)
            _require(_is_int(value) and 16 <= value <= 4096, name, value, "an integer number of pixels in [16, 4096]")
        _require(_is_int(self.num_frames) and 1 <= self.num_frames <= 1025, "num_frames", self.num_frames,
                 "an integer in [1, 1025]")
        _require(_is_number(self.fps) and 1 <= self.fps <= 120, "fps", self.fps, "a number in [1, 120]")
        _require(_is_int(self.steps) and 1 <= self.steps <= 1000, "steps", self.steps, "an integer in [1, 1000]")
        _require(_is_number(self.guidance_scale) and 0 <= self.guidance_scale <= 50, "guidance_scale",
                 self.guidance_scale, "a number in [0, 50] (values <= 1 turn guidance off)")
        _require(self.guidance_scale_2 is None or (_is_number(self.guidance_scale_2) and 0 <= self.guidance_scale_2 <= 50),
                 "guidance_scale_2", self.guidance_scale_2,
                 "None (the same as guidance_scale) or a number in [0, 50] (the low-noise expert's guidance)")
        _require(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _require(isinstance(self.sampler, str) and self.sampler in SAMPLERS, "sampler", self.sampler,
                 f"one of {', '.join(SAMPLERS)}")
        _require(self.shift is None or (_is_number(self.shift) and 0 < self.shift <= 100), "shift", self.shift,
                 "None (the checkpoint's own) or a number in (0, 100]")
        _require(len(self.conditioning) <= MAX_CONDITIONING_ITEMS, "conditioning", f"{len(self.conditioning)} items",
                 f"at most {MAX_CONDITIONING_ITEMS} items")
        _require(all(isinstance(item, ConditioningItem) for item in self.conditioning), "conditioning",
                 self.conditioning, "a sequence of ConditioningItem")
        for item in self.conditioning:
            _require(item.frame_index < self.num_frames, "conditioning.frame_index", item.frame_index,
                     f"a frame inside the window, 0 to {self.num_frames - 1}")
        _require(self.conditioning_strategy is None or self.conditioning_strategy in CONDITIONING_STRATEGIES,
                 "conditioning_strategy", self.conditioning_strategy,
                 f"None (the model's default) or one of {', '.join(CONDITIONING_STRATEGIES)}")
        held = spec.held
        _require(len(self.conditioning) >= held, "conditioning", self.conditioning,
                 f"at least {held} item{'s' * (held != 1)} for {self.mode} (what it holds: pipelines.modes builds them)")
        _require(self.init_video is None or (isinstance(self.init_video, str) and self.init_video != ""),
                 "init_video", self.init_video, "None or a path to a video")
        _require(self.mode != "restyle" or self.init_video is not None, "init_video", self.init_video,
                 "the footage to restyle (a path to a video) for restyle")
        _require(_is_int(self.init_start) and self.init_start >= 0, "init_start", self.init_start,
                 "an integer >= 0 (the frame of init_video, at the request's fps, that the window starts on)")
        if self.init_video is None:
            _require(self.init_strength is None, "init_strength", self.init_strength,
                     "None unless init_video is given (strength is how far the init video is noised)")
            _require(self.init_start == 0, "init_start", self.init_start, "0 unless init_video is given")
        else:
            _require(_is_number(self.init_strength) and 0 < self.init_strength <= 1, "init_strength",
                     self.init_strength, "a number in (0, 1] (1 = start from pure noise)")
            _require(math.floor(self.steps * self.init_strength) >= 1, "init_strength", self.init_strength,
                     f"at least 1/steps = {1 / self.steps:.3g}, so that at least one of the {self.steps} steps runs")
        _require(isinstance(self.use_saved_latents, bool), "use_saved_latents", self.use_saved_latents, "True or False")
        _require(_is_int(self.best_of) and 1 <= self.best_of <= MAX_BEST_OF, "best_of", self.best_of,
                 f"an integer in [1, {MAX_BEST_OF}] (candidates to sample, keeping the smoothest joins)")
        _require(self.image_first is None or isinstance(self.image_first, bool), "image_first", self.image_first,
                 "None (the model's default), True or False")
        if self.image_first:
            _require(self.mode == "t2v" and self.num_frames > 1 and not self.conditioning, "image_first",
                     self.image_first, "None or False unless the request is text-to-video of more than one frame "
                     "without conditioning (its first frame is what image-first samples)")
        _require(self.motion_bucket_id is None or (_is_int(self.motion_bucket_id) and
                                                   0 <= self.motion_bucket_id <= 1023),
                 "motion_bucket_id", self.motion_bucket_id,
                 "None (the model's default) or an integer in [0, 1023] (more is more motion)")
        _require(self.noise_aug_strength is None or (_is_number(self.noise_aug_strength) and
                                                     0 <= self.noise_aug_strength <= 10),
                 "noise_aug_strength", self.noise_aug_strength,
                 "None (the model's default) or a number in [0, 10] (noise added to the still before encoding)")
        _require(self.min_guidance_scale is None or (_is_number(self.min_guidance_scale) and
                                                     0 <= self.min_guidance_scale <= self.guidance_scale),
                 "min_guidance_scale", self.min_guidance_scale,
                 f"None (the model's default) or a number in [0, guidance_scale = {self.guidance_scale:g}] (the "
                 "first frame's guidance, rising to guidance_scale at the last)")
        _require(isinstance(self.mode_params, dict) and len(self.mode_params) <= MAX_MODE_PARAMS and
                 all(isinstance(k, str) and len(k) <= 64 and (v is None or isinstance(v, int) or _is_number(v) or
                                                              (isinstance(v, str) and len(v) <= 4096))
                     for k, v in self.mode_params.items()),
                 "mode_params", self.mode_params, f"an object of at most {MAX_MODE_PARAMS} names with a number, "
                 "text, true/false or null each (the parameters the request was built from)")
        if self.best_of > 1:
            _require(any(item.output != "window" for item in self.conditioning), "best_of", self.best_of,
                     "1 for a request without joins: candidates are ranked by their joins to copied-through clips "
                     "(extend, loop, connect)")

    # ---- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["conditioning"] = [dataclasses.asdict(item) for item in self.conditioning]
        return {"format": REQUEST_FORMAT, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        _require(isinstance(data, dict), "request", type(data).__name__, "a JSON object of request fields")
        data = dict(data)
        version = data.pop("format", REQUEST_FORMAT)
        _require(version == REQUEST_FORMAT, "format", version, f"{REQUEST_FORMAT} (this studio's request format)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, "request keys", unknown, f"only {', '.join(sorted(known))}")
        item_keys = {f.name for f in dataclasses.fields(ConditioningItem)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        _require(not missing, "request keys", missing, f"a request needs {', '.join(sorted(required))}")
        raw_items = data.get("conditioning", ())
        _require(isinstance(raw_items, (list, tuple)), "conditioning", raw_items, "a list of conditioning items")
        _require(len(raw_items) <= MAX_CONDITIONING_ITEMS, "conditioning", f"{len(raw_items)} items",
                 f"at most {MAX_CONDITIONING_ITEMS} items")  # before building them
        items = []
        for raw in raw_items:
            _require(isinstance(raw, dict), "conditioning item", raw, "an object with a 'source' and placement")
            extra = sorted(set(raw) - item_keys)
            _require(not extra, "conditioning keys", extra, f"only {', '.join(sorted(item_keys))}")
            _require("source" in raw, "conditioning keys", sorted(raw), "an item needs a 'source'")
            items.append(ConditioningItem(**raw))
        data["conditioning"] = tuple(items)
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> GenerationRequest:
        """A copy with `changes`. A change to what its mode's parameters placed (its layout) drops the record
        of them, unless it gives a new one: Reproduce then reads them off the new layout."""
        if "mode_params" not in changes and LAYOUT_FIELDS & changes.keys():
            changes["mode_params"] = {}
        return dataclasses.replace(self, **changes)
