"""A model folder with no studio.json opens the studio on the model's own defaults: Wan 2.1's 832x480 (which
is near 16:9, not on it) is a size preset and every tab starts from it."""

from __future__ import annotations

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from conftest import launched_studio  # noqa: E402
from studio.app import ModelInfo, default_preset, size_presets  # noqa: E402
from tiny_models import save_diffusers_folder, tiny_wan21  # noqa: E402


@pytest.mark.parametrize("width, height, grid", [(832, 480, 16), (1280, 704, 32), (720, 480, 16), (1024, 576, 64),
                                                 (768, 512, 32), (480, 832, 16), (176, 96, 16)])
def test_the_models_default_size_is_always_a_preset(width, height, grid):
    info = ModelInfo("m", width, height, 81, 16.0, 50, 5.0, grid, 4)
    assert size_presets(info)[default_preset(info)] == (width, height)
    assert all(w % grid == 0 and h % grid == 0 for w, h in size_presets(info).values())


def test_a_wan_folder_without_studio_json_serves_the_studio_at_832x480(tmp_path):
    # Wan 2.1's defaults apply; the rope table is the real checkpoint's, so its sizes fit.
    folder = save_diffusers_folder(tiny_wan21(rope_max_seq_len=1024), tmp_path / "wan-folder")
    with launched_studio(folder, tmp_path / "outputs") as (url, _):
        config = Client(url, verbose=False).config
        sizes = [c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "t2v-size"]
        assert sizes == ["model default · 832x480"]
        client = Client(url, verbose=False)
        result = client.predict("a lighthouse", "", 1, 1, 4.0, "default", sizes[0], 1.0, 16, True, False,
                                api_name="/t2v")[4]
        assert result["status"] == "done" and Image.open(result["output"]).size == (832, 480)


def test_pipe_request_fills_what_is_left_out_with_the_loaded_models_defaults(wan21, png_clip):
    d = wan21.defaults  # 32x32, 9 frames at 8 fps, 2 steps, guidance 4 (conftest.make_pipeline)
    t2v = wan21.request("t2v", prompt="a red kite", seed=3)
    assert (t2v.width, t2v.height, t2v.num_frames, t2v.fps, t2v.steps, t2v.guidance_scale, t2v.seed) == \
        (d.width, d.height, d.num_frames, d.fps, d.steps, d.guidance_scale, 3)
    # Given values win, None counts as left out, and the README's Wan-sized request is not what a small model gets.
    assert wan21.request("t2v", prompt="a red kite", steps=5, guidance_scale=None).steps == 5
    assert (t2v.width, t2v.height, t2v.steps) != (832, 480, 50)
    path, _ = png_clip(9)
    extended = wan21.request("extend", clip=path, prompt="on", seed=0)
    assert extended.fps == d.fps and extended.num_frames > 9  # context + the default 2 s of new frames
    wan21.generate(wan21.request("animate", image=path, prompt="a kite", num_frames=5))
    with pytest.raises(ValueError, match="mode = 'dance' is not valid"):
        wan21.request("dance", prompt="x")
