"""Hostile media: a generated corpus of malformed and abusive files, each read the way an upload is.

    python -m benchmarks.hostile_media                # builds the corpus in a temporary folder, prints the table
    python -m benchmarks.hostile_media --keep DIR     # ... and leaves the files in DIR

Each file goes through what the studio does with an upload (`check_media`, `media_size`, `count_frames`,
then `read_media` fitted to 128x128) in a worker process, so a crash (a signal, not an exception) or a hang
is seen for what it is. The worker's peak memory is reset before each file (Linux `clear_refs`) and read
after it. Outcomes: accepted (frames), rejected (the message the user sees), error (any other exception:
a bug), crash, hang (no answer in `--timeout` s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

HANG_S = 10.0


# ---- building the corpus ---------------------------------------------------------------------------------
def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, rows: bytes, depth: int = 8, colour: int = 2, extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra +
            _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def _image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _scene(width: int, height: int, seed: int = 0) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), np.full_like(x, 90 + seed)], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _video(path: Path, frames: list[np.ndarray] | int, rate: Fraction | int = 8, size: tuple[int, int] = (32, 32),
           codec: str = "libx264", fmt: str | None = None, pix_fmt: str = "yuv420p", audio: bool = False,
           video: bool = True, movflags: str | None = None) -> None:
    if isinstance(frames, int):
        frames = [np.asarray(_scene(*size, seed=i % 100)) for i in range(frames)]
    options = {"movflags": movflags} if movflags else {}
    with av.open(str(path), "w", format=fmt, options=options) as out:
        stream = None
        if video:
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
            if codec == "libx264":
                stream.options = {"preset": "ultrafast"}
        sound = out.add_stream("aac", rate=8000) if audio else None
        if stream is not None:
            for index, frame in enumerate(frames):
                picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
                picture.pts = index
                out.mux(stream.encode(picture))
            out.mux(stream.encode())
        if sound is not None:
            samples = (np.sin(np.arange(8000 * 2) / 8000 * 2 * np.pi * 440) * 0.3).astype(np.float32)
            for start in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 8000, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode())


def _mjpeg_mkv(path: Path, sizes: list[tuple[int, int]], title: str | None = None) -> None:
    """MJPEG in Matroska with a frame size that changes: each packet is a whole JPEG, so it may."""
    with av.open(str(path), "w", format="matroska") as out:
        if title:
            out.metadata["title"] = title
        stream = out.add_stream("mjpeg", rate=8)
        stream.width, stream.height, stream.pix_fmt = sizes[0][0], sizes[0][1], "yuvj420p"
        for index, (width, height) in enumerate(sizes):
            codec = av.CodecContext.create("mjpeg", "w")
            codec.width, codec.height, codec.pix_fmt, codec.time_base = width, height, "yuvj420p", Fraction(1, 8)
            picture = av.VideoFrame.from_ndarray(np.asarray(_scene(width, height, index)), format="rgb24")
            picture = picture.reformat(format="yuvj420p")
            picture.pts = index
            for packet in codec.encode(picture) + codec.encode(None):
                packet.stream, packet.pts, packet.dts = stream, index, index
                out.mux(packet)


def _gif(path: Path, count: int, size: tuple[int, int] = (8, 8), delay_ms: int = 10,
         screen: tuple[int, int] | None = None) -> None:
    frames = [Image.fromarray(np.full((size[1], size[0], 3), (i * 37) % 256, np.uint8)) for i in range(count)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=delay_ms, loop=0)
    if screen is not None:  # the logical screen size lives at bytes 6..9
        data = bytearray(path.read_bytes())
        data[6:10] = struct.pack("<HH", *screen)
        path.write_bytes(bytes(data))


def build_corpus(folder: Path) -> list[Path]:
    """Write the corpus; returns the files (and the one folder posing as a clip) in a fixed order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng()
    files: dict[str, bytes | None] = {}  # name -> bytes, or None when written by a helper

    scene = _scene(64, 48)
    png, jpeg = _image_bytes(scene, "PNG"), _image_bytes(scene, "JPEG", quality=90)

    # empty, cut short, random, text
    for name in ("empty.png", "empty.jpg", "empty.mp4", "empty.gif", "empty.webm"):
        files[name] = b""
    files["truncated_half.png"] = png[: len(png) // 2]
    files["truncated_header.png"] = png[:20]
    files["truncated_half.jpg"] = jpeg[: len(jpeg) // 2]
    files["truncated_header.jpg"] = jpeg[:60]
    files["random_bytes.png"] = rng.bytes(4096)
    files["random_bytes.mp4"] = rng.bytes(4096)
    files["random_bytes.gif"] = rng.bytes(4096)
    files["hello.png"] = b"hello, this is not an image\n"
    files["ebml_then_junk.webm"] = b"\x1a\x45\xdf\xa3" + rng.bytes(2000)
    files["ftyp_box_only.mp4"] = struct.pack(">I", 24) + b"ftypisom" + b"\0\0\2\0isomiso2"
    files["ftyp_then_playlist.mp4"] = struct.pack(">I", 16) + b"ftypisom\0\0\2\0" + \
        b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n"

    # wrong names, other formats
    files["png_named.jpg"] = png
    files["jpeg_named.png"] = jpeg
    files["png_named.mp4"] = png
    files["jpeg_named.gif"] = jpeg
    files["tiff_image.tiff"] = _image_bytes(scene, "TIFF")
    files["svg_image.svg"] = b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>'
    files["no_extension"] = png
    files["pdf_named.png"] = b"%PDF-1.4\n" + rng.bytes(200)

    # pixel bombs and huge headers on tiny files
    files["header_bomb_100k.png"] = _png(100_000, 100_000, b"\0" * 301)
    files["header_bomb_wide.png"] = _png(2**31 - 1, 1, b"\0" * 4)
    bomb = Image.new("1", (20_000, 20_000))
    files["real_bomb_400mp.png"] = _image_bytes(bomb, "PNG")
    del bomb
    sof = jpeg.index(b"\xff\xc0") + 5  # SOF0: precision byte, then height and width
    files["header_bomb_65k.jpg"] = jpeg[:sof] + struct.pack(">HH", 65_000, 65_000) + jpeg[sof + 4:]
    files["zero_size.jpg"] = jpeg[:sof] + struct.pack(">HH", 0, 0) + jpeg[sof + 4:]
    bmp = bytearray(_image_bytes(scene, "BMP"))
    bmp[18:26] = struct.pack("<ii", 100_000, 100_000)
    files["header_bomb.bmp"] = bytes(bmp)
    webp = bytearray(_image_bytes(Image.new("RGBA", (16, 16), (1, 2, 3, 128)), "WEBP", lossless=True))
    files["header_bomb.webp"] = None
    (folder / "header_bomb.webp").write_bytes(_webp_bomb(bytes(webp)))
    text = zlib.compress(b"\0" * (64 << 20), 9)
    files["ztxt_bomb.png"] = _png(4, 4, b"\0" * 52, extra=_png_chunk(b"zTXt", b"comment\0\0" + text))
    files["huge_iccp.png"] = _png(4, 4, b"\0" * 52, extra=_png_chunk(b"iCCP", b"icc\0\0" + text))
    files["many_chunks.png"] = _png(4, 4, b"\0" * 52, extra=b"".join(_png_chunk(b"tEXt", b"k\0v") for _ in range(20_000)))

    # odd but valid images
    files["cmyk.jpg"] = _image_bytes(scene.convert("CMYK"), "JPEG")
    files["grey_16bit.png"] = _png(64, 48, b"".join(b"\0" + np.linspace(0, 65535, 64).astype(">u2").tobytes()
                                                    for _ in range(48)), depth=16, colour=0)
    files["rgb_48bit.png"] = _png(64, 48, b"".join(b"\0" + np.repeat(np.linspace(0, 65535, 64), 3).astype(">u2").tobytes()
                                                   for _ in range(48)), depth=16, colour=2)
    files["palette.png"] = _image_bytes(scene.quantize(16), "PNG")
    palette = scene.quantize(16)
    files["palette_transparent.png"] = _image_bytes(palette, "PNG", transparency=0)
    files["grey_alpha.png"] = _image_bytes(scene.convert("LA"), "PNG")
    files["rgba.webp"] = _image_bytes(scene.convert("RGBA"), "WEBP")
    files["one_bit.bmp"] = _image_bytes(scene.convert("1"), "BMP")
    files["progressive.jpg"] = _image_bytes(scene, "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    files["exif_rotated.jpg"] = _image_bytes(scene, "JPEG", exif=exif.tobytes())
    files["one_pixel.png"] = _image_bytes(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    files["strip_10000x1.png"] = _image_bytes(_scene(10_000, 1), "PNG")
    files["apng_3_frames.png"] = _image_bytes(scene, "PNG", save_all=True, append_images=[_scene(64, 48, 5)] * 2)
    files["animated.webp"] = _image_bytes(scene, "WEBP", save_all=True, append_images=[_scene(64, 48, 5)] * 2)

    # playlists and references dressed as clips
    files["hls_playlist.mp4"] = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/seg.ts\n"
    files["hls_local_file.mp4"] = b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    files["bom_playlist.mp4"] = b"\xef\xbb\xbf#EXTM3U\n#EXTINF:10,\n/etc/passwd\n"
    files["ffconcat.mp4"] = b"ffconcat version 1.0\nfile '/etc/passwd'\n"
    files["concat_plain.webm"] = b"file '/etc/hostname'\n"
    files["sdp.mp4"] = b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nm=video 9 RTP/AVP 96\n"

    for name, data in files.items():
        if data is not None:
            (folder / name).write_bytes(data)

    # clips
    _video(folder / "valid.mp4", 17)
    _video(folder / "valid_vp9.webm", 9, codec="libvpx-vp9")
    _video(folder / "valid.mov", 9, codec="mpeg4")
    _gif(folder / "valid.gif", 12, size=(32, 32), delay_ms=100)
    _video(folder / "audio_only.mp4", [], video=False, audio=True)
    _video(folder / "with_audio.mp4", 9, audio=True)
    valid = (folder / "valid.mp4").read_bytes()
    (folder / "truncated_half.mp4").write_bytes(valid[: len(valid) // 2])
    _video(folder / "moov_at_end.mp4", 17)  # PyAV writes the index last: cutting the tail loses it
    tail = (folder / "moov_at_end.mp4").read_bytes()
    (folder / "moov_at_end.mp4").write_bytes(tail[: tail.rindex(b"moov") - 8])
    _video(folder / "mp4_named.webm", 9, fmt="mp4")
    _video(folder / "webm_named.mp4", 9, codec="libvpx-vp9", fmt="webm")
    _video(folder / "mp4_named.png", 9, fmt="mp4")
    _video(folder / "8k.mp4", 1, size=(7680, 4320))
    _video(folder / "5k_wide.mkv", 1, size=(5120, 256), fmt="matroska")
    _video(folder / "one_hour.mp4", 61, rate=Fraction(1, 60), size=(16, 16))
    _video(folder / "1000fps.mp4", 50, rate=1000, size=(16, 16))
    _video(folder / "59s_30fps.mp4", 59 * 30, rate=30, size=(16, 16))
    _video(folder / "odd_size_33x17.mp4", 5, size=(33, 17), pix_fmt="yuv444p")
    _video(folder / "strip_4096x16.mp4", 3, size=(4096, 16))
    _gif(folder / "10000_frames.gif", 10_000, delay_ms=10)
    _gif(folder / "10000_frames_no_delay.gif", 10_000, delay_ms=0)
    _gif(folder / "one_hour_in_6_frames.gif", 6, delay_ms=655_350)
    _gif(folder / "screen_65535.gif", 2, screen=(65_535, 65_535))
    _mjpeg_mkv(folder / "changing_resolution.mkv", [(64, 48)] * 3 + [(32, 32)] * 3 + [(96, 40)] * 3)
    _mjpeg_mkv(folder / "grows_to_8k.mkv", [(64, 48)] * 2 + [(7680, 4320)])
    _mjpeg_mkv(folder / "latin1_title.mkv", [(32, 32)] * 3, title="cafX")
    data = (folder / "latin1_title.mkv").read_bytes()
    (folder / "latin1_title.mkv").write_bytes(data.replace(b"cafX", b"caf\xe9"))  # not UTF-8, as old tools wrote
    _mjpeg_mkv(folder / "unknown_codec.mkv", [(32, 32)] * 3)
    data = (folder / "unknown_codec.mkv").read_bytes()
    (folder / "unknown_codec.mkv").write_bytes(data.replace(b"V_MJPEG", b"V_XXXXX"))
    (folder / "a_folder.mp4").mkdir(exist_ok=True)
    os.symlink("/etc/passwd", folder / "symlink_to_passwd.png") if not (folder / "symlink_to_passwd.png").exists() else None
    return sorted(folder.iterdir())


def _webp_bomb(webp: bytes) -> bytes:
    """A lossless WebP whose VP8X canvas claims 16384x16384 (268 MP) around a 16x16 image."""
    body = webp[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x10, 0, 0, 0]) + (16383).to_bytes(3, "little") * 2
    payload = b"WEBP" + vp8x + body
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


# ---- reading it, one file at a time in a worker ----------------------------------------------------------
def _peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def worker() -> None:
    """Read paths (one per line) and answer each with a JSON line."""
    from pipelines.media_check import MediaRejected, check_media
    from pipelines.video_io import count_frames, media_size, read_media

    print(json.dumps({"ready": True, "rss_mb": _peak_mb()}), flush=True)
    for line in sys.stdin:
        path = line.rstrip("\n")
        _reset_peak()
        started = time.perf_counter()
        try:
            check_media(path)
            width, height = media_size(path)
            count = count_frames(path, fps=16)
            frames = read_media(path, fps=16, size=(128, 128))
            answer = {"outcome": "accepted", "message": f"{len(frames)} frames ({count} counted) from {width}x{height}",
                      "frames": len(frames), "shape": list(frames.shape)}
        except MediaRejected as rejected:
            answer = {"outcome": "rejected", "message": str(rejected)}
        except Exception as error:  # noqa: BLE001 - anything else is a bug this benchmark exists to find
            answer = {"outcome": "error", "message": f"{type(error).__name__}: {error}"}
        answer.update(seconds=time.perf_counter() - started, peak_mb=_peak_mb())
        print(json.dumps(answer), flush=True)


@dataclass
class Outcome:
    name: str
    outcome: str
    message: str
    seconds: float
    peak_mb: float


class _Worker:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.hostile_media", "--worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                        cwd=Path(__file__).resolve().parents[1])
        ready = self._answer(60.0)
        if ready is None:
            raise RuntimeError("the media worker did not start")
        self.baseline_mb = ready["rss_mb"]

    def _answer(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def ask(self, path: Path, timeout: float) -> Outcome:
        started = time.perf_counter()
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        answer = self._answer(timeout)
        if answer is not None:
            return Outcome(path.name, answer["outcome"], answer["message"], answer["seconds"], answer["peak_mb"])
        elapsed = time.perf_counter() - started
        if self.process.poll() is None:
            self.process.kill()
            return Outcome(path.name, "hang", f"no answer in {timeout:g} s", elapsed, float("nan"))
        return Outcome(path.name, "crash", f"worker died with code {self.process.returncode}", elapsed, float("nan"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(10)


def run(folder: Path, timeout: float = HANG_S) -> tuple[list[Outcome], float]:
    """Every corpus file through a worker (restarted after a crash or a hang); (outcomes, worker's idle MB)."""
    outcomes, worker_ = [], _Worker()
    baseline = worker_.baseline_mb
    for path in build_corpus(folder):
        outcome = worker_.ask(path, timeout)
        outcomes.append(outcome)
        if outcome.outcome in ("hang", "crash"):
            worker_ = _Worker()
    worker_.close()
    return outcomes, baseline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the corpus here and leave it")
    parser.add_argument("--timeout", type=float, default=HANG_S, help="seconds before a file counts as a hang")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        outcomes, baseline = run(args.keep or Path(scratch) / "corpus", args.timeout)
    width = max(len(o.name) for o in outcomes)
    print(f"{'file':<{width}}  {'outcome':<8}  {'s':>5}  {'peak MB':>7}  message")
    for o in outcomes:
        print(f"{o.name:<{width}}  {o.outcome:<8}  {o.seconds:5.2f}  {o.peak_mb:7.0f}  {o.message}")
    counts = {kind: sum(o.outcome == kind for o in outcomes) for kind in ("accepted", "rejected", "error", "crash", "hang")}
    print(f"\n{len(outcomes)} files: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    print(f"slowest {max(o.seconds for o in outcomes):.2f} s; worker peak {max(o.peak_mb for o in outcomes):.0f} MB "
          f"(idle {baseline:.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps({"outcomes": [o.__dict__ for o in outcomes], "idle_mb": baseline}, indent=1))
    return 0 if counts["error"] + counts["crash"] + counts["hang"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
