"""Reading, resampling, fitting and writing clips with PyAV and Pillow."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import clip_with_audio, moving_square
from pipelines.video_io import fit_frames, read_media, read_video, write_gif, write_mp4, write_output


def test_mp4_round_trip_and_fps_resampling(tmp_path):
    clip = moving_square(16, 48, 32)
    write_mp4(tmp_path / "c.mp4", clip, fps=16)
    same = read_video(tmp_path / "c.mp4", fps=16)
    assert same.shape == (16, 32, 48, 3)
    assert np.abs(same.astype(int) - clip.astype(int)).mean() < 4  # H.264 at CRF 17 is close to lossless
    half = read_video(tmp_path / "c.mp4", fps=8)
    assert half.shape[0] == 8 and np.array_equal(half, same[::2])
    double = read_video(tmp_path / "c.mp4", fps=32)
    assert double.shape[0] == 32 and np.array_equal(double[::2], same) and np.array_equal(double[1::2], same)


def test_gif_and_png_folder_are_read(tmp_path):
    clip = moving_square(6)
    write_gif(tmp_path / "c.gif", clip, fps=10)
    assert read_video(tmp_path / "c.gif", fps=10).shape[0] == 6
    write_output(tmp_path / "one.png", clip[:1], fps=10)
    assert np.array_equal(read_media(tmp_path / "one.png", fps=10), clip[:1])
    with pytest.raises(ValueError, match="a .png holds one frame"):
        write_output(tmp_path / "many.png", clip, fps=10)


def test_fit_crops_the_centre_and_leaves_fitting_frames_alone():
    clip = moving_square(2, 64, 32)
    assert fit_frames(clip, 64, 32) is clip
    fitted = fit_frames(clip, 32, 32)
    assert fitted.shape == (2, 32, 32, 3)
    assert np.abs(fitted.astype(int) - clip[:, :, 16:48].astype(int)).mean() < 2


def test_unreadable_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_video(tmp_path / "nope.mp4", fps=8)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported (video|file) type"):
        read_video(tmp_path / "notes.txt", fps=8)


def test_restyle_keeps_the_audio_track(wan21, tmp_path):
    from pipelines import restyle
    from studio.outputs import write_result

    clip_with_audio(tmp_path / "talk.mp4", moving_square(9), fps=8, seconds=1.5)
    request = restyle(str(tmp_path / "talk.mp4"), "a blue square", strength=0.5, width=32, height=32, fps=8.0,
                      steps=2, seed=1)
    result = wan21.generate(request)
    write_result(result, tmp_path / "styled.mp4")
    with av.open(str(tmp_path / "styled.mp4")) as container:
        assert len(container.streams.audio) == 1
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(samples / 44100 - 9 / 8) < 0.1  # trimmed to the clip's 9 frames at 8 fps


def test_output_size_follows_the_inputs_aspect_ratio(tmp_path):
    from PIL import Image

    from pipelines.modes import size_for

    Image.new("RGB", (480, 832)).save(tmp_path / "portrait.png")
    assert size_for(str(tmp_path / "portrait.png"), 832, 480, 16) == (480, 832)
    Image.new("RGB", (1080, 1920)).save(tmp_path / "phone.png")
    assert size_for(str(tmp_path / "phone.png"), 832, 480, 16) == (480, 848)
    Image.new("RGB", (1000, 1000)).save(tmp_path / "square.png")
    assert size_for(str(tmp_path / "square.png"), 832, 480, 32) == (640, 640)


@pytest.mark.parametrize("fps", [8, 16, 24, 29.97])
def test_frame_counts_survive_rounded_timestamps(tmp_path, fps):
    clip = moving_square(9)
    write_gif(tmp_path / "c.gif", clip, fps=fps)
    assert read_video(tmp_path / "c.gif", fps=fps).shape[0] == 9
    write_mp4(tmp_path / "c.mp4", moving_square(30), fps=fps)
    assert read_video(tmp_path / "c.mp4", fps=fps).shape[0] == 30
