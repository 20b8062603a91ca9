"""Know before you run: a request's predicted time and peak memory on the loaded pipeline and device, and the
memory mode that fits it (`--memory auto`).

Predictions come from measurements of the loaded model on this device, not from constants:
- Time. A denoiser forward of batch B over n latent tokens takes a + B t(n) seconds: a per-call overhead and
  one item's time t(n), timed in a few sampling steps at four token counts (read between them; past the
  largest, growing as a + b n + c n^2 fitted to them, c being attention's share, which grows with the square
  of the tokens); per-token timesteps (held frames) add d n per item. A VAE pass grows with its latents and
  its frames times the pixels it decodes (tiles included), fitted to a few timed passes; a prompt's encoding
  is timed once.
- Memory. The peak each stage adds above what the process holds before it: the sampling state, activations
  and attention (a + B (b n + c n^2)), the VAE's working set (of a one-frame and a many-frame latent, by a
  tile's pixels, and what each latent adds), fitted to the peaks of the same runs: the process's resident
  set on a CPU (VmHWM, reset before each run, after returning freed memory to the system),
  `torch.cuda.max_memory_allocated` on CUDA. Counted, not fitted: the weights (the bytes of every module's
  parameters and buffers, resident as the memory mode keeps them, pipelines/memory.py) and the clip's
  float32 copies.
A request's plan adds the stages as the engine runs them: text for prompts not yet cached, the encoding of
its conditioning frames, each candidate's sampling passes (image-first's two) and its decode.

Calibration runs on first use per model, device, dtype, thread count and attention backend, with explicit
generators, and is cached in a small JSON file in the folder the caller names (the CLI: outputs/.planner/).
Its probes grow from small to about twice the model's default side, each run only if the ones before it
predict it affordable (PROBE_BUDGET_S).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipelines import memory as memory_modes
from pipelines.request import ConditioningItem, GenerationRequest, frames_text
from pipelines.sampling import GenerationCancelled

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 4
GB = 2**30  # shown as "GB", as operating systems and GPU tools show memory
PROBE_PROMPT = "the planner's calibration run"
PROBE_STEPS = 3  # per timed sampling pass: the first step (shape warm-up) is not timed
# A probe runs only if the smaller ones before it predict (growing with the square of its size, an upper
# bound) that it takes at most this long and fits in half the device's free memory: a large model's
# calibration stays a few minutes at most and never runs out of memory, at the cost of reading further
# past its largest probe.
PROBE_BUDGET_S = 20.0


# ---- measuring -----------------------------------------------------------------------------------------
def _status(field_name: str) -> int | None:
    """A byte count from /proc/self/status (Linux), or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss() -> int:
    rss = _status("VmRSS")
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss
    return rss


def _malloc_trim() -> None:
    """Give the memory glibc keeps after frees back to the system, so that the resident set counts what is in
    use (a later allocation reuses what it kept, so a peak measured over kept memory reads too low)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Meter:
    """Device memory in use and its peak over a block of work: the process's resident set on a CPU (what the
    operating system counts against its RAM), the allocator's bytes on CUDA; and a clock that waits for the
    device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self._sampled = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    def now(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else _rss()

    def start(self) -> int:
        """Release what the allocator holds unused and restart the peak from here; returns the use now."""
        self.stop()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self.now()
        _malloc_trim()
        try:  # Linux: "5" resets the resident set's high-water mark (VmHWM)
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:  # elsewhere, sample the resident set until stop()
            self._sampled = _rss()
            self._stop.clear()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self.now()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._sampled = max(self._sampled, _rss())

    def stop(self) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        hwm = _status("VmHWM") if self._sampler is None else None
        return max(hwm if hwm is not None else self._sampled, self.now())

    def clock(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def resident_bytes(pipe) -> int:
    """Bytes of the pipeline's weights on its device now."""
    kind = pipe.device.type
    return sum(t.numel() * t.element_size() for module in memory_modes.modules_of(pipe.family).values()
               for t in itertools.chain(module.parameters(), module.buffers()) if t.device.type == kind)


# ---- fitting ---------------------------------------------------------------------------------------------
def _fit(features: list[list[float]], values: list[float]) -> list[float]:
    """Non-negative least squares on relative errors (each row divided by its value): every subset of the
    columns is solved and the best solution with no negative coefficient kept (at most 4 columns here)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    weight = 1.0 / np.maximum(np.abs(y), 1e-12)
    xw, yw = x * weight[:, None], y * weight
    columns = x.shape[1]
    best, best_error = np.zeros(columns), float(np.sum(yw**2))
    for mask in range(1, 2**columns):
        chosen = [j for j in range(columns) if mask >> j & 1]
        solution, *_ = np.linalg.lstsq(xw[:, chosen], yw, rcond=None)
        if (solution < 0).any():
            continue
        error = float(np.sum((xw[:, chosen] @ solution - yw) ** 2))
        if error < best_error - 1e-15:
            best, best_error = np.zeros(columns), error
            best[chosen] = solution
    return [float(v) for v in best]


def _poly(coefficients: list[float], *features: float) -> float:
    return sum(c * f for c, f in zip(coefficients, (1.0, *features)))


def forward_seconds(step: dict[str, Any], batch: int, n: int, held: bool) -> float:
    """Seconds of one denoiser forward of `batch` items over n tokens: the per-call overhead plus `batch`
    times one item's time. One item's time is read off the timed probes (linear between them); past the
    largest, it grows as the quadratic fitted to the probes from the default size up (attention's share
    grows with the square of the tokens); below the smallest, along the line through the two smallest."""
    ns, seconds = [p[0] for p in step["points"]], [p[1] for p in step["points"]]
    overhead = step["overhead"]
    if n > ns[-1]:
        total = seconds[-1] * _poly(step["beyond"], n, n * n) / max(_poly(step["beyond"], ns[-1], ns[-1] ** 2), 1e-12)
    elif n < ns[0] and len(ns) > 1:
        total = max(overhead, seconds[0] - (ns[0] - n) * (seconds[1] - seconds[0]) / (ns[1] - ns[0]))
    else:
        total = float(np.interp(n, ns, seconds))
    return overhead + batch * max(0.0, total - overhead + (step["per_token"][0] * n if held else 0.0))


# ---- the VAE's geometry ----------------------------------------------------------------------------------
def _tiles(vae: Any, height: int, width: int, spatial: int, tiled: bool) -> tuple[int, int]:
    """(largest tile's pixels, all tiles' pixels) of one frame as the VAE decodes it: the frame itself, or,
    when its tiling is on and the frame is larger than a tile, its overlapping tiles (diffusers' tiled_decode
    steps over the latents by the stride and decodes up to the minimum tile size from each position)."""
    if not tiled or not hasattr(vae, "tile_sample_min_height"):
        return height * width, height * width
    tile_h, tile_w = vae.tile_sample_min_height, vae.tile_sample_min_width
    if height <= tile_h and width <= tile_w:
        return height * width, height * width
    stride_h = max(1, vae.tile_sample_stride_height // spatial)
    stride_w = max(1, vae.tile_sample_stride_width // spatial)
    lat_h, lat_w, min_h, min_w = height // spatial, width // spatial, tile_h // spatial, tile_w // spatial
    rows = [min(min_h, lat_h - i) * spatial for i in range(0, lat_h, stride_h)]
    cols = [min(min_w, lat_w - j) * spatial for j in range(0, lat_w, stride_w)]
    return max(rows) * max(cols), sum(rows) * sum(cols)


# The whole clip in float32, three copies at once (an operation's input and result, besides the VAE's output
# joined from its chunks, or the family's scaled and clamped copies as they turn into uint8; an encode's
# input the same way): bytes per pixel of every frame. Counted, not fitted: the probes are short clips, the
# requests long ones.
CLIP_BYTES_PER_PIXEL = 3 * 3 * 4


@dataclass(frozen=True)
class VaeFeatures:
    """What a VAE pass's time and memory grow with. A causal video VAE runs latent by latent: the first
    latent's single frame, then `temporal` frames per latent, each at every layer's resolution."""

    time: tuple[float, float]  # latents x pixels (its low-resolution layers), frames x pixels (its full-resolution ones)
    # The working set of a one-frame latent, the extra of a many-frame one (the largest tile's pixels each),
    # and the latents (what each adds besides pixels: the allocator's growth over the pass's chunks).
    memory: tuple[float, float, float]
    clip: int  # bytes of the whole clip in float32 copies (CLIP_BYTES_PER_PIXEL; tiles' outputs overlap)


def vae_features(pipe, frames: int, height: int, width: int, tiled: bool) -> VaeFeatures:
    tile, total = _tiles(pipe.vae, height, width, pipe.spatial, tiled)
    latents = (frames - 1) // pipe.temporal + 1
    return VaeFeatures((latents * total, frames * total), (tile, tile if frames > 1 else 0, latents),
                       CLIP_BYTES_PER_PIXEL * frames * total)


# ---- calibration -----------------------------------------------------------------------------------------
def calibration_key(pipe) -> str:
    """What the measurements hold for: the model (its id and denoiser size), the device, the dtype, the CPU
    threads and the attention backend."""
    device = pipe.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu {platform.machine()} x{torch.get_num_threads()}"
    denoiser = pipe.transformer
    parameters = sum(p.numel() for module in pipe.family.denoisers for p in module.parameters())
    backend = next((getattr(m.processor, "_attention_backend", None) for m in denoiser.modules()
                    if hasattr(m, "processor")), None)
    return f"{pipe.model_id} ({parameters:,} parameters) on {name}, {str(denoiser.dtype).removeprefix('torch.')}, " \
           f"attention {backend or 'default'}"


# What each stored section holds (None for a number, n for n numbers, "fit" for a fit's coefficients, "points"
# for rows of three numbers): a section of another shape in the file (edited or crafted) is not ours and is
# measured again.
SECTION_SHAPES = {"step": {"overhead": None, "beyond": 3, "memory": 3, "per_token": 2, "points": "points"},
                  "decode": {"time": "fit", "memory": "fit"}, "encode": {"time": "fit", "memory": "fit"},
                  "text": {"time": None, "memory": None}, "transfer": {"bandwidth": None}}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _well_formed(name: str, data: Any) -> bool:
    shape = SECTION_SHAPES.get(name)
    if shape is None or not isinstance(data, dict):
        return False
    for key, kind in shape.items():
        value = data.get(key)
        if name == "transfer" and value is None:  # no bandwidth on a CPU
            continue
        numbers = value if isinstance(value, list) else None
        if kind is None and not _number(value):
            return False
        if isinstance(kind, int) and not (numbers is not None and len(numbers) == kind and all(map(_number, numbers))):
            return False
        if kind == "fit" and not (numbers and all(map(_number, numbers))):
            return False
        if kind == "points" and not (numbers and all(isinstance(row, list) and len(row) == 3 and
                                                     all(map(_number, row)) for row in numbers)):
            return False
    return True


@dataclass
class _Probe:
    stamps: list[float]  # clock at each step callback
    base: int  # device memory in use before the run
    peak: int  # its peak during the run


class NotCalibrated(LookupError):
    """A plan needs a measurement that has not been made, and the caller asked for none to run."""


class Calibration:
    """Measured coefficients of one model on one device, by section ("step", "decode", "encode", "text",
    "transfer"), each measured on first use and saved to `cache` (a folder; None keeps them in this process).
    With `measure=False` a missing section raises NotCalibrated instead (nothing runs on the model)."""

    _memory: dict[str, dict[str, Any]] = {}  # key -> sections, for cache=None and between reads

    def __init__(self, pipe, cache: str | Path | None = None, measure: bool = True):
        self.pipe = pipe
        self.measure = measure
        self.key = calibration_key(pipe)
        self.path = Path(cache) / CALIBRATION_FILE if cache is not None else None
        stored = self._read().get(self.key) if self.path is not None else None
        if isinstance(stored, dict):  # sections of the wrong shape (an edited or crafted file) are measured again
            stored = {name: data for name, data in stored.items() if _well_formed(name, data)}
        self.sections: dict[str, Any] = stored or Calibration._memory.setdefault(self.key, {})
        self.meter = Meter(pipe.device)
        self._stills: tempfile.TemporaryDirectory | None = None  # grey stills for models that only animate

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def _write(self) -> None:
        if self.path is None:
            return
        entries = self._read()
        entries[self.key] = self.sections
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({"version": CALIBRATION_VERSION, "entries": entries}, indent=1))
        os.replace(temporary, self.path)

    def section(self, name: str) -> dict[str, Any]:
        if name not in self.sections:
            if not self.measure:
                raise NotCalibrated(f"the planner has not measured {name} on this model and device yet")
            measure: Callable[[], dict[str, Any]] = getattr(self, f"_measure_{name}")
            with self._calibration_mode(), torch.no_grad():
                self.sections[name] = measure()
            self._write()
        return self.sections[name]

    @contextlib.contextmanager
    def _calibration_mode(self):
        """Measure with the weights where they do not move during a stage: everything resident on a CPU
        (where it is free), one model at a time on CUDA (what fits a device a model's weights fit), so that
        timings hold no transfers; the pipeline's mode comes back afterwards."""
        family = self.pipe.family
        was = family.memory.name
        wanted = "full" if self.pipe.device.type == "cpu" else "low"
        if wanted != was:
            memory_modes.apply(family, wanted)
        try:
            yield
        finally:
            if family.memory.name != was:
                memory_modes.apply(family, was)

    # -- the runs --
    def _probe_request(self, width: int, height: int, frames: int, steps: int, **extra: Any) -> GenerationRequest:
        """A small unguided request at this size: text to video, or animate from a grey still where the model
        makes clips from stills only."""
        pipe = self.pipe
        settings = dict(prompt=PROBE_PROMPT, width=width, height=height, num_frames=frames, fps=pipe.defaults.fps,
                        steps=steps, guidance_scale=1.0, seed=0, **extra)
        if pipe.modes.get("t2v") is None:
            return GenerationRequest(mode="t2v", **settings)
        from PIL import Image

        if self._stills is None:
            self._stills = tempfile.TemporaryDirectory(prefix="planner-")
        still = Path(self._stills.name) / f"grey-{width}x{height}.png"
        Image.new("RGB", (width, height), (128, 128, 128)).save(still)
        settings.pop("image_first", None)
        return GenerationRequest(mode="animate", conditioning=(ConditioningItem(str(still), source_count=1),),
                                 **settings)

    def _sample(self, request: GenerationRequest, callbacks: int) -> _Probe:
        """Run `request` for `callbacks` steps, then cancel it (no decode): the clock at each step, the peak."""
        stamps: list[float] = []

        def callback(step: int, total: int, latents: torch.Tensor) -> None:
            stamps.append(self.meter.clock())
            if len(stamps) >= callbacks:
                raise GenerationCancelled

        memory_modes.release(self.pipe.family)  # nothing left on the device from the run before
        base = self.meter.start()
        with contextlib.suppress(GenerationCancelled):
            self.pipe.generate(request, callback=callback)
        probe = _Probe(stamps, base, self.meter.peak())
        self.meter.stop()
        return probe

    def _timed(self, work: Callable[[], Any]) -> tuple[float, int]:
        """(seconds, peak bytes above the use before) of one call."""
        memory_modes.release(self.pipe.family)
        base = self.meter.start()
        started = self.meter.clock()
        result = work()
        seconds = self.meter.clock() - started
        peak = self.meter.peak() - base
        self.meter.stop()
        del result
        return seconds, peak

    def _correction(self, stage: str, resident_before: int) -> int:
        """Weights the calibration mode moved onto the device for `stage` (counted, not fitted)."""
        return stage_weights(self.pipe, self.pipe.family.memory.name, stage) - resident_before

    def _side(self, value: int, k: float) -> int:
        """`value` x k pixels on the model's grid."""
        return max(self.pipe.grid, int(round(value * k / self.pipe.grid)) * self.pipe.grid)

    def _sizes(self) -> list[tuple[int, int, int]]:
        """Probe windows around the model's default: half, one and two times its side at its length, and two
        times its side at about twice its length (for the quadratic part), within its token limit."""
        pipe, d = self.pipe, self.pipe.defaults
        t, fixed, side = pipe.temporal, pipe.family.geometry.fixed_size, self._side
        frames = d.num_frames
        longer = frames + ((frames - 1) // t) * t if frames > 1 else 1 + t
        shapes = [(0.5, frames), (1, frames), (2, frames), (2, longer)]
        sizes = []
        for k, f in shapes:
            w, h = fixed if fixed else (side(d.width, k), side(d.height, k))
            if pipe.latent_tokens(w, h, f) <= pipe.max_latent_tokens and (w, h, f) not in sizes:
                sizes.append((w, h, f))
        return sizes

    def _measure_step(self) -> dict[str, Any]:
        pipe = self.pipe
        # The probe prompt is encoded (and cached) before the runs, so that no run's peak is the text
        # encoder's (under model offload it visits the device on its own).
        sizes = self._sizes()
        pipe.family.encode_text(self._probe_request(*sizes[0], 1))
        points = []  # (tokens, seconds per forward, bytes)
        measured = []
        for w, h, f in sizes:
            n = pipe.latent_tokens(w, h, f)
            if points and not self._affordable(PROBE_STEPS * points[-1][1], points[-1][2], (n / points[-1][0]) ** 2):
                break
            measured.append((w, h, f))
            resident = resident_bytes(self.pipe)
            probe = self._sample(self._probe_request(w, h, f, PROBE_STEPS), PROBE_STEPS)
            seconds = min(np.diff(probe.stamps))
            points.append((pipe.latent_tokens(w, h, f), float(seconds),
                           probe.peak - probe.base - self._correction("denoise", resident)))
        points.sort()
        # A forward over more tokens never takes less time: a probe slower than a larger one was slowed by
        # something else on the machine, and the larger one's time bounds it.
        for i in range(len(points) - 2, -1, -1):
            points[i] = (points[i][0], min(points[i][1], points[i + 1][1]), points[i][2])
        ns, seconds = [n for n, _, _ in points], [s for _, s, _ in points]
        # The per-call overhead: where the line through the two smallest probes meets zero tokens.
        slope = (seconds[1] - seconds[0]) / (ns[1] - ns[0]) if len(ns) > 1 else 0.0
        overhead = min(max(0.0, seconds[0] - slope * ns[0]), seconds[0])
        default = pipe.latent_tokens(pipe.defaults.width, pipe.defaults.height, pipe.defaults.num_frames)
        upper = [(n, s) for n, s in zip(ns, seconds) if n >= default] or list(zip(ns, seconds))[-2:]
        beyond = _fit([[1, n, n * n] for n, _ in upper], [s for _, s in upper])
        memory_fit = _fit([[1, n, n * n] for n, _, _ in points], [m for _, _, m in points])
        step = {"overhead": overhead, "beyond": beyond, "memory": memory_fit, "per_token": [0.0, 0.0],
                "points": points}
        # Per-token timesteps (frames held by timestep, image-first's second pass): the denoiser embeds a
        # timestep per token. Measured on image-first's second pass where the model runs it.
        w, h, f = measured[min(2, len(measured) - 1)]
        probe_request = self._probe_request(w, h, f, PROBE_STEPS, image_first=True)
        if probe_request.mode == "t2v" and pipe.uses_image_first(probe_request) and \
                "per_token" in pipe.family.strategies:
            probe_request = probe_request.replace(conditioning_strategy="per_token")
            resident = resident_bytes(self.pipe)
            probe = self._sample(probe_request, 2 * PROBE_STEPS)
            n = pipe.latent_tokens(w, h, f)
            seconds = float(min(np.diff(probe.stamps[PROBE_STEPS:])))
            peak = probe.peak - probe.base - self._correction("denoise", resident)
            step["per_token"] = [max(0.0, (seconds - forward_seconds(step, 1, n, False)) / n),
                                 max(0.0, (peak - _poly(memory_fit, n, n * n)) / n)]
            step["held"] = [n, seconds, peak]
        return step

    def _affordable(self, seconds: float, peak: int, growth: float) -> bool:
        """Whether a probe `growth` times the work of one that took `seconds` and `peak` bytes is within the
        budget (PROBE_BUDGET_S, half the free memory)."""
        room = capacity_of(self.pipe.device) - self.meter.now()
        return seconds * growth <= PROBE_BUDGET_S and max(peak, 0) * growth <= room / 2

    def _vae_points(self, stage: str, run: Callable[[int, int, int], Any]) -> dict[str, Any]:
        """Time and peak of VAE passes on one frame at the default size and at three times its side, on 5
        latents' frames at the default size, on 2 at twice its side and on 9 at half of it: one-frame and
        many-frame working sets, latents and frames vary apart (`VaeFeatures`)."""
        pipe, d = self.pipe, self.pipe.defaults
        t = pipe.temporal
        tiled = pipe.family.memory.tile_vae
        fixed = pipe.family.geometry.fixed_size
        w1, h1 = fixed or (d.width, d.height)
        shapes = [(1, w1, h1), (1 + 4 * t, w1, h1)]
        shapes += [(1 + t, w1, h1), (1 + 8 * t, w1, h1)] if fixed else \
            [(1 + t, 2 * w1, 2 * h1), (1, 3 * w1, 3 * h1), (1 + 8 * t, self._side(w1, 0.5), self._side(h1, 0.5))]
        # A first pass allocates what the process then keeps (kernels' caches and pools): not part of any
        # pass's peak, so it is made before the measured ones, on the smallest shape.
        run(1, self._side(w1, 0.5), self._side(h1, 0.5))
        # Smallest first, each only if the passes before predict it affordable (time and peak growing with
        # frames x pixels).
        shapes.sort(key=lambda shape: shape[0] * shape[1] * shape[2])
        measured: dict[tuple[int, int, int], tuple[float, int]] = {}
        for index, shape in enumerate(shapes):
            if index:
                last = shapes[index - 1]
                growth = shape[0] * shape[1] * shape[2] / (last[0] * last[1] * last[2])
                if not self._affordable(*measured[last], growth):
                    shapes = shapes[:index]
                    break
            measured[shape] = self._vae_pass(stage, run, shape)
        # Each shape twice, the second time in reverse order, keeping the lesser time and peak: other work on
        # the machine only slows a pass, and the allocator's state left by the passes before only adds to a
        # peak (between processes the same pass's peak varies by 15 % and more).
        for shape in shapes[::-1]:
            seconds, peak = self._vae_pass(stage, run, shape)
            measured[shape] = (min(measured[shape][0], seconds), min(measured[shape][1], peak))
        points = [(frames, w, h, float(measured[(frames, w, h)][0]), measured[(frames, w, h)][1])
                  for frames, w, h in shapes]
        features = [vae_features(pipe, frames, h, w, tiled) for frames, w, h in shapes]
        time_fit = _fit([[1, *x.time] for x in features], [p[3] for p in points])
        memory_fit = _fit([[1, *x.memory] for x in features], [p[4] - x.clip for p, x in zip(points, features)])
        return {"time": time_fit, "memory": memory_fit, "points": points}

    def _vae_pass(self, stage: str, run: Callable[[int, int, int], Any],
                  shape: tuple[int, int, int]) -> tuple[float, int]:
        """(seconds, peak bytes besides weights the calibration mode moved) of one VAE pass on `shape`."""
        resident = resident_bytes(self.pipe)
        seconds, peak = self._timed(lambda: run(*shape))
        return seconds, peak - self._correction(stage, resident)

    def _measure_decode(self) -> dict[str, Any]:
        pipe = self.pipe
        generator = torch.Generator("cpu").manual_seed(0)

        def decode(frames: int, width: int, height: int):
            latent_frames = (frames - 1) // pipe.temporal + 1
            latents = torch.randn((1, pipe.family.geometry.channels, latent_frames, height // pipe.spatial,
                                   width // pipe.spatial), generator=generator)
            return pipe.decode(latents)

        return self._vae_points("decode", decode)

    def _measure_encode(self) -> dict[str, Any]:
        rng = np.random.default_rng(0)
        return self._vae_points("encode", lambda frames, width, height: self.pipe.encode(
            rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)))

    def _measure_text(self) -> dict[str, Any]:
        family = self.pipe.family
        # A prompt no cache holds: the first encoding of a prompt is what a plan counts.
        request = self._probe_request(self.pipe.defaults.width, self.pipe.defaults.height, 1, 1)
        request = request.replace(prompt=f"{PROBE_PROMPT} {uuid.uuid4().hex}")
        resident = resident_bytes(self.pipe)
        seconds, peak = self._timed(lambda: family.encode_text(request))
        return {"time": float(seconds), "memory": peak - self._correction("text", resident)}

    def _measure_transfer(self) -> dict[str, Any]:
        """Host-to-device bytes per second (CUDA), from pinned memory as the offloading hooks copy."""
        if self.pipe.device.type != "cuda":
            return {"bandwidth": None}
        block = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
        block.to(self.pipe.device)
        started = self.meter.clock()
        for _ in range(3):
            block.to(self.pipe.device)
        return {"bandwidth": 3 * block.numel() / (self.meter.clock() - started)}


# ---- weights under a memory mode ------------------------------------------------------------------------
STAGE_MODULES = {"text": ("text_encoder",), "encode": ("vae", "image_encoder"),
                 "denoise": ("transformer", "transformer_2", "unet"), "decode": ("vae",)}


def stage_weights(pipe, mode: str, stage: str) -> int:
    """Bytes of weights on the device during `stage` under memory mode `mode`: on a CPU every model (they are
    in RAM whatever the mode); on CUDA all of them (full), the stage's own models (low: the others wait on the
    CPU), or a stage model's two largest layers (minimal: one running, the next arriving)."""
    modules = memory_modes.modules_of(pipe.family)
    if pipe.device.type == "cpu" or mode == "full":
        return sum(module_bytes(m) for m in modules.values())
    own = [m for name, m in modules.items() if name in STAGE_MODULES[stage]]
    if mode == "low":
        # Two experts take turns; one is resident at a time.
        return max((module_bytes(m) for m in own), default=0) if stage == "denoise" else \
            sum(module_bytes(m) for m in own)
    leaves = sorted((module_bytes(leaf) for m in own for leaf in m.modules() if not list(leaf.children())),
                    reverse=True)
    return sum(leaves[:2])


# ---- the plan ----------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A request's predicted cost on the loaded pipeline under one memory mode."""

    mode: str
    device: str
    seconds: float
    peak: int  # bytes of device memory at the busiest stage (CPU: the process's resident set)
    capacity: int  # bytes the device offers
    stage: str  # the busiest stage: text, encode, denoise or decode
    tokens: int
    passes: int  # sampling passes: candidates x (2 for image-first, else 1)
    steps: int  # steps per pass
    time: dict[str, float] = field(default_factory=dict)  # seconds by stage (+ transfer)
    memory: dict[str, int] = field(default_factory=dict)  # bytes at the busiest stage, by what holds them

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity

    @property
    def line(self) -> str:
        """"about 40 s, 9.1 of 24 GB" """
        capacity = self.capacity / GB
        return f"about {duration(self.seconds)}, {self.peak / GB:.1f} of {capacity:.{0 if capacity >= 10 else 1}f} GB"

    def describe(self) -> str:
        """The line with the mode and what the time and memory are made of."""
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.time.items() if v >= 0.05)
        parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in self.memory.items() if v >= 0.005 * GB)
        return f"{self.line} (memory {self.mode}; {self.tokens:,} tokens x {self.passes} pass" \
               f"{'es' if self.passes > 1 else ''} x {self.steps} steps; {times}; peak at {self.stage}: {parts} GB)"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60)} min"


def capacity_of(device: torch.device) -> int:
    """Bytes a generation may use: on CUDA the free memory plus what this process's allocator already holds;
    on a CPU the process's resident set plus the RAM available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    import psutil

    return _rss() + psutil.virtual_memory().available


def _encoded_frames(request: GenerationRequest) -> list[int]:
    """Frames of each VAE encode the request's conditioning needs (sources with saved latents may skip it)."""
    counts = [item.source_count if item.source_count is not None else request.num_frames - item.frame_index
              for item in request.conditioning]
    return counts + ([request.num_frames] if request.init_video else [])


def plan(pipe, request: GenerationRequest, memory: str = "full", *, cache: str | Path | None = None,
         capacity: int | None = None, calibrate: bool = True) -> Plan | None:
    """The predicted time and peak memory of `request` on `pipe` under memory mode `memory` (auto: the mode
    `choose_memory` picks, or the lowest when none fits). Calibrates on first use (see the module); with
    `calibrate=False` it returns None instead, running nothing on the model (a display that updates while a
    job runs on the pipeline must not run it too)."""
    if memory != "auto":
        memory_modes.profile(memory)  # a ValueError naming the valid modes
    pipe.check_request(request)
    calibration = Calibration(pipe, cache, measure=calibrate)
    try:
        if memory == "auto":
            return _choose(pipe, request, capacity, calibration)[1]
        return _predict(pipe, request, memory, calibration, capacity)
    except NotCalibrated:
        return None


def _predict(pipe, request: GenerationRequest, mode: str, calibration: Calibration, capacity: int | None) -> Plan:
    family, profile = pipe.family, memory_modes.profile(mode)
    w, h, f = request.width, request.height, request.num_frames
    tokens = pipe.latent_tokens(w, h, f)
    shape = family.geometry.latent_shape(request)
    steps = len(family.schedule(request, shape, torch.Generator("cpu").manual_seed(0)))
    strategy = request.conditioning_strategy or pipe.defaults.conditioning_strategy
    per_token = strategy == "per_token" and "per_token" in family.strategies
    # Sampling passes as the engine runs them: image-first samples latent frame 0 alone (plain timesteps),
    # then the clip with it held; every candidate does the same.
    if pipe.uses_image_first(request):
        passes = [(pipe.latent_tokens(w, h, 1), False), (tokens, per_token)]
    else:
        passes = [(tokens, per_token and bool(request.conditioning))]
    guided = request.guidance_scale > 1.0
    batch, calls = (2, 1) if guided and profile.batched_guidance else (1, 2) if guided else (1, 1)

    step = calibration.section("step")
    ma, mb, mc = step["memory"]
    dm = step["per_token"][1]
    denoise_time, activations, attention = 0.0, 0.0, 0.0
    for n, held in passes:
        denoise_time += steps * calls * forward_seconds(step, batch, n, held)
        pass_activations = ma + batch * (mb * n + (dm * n if held else 0.0))
        if pass_activations + batch * mc * n * n > activations + attention:
            activations, attention = pass_activations, batch * mc * n * n
    denoise_time *= request.best_of

    decode = calibration.section("decode")
    features = vae_features(pipe, f, h, w, profile.tile_vae)
    decode_time = request.best_of * _poly(decode["time"], *features.time)
    # The decode's working set and output, and the clip assembled from it (uint8); joins compare frames in
    # float32 (pipelines/seams.py: three copies of the assembled clip at once).
    pixels = f * h * w
    joined = 12 * 3 * pixels if request.mode in ("extend", "loop", "connect") else 0
    decode_memory = _poly(decode["memory"], *features.memory) + features.clip + 3 * pixels + joined

    encode_time, encode_memory = 0.0, 0.0
    encoded = _encoded_frames(request)
    if encoded:
        encode = calibration.section("encode")
        for frames in encoded:
            e = vae_features(pipe, frames, h, w, profile.tile_vae)
            encode_time += _poly(encode["time"], *e.time)
            encode_memory = max(encode_memory, _poly(encode["memory"], *e.memory) + e.clip)

    text_time, text_memory = 0.0, 0.0
    texts = new_text(family, request, guided)
    if texts:
        text = calibration.section("text")
        text_time, text_memory = len(texts) * text["time"], text["memory"]

    forwards = request.best_of * steps * len(passes) * calls
    transfer = _transfer_time(pipe, profile, calibration, forwards, bool(texts), shape[2] * request.best_of)

    # Memory: what the process holds now besides weights, plus each stage's weights and transient.
    meter = calibration.meter
    if not meter.cuda:
        _malloc_trim()
    held_now = meter.now()
    other = max(0, held_now - resident_bytes(pipe))
    transients = {"text": {"text encoder": text_memory}, "encode": {"vae": encode_memory},
                  "denoise": {"activations": activations, "attention": attention}, "decode": {"vae": decode_memory}}
    stages = {stage: other + stage_weights(pipe, mode, stage) + sum(parts.values())
              for stage, parts in transients.items()
              if stage in ("denoise", "decode") or sum(parts.values()) > 0}
    busiest = max(stages, key=stages.get)
    breakdown = {"process": other, "weights": stage_weights(pipe, mode, busiest), **transients[busiest]}
    times = {"text": text_time, "encode": encode_time, "denoise": denoise_time, "decode": decode_time,
             "transfer": transfer}
    return Plan(mode=mode, device=str(pipe.device), seconds=sum(times.values()), peak=int(stages[busiest]),
                capacity=capacity if capacity is not None else capacity_of(pipe.device), stage=busiest,
                tokens=tokens, passes=request.best_of * len(passes), steps=steps,
                time={k: round(v, 3) for k, v in times.items()},
                memory={k: int(v) for k, v in breakdown.items()})


def new_text(family, request: GenerationRequest, guided: bool) -> list[str]:
    """The request's prompts whose embeddings are not cached yet."""
    if not family.reads_text:
        return []
    prompts = getattr(family, "prompts", None)
    texts = {request.prompt} | ({request.negative_prompt} if guided else set())
    return [t for t in texts if prompts is None or t not in prompts]


def _transfer_time(pipe, profile: memory_modes.Profile, calibration: Calibration, forwards: int, text: bool,
                   vae_calls: int) -> float:
    """Seconds of copying weights under an offloading mode on CUDA (none on a CPU, where nothing moves):
    model offload moves each model that runs on and off once; group offload streams the denoiser's weights
    in for every forward and the VAE's for every latent frame it decodes, overlapped with the computation
    (counted here in full: an upper bound)."""
    if pipe.device.type != "cuda" or profile.offload is None:
        return 0.0
    bandwidth = calibration.section("transfer")["bandwidth"]
    modules = memory_modes.modules_of(pipe.family)
    running = {name: module for name, module in modules.items() if name != "text_encoder" or text}
    if profile.offload == "model":
        return 2 * sum(module_bytes(m) for m in running.values()) / bandwidth
    denoiser = max(module_bytes(m) for m in pipe.family.denoisers)
    vae = module_bytes(pipe.vae)
    encoders = sum(module_bytes(m) for name, m in running.items() if name in ("text_encoder", "image_encoder"))
    return (forwards * denoiser + vae_calls * vae + encoders) / bandwidth


# ---- choosing a mode -----------------------------------------------------------------------------------
def choose_memory(pipe, request: GenerationRequest, capacity: int | None = None, *,
                  cache: str | Path | None = None) -> tuple[str, Plan]:
    """The fastest memory mode whose predicted peak fits `capacity` (default: the device's), and its plan.
    Raises ValueError, before any sampling, when the request fits in no mode, naming the largest size at the
    same aspect and the longest length that fit."""
    pipe.check_request(request)
    calibration = Calibration(pipe, cache)
    mode, chosen = _choose(pipe, request, capacity, calibration)
    if not chosen.fits:
        raise ValueError(_refusal(pipe, request, chosen, calibration))
    return mode, chosen


def _choose(pipe, request: GenerationRequest, capacity: int | None, calibration: Calibration) -> tuple[str, Plan]:
    capacity = capacity if capacity is not None else capacity_of(pipe.device)
    plans = [_predict(pipe, request, mode, calibration, capacity) for mode in memory_modes.MODES]
    # On a CPU the modes differ in memory only (nothing moves): the fastest that fits is also the first.
    fitting = [p for p in plans if p.fits]
    chosen = min(fitting, key=lambda p: p.seconds) if fitting else plans[-1]
    return chosen.mode, chosen


def _refusal(pipe, request: GenerationRequest, lowest: Plan, calibration: Calibration) -> str:
    w, h, f = request.width, request.height, request.num_frames

    def fits(candidate: GenerationRequest) -> bool:
        return _predict(pipe, candidate, lowest.mode, calibration, lowest.capacity).fits

    size = None
    if not pipe.family.geometry.fixed_size:
        grid = pipe.grid
        for k in range(max(w, h) // grid, 0, -1):
            if w >= h:
                width, height = k * grid, max(grid, round(k * grid * h / w / grid) * grid)
            else:
                width, height = max(grid, round(k * grid * w / h / grid) * grid), k * grid
            if (width, height) != (w, h) and width <= w and height <= h and \
                    fits(request.replace(width=width, height=height)):
                size = (width, height)
                break
    length = next((frames for frames in range(f - pipe.temporal, 0, -pipe.temporal)
                   if fits(request.replace(num_frames=frames))), None)
    offers = []
    if size:
        offers.append(f"{size[0]}x{size[1]} at {frames_text(f)}")
    if length:
        offers.append(f"{w}x{h} at {frames_text(length)}")
    fitting = f"at most {' or '.join(offers)} fits" if offers else "not even the smallest size or length fits"
    return (f"{w}x{h} at {frames_text(f)} does not fit this device's memory in any memory mode: it needs about "
            f"{lowest.peak / GB:.2f} GB even in memory mode {lowest.mode}, and {lowest.capacity / GB:.2f} GB is "
            f"available; {fitting}")


def apply_memory(pipe, mode: str) -> None:
    """Put the pipeline under memory mode `mode` (full, low or minimal); nothing moves if it already is."""
    if pipe.family.memory.name != mode:
        memory_modes.apply(pipe.family, mode)


def prepare(pipe, request: GenerationRequest, memory: str = "auto", *, cache: str | Path | None = None,
            capacity: int | None = None) -> Plan:
    """Plan `request` under `memory` (auto: the fastest mode that fits), refuse it when it fits in no mode
    (ValueError), and put the pipeline in that mode: what the CLI, the studio and batch jobs call before
    generating."""
    if memory == "auto":
        mode, chosen = choose_memory(pipe, request, capacity, cache=cache)
    else:
        chosen = plan(pipe, request, memory, cache=cache, capacity=capacity)
    apply_memory(pipe, chosen.mode)
    return chosen


# ---- command line (its flags, --memory, --low-vram and --plan-only, are pipelines.memory.add_arguments) ----
def announce(pipe, request: GenerationRequest, memory: str, cache: str | Path | None,
             measure: bool = True) -> Plan | None:
    """Plan and prepare the run (see `prepare`) and print its line: what the CLI calls before generating. With
    `measure=False` and a mode given (not auto), nothing is timed: the plan is printed if the model has been
    measured on this device, and the run goes ahead in that mode either way."""
    if not measure and memory != "auto":
        apply_memory(pipe, memory_modes.profile(memory).name)
        chosen = plan(pipe, request, memory, cache=cache, calibrate=False)
        print(f"plan: {chosen.describe()}" if chosen is not None else
              f"plan: memory {memory}; this model's time and memory on this device are not measured yet "
              "(--plan-only or --memory auto measures them, once)")
        return chosen
    if not Calibration(pipe, cache).sections:
        print("plan: timing this model on this device first (once; kept in "
              f"{Path(cache) / CALIBRATION_FILE if cache is not None else 'this process'})")
    chosen = prepare(pipe, request, memory, cache=cache)
    print(f"plan: {chosen.describe()}")
    return chosen
