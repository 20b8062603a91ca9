"""The speed knobs on the real tiny pipeline: what they change and what they must not."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_pipeline
from pipelines import text_to_video


def clip(pipe, prompt: str = "a red ball moves right", seed: int = 1) -> np.ndarray:
    return pipe.generate(text_to_video(prompt, num_frames=9, steps=10, seed=seed, width=32, height=32)).frames


@pytest.fixture
def fresh(wan21_components):
    """A pipeline of its own (knobs stay on the transformer it was given), on copies of the tiny weights."""
    import copy

    return make_pipeline(copy.deepcopy(wan21_components))


def test_attention_auto_on_a_cpu_is_sdpa_and_changes_nothing(fresh):
    before = clip(fresh)
    assert fresh.accelerate(attention="auto")["attention"] == "native"
    assert np.array_equal(clip(fresh), before)
    with pytest.raises(ValueError, match="attention backend 'fastest' is not known; valid: auto, "):
        fresh.accelerate(attention="fastest")


def test_step_cache_is_a_bounded_deterministic_change_reset_between_clips(fresh):
    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - b) ** 2))

    plain = clip(fresh)
    other_plain = clip(fresh, "a blue star spins", seed=2)
    fresh.accelerate(step_cache=0.2)
    cached = clip(fresh)
    assert not np.array_equal(cached, plain)  # steps were skipped
    assert psnr(cached, plain) > 25, psnr(cached, plain)
    # Another clip in between must not leak its cached residuals into the next one (nor take the last one's).
    other = clip(fresh, "a blue star spins", seed=2)
    assert psnr(other, other_plain) > 25, psnr(other, other_plain)
    assert np.array_equal(clip(fresh), cached)
    with pytest.raises(ValueError, match="threshold = 1.5 is not valid"):
        fresh.accelerate(step_cache=1.5)
