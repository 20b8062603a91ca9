"""`VideoPipeline`: the one object every tab, the CLI and the tests generate through.

It wraps one model family's adapter (`pipelines.families`: its VAE, denoiser, text encoder and scheduler).
Every mode is a request with conditioning items and a starting noise level; `generate()` runs them all, for
every family, through the same stages and the same sampling loop.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines import memory as memory_modes
from pipelines.families import Configs, Family, family_of, inspect_model
from pipelines.latents import LatentTimeline, load_timeline
from pipelines.loading import ModelDefaults, load_components
from pipelines.lora import Adapters
from pipelines.preview import LatentPreviewer
from pipelines.request import (
    KNOBS,
    MAX_SEED,
    ConditioningItem,
    GenerationRequest,
    check_grid,
    frames_text,
    nearest_valid,
)
from pipelines.seams import Join, carry_residuals, held_residuals, join_ratios
from pipelines.sampling import GenerationCancelled, HeldLatents, StepCallback, sample
from pipelines.video_io import read_media

# Saved latents decoded before a chained window: enough for the causal decoder's state to settle (its
# temporal receptive field is a few latents), bounded so that long chains do not decode their whole past.
DECODER_WARMUP_LATENTS = 16
# Requests may have at most this many times the latent tokens of the model's default size and length (unless
# its studio.json says max_latent_tokens): room for the UI's largest presets at its longest duration on every
# registered model, while refusing what runs for many minutes between two chances to cancel (README: limits).
LATENT_TOKEN_FACTOR = 16


@dataclass
class PlacedItem:
    """A conditioning item after reading: its frames and where its latents go."""

    item: ConditioningItem
    source_frames: np.ndarray  # (N, H, W, 3) the whole fitted source clip
    start: int  # first selected source frame
    count: int  # selected frames
    timeline: LatentTimeline | None = None  # the source's saved latents, when they can be used
    timeline_note: str = ""


@dataclass
class GenerationResult:
    frames: np.ndarray  # (F, H, W, 3) uint8: the assembled clip
    fps: float
    request: GenerationRequest
    model_id: str
    latents: torch.Tensor  # (C, F_lat, H/8, W/8) the window's final latents, normalised
    held: HeldLatents | None  # what was held while sampling
    timeline: LatentTimeline | None  # latents of the assembled clip, for chaining
    window_offset: int  # output frame index of window frame 0
    timings: dict[str, float] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    join_ratios: list[float] = field(default_factory=list)  # each join's step over the median (pipelines/seams.py)
    seed: int | None = None  # the seed of the kept candidate (the request's own unless best_of > 1)
    step_cache: float | None = None  # the step cache's threshold it was made with (it changes the output)

    @property
    def audio_source(self) -> str | None:
        """The restyled video, whose audio track the output keeps (frame folders and GIFs have none)."""
        source = self.request.init_video
        if self.request.mode == "restyle" and source and Path(source).is_file() and \
                Path(source).suffix.lower() in (".mp4", ".mov", ".mkv", ".webm"):
            return source
        return None

    @property
    def audio_start(self) -> float:
        """Seconds into `audio_source` where the output's audio starts: the restyle's trim."""
        return self.request.init_start / self.request.fps


@dataclass
class _Candidate:
    seed: int
    frames: np.ndarray
    offset: int
    latents: torch.Tensor
    held: HeldLatents | None
    join_ratios: list[float]
    cut_after_first: frozenset[int]  # indices of the placed clips copied from their second frame (see _join)


@dataclass
class _Conditioning:
    """A request's known content in latents, encoded once for all its candidates."""

    placed: list[PlacedItem]
    init: Any  # the init video as the family's encode_init gives it (SDEdit): its latents (1, C, F, H, W)
    clean: torch.Tensor  # (1, C, F, H, W) every item's latents where they sit in the window
    hold: torch.Tensor  # (1, 1, F, H, W) how strongly each position is held
    prefix: torch.Tensor | None  # saved latents before a start item (they warm the causal decoder)
    suffix: torch.Tensor | None  # saved latents after an end item (they extend the output's timeline)


class _Timer:
    """Seconds per stage, summed over candidates."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(self.timings.get(stage, 0.0) + now - self._clock, 4)
        self._clock = now


def _pass_progress(callback: StepCallback | None, k: int, passes: int) -> StepCallback | None:
    """Steps of sampling pass k counted on from the passes before it (candidates, image-first's two stages),
    so progress runs 1..passes*steps."""
    if callback is None or passes == 1:
        return callback
    return lambda step, total, latents: callback(k * total + step, passes * total, latents)


class VideoPipeline:
    def __init__(self, family: Family, model_id: str):
        self.family = family
        self.model_id = model_id
        self._previewer: LatentPreviewer | None = None
        self.adapters = Adapters(family, model_id)  # the LoRAs loaded into its denoisers
        self.step_cache: float | None = None  # First Block Cache's threshold, once accelerate() turned it on

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str, device: str | None = None, dtype: torch.dtype | None = None,
                        memory: str = "full", low_vram: bool = False) -> VideoPipeline:
        """Load a registry name, a diffusers folder or a hub id. bf16 on CUDA, float32 on CPU. `memory` is the
        memory mode (pipelines/memory.py: full, low, minimal); `low_vram` is the older name of memory="low".
        The weights load on the CPU and only the mode moves them to the device."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = inspect_model(model)
        parts = load_components(model.folder, model.configs.index, model.family.required(model.configs), dtype)
        memory = "low" if low_vram else memory
        return cls(model.family(parts, model.configs, model.defaults, device, memory), model.model_id)

    @classmethod
    def from_parts(cls, parts: dict[str, Any], model_id: str, defaults: ModelDefaults, *,
                   index: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                   memory: str = "full", low_vram: bool = False) -> VideoPipeline:
        """A pipeline from components built in memory (tests, benchmarks); `index` is the model_index.json a
        folder of them would have (its `_class_name` picks the family; Wan when absent). `memory` and
        `low_vram` as in from_pretrained."""
        configs = Configs.of_parts(parts, index)
        family = family_of(configs) if index is not None else family_of(Configs({"_class_name": "WanPipeline"}, {}))
        return cls(family(parts, configs, defaults, torch.device(device), "low" if low_vram else memory), model_id)

    # ---- what the loaded model is -------------------------------------------------------------------------
    @property
    def defaults(self) -> ModelDefaults:
        return self.family.defaults

    @defaults.setter
    def defaults(self, defaults: ModelDefaults) -> None:
        self.family.defaults = defaults

    @property
    def device(self) -> torch.device:
        return self.family.device

    @property
    def transformer(self) -> torch.nn.Module:
        """The (first) denoiser module."""
        return self.family.denoisers[0]

    @property
    def vae(self) -> torch.nn.Module:
        return self.family.vae

    @property
    def spatial(self) -> int:
        return self.family.geometry.spatial

    @property
    def temporal(self) -> int:
        return self.family.geometry.temporal

    @property
    def grid(self) -> int:
        return self.family.geometry.grid

    @property
    def modes(self) -> dict[str, str | None]:
        """Every mode: None where this model offers it, else why not."""
        return self.family.modes

    def request(self, mode: str, *args: Any, **params: Any) -> GenerationRequest:
        """A request of `mode` for this model: what is left out takes the model's own value."""
        from pipelines.modes import build

        return build(mode, self.defaults, self.family.geometry, *args, **params)

    def accelerate(self, attention: str | None = None, compile: bool = False,
                   step_cache: float | None = None) -> dict[str, str | bool | float | None]:
        """Turn on speed knobs (see `pipelines.acceleration`); returns what is in effect. Compiling and the
        flash/cuDNN backends are for CUDA; the step cache changes outputs and is opt-in."""
        from pipelines import acceleration

        used = {"attention": None, "compile": False, "step_cache": None}
        for module in self.family.denoisers:
            if attention:
                used["attention"] = acceleration.set_attention(module, attention, self.device)
        if step_cache:  # before compiling: the blocks compile differently under a cache
            self._set_step_cache(step_cache)
            used["step_cache"] = step_cache
        for module in self.family.denoisers:
            if compile:
                acceleration.compile_blocks(module)
                used["compile"] = True
        return used

    @contextlib.contextmanager
    def step_cache_as(self, threshold: float | None) -> Iterator[None]:
        """The step cache at `threshold` (None: off) for what runs inside, then as it was: a variations draft
        turns it on and its final turns it off, whatever the studio was started with."""
        before = self.step_cache
        if threshold == before:
            yield
            return
        self._set_step_cache(threshold)
        try:
            yield
        finally:
            self._set_step_cache(before)

    @property
    def can_step_cache(self) -> bool:
        """Whether the step cache applies to this model's denoisers (First Block Cache needs 2 blocks or more)."""
        from pipelines import acceleration

        return all(acceleration.block_count(module) >= 2 for module in self.family.denoisers)

    def _set_step_cache(self, threshold: float | None) -> None:
        from pipelines import acceleration

        if threshold:  # refused before the one in effect goes
            acceleration.check_step_cache(threshold)
            for module in self.family.denoisers:
                acceleration.check_cacheable(module)
        for module in self.family.denoisers:
            if acceleration.caching(module):
                module.disable_cache()
            if threshold:
                acceleration.enable_step_cache(module, threshold)
        self.step_cache = threshold or None

    # ---- model-dependent validation ---------------------------------------------------------------------
    def latent_tokens(self, width: int, height: int, num_frames: int) -> int:
        """How many tokens the denoiser attends over for a window of this size: the work of one step grows with it."""
        return self.family.geometry.latent_tokens(width, height, num_frames)

    @property
    def max_latent_tokens(self) -> int:
        """The most tokens a request may have: the model's own figure (studio.json), else LATENT_TOKEN_FACTOR
        times those of its default size and length."""
        d = self.defaults
        return d.max_latent_tokens or LATENT_TOKEN_FACTOR * self.latent_tokens(d.width, d.height, d.num_frames)

    def check_request(self, request: GenerationRequest) -> None:
        """Raise ValueError for what this model cannot take (the request checked the rest)."""
        family = self.family
        why_not = self.modes.get(request.mode)
        if why_not:
            offered = ", ".join(mode for mode, reason in self.modes.items() if reason is None)
            raise ValueError(f"mode = {request.mode!r} is not valid for this model: {why_not} (it offers: {offered})")
        if request.sampler not in family.samplers:
            raise ValueError(f"sampler = {request.sampler!r} is not valid for this model: one of "
                             f"{', '.join(family.samplers)}")
        if request.conditioning_strategy is not None and request.conditioning_strategy not in family.strategies:
            valid = f"None or {' or '.join(family.strategies)}" if family.strategies else \
                "None (it holds its conditioning itself)"
            raise ValueError(f"conditioning_strategy = {request.conditioning_strategy!r} is not valid for this model: "
                             f"{valid}")
        if family.reads_text and not request.prompt.strip():
            raise ValueError(f"prompt = {request.prompt!r} is not valid for this model: a non-empty text describing "
                             f"the video ({family.label} reads the prompt)")
        if request.guidance_scale_2 is not None and len(family.denoisers) < 2:
            raise ValueError(f"guidance_scale_2 = {request.guidance_scale_2:g} is not valid for this model: None (it "
                             "has one denoiser; guidance_scale_2 guides a second expert, as Wan 2.2 A14B's low-noise one)")
        for knob in KNOBS:
            value = getattr(request, knob)
            if value is not None and knob not in family.knobs:
                raise ValueError(f"{knob} = {value!r} is not valid for this model: None ({family.label} does not "
                                 f"read it)")
        check_grid(request, self.grid, self.temporal)
        tokens, most = self.latent_tokens(request.width, request.height, request.num_frames), self.max_latent_tokens
        if tokens > most:
            d = self.defaults
            usual = self.latent_tokens(d.width, d.height, d.num_frames)
            raise ValueError(f"{request.width}x{request.height} at {frames_text(request.num_frames)} is more than "
                             f"this model takes at once: {tokens:,} latent tokens, at most {most:,} (its default, "
                             f"{d.width}x{d.height} at {d.num_frames} frames, is "
                             f"{usual:,}); lower the size or the length")
        family.check(request)

    def uses_image_first(self, request: GenerationRequest) -> bool:
        """Whether the request samples its first frame alone before the clip (two sampling passes per
        candidate, each of `steps` steps): text-to-video of more than one latent frame, by request or by the
        model's default."""
        chosen = self.defaults.image_first if request.image_first is None else request.image_first
        return bool(chosen) and request.mode == "t2v" and (request.num_frames - 1) // self.temporal > 0 and \
            not request.conditioning and request.init_video is None

    # ---- latents <-> pixels ----------------------------------------------------------------------------
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (1, C, 1 + (F-1)//temporal, H/s, W/s) normalised latents (the posterior mode)."""
        return self.family.encode(frames)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(1, C, F', h, w) normalised latents -> (1 + (F'-1)*temporal, H, W, 3) uint8."""
        return self.family.decode(latents)

    def preview(self, latents: torch.Tensor, frame: int = -1) -> np.ndarray:
        """(H, W, 3) uint8 glimpse of one latent frame for progress displays, without a VAE decode."""
        if self._previewer is None:  # fitted on first use: one small VAE encode per pipeline
            self._previewer = LatentPreviewer.fit(self.encode, 8 * self.grid, 8 * self.grid)
        return self._previewer(latents, frame=frame, scale=self.spatial)

    # ---- the generation ------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, callback: StepCallback | None = None) -> GenerationResult:
        """Run one request: validate, encode text, encode conditioning, then per candidate prepare its
        noise, denoise, decode and assemble; keep the candidate with the smoothest joins."""
        timer = _Timer()
        try:
            # 1. Validate: the request against this model, and every conditioning source against the window.
            placed, init_frames = self._validate(request)
            timer.lap("validate")
            self.adapters.apply(request.loras)  # the request's LoRAs at its strengths (none: the base model)
            timer.lap("loras")
            # 2. Encode text.
            text = self.family.encode_text(request)
            timer.lap("encode_text")
            # 3. Encode conditioning: the init video (SDEdit) and the known frames of every item, once.
            known = self._encode_conditioning(request, placed, init_frames)
            timer.lap("encode_conditioning")
            # 4-6 per candidate (seeds seed, seed + 1, ...): of best_of > 1 the one whose worst join to a
            # copied-through clip steps least is kept.
            best, scores = None, []
            for k in range(request.best_of):
                seed = (request.seed + k) % (MAX_SEED + 1)
                latents, held = self._denoise(request, seed, known, text, k, callback)
                timer.lap("denoise")
                candidate = self._decode_candidate(request, seed, known, latents, held)
                timer.lap("decode")
                scores.append(max(candidate.join_ratios, default=0.0))
                if best is None or scores[-1] < max(best.join_ratios, default=0.0):
                    best = candidate
            timeline = self._timeline(best.latents, known.prefix, known.suffix, placed, request, best.offset,
                                      len(best.frames))
        except (GenerationCancelled, torch.cuda.OutOfMemoryError):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        finally:
            memory_modes.release(self.family)  # under model offload, the last model used goes back to the CPU
        return GenerationResult(
            frames=best.frames, fps=request.fps, request=request, model_id=self.model_id,
            latents=best.latents[0].cpu(), held=best.held, timeline=timeline, window_offset=best.offset,
            timings=timer.timings, parents=self._parents(request, placed),
            notes=self.family.notes(request) + self._notes(request, placed, best, scores),
            join_ratios=[round(x, 3) for x in best.join_ratios], seed=best.seed, step_cache=self.step_cache,
        )

    # ---- stages -----------------------------------------------------------------------------------------
    def _validate(self, request: GenerationRequest) -> tuple[list[PlacedItem], np.ndarray | None]:
        self.check_request(request)
        sources: dict[str, np.ndarray] = {}  # each source clip is read once per request
        placed = [self._place(item, request, sources) for item in request.conditioning]
        self._check_placement(placed, request)
        return placed, self._read_init_video(request)

    def _encode_conditioning(self, request: GenerationRequest, placed: list[PlacedItem],
                             init_frames: np.ndarray | None) -> _Conditioning:
        shape = self.family.geometry.latent_shape(request)  # (B, C, F, H, W)
        init = self.family.encode_init(init_frames) if init_frames is not None else None  # latents, or a posterior
        clean, hold, prefix, suffix = self._encode_items(placed, shape)
        return _Conditioning(placed, init, clean, hold, prefix, suffix)

    def _denoise(self, request: GenerationRequest, seed: int, known: _Conditioning, text: Any, k: int,
                 callback: StepCallback | None) -> tuple[torch.Tensor, HeldLatents | None]:
        """4. Noise, then 5. denoise one candidate: (1, C, F, H, W) final latents and what was held.

        Image-first text-to-video (Emu Video, Girdhar et al., arXiv 2311.10709) samples latent frame 0 alone,
        from its own slice of the noise, then samples the clip with that frame held as animate holds a still:
        the layout is settled where the model is surest."""
        family, shape = self.family, self.family.geometry.latent_shape(request)
        image_first = self.uses_image_first(request)
        per_candidate = 2 if image_first else 1  # sampling passes per candidate
        passes = request.best_of * per_candidate
        strategy = request.conditioning_strategy or self.defaults.conditioning_strategy

        generator = torch.Generator("cpu").manual_seed(seed)
        conditions = family.prepare(request, shape, known.placed, generator)
        schedule = family.schedule(request, shape, generator)
        latents = family.start(schedule, conditions, known.init)
        held = family.held(known.clean, known.hold, conditions, strategy) if known.placed else None
        denoiser = family.denoiser(request, text, conditions, batched=family.memory.batched_guidance)
        cached = getattr(denoiser, "cached", False)
        with torch.no_grad():
            try:
                if image_first:
                    first = sample(denoiser, conditions.noise[:, :, :1], family.schedule(request, shape, generator), None,
                                   _pass_progress(callback, per_candidate * k, passes))  # (1, C, 1, H, W)
                    if cached:
                        self._reset_caches()
                    clean, hold = torch.zeros_like(conditions.noise), torch.zeros((1, 1, *shape[2:]), device=self.device)
                    clean[:, :, :1], hold[:, :, :1] = first, 1.0
                    held = family.held(clean, hold, conditions, strategy)
                latents = family.window(sample(denoiser, latents, schedule, held,
                                               _pass_progress(callback, per_candidate * (k + 1) - 1, passes)),
                                        shape)  # (1, C, F, H, W)
            finally:
                if cached:  # a step cache must not carry one clip's residuals into the next
                    self._reset_caches()
        return latents, held

    def _reset_caches(self) -> None:
        """Clear every denoiser's step cache (a family's experts each keep one)."""
        from pipelines.acceleration import caching

        for module in self.family.denoisers:
            if caching(module):
                module._reset_stateful_cache()

    def _decode_candidate(self, request: GenerationRequest, seed: int, known: _Conditioning,
                          latents: torch.Tensor, held: HeldLatents | None) -> _Candidate:
        """6. Decode the window (after saved latents that warm the causal decoder), assemble the clip and
        score its joins."""
        warmup = known.prefix[:, :, -DECODER_WARMUP_LATENTS:] if known.prefix is not None else None
        window = self.decode(torch.cat([warmup, latents], dim=2) if warmup is not None else latents)
        window = window[-request.num_frames:]  # (T, H, W, 3)
        loops = any(p.item.output == "omit" for p in known.placed)  # the wrap back to the start is a join too
        frames, offset, ratios, cut_after_first = self._join(window, known.placed, request, loops)
        return _Candidate(seed, frames, offset, latents, held, ratios, cut_after_first)

    @staticmethod
    def _parents(request: GenerationRequest, placed: list[PlacedItem]) -> list[str]:
        parents = [p.item.source for p in placed] + ([request.init_video] if request.init_video else [])
        return list(dict.fromkeys(parents))

    @staticmethod
    def _notes(request: GenerationRequest, placed: list[PlacedItem], best: _Candidate, scores: list[float]
               ) -> list[str]:
        notes = [p.timeline_note for p in placed if p.timeline_note]
        for i in sorted(best.cut_after_first):
            notes.append(f"{Path(placed[i].item.source).name}: copied from its second frame (its first lies in a "
                         f"generated latent; the model's frame there joins more smoothly)")
        if request.best_of > 1:
            notes.append(f"best of {request.best_of}: seed {best.seed} (worst join {min(scores):.2f}x the median "
                         f"frame step; candidates {', '.join(f'{x:.2f}' for x in scores)})")
        return notes

    def _read_init_video(self, request: GenerationRequest) -> np.ndarray | None:
        if request.init_video is None:
            return None
        frames = read_media(request.init_video, request.fps, size=(request.width, request.height))
        start = request.init_start
        if len(frames) - start < request.num_frames:
            left = max(len(frames) - start, 0)
            longest = left - (left - 1) % self.temporal if left else 0
            raise ValueError(f"num_frames = {request.num_frames} is more than init_video has from frame {start} at "
                             f"{request.fps:g} fps ({frames_text(left)}); valid: at most {longest}")
        return frames[start:start + request.num_frames]

    def _place(self, item: ConditioningItem, request: GenerationRequest, sources: dict[str, np.ndarray]) -> PlacedItem:
        if item.source not in sources:
            sources[item.source] = read_media(item.source, request.fps, size=(request.width, request.height))
        frames = sources[item.source]
        available = len(frames) - item.source_start
        count = available if item.source_count is None else item.source_count
        if available < 1 or count > available:
            raise ValueError(f"conditioning {item.source!r}: frames {item.source_start}..{item.source_start + count - 1} "
                             f"requested but the clip has {frames_text(len(frames))} at {request.fps:g} fps")
        placed = PlacedItem(item, frames, item.source_start, count)
        if item.output == "source" and request.use_saved_latents:
            placed.timeline, placed.timeline_note = self._usable_timeline(placed, request)
        return placed

    def _usable_timeline(self, placed: PlacedItem, request: GenerationRequest) -> tuple[LatentTimeline | None, str]:
        """The clip's saved latents if they fit the request, and a note for the creator saying what was used
        (the clip by its file name: an upload keeps the name it was uploaded under)."""
        name = Path(placed.item.source).name
        re_encoded = "so it was re-encoded from its pixels (slightly less faithful)"
        timeline, reason = load_timeline(placed.item.source)
        if timeline is None:
            return None, f"{name} {reason}, {re_encoded}"
        expected = (self.family.geometry.channels, request.height // self.spatial, request.width // self.spatial)
        problems = []
        if (timeline.latents.shape[0], *timeline.latents.shape[2:]) != expected:
            problems.append("its latents have another shape")
        if timeline.model_id != self.model_id:
            problems.append(f"it was made by {timeline.model_id}")
        if timeline.fps != float(request.fps) or timeline.num_frames != len(placed.source_frames):
            problems.append("it was saved at another fps or length")
        k = (placed.count - 1) // self.temporal
        if placed.item.frame_index == 0:
            end = timeline.latent_ending_at(placed.start + placed.count - 1)
            if end is None or end < k:
                problems.append("its latents do not cover the context frames")
        elif (placed.start - timeline.first_frame) % self.temporal or placed.start < timeline.first_frame or \
                timeline.latent_ending_at(placed.start + placed.count - 1) is None:
            problems.append("its latents do not cover the context frames")
        if problems:
            return None, f"{name}'s saved latents do not fit this request ({'; '.join(problems)}), {re_encoded}"
        return timeline, f"{name} was continued from its saved latents, exactly as it was generated"

    def _check_placement(self, placed: list[PlacedItem], request: GenerationRequest) -> None:
        """Items must sit on the causal VAE's latent grid: latent 0 holds frame 0 alone, every later latent
        `temporal` frames. A clip at frame 0 needs temporal*k+1 frames; a clip later in the window starts on
        a multiple of `temporal` and has temporal*k+1 frames (k >= 1): its first frame only warms the encoder."""
        t = self.temporal
        spans = []
        for p in placed:
            f, n, name = p.item.frame_index, p.count, p.item.source
            if (n - 1) % t:
                raise ValueError(f"conditioning {name!r}: {n} frames is not valid: {t}k+1 frames "
                                 f"(nearest: {' or '.join(map(str, nearest_valid(n, t, offset=1)))})")
            if f > 0 and not self.family.holds_stills and (f % t or n < t + 1):
                raise ValueError(f"conditioning {name!r} at frame {f}: a clip after frame 0 must start on a multiple "
                                 f"of {t} and have at least {t + 1} frames")
            if f + n > request.num_frames:
                raise ValueError(f"conditioning {name!r}: frames {f}..{f + n - 1} run past the window's "
                                 f"{request.num_frames} frames")
            # A clip copied through must join the window where its held frames are: its tail opens the
            # window, its head closes it or sits later in it.
            if p.item.output == "source" and f == 0 and p.start + n != len(p.source_frames):
                raise ValueError(f"conditioning {name!r} at frame 0 with output='source' must select the clip's "
                                 f"last frames (source_start = {len(p.source_frames) - n} for {n} frames)")
            if p.item.output == "source" and f > 0 and p.start != 0:
                raise ValueError(f"conditioning {name!r} after frame 0 with output='source' must select the clip's "
                                 f"first frames (source_start = 0)")
            if p.item.output == "omit" and f + n != request.num_frames:
                raise ValueError(f"conditioning {name!r} with output='omit' must end the window (frame_index = "
                                 f"{request.num_frames - n})")
            spans.append((f, f + n))
        spans.sort()
        for (_, a1), (b0, _) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ValueError(f"conditioning items overlap at window frames {b0}..{a1 - 1}; place them apart")

    def _encode_items(self, placed: list[PlacedItem], shape: tuple[int, ...]):
        """Clean latents and hold strengths of every item, (1, C, F, H, W) and (1, 1, F, H, W); plus the
        saved-latent prefix before a start item (it warms the causal decoder) and the saved latents after an
        end item (they extend the output's timeline)."""
        clean = torch.zeros(shape, device=self.device)  # (1, C, F, H, W)
        hold = torch.zeros((1, 1, *shape[2:]), device=self.device)  # (1, 1, F, H, W)
        prefix = suffix = None
        t = self.temporal
        for p in placed:
            f, k = p.item.frame_index, (p.count - 1) // t
            first = f // t + (1 if f > 0 else 0)  # window latent where the item's held latents start
            n_latents = k + 1 if f == 0 else k
            if p.timeline is not None:
                tl = p.timeline.latents.to(self.device).unsqueeze(0)  # (1, C, F_clip, H, W)
                if f == 0:
                    end = p.timeline.latent_ending_at(p.start + p.count - 1)
                    latents = tl[:, :, end - k:end + 1]
                    prefix = tl[:, :, :end - k] if end - k > 0 else None
                else:
                    begin = (p.start - p.timeline.first_frame) // t + 1
                    latents = tl[:, :, begin:begin + k]
                    ends_window = first + n_latents == shape[2]
                    if ends_window and p.timeline.last_frame == p.timeline.num_frames - 1 and begin + k < tl.shape[2]:
                        suffix = tl[:, :, begin + k:]
            else:
                latents = self.encode(p.source_frames[p.start:p.start + p.count])  # (1, C, k+1, H, W)
                latents = latents if f == 0 else latents[:, :, 1:]
            clean[:, :, first:first + n_latents] = latents
            hold[:, :, first:first + n_latents] = p.item.strength
        return clean, hold, prefix, suffix

    def _join(self, window: np.ndarray, placed: list[PlacedItem], request: GenerationRequest, loops: bool
              ) -> tuple[np.ndarray, int, list[float], frozenset[int]]:
        """The output clip from the decoded window, and its join ratios. A clip copied through from a frame
        after 0 (connect's B, a backward extension's clip) starts in a generated latent (its first frame only
        warmed the encoder), so the cut into it can fall before its first frame or after it, showing the
        model's frame there. Like a seam search in image stitching, every combination of cuts is assembled
        and the one whose worst join steps least is kept (before the first frame on a tie): after it the join
        is a step into a held latent, which suits a clip that holds still; before it the carried residual
        spreads the model's miss over the bridge's last frames, which suits one that moves.
        Returns (frames, output index of window frame 0, join ratios, indices of the placed clips copied
        from their second frame)."""
        # (A single still after frame 0 has no second frame to cut to.)
        later = [i for i, p in enumerate(placed) if p.item.frame_index > 0 and p.item.output == "source" and p.count > 1]
        best = None
        for choice in itertools.product((False, True), repeat=len(later)):  # 1 or 2 clips in practice
            after_first = frozenset(i for i, after in zip(later, choice) if after)
            carried = carry_residuals(window, self._joins(window, placed, after_first))
            frames, offset, seams = self._assemble(carried, placed, request, after_first)
            ratios = join_ratios(frames, seams, wraps=loops)
            if best is None or max(ratios, default=0.0) < max(best[2], default=0.0):
                best = (frames, offset, ratios, after_first)
        return best

    def _joins(self, window: np.ndarray, placed: list[PlacedItem], after_first: frozenset[int] = frozenset()
               ) -> list[Join]:
        """Where copied-through clips meet generated frames, with the decode's error on their copied frames
        (`after_first`: indices of the clips after frame 0 copied from their second frame, see _join)."""
        joins = []
        for i, p in enumerate(placed):
            if p.item.output == "window":
                continue
            f, source = p.item.frame_index, p.source_frames[p.start:p.start + p.count]
            if f == 0:  # the clip's tail opens the window: held window frames 0..count-1
                joins.append(Join(p.count - 1, +1, held_residuals(source, window[:p.count])))
            elif i in after_first:  # the clip's head is copied through from window frame f
                # Cut after the clip's first frame: window frame f, in a generated latent, shows the model's
                # frame, and the join is the step into f + 1, a held latent's first frame.
                residuals = held_residuals(source[1:], window[f + 1:f + p.count])
                joins.append(Join(f + 1, -1, residuals[::-1]))
            else:  # the clip's head closes the window, or a loop wraps back to it, at its frame 0 (window frame f)
                # Frame f lies in a generated latent (the encoder read it only as a warm-up, see
                # _check_placement), so its residual holds the model's miss as well as the decoder's: carried
                # back over EDGE_FRAMES it blends the bridge into the clip's first frame, as the opening join's
                # residual does on its last copied frame.
                residuals = held_residuals(source, window[f:f + p.count])
                joins.append(Join(f, -1, residuals[::-1]))
        return joins

    def _assemble(self, window: np.ndarray, placed: list[PlacedItem], request: GenerationRequest,
                  after_first: frozenset[int] = frozenset()) -> tuple[np.ndarray, int, list[int]]:
        """The output clip in window coordinates: source clips copied through where items say so (the clips
        in `after_first` from their second frame on), omitted spans cut, decoded window frames elsewhere.
        Returns (frames, output index of window frame 0, output indices where copied and generated frames
        meet)."""
        sources = [p for p in placed if p.item.output == "source"]
        skipped = {placed[i].item.frame_index for i in after_first}  # window frames showing the model's frame
        lo = min([0] + [p.item.frame_index - p.start for p in sources])
        hi = max([len(window)] + [p.item.frame_index - p.start + len(p.source_frames) for p in sources])
        omitted = set()
        for p in placed:
            if p.item.output == "omit":
                omitted.update(range(p.item.frame_index, p.item.frame_index + p.count))
        frames, origins = [], []
        for w in range(lo, hi):
            source = next((i for i, p in enumerate(sources)
                           if 0 <= w - p.item.frame_index + p.start < len(p.source_frames)
                           and not (w == p.item.frame_index and w in skipped)), None)
            if source is not None:
                p = sources[source]
                frames.append(p.source_frames[w - p.item.frame_index + p.start])
                origins.append(source)
            elif w not in omitted:
                frames.append(window[w])
                origins.append(-1)
        seams = [i for i in range(1, len(origins)) if origins[i] != origins[i - 1]]
        return np.stack(frames), -lo, seams

    def _timeline(self, latents, prefix, suffix, placed, request, offset, length) -> LatentTimeline | None:
        """Latents of the assembled clip, for chaining: saved prefix + window (+ saved suffix), or the window
        alone when pixels were re-encoded; cut before an omitted span."""
        t = self.temporal
        window = latents[0]  # (C, F, H, W)
        first = offset
        start_item = next((p for p in placed if p.item.frame_index == 0 and p.timeline is not None), None)
        if prefix is not None and start_item is not None:
            window = torch.cat([prefix[0], window], dim=1)
            first = offset + start_item.item.frame_index - start_item.start + start_item.timeline.first_frame
        omitted = [p.item.frame_index for p in placed if p.item.output == "omit"]
        if omitted:
            keep = window.shape[1] - (latents.shape[2] - min(omitted) // t)
            window = window[:, :keep]
        elif suffix is not None:
            window = torch.cat([window, suffix[0]], dim=1)
        if window.shape[1] == 0 or first < 0:
            return None
        return LatentTimeline(window.cpu(), first, length, float(request.fps), self.model_id, t)
