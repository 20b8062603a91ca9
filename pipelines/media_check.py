"""Untrusted media: what the studio accepts, checked before decoding and again while decoding.

Every image and clip the studio reads, from the browser, the API or the command line, comes through here
(`pipelines.video_io` calls it), because the raw API bypasses the UI. Headers are checked first, so a
pixel bomb or an hour-long clip is turned away before a byte of it is decoded; then decoding enforces the
same limits frame by frame with a hard frame cap and a time budget, because headers lie.

A rejection is a `MediaRejected` (a `ValueError`) whose message names the file, says what is wrong with it
and what the studio takes, e.g. "clip.mp4: the video is 1 h 0 min long; the studio takes clips up to 60 s".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")  # Pillow decoders the studio lets run

# What a file's first bytes say it is -> the suffixes that may carry it and the demuxer that must read it.
# Forcing the demuxer by suffix means a playlist or concat list renamed to .mp4 is never parsed as one.
# Pillow reads an image by its content, so an image may carry any image suffix (its own listed first).
_IMAGE_KINDS = {"PNG image": ".png", "JPEG image": ".jpg", "WebP image": ".webp", "BMP image": ".bmp"}
_KINDS = {
    **{kind: (own, *(s for s in IMAGE_SUFFIXES if s != own)) for kind, own in _IMAGE_KINDS.items()},
    "GIF": (".gif",), "MP4/MOV video": (".mp4", ".mov"), "WebM/MKV video": (".webm", ".mkv"),
}
_DEMUXERS = {".mp4": "mov", ".mov": "mov", ".webm": "matroska", ".mkv": "matroska", ".gif": "gif"}
_UNUSABLE = {
    "playlist": "a playlist (M3U/HLS), which points at other files; the studio reads only self-contained clips",
    "concat list": "an ffmpeg concat list, which points at other files; the studio reads only self-contained clips",
    "session description": "an SDP stream description, not a clip",
    "audio": "an audio file; the studio needs a video or an image",
    "text": "a text file, not an image or a video",
}


class MediaRejected(ValueError):
    """An input file the studio will not read; the message is for the user."""


@dataclass(frozen=True)
class MediaLimits:
    max_file_mb: float = 2048.0
    max_image_pixels: int = 50_000_000  # 50 MP: above any camera a creator animates, below Pillow's bomb alarm
    max_video_side: int = 4096
    max_video_pixels: int = 4096 * 2160  # DCI 4K; every model here works below 1 MP, so more is only cost
    max_seconds: float = 60.0
    max_fps: float = 240.0
    max_frames: int = 60 * 240  # decoded frames, whatever the header says
    decode_budget_s: float = 30.0  # wall time for one decode; a clip within the limits takes a few seconds
    max_folder_frames: int = 2000  # PNG frame folders (command line)

    def describe_video(self) -> str:
        return (f"clips up to {self.max_seconds:g} s, {self.max_video_side} px a side "
                f"({_megapixels(self.max_video_pixels)} a frame) and {self.max_fps:g} fps")


DEFAULT_LIMITS = MediaLimits()


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    seconds: float | None  # from the header; None when it does not say
    fps: float | None


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels < 1e9 else f"{pixels / 1e9:.1f} gigapixels"


def _length(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    hours, minutes = divmod(int(seconds) // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def sniff(path: Path) -> str | None:
    """What the first bytes say the file is (a key of _KINDS or _UNUSABLE), or None."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP image"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head.startswith(b"BM"):
        return "BMP image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "MP4/MOV video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/MKV video"
    if head.startswith((b"ID3", b"fLaC", b"OggS")) or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio"
    if text.upper().startswith(b"#EXTM3U"):
        return "playlist"
    if text.startswith(b"ffconcat") or text.startswith(b"file "):
        return "concat list"
    if text.startswith(b"v=0"):
        return "session description"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return None


def check_file(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> tuple[Path, str]:
    """(path, suffix) of a regular file whose type, size and first bytes agree; raises MediaRejected."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise MediaRejected(f"{str(path)!r} does not exist" if not path.exists() else f"{name}: this is a folder or a device, not a file; give the clip or image itself")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise MediaRejected(f"{name}: unsupported file type {suffix or '(none)'!r}; the studio takes images "
                            f"({', '.join(IMAGE_SUFFIXES)}) and clips ({', '.join(VIDEO_SUFFIXES)})")
    size = path.stat().st_size
    if size == 0:
        raise MediaRejected(f"{name}: the file is empty (0 bytes); it may not have finished uploading")
    if size > limits.max_file_mb * 1e6:
        raise MediaRejected(f"{name}: the file is {size / 1e6:,.0f} MB; the studio takes files up to "
                            f"{limits.max_file_mb:,.0f} MB")
    kind = sniff(path)
    if kind in _UNUSABLE:
        raise MediaRejected(f"{name}: this is {_UNUSABLE[kind]}")
    if kind is None:
        raise MediaRejected(f"{name}: the content is not a recognised image or clip (PNG, JPEG, WebP, BMP, GIF, "
                            "MP4/MOV or WebM/MKV); the file may be damaged")
    if suffix not in _KINDS[kind]:
        raise MediaRejected(f"{name}: the content is {'an' if kind[0] in 'AEFHILMNORSX' else 'a'} {kind} but the name ends in {suffix}; "
                            f"rename it to {_KINDS[kind][0]}")
    return path, suffix


# ---- images ----------------------------------------------------------------------------------------------
def open_image(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> Image.Image:
    """An image opened lazily with its size checked from the header (nothing is decoded yet)."""
    path, _ = check_file(path, limits)
    try:
        image = Image.open(path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise MediaRejected(f"{path.name}: the image is over {_megapixels(2 * Image.MAX_IMAGE_PIXELS)} (a decompression "
                            f"bomb); the studio takes images up to {_megapixels(limits.max_image_pixels)}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise MediaRejected(f"{path.name}: not a readable image ({error}); the file may be damaged") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > limits.max_image_pixels:
        image.close()
        raise MediaRejected(f"{path.name}: the image is {width}x{height} ({_megapixels(width * height)}); the "
                            f"studio takes images up to {_megapixels(limits.max_image_pixels)}")
    return image


def decode_image(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the first frame, upright by its EXIF orientation."""
    with open_image(path, limits) as image:
        name = Path(path).name
        try:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey: keep the top 8 bits
                grey = np.asarray(image, dtype=np.float64) / (257.0 if image.mode.startswith("I;16") else 65793.0)
                image = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), "L")
            elif image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise MediaRejected(f"{name}: the image is truncated or damaged ({error})") from None


# ---- videos ----------------------------------------------------------------------------------------------
def open_video(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> tuple[av.container.InputContainer, VideoInfo]:
    """The container, opened with the demuxer its suffix names and local file access only, after its header
    passed the limits. The caller closes it."""
    path, suffix = check_file(path, limits)
    name = path.name
    if suffix not in VIDEO_SUFFIXES:
        raise MediaRejected(f"{name}: unsupported video type {suffix!r}; valid: {', '.join(VIDEO_SUFFIXES)}")
    try:
        # protocol_whitelist: a demuxer may not open anything else (an HLS or dref reference) on its own
        container = av.open(str(path), format=_DEMUXERS[suffix], options={"protocol_whitelist": "file"},
                            timeout=10.0, metadata_errors="replace")  # a Latin-1 title is not a broken clip
    except av.FFmpegError as error:
        hint = "; the file may be cut short or still uploading" if "moov" in str(error) else ""
        raise MediaRejected(f"{name}: not a readable {suffix[1:].upper()} file ({_ffmpeg(error)}){hint}") from None
    try:
        info = _check_header(container, name, limits)
    except BaseException:
        container.close()
        raise
    return container, info


def _check_header(container: av.container.InputContainer, name: str, limits: MediaLimits) -> VideoInfo:
    if not container.streams.video:
        what = "only audio" if container.streams.audio else "no video stream"
        raise MediaRejected(f"{name}: the file holds {what}; the studio needs a clip with video")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise MediaRejected(f"{name}: its video codec has no decoder here; "
                            "re-encode it as H.264, VP9 or AV1")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width < 1 or height < 1:
        raise MediaRejected(f"{name}: the video stream gives no frame size; the file is damaged")
    _check_frame_size(width, height, name, limits)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else None
    if fps is not None and fps > limits.max_fps:
        raise MediaRejected(f"{name}: the video is {fps:,.0f} fps; the studio takes up to {limits.max_fps:g} fps")
    seconds = None
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    if seconds is not None and seconds > limits.max_seconds:
        raise MediaRejected(f"{name}: the video is {_length(seconds)} long; the studio takes clips up to "
                            f"{limits.max_seconds:g} s (trim it first)")
    if stream.frames > limits.max_frames:
        raise MediaRejected(f"{name}: the video has {stream.frames:,} frames; the studio takes up to "
                            f"{limits.max_frames:,}")
    return VideoInfo(width, height, seconds, fps)


def _check_frame_size(width: int, height: int, name: str, limits: MediaLimits, at: str = "") -> None:
    if max(width, height) > limits.max_video_side or width * height > limits.max_video_pixels:
        raise MediaRejected(f"{name}: the video is {width}x{height}{at}; the studio takes "
                            f"{limits.describe_video()}")


def _ffmpeg(error: av.FFmpegError) -> str:
    return getattr(error, "strerror", None) or str(error)


def video_info(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> VideoInfo:
    container, info = open_video(path, limits)
    container.close()
    return info


def decode_video(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds since the first frame, frame) in presentation order, every frame held to the limits: the
    frame size, the clip length, a frame cap and a budget of decoding time (the caller's own work on the
    frames between two yields does not count). Timestamps never go backwards."""
    container, info = open_video(path, limits)
    name = Path(path).name
    spent = 0.0
    first = previous = None
    count = 0
    with container:
        stream = container.streams.video[0]
        rate = info.fps or 25.0
        frames = container.decode(stream)
        try:
            while True:
                began = time.monotonic()
                frame = next(frames, None)
                spent += time.monotonic() - began
                if frame is None:
                    break
                count += 1
                if count > limits.max_frames:
                    raise MediaRejected(f"{name}: the video has more than {limits.max_frames:,} frames; the studio "
                                        f"takes {limits.describe_video()}")
                if spent > limits.decode_budget_s:
                    raise MediaRejected(f"{name}: decoding took longer than {limits.decode_budget_s:g} s (stopped at "
                                        f"frame {count}); re-encode the clip shorter or smaller")
                _check_frame_size(frame.width, frame.height, name, limits, at=f" at frame {count}")
                stamp = frame.time if frame.time is not None else (count - 1) / rate
                first = stamp if first is None else first
                seconds = max(stamp - first, previous if previous is not None else 0.0)
                if seconds > limits.max_seconds:
                    raise MediaRejected(f"{name}: the video runs past {limits.max_seconds:g} s (the header said "
                                        f"{'nothing' if info.seconds is None else _length(info.seconds)}); the "
                                        f"studio takes clips up to {limits.max_seconds:g} s (trim it first)")
                previous = seconds
                yield seconds, frame
        except av.FFmpegError as error:
            raise MediaRejected(f"{name}: the video is damaged at frame {count + 1} ({_ffmpeg(error)})") from None
    if count == 0:
        raise MediaRejected(f"{name}: the video has no decodable frames")


def check_media(path: str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> None:
    """The header checks alone: what the studio runs on an upload before keeping it."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        open_image(path, limits).close()
    else:
        video_info(path, limits)


def folder_frames(path: Path, limits: MediaLimits = DEFAULT_LIMITS) -> list[Path]:
    """The PNG frames of a frame folder, in name order (command line input)."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise MediaRejected(f"{path.name}: the frame folder holds no PNG frames")
    if len(files) > limits.max_folder_frames:
        raise MediaRejected(f"{path.name}: the frame folder holds {len(files):,} PNG frames; the studio takes up "
                            f"to {limits.max_folder_frames:,}")
    return files

