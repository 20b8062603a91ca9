"""Reading and writing images and clips (PyAV, Pillow), fitting them to the model grid.

Frames are numpy arrays (F, H, W, 3) of uint8 RGB everywhere outside the pipeline. Writes go to a
temporary name in the destination folder and are renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image

from pipelines.media_check import (
    DEFAULT_LIMITS, IMAGE_SUFFIXES, MediaLimits, decode_image, decode_video,
    folder_frames, open_image, open_video, video_info,
)

OUTPUT_SUFFIXES = (".mp4", ".gif", ".png")
_UMASK = os.umask(0)
os.umask(_UMASK)


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """(1, H, W, 3) uint8: an image as a one-frame clip."""
    return decode_image(path, limits)[None]


def read_video(path: str | Path, fps: float, max_frames: int | None = None, size: tuple[int, int] | None = None,
               limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """(F, H, W, 3) uint8 frames sampled at `fps`: each output time k / fps takes the last source frame
    shown at that time. With `size` (width, height) each kept frame is fitted to it as it is decoded, so a
    long 4K clip never sits in memory at 4K. A folder of PNG frames is read in name order, one frame per
    output frame."""
    path = Path(path)
    if path.is_dir():
        files = folder_frames(path, limits)[:max_frames or None]
        return np.stack([_fit(read_image(p, limits)[0], size) for p in files])
    rgb = VideoReformatter()  # one converter for the clip: `to_ndarray(format=...)` builds one per frame (~7 ms)
    times, kept = _sample(path, fps, max_frames, limits,
                          keep=lambda frame: _fit(rgb.reformat(frame, format="rgb24").to_ndarray(), size))
    frames = [kept[i] for i in _picks(times, fps, max_frames)]
    height, width = frames[0].shape[:2]  # a clip whose resolution changes is fitted to its first frame's
    return np.stack([f if f.shape[:2] == (height, width) else _fit(f, (width, height)) for f in frames])


def count_frames(path: str | Path, fps: float, limits: MediaLimits = DEFAULT_LIMITS) -> int:
    """How many frames `read_media` gives at `fps`, decoding without keeping any."""
    path = Path(path)
    if is_image(path):
        open_image(path, limits).close()
        return 1
    if path.is_dir():
        return len(folder_frames(path, limits))
    times, _ = _sample(path, fps, None, limits, keep=None)
    return len(_picks(times, fps, None))


def _sample(path: Path, fps: float, max_frames: int | None, limits: MediaLimits, keep) -> tuple[list[float], dict]:
    """Decode once: every frame's time, and `keep(frame)` for each frame some output time can land on.

    Output time k takes the last frame shown at k / fps plus a slack of at most a quarter frame (see
    `_picks`), so frame i is needed only if [t_i, t_i+1) meets some [k / fps, (k + 1/4) / fps]. Holding one
    frame back until the next one's time is known keeps at most about two frames per output frame."""
    if not fps > 0:
        raise ValueError(f"fps = {fps!r} is not valid: above 0")
    times: list[float] = []
    kept: dict[int, np.ndarray] = {}
    held = None
    # Every timestamp is collected (the clip's length and frame step come from all of them, as `_picks`
    # needs); with `max_frames`, frames only later outputs could land on are not kept.
    wanted = max_frames if max_frames else None
    for index, (seconds, frame) in enumerate(decode_video(path, limits)):
        if held is not None and keep is not None and _needed(times[-1], seconds, fps, wanted):
            kept[index - 1] = keep(held)
        times.append(seconds)
        held = frame
    if held is not None and keep is not None and _needed(times[-1], math.inf, fps, wanted):
        kept[len(times) - 1] = keep(held)
    return times, kept


def _needed(start: float, end: float, fps: float, max_frames: int | None) -> bool:
    """Whether a frame shown from `start` until `end` can be some output frame's pick: the first output k
    whose sampling time (k / fps plus at most a quarter frame) reaches `start` must come before `end`."""
    first = max(0, math.ceil(start * fps - 0.25 - 1e-9))
    return first / fps < end and (max_frames is None or first < max_frames)


def _picks(times: list[float], fps: float, max_frames: int | None) -> list[int]:
    times_arr = np.asarray(times)
    step = float(np.median(np.diff(times_arr))) if len(times_arr) > 1 else 1.0 / fps
    step = step if step > 0 else 1.0 / fps
    duration = times_arr[-1] + step
    # Timestamps are rounded (GIF keeps centiseconds, 29.97 fps is 30000/1001): a count within a quarter
    # frame of a whole number is that number, and each output time takes the frame shown a quarter of
    # the shorter frame interval later.
    exact = duration * fps
    count = max(1, round(exact) if abs(exact - round(exact)) < 0.25 else int(exact))
    if max_frames:
        count = min(count, max_frames)
    slack = 0.25 * min(step, 1.0 / fps)
    picks = np.searchsorted(times_arr, np.arange(count) / fps + slack, side="right") - 1
    return np.clip(picks, 0, len(times) - 1).tolist()


def _fit(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    return frame if size is None else fit_frames(frame[None], *size)[0]


def read_media(path: str | Path, fps: float, max_frames: int | None = None, size: tuple[int, int] | None = None,
               limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    if is_image(path):
        return _fit(read_image(path, limits)[0], size)[None]
    return read_video(path, fps, max_frames, size, limits)


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to cover (width, height) and crop the centre; frames already that size pass through untouched.

    The crop is taken in source pixels and only it is resampled, so a 10000x1 strip costs a 10000x1 read,
    not a 1.3 million pixel wide intermediate."""
    _, h, w, _ = frames.shape
    if (w, h) == (width, height):
        return frames
    scale = max(width / w, height / h)
    crop_w, crop_h = min(w, width / scale), min(h, height / scale)
    left, top = (w - crop_w) / 2, (h - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS, box=box))
                     for f in frames])


def media_size(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(width, height) of an image, a video or a PNG folder, from headers only."""
    path = Path(path)
    if path.is_dir():
        path = folder_frames(path, limits)[0]
    if is_image(path):
        with open_image(path, limits) as image:
            return image.size
    info = video_info(path, limits)
    return info.width, info.height


# ---- writing ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path, replace: bool = True, scratch: str | Path | None = None) -> Iterator[Path]:
    """A temporary path beside `path` (or in `scratch`, a folder on the same file system where a crash's
    leftovers are swept) that is renamed onto it when the block succeeds. With `replace=False` it is linked
    into place instead, which fails with FileExistsError rather than replace a file there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=scratch or path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs are ordinary files
        with open(tmp, "rb") as handle:  # on disk before the rename, so a power cut cannot list an empty file
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and never over an existing file
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: check, then rename
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "already exists", str(path)) from None
                os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # and the rename itself (POSIX)
            folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


# The encode is deterministic: the same frames give the same bytes, whatever the machine (with the same
# PyAV build, which bundles FFmpeg and x264); with x264's defaults they did not (training/NOTES.md,
# "Deterministic encoding"):
# - x264's macroblock-tree rate control (mbtree) decides the first frame's quantisers differently from run
#   to run. It is off, at a cost of a few per cent in file size at CRF 17.
# - the thread count is fixed, not one per core: x264's frame threads are deterministic for a given count
#   but the count changes its decisions;
# - the RGB -> YUV conversion runs single-threaded with swscale's bit-exact, accurately rounded path (its
#   SIMD paths differ by CPU).
X264_OPTIONS = {"crf": "17", "preset": "medium", "threads": "4", "x264-params": "mbtree=0"}
_TO_YUV = dict(format="yuv420p", threads=1,
               interpolation=Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, audio_from: str | Path | None = None,
              comment: str | None = None, audio_start: float = 0.0) -> None:
    """H.264 (yuv420p, CRF 17) MP4, byte-identical for the same frames (see X264_OPTIONS); copies the audio
    of `audio_from` from `audio_start` seconds, trimmed to the clip, when it has one."""
    _, height, width, _ = frames.shape
    with contextlib.ExitStack() as stack:
        # The audio comes from an input clip: opened through the same gate as its frames.
        source = stack.enter_context(open_video(audio_from)[0]) if audio_from is not None else None
        tmp = stack.enter_context(atomic_path(path))
        out = stack.enter_context(av.open(str(tmp), mode="w", format="mp4"))
        if comment:
            out.metadata["comment"] = comment
        video = _add_video_stream(out, width, height, fps)
        # Every stream must exist before the first packet is written.
        audio_in = source.streams.audio[0] if source is not None and source.streams.audio else None
        audio_out = out.add_stream("aac", rate=audio_in.codec_context.sample_rate or 48000) if audio_in else None
        to_yuv = VideoReformatter()
        for index, frame in enumerate(frames):
            _encode_frame(out, video, to_yuv, frame, index)
        out.mux(video.encode())
        if audio_in is not None:
            _copy_audio(source, audio_in, out, audio_out, duration=len(frames) / fps, start=audio_start)


def _add_video_stream(out, width: int, height: int, fps: float):
    video = out.add_stream("libx264", rate=_fps_fraction(fps))
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = dict(X264_OPTIONS)
    return video


def _encode_frame(out, video, to_yuv: VideoReformatter, frame: np.ndarray, index: int) -> None:
    picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    picture = to_yuv.reformat(picture, **_TO_YUV)
    picture.pts = index  # explicit timestamps: without them x264's output varied from run to run
    out.mux(video.encode(picture))


class Mp4Writer:
    """An MP4 written as its frames arrive (a long take never holds all its frames), encoded as write_mp4
    encodes (the same frames give the same bytes). It appears at `path` when the block ends, also when it
    ends by GenerationCancelled or KeyboardInterrupt (the frames written so far); any other error discards it."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float):
        self.path, self.size, self.fps = Path(path), (width, height), fps
        self.frames = 0

    def __enter__(self) -> Mp4Writer:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._out = av.open(str(tmp), mode="w", format="mp4")
        self._video = _add_video_stream(self._out, *self.size, self.fps)
        self._to_yuv = VideoReformatter()
        return self

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            _encode_frame(self._out, self._video, self._to_yuv, frame, self.frames)
            self.frames += 1

    def __exit__(self, kind, error, trace) -> bool:
        # GenerationCancelled by name: pipelines.sampling imports torch, which reading and writing media need not.
        keep = self.frames > 0 and (kind is None or issubclass(kind, KeyboardInterrupt) or
                                    kind.__name__ == "GenerationCancelled")
        try:
            if keep:
                self._out.mux(self._video.encode())
            self._out.close()
        except BaseException as failure:
            self._atomic.__exit__(type(failure), failure, failure.__traceback__)
            raise
        if keep:
            self._atomic.__exit__(None, None, None)
        else:  # thrown into atomic_path, an error removes the temporary file (it is not raised again here)
            self._atomic.__exit__(RuntimeError, RuntimeError("nothing to keep"), None)
        return False


def _copy_audio(source, in_stream, out, audio, duration: float, start: float = 0.0) -> None:
    rate = audio.codec_context.sample_rate
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
    limit, written, skip = int(duration * rate), 0, int(round(start * rate))
    for frame in source.decode(in_stream):
        if written >= limit:  # the clip's length is reached: the rest of the track is never decoded
            break
        for chunk in resampler.resample(frame):
            first = min(skip, chunk.samples)  # samples before the trim's in point
            skip -= first
            keep = min(chunk.samples - first, limit - written)
            if keep <= 0:
                continue
            if first or keep < chunk.samples:
                chunk = av.AudioFrame.from_ndarray(chunk.to_ndarray()[:, first:first + keep], format="fltp",
                                                   layout="stereo")
                chunk.sample_rate = rate
            chunk.pts = written
            written += keep
            out.mux(audio.encode(chunk))
    out.mux(audio.encode())


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """GIF frame delays are whole centiseconds: alternate them so that frame k starts at k / fps, rounded."""
    images = [Image.fromarray(f) for f in frames]
    starts = [round(k * 100 / fps) for k in range(len(frames) + 1)]
    delays = [10 * (b - a) for a, b in zip(starts, starts[1:])]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=delays, loop=0)


def write_png(path: str | Path, frame: np.ndarray, replace: bool = True) -> None:
    with atomic_path(path, replace=replace) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")


FRAME_FILES = "frame_[0-9][0-9][0-9][0-9][0-9].png"  # what write_frames writes, and replaces


def write_frames(folder: str | Path, frames: np.ndarray, replace: bool = True) -> list[Path]:
    """Every frame as a lossless PNG (frame_00000.png, ...), the sequence editors import. With `replace`, the
    folder's frame files are replaced; without, a frame file already there is an error (FileExistsError), and
    the frames this call wrote are removed again, as they are on any failure."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if replace:
        for stale in folder.glob(FRAME_FILES):  # a longer earlier clip's frames
            stale.unlink()
    paths = [folder / f"frame_{i:05d}.png" for i in range(len(frames))]
    written: list[Path] = []
    try:
        for p, frame in zip(paths, frames):
            try:
                write_png(p, frame, replace=replace)
            except FileExistsError:
                raise FileExistsError(f"{p.name} already exists in {folder}: choose an empty folder") from None
            written.append(p)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return paths


def write_output(path: str | Path, frames: np.ndarray, fps: float, audio_from: str | Path | None = None,
                 comment: str | None = None, audio_start: float = 0.0) -> None:
    """Write by suffix: .mp4 (with audio and metadata), .gif, or .png (a one-frame result)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        write_mp4(path, frames, fps, audio_from=audio_from, comment=comment, audio_start=audio_start)
    elif suffix == ".gif":
        write_gif(path, frames, fps)
    elif suffix == ".png":
        if len(frames) != 1:
            raise ValueError(f"output {str(path)!r}: a .png holds one frame but the result has {len(frames)}; use .mp4 or .gif")
        write_png(path, frames[0])
    else:
        raise ValueError(f"output {str(path)!r} has an unsupported type; valid: {', '.join(OUTPUT_SUFFIXES)}")
