"""Each mode end to end on tiny random Wan components: what it holds, what it returns, how long."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import (GenerationCancelled, GenerationRequest, animate, connect, extend, loop, text_to_image,
                       text_to_video)
from pipelines.seams import closing_seam

SETTINGS = dict(width=32, height=32, steps=2, guidance_scale=4.0, seed=7, fps=8.0)


def held_positions_unchanged(result) -> bool:
    held = result.held
    known = held.known[0, 0]  # (F, H, W)
    return bool(torch.equal(result.latents[:, known], held.clean[0][:, known]))


@pytest.mark.parametrize("strategy", ["per_token", "replace"])
def test_animate_holds_the_still(wan21, tmp_path, strategy):
    still = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(still).save(tmp_path / "still.png")
    request = animate(str(tmp_path / "still.png"), "a red ball", num_frames=9, conditioning_strategy=strategy,
                      **SETTINGS)
    result = wan21.generate(request)
    assert result.frames.shape == (9, 32, 32, 3)
    assert result.held.known[0, 0, 0].all() and not result.held.known[0, 0, 1:].any()
    assert held_positions_unchanged(result)
    assert torch.equal(result.latents[:, 0], wan21.encode(still[None])[0, :, 0])


def test_extend_forward_keeps_source_frames_bit_exact(wan21, png_clip):
    path, clip = png_clip(13)
    request = extend(path, "a red ball moves right", new_frames=8, context_frames=5,
                     conditioning_strategy="per_token", **SETTINGS)
    assert request.num_frames == 13
    result = wan21.generate(request)
    assert result.frames.shape == (13 + 8, 32, 32, 3)
    assert np.array_equal(result.frames[:13], clip)
    assert held_positions_unchanged(result)
    assert result.window_offset == 13 - 5


def test_extend_backward_keeps_source_frames_bit_exact_from_the_cut(wan21, png_clip):
    path, clip = png_clip(9)
    request = extend(path, "a red ball moves right", new_frames=4, direction="backward", context_frames=5,
                     conditioning_strategy="per_token", **SETTINGS)
    result = wan21.generate(request)
    assert result.frames.shape == (4 + 9, 32, 32, 3)
    # The clip's first frame lies in a generated latent (the encoder reads it alone, as a warm-up): the clip
    # is copied from it, or from its second frame with the model's frame before, whichever joins smoother.
    closing_seam(result.frames, clip, 4)  # raises unless the clip is copied from output frame 4 or 5
    # Held at the window's end: the latents after the clip's first (warm-up) frame.
    assert result.held.known[0, 0, -1].all() and not result.held.known[0, 0, 0].any()
    assert held_positions_unchanged(result)


def test_connect_starts_with_a_and_ends_with_b(wan21, png_clip):
    path_a, clip_a = png_clip(9, "a", seed=1)
    path_b, clip_b = png_clip(9, "b", seed=2)
    request = connect(path_a, path_b, "a ball", new_frames=7, context_frames=5, conditioning_strategy="per_token",
                      **SETTINGS)
    assert request.num_frames == 5 + 7 + 5
    result = wan21.generate(request)
    assert result.frames.shape == (9 + 7 + 9, 32, 32, 3)
    assert np.array_equal(result.frames[:9], clip_a)
    closing_seam(result.frames, clip_b, 9 + 7)  # raises unless B is copied from its first or second frame
    assert held_positions_unchanged(result)


def test_loop_is_the_clip_plus_a_bridge_back_to_its_start(wan21, png_clip):
    path, clip = png_clip(9)
    result = wan21.generate(loop(path, "a ball", new_frames=3, context_frames=5, **SETTINGS))
    assert result.frames.shape == (9 + 3, 32, 32, 3)
    assert np.array_equal(result.frames[:9], clip)
    # The bridge's last frames lead into the clip's first: both ends of the window were held.
    assert result.held.known[0, 0, 0].all() and result.held.known[0, 0, -1].all()


def test_same_seed_same_frames_other_seed_differs(wan21):
    request = text_to_video("a blue square spins", num_frames=5, **SETTINGS)
    first, second = wan21.generate(request), wan21.generate(request)
    assert np.array_equal(first.frames, second.frames)
    other = wan21.generate(request.replace(seed=8))
    assert not np.array_equal(first.frames, other.frames)


def test_one_frame_request_gives_an_image(wan21):
    result = wan21.generate(text_to_image("a yellow star", **SETTINGS))
    assert result.frames.shape == (1, 32, 32, 3) and result.latents.shape[1] == 1


def test_callback_sees_every_step_and_can_cancel(wan21):
    seen = []

    def callback(step, total, latents):
        seen.append((step, total, tuple(latents.shape)))
        if step == 2:
            raise GenerationCancelled

    request = text_to_video("a ball", num_frames=5, **{**SETTINGS, "steps": 4})
    with pytest.raises(GenerationCancelled):
        wan21.generate(request, callback=callback)
    assert seen == [(1, 4, (1, 16, 2, 4, 4)), (2, 4, (1, 16, 2, 4, 4))]


def test_prompt_embeddings_are_cached(wan21):
    wan21.family.prompts._cache.clear()
    calls = []
    original = wan21.family.prompts._encode
    wan21.family.prompts._encode = lambda text: calls.append(text) or original(text)
    try:
        request = text_to_video("a green cat", negative_prompt="blurry", num_frames=1, **SETTINGS)
        wan21.generate(request)
        wan21.generate(request.replace(seed=1))
    finally:
        wan21.family.prompts._encode = original
    assert calls == ["a green cat", "blurry"]


def test_model_checks_name_the_nearest_valid_values(wan21):
    with pytest.raises(ValueError, match=r"width = 40 .*multiple of 16.*32 or 48"):
        wan21.generate(text_to_video("a ball", num_frames=5, **{**SETTINGS, "width": 40}))
    with pytest.raises(ValueError, match=r"num_frames = 7 .*4k\+1.*5 or 9"):
        wan21.generate(text_to_video("a ball", num_frames=7, **SETTINGS))


def test_lengths_and_sizes_past_the_position_encoding_are_refused(wan21):
    positions = wan21.transformer.config.rope_max_seq_len  # 32 in the tiny model: 125 frames, 512 pixels
    with pytest.raises(ValueError, match=r"num_frames = 129 is more than this model can place in time: at most 125"):
        wan21.generate(text_to_video("a ball", num_frames=129, **SETTINGS))
    with pytest.raises(ValueError, match=rf"width = 528 is more than this model can place: at most {positions * 16}"):
        wan21.generate(text_to_video("a ball", num_frames=5, **{**SETTINGS, "width": 528}))
    last = wan21.generate(text_to_video("a ball", num_frames=125, **{**SETTINGS, "steps": 1}))  # the longest fits
    assert last.frames.shape[0] == 125


def test_misaligned_conditioning_is_refused(wan21, png_clip):
    from pipelines import ConditioningItem

    path, _ = png_clip(9)
    bad_count = ConditioningItem(path, frame_index=0, source_count=4)
    with pytest.raises(ValueError, match=r"4 frames is not valid: 4k\+1"):
        wan21.generate(GenerationRequest(prompt="a ball", num_frames=9, conditioning=(bad_count,), **SETTINGS))
    bad_start = ConditioningItem(path, frame_index=3, source_count=5)
    with pytest.raises(ValueError, match="multiple of 4"):
        wan21.generate(GenerationRequest(prompt="a ball", num_frames=9, conditioning=(bad_start,), **SETTINGS))
    too_long = ConditioningItem(path, frame_index=4, source_count=9)
    with pytest.raises(ValueError, match="run past the window"):
        wan21.generate(GenerationRequest(prompt="a ball", num_frames=9, conditioning=(too_long,), **SETTINGS))


def test_mode_builders_refuse_frame_counts_the_vae_cannot_take(png_clip):
    path, _ = png_clip(9)
    with pytest.raises(ValueError, match=r"frames = 6 .*extend.*4 or 8"):
        extend(path, "a ball", new_frames=6, **SETTINGS)
    with pytest.raises(ValueError, match=r"frames = 4 .*connect.*3 or 7"):
        connect(path, path, "a ball", new_frames=4, **SETTINGS)
    with pytest.raises(ValueError, match="context_frames = 6"):
        extend(path, "a ball", new_frames=4, context_frames=6, **SETTINGS)
    with pytest.raises(ValueError, match="direction"):
        extend(path, "a ball", new_frames=4, direction="sideways", **SETTINGS)


def test_a_ti2v_folder_loads_with_per_token_conditioning(ti2v_components, tmp_path):
    from tiny_models import save_diffusers_folder

    from pipelines import VideoPipeline

    folder = save_diffusers_folder(ti2v_components, tmp_path / "ti2v", {"max_sequence_length": 16},
                                   expand_timesteps=True)
    pipe = VideoPipeline.from_pretrained(str(folder), device="cpu")
    assert pipe.defaults.conditioning_strategy == "per_token"
    assert (pipe.grid, pipe.temporal) == (32, 4)
    still = np.full((64, 64, 3), 90, np.uint8)
    from PIL import Image

    Image.fromarray(still).save(tmp_path / "still.png")
    result = pipe.generate(animate(str(tmp_path / "still.png"), "a ball", num_frames=5, width=64, height=64, steps=2))
    assert result.held.strategy == "per_token" and result.frames.shape == (5, 64, 64, 3)


@pytest.mark.parametrize("strategy", ["per_token", "replace"])
def test_partial_strength_lets_the_model_depart_from_the_still(wan21, tmp_path, strategy):
    still = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(still).save(tmp_path / "still.png")
    clean = wan21.encode(still[None])[0, :, 0]
    firm = wan21.generate(animate(str(tmp_path / "still.png"), "a ball", num_frames=5, strength=1.0,
                                  conditioning_strategy=strategy, **SETTINGS))
    loose = wan21.generate(animate(str(tmp_path / "still.png"), "a ball", num_frames=5, strength=0.5,
                                   conditioning_strategy=strategy, **SETTINGS))
    assert torch.equal(firm.latents[:, 0], clean)
    assert not torch.equal(loose.latents[:, 0], clean)


def test_source_and_omit_items_must_join_the_window(wan21, png_clip):
    from pipelines import ConditioningItem

    path, _ = png_clip(13)
    middle = ConditioningItem(path, frame_index=0, source_start=4, source_count=5, output="source")
    with pytest.raises(ValueError, match="must select the clip's last frames.*source_start = 8"):
        wan21.generate(GenerationRequest(prompt="a ball", num_frames=9, conditioning=(middle,), **SETTINGS))
    late = ConditioningItem(path, frame_index=4, source_start=4, source_count=5, output="source")
    with pytest.raises(ValueError, match="must select the clip's first frames"):
        wan21.generate(GenerationRequest(prompt="a ball", num_frames=9, conditioning=(late,), **SETTINGS))
    omitted = ConditioningItem(path, frame_index=0, source_count=5, output="omit")
    with pytest.raises(ValueError, match="output='omit' must end the window"):
        wan21.generate(GenerationRequest(prompt="a ball", num_frames=9, conditioning=(omitted,), **SETTINGS))


@pytest.mark.parametrize("strategy", ["per_token", "replace"])
def test_image_first_samples_the_first_frame_alone_then_holds_it(wan21, strategy):
    seen = []
    request = text_to_video("a red ball", num_frames=9, image_first=True, conditioning_strategy=strategy,
                            **{**SETTINGS, "steps": 3})
    result = wan21.generate(request, callback=lambda step, total, latents: seen.append((step, total, latents)))
    # Two passes count as one run of 2 x steps: latent frame 0 alone, then the whole window.
    assert [(step, total, latents.shape[2]) for step, total, latents in seen] == [
        (1, 6, 1), (2, 6, 1), (3, 6, 1), (4, 6, 3), (5, 6, 3), (6, 6, 3)]
    image = seen[2][2][0]  # (C, 1, H, W): what the first pass sampled
    assert torch.equal(result.latents[:, :1], image)
    assert result.held.known[0, 0, 0].all() and not result.held.known[0, 0, 1:].any()
    assert np.array_equal(wan21.generate(request).frames, result.frames)
    joint = wan21.generate(request.replace(image_first=False))
    assert not torch.equal(joint.latents[:, :1], image)


def test_image_first_follows_the_model_default(wan21_components):
    from conftest import make_pipeline

    pipe = make_pipeline(wan21_components)
    request = text_to_video("a red ball", num_frames=5, **SETTINGS)
    joint = pipe.generate(request)
    pipe.defaults = dataclasses.replace(pipe.defaults, image_first=True)
    staged = pipe.generate(request)
    assert torch.equal(staged.latents, pipe.generate(request.replace(image_first=True)).latents)
    assert not torch.equal(staged.latents, joint.latents)
    assert torch.equal(pipe.generate(request.replace(image_first=False)).latents, joint.latents)
