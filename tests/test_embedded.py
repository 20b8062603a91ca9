"""The shipped embedded model: it loads offline from assets/ and every mode runs end to end on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import VideoPipeline, animate, connect, extend, loop, restyle, text_to_image, text_to_video
from pipelines.seams import closing_seam
from pipelines.video_io import write_frames
from training.judge import read_clip
from training.world import Scene, Thing, render

FAST = dict(steps=4, seed=0)


@pytest.fixture(scope="module")
def embedded() -> VideoPipeline:
    return VideoPipeline.from_pretrained("embedded", device="cpu")


@pytest.fixture(scope="module")
def source_clip(embedded, tmp_path_factory):
    d = embedded.defaults
    scene = Scene((Thing("ball", "red", "right", True, (0.3, 0.5)),), "day")
    frames = render(scene, d.width, d.height, d.num_frames, d.fps)
    folder = tmp_path_factory.mktemp("clips") / "red-ball"
    write_frames(folder, frames)
    return str(folder), frames


def test_loads_with_its_defaults(embedded):
    d = embedded.defaults
    assert embedded.model_id == "embedded"
    assert (d.width, d.height, d.num_frames, d.conditioning_strategy) == (128, 128, 17, "per_token")
    assert embedded.family.text_encoder.config.hidden_size == 384 == embedded.transformer.config.text_dim


def test_text_to_video_and_image(embedded):
    d = embedded.defaults
    video = embedded.generate(text_to_video("a blue ball moves to the right on a yellow background",
                                            width=d.width, height=d.height, num_frames=d.num_frames, fps=d.fps,
                                            **FAST)).frames
    assert video.shape == (17, 128, 128, 3) and video.std() > 5
    image = embedded.generate(text_to_image("a green star at night", width=160, height=96, **FAST)).frames
    assert image.shape == (1, 96, 160, 3)


def test_every_editing_mode(embedded, source_clip, tmp_path):
    path, frames = source_clip
    d = embedded.defaults
    settings = dict(width=d.width, height=d.height, fps=d.fps, **FAST)
    Image.fromarray(frames[0]).save(tmp_path / "still.png")
    animated = embedded.generate(animate(str(tmp_path / "still.png"), "a red ball moves right in a clear day sky",
                                         num_frames=9, **settings)).frames
    assert animated.shape[0] == 9 and np.abs(animated[0].astype(int) - frames[0]).mean() < 12
    forward = embedded.generate(extend(path, "a red ball moves right", new_frames=8, **settings)).frames
    assert forward.shape[0] == 25 and np.array_equal(forward[:17], frames)
    backward = embedded.generate(extend(path, "a red ball", new_frames=8, direction="backward", **settings)).frames
    assert backward.shape[0] == 25
    closing_seam(backward, frames, 8)  # raises unless the clip is copied from output frame 8 or 9
    looped = embedded.generate(loop(path, "a red ball", new_frames=7, **settings)).frames
    assert looped.shape[0] == 24
    joined = embedded.generate(connect(path, path, "a red ball", new_frames=7, **settings)).frames
    assert joined.shape[0] == 17 + 7 + 17
    light, strong = (embedded.generate(restyle(path, "a red ball moves right at sunset", strength=strength,
                                               **settings)).frames for strength in (0.3, 0.8))
    assert light.shape == strong.shape == frames.shape
    # SDEdit: a light touch keeps the footage (its sky too), a strong one departs further from it. (Turning
    # this day sky into a sunset is beyond the current weights: see the model card.)
    assert read_clip(light).background == "day"
    assert np.abs(light.astype(int) - frames).mean() < np.abs(strong.astype(int) - frames).mean()
