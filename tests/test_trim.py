"""Footage longer than the model's window: Restyle's trim picks which part is restyled (frames and audio),
in the studio, the CLI and Reproduce."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from conftest import clip_with_audio, launched_studio, moving_square
from pipelines import restyle
from pipelines.video_io import read_media
from studio import cli
from studio.outputs import History

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

SETTINGS = ("", 7, 4, 4.0, "default", "1:1 · 32x32")  # negative, seed, steps (4: strength 0.5 runs 2), ...


def loudness(path, seconds: float = 0.25) -> float:
    """RMS of the first `seconds` of a file's audio."""
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    return float(np.sqrt(np.mean(samples[:int(44100 * seconds)] ** 2)))


@pytest.fixture
def footage(tmp_path):
    path = tmp_path / "footage.mp4"
    clip_with_audio(path, moving_square(32), fps=8, seconds=4.0, rising=True)  # longer than the 9-frame window
    return path


def test_the_trim_restyles_the_chosen_frames_and_keeps_their_audio(wan21, footage, tmp_path):
    trimmed = restyle(str(footage), "a blue square", strength=0.5, start=16, width=32, height=32, fps=8.0, steps=2,
                      seed=1, num_frames=9)
    assert np.array_equal(wan21._read_init_video(trimmed), read_media(str(footage), 8.0, size=(32, 32))[16:25])
    out, sidecar = History(tmp_path / "outputs").write(wan21.generate(trimmed))
    assert sidecar["request"]["init_start"] == 16 and sidecar["frames"] == 9
    # The audio is the footage's from 2 s on: as loud as the source there, far louder than at its start.
    source_at_2s = 0.25 * 2.0 / np.sqrt(2)
    assert loudness(out) == pytest.approx(source_at_2s, rel=0.15)
    untrimmed, _ = History(tmp_path / "outputs").write(wan21.generate(trimmed.replace(init_start=0)))
    assert loudness(untrimmed) < loudness(out) / 4
    with pytest.raises(ValueError, match="more than init_video has from frame 28 .*4 frames.*at most 1"):
        wan21.generate(trimmed.replace(init_start=28))


def test_the_restyle_tab_trims_and_reproduce_reads_it_back(tiny_model_dir, footage, tmp_path):
    with launched_studio(tiny_model_dir, tmp_path / "outputs") as (url, _):
        client = Client(url, verbose=False)
        made = client.predict(handle_file(str(footage)), 0.5, "in pastel", *SETTINGS, 8, 1.0, 2.5,
                              api_name="/restyle")[4]
        request = made["sidecar"]["request"]
        assert (request["init_start"], request["num_frames"]) == (8, 9)  # 1.0-2.5 s: 12 frames, 9 of them a window
        values = client.predict(made["output"].rsplit("/", 1)[1], api_name="/reproduce")
        assert (values["trim_from"], values["trim_to"]) == (1.0, 2.125)
        again = client.predict(handle_file(str(footage)), 0.5, "in pastel", *SETTINGS[:-1], values["size"], 8,
                               values["trim_from"], values["trim_to"], api_name="/restyle")[4]["sidecar"]["request"]
        assert (again["init_start"], again["num_frames"]) == (8, 9)
        with pytest.raises(Exception, match=r"trim end = 0.5 s is not valid: after the start \(1 s\)"):
            client.predict(handle_file(str(footage)), 0.5, "x", *SETTINGS, 8, 1.0, 0.5, api_name="/restyle")


def test_the_cli_trims_with_start(tiny_model_dir, footage, tmp_path):
    out = tmp_path / "part.mp4"
    assert cli.main(["restyle", "--model", str(tiny_model_dir), "--video", str(footage), "--prompt", "x", "--start",
                     "1.5", "--seconds", "1", "--strength", "0.5", "--steps", "2", "--quiet", "--out", str(out)]) == 0
    request = json.loads((tmp_path / "part.mp4.json").read_text())["request"]
    assert (request["init_start"], request["num_frames"]) == (12, 9)
    assert cli.main(["t2v", "--model", str(tiny_model_dir), "--prompt", "x", "--start", "1", "--quiet"]) == 2
