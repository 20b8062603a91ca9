"""Joins between copied-through clips and generated frames carry the decode's error over (pipelines/seams.py)."""

from __future__ import annotations

import numpy as np

import pytest

from pipelines import connect, extend, text_to_video
from pipelines.seams import EDGE_FRAMES, Join, carry_residuals, held_residuals, join_ratios, smootherstep
from tests.test_embedded import embedded, source_clip  # noqa: F401  (module fixtures)


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
    else:  # the clip's head closes the window at frame 8, a frame in a generated latent, which shows the
        # model's frame: the clip is copied from its second frame, window frame 9, a latent's first
        raw_clip, join, copied, new = np.concatenate([raw[:9], frames[1:]]), 8, 9, 8
        edge = frames[1]
        assert np.array_equal(result.frames[9:], frames[1:]) and len(result.frames) == 8 + len(frames)
    # Across the join the clip now changes as the decoded window does between the same two window frames, no
    # longer by the decode's error on top: the new frame carries the copied frame's error (clipped to 0..255,
    # up to rounding).
    carried = np.clip(raw[new].astype(np.float32) + edge.astype(np.float32) - raw[copied].astype(np.float32), 0, 255)
    decoder_step = np.abs(carried - edge.astype(np.float32)).mean()
    assert abs(_steps(result.frames)[join] - decoder_step) < 0.5
    assert _steps(result.frames)[join] < _steps(raw_clip)[join]


def test_best_of_keeps_the_candidate_with_the_smoothest_joins(wan21, png_clip):
    (a, _), (b, _) = png_clip(9, "a", seed=1), png_clip(9, "b", seed=2)
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
    # A's 9 frames, 3 new ones, the model's frame in B's first slot, then B from its second frame.
    assert kept.join_ratios == pytest.approx(join_ratios(kept.frames, [9, 13], wraps=False), abs=1e-3)
    assert any(note.startswith(f"best of 3: seed {chosen.seed}") for note in kept.notes)


def test_best_of_needs_joins():
    with pytest.raises(ValueError, match=r"best_of = 2 is not valid: 1 for a request without joins"):
        text_to_video("a ball", best_of=2)
    with pytest.raises(ValueError, match=r"best_of = 0 is not valid: an integer in \[1, 16\]"):
        text_to_video("a ball", best_of=0)
