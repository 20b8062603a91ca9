"""Joins between copied-through clips and generated frames carry the decode's error over (pipelines/seams.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import pytest

from pipelines import connect, extend, text_to_video
from pipelines.seams import (EDGE_FRAMES, Join, carry_residuals, closing_seam, held_residuals, join_ratios,
                             smootherstep)
from pipelines.video_io import write_frames
from tests.test_embedded import embedded, source_clip  # noqa: F401  (module fixtures)
from training.world import Scene, Thing, render


def _steps(video: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def test_a_static_error_is_carried_into_every_generated_frame():
    rng = np.random.default_rng(0)
    source = rng.integers(40, 200, (5, 8, 8, 3)).astype(np.uint8)
    decoded = np.concatenate([source + 12, rng.integers(40, 200, (6, 8, 8, 3)).astype(np.uint8)])  # (11, 8, 8, 3)
    join = Join(4, +1, held_residuals(source, decoded[:5]))
    out = carry_residuals(decoded, [join])
    assert np.array_equal(out[:5], decoded[:5])  # the held side is left alone (the source replaces it)
    assert np.array_equal(out[5:].astype(int), decoded[5:].astype(int) - 12)


def test_an_edge_error_fades_and_two_joins_blend_by_position():
    height = width = 4
    window = np.full((12, height, width, 3), 100, np.uint8)
    held = window[:3]
    moving = np.zeros((3, height, width, 3), np.float32)
    moving[-1, 0, 0] = 30.0  # an error on the edge frame only (an object about to leave)
    a = Join(2, +1, moving)
    out = carry_residuals(window, [a])
    assert [int(out[w, 0, 0, 0]) - 100 for w in range(3, 3 + EDGE_FRAMES + 1)] == [30, 20, 10, 0]
    assert np.array_equal(out[:3], held)

    b = Join(11, -1, np.full((2, height, width, 3), -20.0, np.float32))  # a clip whose head closes the window
    a = Join(2, +1, np.full((3, height, width, 3), 10.0, np.float32))
    out = carry_residuals(window, [a, b]).astype(int)
    bridge = out[3:11, 1, 1, 0] - 100  # frames 3..10 between the joins
    expected = [round(10 + (-20 - 10) * smootherstep((w - 2) / 9)) for w in range(3, 11)]
    assert np.abs(bridge - np.array(expected)).max() <= 1
    # Each end keeps its own clip's error whole (a linear blend would move it by 30 / 9 at both ends), and
    # the handover happens in the middle of the span.
    assert bridge[0] == 10 and bridge[-1] == -20
    steps = np.abs(np.diff(bridge))
    assert max(steps[0], steps[-1]) < steps[3]


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_extend_join_steps_as_the_decoder_does(embedded, source_clip, direction):  # noqa: F811
    path, frames = source_clip
    d = embedded.defaults
    result = embedded.generate(extend(path, "a red ball moves right in a clear day sky", new_frames=8, steps=4,
                                      direction=direction, seed=0, width=d.width, height=d.height, fps=d.fps))
    raw = embedded.decode(result.latents[None])  # the window as decoded, before the join was matched
    context = len(raw) - 8
    if direction == "forward":  # the clip's tail opens the window: its last frame meets the first new one
        raw_clip, join, copied, new = np.concatenate([frames, raw[context:]]), len(frames) - 1, context - 1, context
        edge = frames[-1]
        assert np.array_equal(result.frames[:len(frames)], frames)
    elif closing_seam(result.frames, frames, 8) == 8:  # the clip's head closes the window at frame 8
        raw_clip, join, copied, new = np.concatenate([raw[:8], frames]), 7, 8, 7
        edge = frames[0]
    else:  # cut after the clip's first frame (in a generated latent): frame 8 shows the model's, the clip
        # is copied from window frame 9, a held latent's first frame
        raw_clip, join, copied, new = np.concatenate([raw[:9], frames[1:]]), 8, 9, 8
        edge = frames[1]
    # Across the join the clip now changes as the decoded window does between the same two window frames, no
    # longer by the decode's error on top: the new frame carries the copied frame's error (clipped to 0..255,
    # up to rounding). Cut before the closing clip's first frame, that frame sits in a generated latent, and
    # the step is still the window's own into it.
    carried = np.clip(raw[new].astype(np.float32) + edge.astype(np.float32) - raw[copied].astype(np.float32), 0, 255)
    decoder_step = np.abs(carried - edge.astype(np.float32)).mean()
    assert abs(_steps(result.frames)[join] - decoder_step) < 0.5
    assert _steps(result.frames)[join] < _steps(raw_clip)[join]


def test_best_of_keeps_the_candidate_with_the_smoothest_joins(wan21, png_clip):
    (a, _), (b, b_frames) = png_clip(9, "a", seed=1), png_clip(9, "b", seed=2)
    settings = dict(width=32, height=32, steps=3, guidance_scale=4.0, fps=8.0)
    request = connect(a, b, "a square glides over", new_frames=3, context_frames=5, seed=20, best_of=3, **settings)
    progress = []
    kept = wan21.generate(request, callback=lambda step, total, latents: progress.append((step, total)))
    assert progress == [(i, 9) for i in range(1, 10)]  # three candidates' steps counted on
    singles = [wan21.generate(request.replace(best_of=1, seed=20 + k)) for k in range(3)]
    worst = [max(s.join_ratios) for s in singles]
    assert len(set(worst)) == 3  # the seeds give different bridges
    chosen = singles[int(np.argmin(worst))]
    assert kept.seed == chosen.seed and np.array_equal(kept.frames, chosen.frames)
    assert kept.join_ratios == chosen.join_ratios
    seams = [9, closing_seam(kept.frames, b_frames, 9 + 3)]  # A's 9 frames, 3 new ones, then B
    assert kept.join_ratios == pytest.approx(join_ratios(kept.frames, seams, wraps=False), abs=1e-3)
    assert any(note.startswith(f"best of 3: seed {chosen.seed}") for note in kept.notes)


def test_best_of_needs_joins():
    with pytest.raises(ValueError, match=r"best_of = 2 is not valid: 1 for a request without joins"):
        text_to_video("a ball", best_of=2)
    with pytest.raises(ValueError, match=r"best_of = 0 is not valid: an integer in \[1, 16\]"):
        text_to_video("a ball", best_of=0)


@pytest.mark.parametrize("moving", [False, True])
def test_the_cut_into_a_closing_clip_is_the_smoother_of_two(embedded, tmp_path, moving):  # noqa: F811
    """B's first frame lies in a generated latent: the output copies B from it or from its second frame
    (the model's frame before it), whichever leaves the smaller worst join."""
    d = embedded.defaults
    a = render(Scene((Thing("ball", "red", "right", True, (0.5, 0.5)),), "sunset", seed=1),
               d.width, d.height, 9, d.fps)
    b = render(Scene((Thing("star", "blue", "up" if moving else "still", True, (0.5, 0.5)),), "sunset", seed=2),
               d.width, d.height, 9, d.fps)
    write_frames(tmp_path / "a", a)
    write_frames(tmp_path / "b", b)
    request = connect(str(tmp_path / "a"), str(tmp_path / "b"), "a red ball moves right in a sunset", new_frames=3,
                      steps=4, seed=0, width=d.width, height=d.height, fps=d.fps)
    result = embedded.generate(request)
    placed = [embedded._place(item, request, {}) for item in request.conditioning]
    window = embedded.decode(result.latents[None])[-request.num_frames:]  # (T, H, W, 3) as the pipeline decoded it
    outputs, ratios = {}, {}
    for after in (False, True):  # B is the second placed item
        carried = carry_residuals(window, embedded._joins(window, placed, frozenset({1} if after else ())))
        outputs[after], _, seams = embedded._assemble(carried, placed, request, frozenset({1} if after else ()))
        ratios[after] = join_ratios(outputs[after], seams, wraps=False)
        assert closing_seam(outputs[after], b, 9 + 3) == 12 + after
    assert not np.array_equal(outputs[True][12], b[0])  # the model's frame, not B's first
    kept = max(ratios[True]) < max(ratios[False])
    assert np.array_equal(result.frames, outputs[kept])
    assert result.join_ratios == pytest.approx(ratios[kept], abs=1e-3)
    assert any("copied from its second frame" in note for note in result.notes) == kept
    # On the shipped weights a still B joins best after its first frame and a moving one before it; were
    # that to change, the other branch would go untested here.
    assert kept == (not moving)


def test_each_clip_after_frame_0_gets_its_own_cut(wan21, png_clip):
    """Two clips after frame 0 (one held in the middle, one closing the window): every combination of cuts
    is tried and the smoothest kept, each clip copied from its first or its second frame, with a note for
    each clip that starts at its second."""
    from pipelines import ConditioningItem, GenerationRequest

    (a, clip_a), (m, clip_m), (b, clip_b) = (png_clip(5, name, seed=k) for k, name in enumerate("amb"))
    items = (ConditioningItem(a, frame_index=0, output="source"),
             ConditioningItem(m, frame_index=8, output="source"),
             ConditioningItem(b, frame_index=16, output="source"))
    request = GenerationRequest(prompt="a square glides over", num_frames=21, conditioning=items, width=32,
                                height=32, steps=2, seed=3, fps=8.0)
    result = wan21.generate(request)
    placed = [wan21._place(item, request, {}) for item in request.conditioning]
    window = wan21.decode(result.latents[None])
    worst = {}
    for after in (frozenset(), frozenset({1}), frozenset({2}), frozenset({1, 2})):
        frames, _, seams = wan21._assemble(carry_residuals(window, wan21._joins(window, placed, after)), placed,
                                           request, after)
        worst[after] = max(join_ratios(frames, seams, wraps=False))
        if np.array_equal(frames, result.frames):
            kept = after
    assert worst[kept] == min(worst.values()) and len(set(worst.values())) == 4
    assert closing_seam(result.frames, clip_m, 8) == 8 + (1 in kept)
    assert closing_seam(result.frames, clip_b, 16) == 16 + (2 in kept)
    assert sorted(n.split(":")[0] for n in result.notes if "second frame" in n) == sorted(
        Path(placed[i].item.source).name for i in kept)
