"""Untrusted media: the generated hostile corpus end to end, and the odd-but-valid files read correctly."""

from __future__ import annotations

import io
import struct
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile_media import HANG_S, _mjpeg_mkv, _png, _scene, run
from pipelines.media_check import MediaLimits, MediaRejected, check_media, decode_video
from pipelines.video_io import _picks, count_frames, read_image, read_media, read_video, write_mp4


def test_hostile_corpus_is_rejected_or_read_without_crash_hang_or_runaway_memory(tmp_path):
    outcomes, idle_mb = run(tmp_path / "corpus")
    assert len(outcomes) >= 60
    by_kind = {kind: [o.name for o in outcomes if o.outcome == kind] for kind in ("error", "crash", "hang")}
    assert by_kind == {"error": [], "crash": [], "hang": []}, by_kind
    for o in outcomes:
        assert o.seconds < HANG_S, o
        if o.outcome == "rejected":  # names the file, then says what is wrong, in a sentence
            assert o.message.startswith(f"{o.name}: ") and len(o.message) > len(o.name) + 20, o
    rejected = {o.name for o in outcomes if o.outcome == "rejected"}
    for name in ("real_bomb_400mp.png", "header_bomb_100k.png", "hls_playlist.mp4", "ffconcat.mp4", "8k.mp4",
                 "one_hour.mp4", "1000fps.mp4", "10000_frames.gif", "audio_only.mp4", "moov_at_end.mp4",
                 "grows_to_8k.mkv", "truncated_half.png", "png_named.mp4", "empty.mp4", "ztxt_bomb.png",
                 "unknown_codec.mkv"):
        assert name in rejected, name
    assert "latin1_title.mkv" not in rejected  # a title in Latin-1 is an old tool's habit, not damage
    assert max(o.peak_mb for o in outcomes) - idle_mb < 400  # one 8K frame is 100 MB; nothing holds more


@pytest.fixture
def still() -> np.ndarray:
    return np.asarray(_scene(64, 48))


def saved(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_odd_but_valid_images_come_out_as_the_picture(tmp_path, still):
    grey16 = _png(64, 2, b"".join(b"\0" + (np.arange(64) * 1040).astype(">u2").tobytes() for _ in range(2)),
                  depth=16, colour=0)
    row = read_image(saved(tmp_path, "grey16.png", grey16))[0, 0, :, 0].astype(int)
    assert np.array_equal(row, np.round(np.arange(64) * 1040 / 257).astype(int))  # the top 8 bits, not clipped

    cmyk = read_image(saved(tmp_path, "cmyk.jpg", encode(Image.fromarray(still).convert("CMYK"), "JPEG", quality=95)))[0]
    assert np.abs(cmyk.astype(int) - still).mean() < 8

    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated a quarter turn clockwise
    upright = read_image(saved(tmp_path, "phone.jpg", encode(Image.fromarray(still), "JPEG", exif=exif.tobytes(),
                                                                  quality=95)))[0]
    assert upright.shape == (64, 48, 3) and np.abs(upright.astype(int) - np.rot90(still, -1)).mean() < 8

    palette = Image.fromarray(still).quantize(16)
    clear = read_image(saved(tmp_path, "p.png", encode(palette, "PNG", transparency=0)))[0]
    assert clear.shape == (48, 64, 3) and clear.dtype == np.uint8


def test_an_extreme_strip_is_cropped_not_blown_up(tmp_path):
    strip = saved(tmp_path, "strip.png", encode(_scene(10_000, 1), "PNG"))
    frames = read_media(strip, fps=8, size=(128, 128))
    assert frames.shape == (1, 128, 128, 3)
    centre = np.asarray(_scene(10_000, 1))[0, 4999:5001].astype(int)  # covering 128x128 keeps ~1 px of it
    assert np.abs(frames[0].reshape(-1, 3).astype(int) - centre.mean(0)).max() <= 1


def test_a_clip_whose_resolution_changes_is_fitted_to_its_first_frame(tmp_path):
    path = tmp_path / "changes.mkv"
    _mjpeg_mkv(path, [(64, 48)] * 2 + [(32, 32)] * 2 + [(96, 40)] * 2)
    frames = read_video(path, fps=8)
    assert frames.shape == (6, 48, 64, 3)
    assert read_video(path, fps=8, size=(32, 32)).shape == (6, 32, 32, 3)


def test_decoding_holds_the_frame_cap_and_the_time_budget(tmp_path, still):
    unsaid = tmp_path / "unsaid.mkv"  # Matroska headers give no frame count: only decoding can hold the cap
    _mjpeg_mkv(unsaid, [(16, 16)] * 9)
    with pytest.raises(MediaRejected, match="unsaid.mkv: the video has more than 5 frames"):
        list(decode_video(unsaid, MediaLimits(max_frames=5)))
    path = tmp_path / "c.mp4"
    write_mp4(path, np.repeat(still[None], 17, axis=0), fps=8)
    assert len(list(decode_video(path))) == 17
    with pytest.raises(MediaRejected, match="c.mp4: the video has 17 frames; the studio takes up to 5"):
        list(decode_video(path, MediaLimits(max_frames=5)))
    with pytest.raises(MediaRejected, match="decoding took longer than 0 s"):
        list(decode_video(path, MediaLimits(decode_budget_s=0.0)))
    with pytest.raises(MediaRejected, match=r"the video is 2\.1 s long; the studio takes clips up to 1 s"):
        check_media(path, MediaLimits(max_seconds=1))
    with pytest.raises(MediaRejected, match="the image is 64x48 .* up to 0.0 MP"):
        check_media(saved(tmp_path, "s.png", encode(Image.fromarray(still), "PNG")), MediaLimits(max_image_pixels=100))


@pytest.mark.parametrize("fps", [5, 8, 12, 16, 24, 30, 60])
def test_streaming_sampler_keeps_exactly_the_frames_the_sampling_picks(tmp_path, fps):
    """Reading keeps only frames an output time can land on; the result equals decoding everything."""
    clip = np.stack([np.full((16, 16, 3), (7 * i) % 256, np.uint8) for i in range(61)])
    path = tmp_path / "ramp.mp4"
    write_mp4(path, clip, fps=30)
    with av.open(str(path)) as container:
        decoded = [f for f in container.decode(video=0)]
        times = [float(f.time - decoded[0].time) for f in decoded]
        everything = [f.to_ndarray(format="rgb24") for f in decoded]
    expected = np.stack([everything[i] for i in _picks(times, fps, None)])
    got = read_video(path, fps=fps)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert count_frames(path, fps) == len(expected)
    assert np.array_equal(read_video(path, fps=fps, max_frames=3), expected[:3])


def test_a_png_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    path = saved(tmp_path, "bomb.png", _png(9000, 9000, b"\0" * 10))  # 81 MP header, 10 bytes of pixels
    with pytest.raises(MediaRejected, match=r"bomb.png: the image is 9000x9000 \(81.0 MP\); the studio takes images up to 50.0 MP"):
        read_image(path)
    header = struct.unpack(">II", path.read_bytes()[16:24])
    assert header == (9000, 9000)


def test_max_frames_reads_the_same_frames_as_the_whole_clip_does(tmp_path):
    """A still intro shown for 2 s then motion: the first frames with a cap equal the uncapped read's."""
    frames = [np.full((16, 16, 3), 10, np.uint8)] + [np.full((16, 16, 3), 20 + 9 * i, np.uint8) for i in range(20)]
    path = tmp_path / "intro.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
        stream.codec_context.time_base = Fraction(1, 10)
        for pts, frame in zip([0] + list(range(20, 40)), frames):  # the intro frame lasts 2 s
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = pts, Fraction(1, 10)
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    whole = read_video(path, fps=12)
    for cap in (1, 5, 16, 30):
        assert np.array_equal(read_video(path, fps=12, max_frames=cap), whole[:cap]), cap


def test_the_decode_budget_counts_decoding_not_the_readers_work(tmp_path, still):
    from pipelines.video_io import _sample

    path = tmp_path / "c.mp4"
    write_mp4(path, np.repeat(still[None], 9, axis=0), fps=8)
    slow_reader = lambda frame: time.sleep(0.1) or frame.to_ndarray(format="rgb24")  # noqa: E731
    times, kept = _sample(path, 8, None, MediaLimits(decode_budget_s=0.5), keep=slow_reader)
    assert len(times) == 9 and len(kept) == 9  # 0.9 s of reading, well under 0.5 s of decoding
