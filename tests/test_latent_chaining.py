"""Latent sidecars: chained edits condition on a clip's saved latents instead of re-encoding its pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipelines import connect, extend, text_to_video
from pipelines.latents import load_timeline, sidecar_path
from studio.outputs import write_result

SETTINGS = dict(width=32, height=32, steps=2, guidance_scale=4.0, seed=3, fps=8.0, conditioning_strategy="per_token")


def generate_clip(pipe, tmp_path: Path, name: str = "base.mp4", frames: int = 9):
    result = pipe.generate(text_to_video("a red ball moves left", num_frames=frames, **SETTINGS))
    out = tmp_path / name
    write_result(result, out)
    return result, out


def test_sidecar_round_trips_the_generation_latents(wan21, tmp_path):
    result, out = generate_clip(wan21, tmp_path)
    timeline, reason = load_timeline(out)
    assert reason == "ok" and sidecar_path(out).is_file()
    assert torch.equal(timeline.latents, result.latents)
    assert (timeline.first_frame, timeline.num_frames, timeline.last_frame) == (0, 9, 8)


def test_forward_extension_conditions_on_saved_latents(wan21, tmp_path):
    base, out = generate_clip(wan21, tmp_path)
    chained = wan21.generate(extend(str(out), "a red ball moves left", new_frames=4, context_frames=5, **SETTINGS))
    # 5 context frames are 2 latents: the last two latents of the original generation, bit for bit.
    assert torch.equal(chained.held.clean[0, :, :2], base.latents[:, -2:])
    assert any("saved latents" in note for note in chained.notes)
    # The output's timeline continues the original's: all of it, then the new latent.
    assert chained.timeline.first_frame == 0 and chained.timeline.num_frames == 13
    assert torch.equal(chained.timeline.latents[:, :3], base.latents)
    assert chained.timeline.last_frame == 12

    reencoded = wan21.generate(extend(str(out), "a red ball moves left", new_frames=4, context_frames=5,
                                      use_saved_latents=False, **SETTINGS))
    assert not torch.equal(reencoded.held.clean[0, :, :2], base.latents[:, -2:])
    assert reencoded.frames.shape == chained.frames.shape


def test_second_link_of_a_chain_uses_the_first_links_latents(wan21, tmp_path):
    _, out = generate_clip(wan21, tmp_path)
    first = wan21.generate(extend(str(out), "a ball", new_frames=4, context_frames=5, **SETTINGS))
    link = tmp_path / "link1.mp4"
    write_result(first, link)
    second = wan21.generate(extend(str(link), "a ball", new_frames=4, context_frames=5, **SETTINGS))
    assert torch.equal(second.held.clean[0, :, :2], first.timeline.latents[:, -2:])
    assert second.frames.shape[0] == 17


def test_backward_extension_and_connect_use_the_head_latents(wan21, tmp_path):
    base, out = generate_clip(wan21, tmp_path)
    backward = wan21.generate(extend(str(out), "a ball", new_frames=4, direction="backward", context_frames=5,
                                     **SETTINGS))
    # Held at the window's end: the latents after the clip's first frame (latent 0 encodes frame 0 alone).
    assert torch.equal(backward.held.clean[0, :, -1:], base.latents[:, 1:2])
    assert backward.timeline.first_frame == 0 and backward.timeline.last_frame == 12

    joined = wan21.generate(connect(str(out), str(out), "a ball", new_frames=3, context_frames=5, **SETTINGS))
    assert torch.equal(joined.held.clean[0, :, :2], base.latents[:, -2:])
    assert torch.equal(joined.held.clean[0, :, -1:], base.latents[:, 1:2])
    assert joined.frames.shape[0] == 9 + 3 + 9


def test_a_clip_without_latents_or_with_stale_latents_is_re_encoded(wan21, tmp_path, png_clip):
    path, clip = png_clip(9)
    plain = wan21.generate(extend(path, "a ball", new_frames=4, context_frames=5, **SETTINGS))
    assert np.array_equal(plain.frames[:9], clip)
    assert any(note == f"{Path(path).name} has no saved latents, so it was re-encoded from its pixels (slightly "
               "less faithful)" for note in plain.notes)

    _, out = generate_clip(wan21, tmp_path)
    out.write_bytes(out.read_bytes() + b"\0")  # the clip was edited after its latents were saved
    stale = wan21.generate(extend(str(out), "a ball", new_frames=4, context_frames=5, **SETTINGS))
    assert any("changed" in note for note in stale.notes)


def test_a_clip_held_inside_the_window_does_not_extend_the_timeline(wan21, tmp_path):
    from pipelines import ConditioningItem, GenerationRequest

    _, out = generate_clip(wan21, tmp_path, frames=13)
    item = ConditioningItem(str(out), frame_index=4, source_start=0, source_count=5, output="source")
    settings = {k: v for k, v in SETTINGS.items()}
    result = wan21.generate(GenerationRequest(prompt="a ball", num_frames=17, conditioning=(item,), **settings))
    timeline = result.timeline
    assert timeline.last_frame <= timeline.num_frames - 1 == len(result.frames) - 1
