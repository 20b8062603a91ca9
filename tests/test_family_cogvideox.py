"""The CogVideoX family against diffusers' own CogVideoX pipelines on the same tiny discriminating weights, seed
and settings (final latents), and its modes by latent replacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import CogVideoXVideoToVideoPipeline
from PIL import Image
from tiny_cogvideox import TINY_TEXT_TOKENS, pipeline_class, save_folder, tiny_cogvideox

from pipelines import GenerationRequest, ModelDefaults, VideoPipeline, animate, connect, extend, restyle
from pipelines.families import CogVideoX, inspect_model

PROMPT, NEGATIVE = "a red ball moves left over the floor", "blurry"
SIZE = dict(width=64, height=64)  # the tiny transformers' sample size (8x8 latents): the I2V table's only size
SMALL = dict(width=32, height=32)  # elsewhere: the VAE decode dominates a tiny run, so the tests run small


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


_COMPONENTS: dict[str, dict] = {}


def components(kind: str) -> dict:
    if kind not in _COMPONENTS:
        _COMPONENTS[kind] = tiny_cogvideox(kind)
    return _COMPONENTS[kind]


def pipeline(kind: str, dynamic: bool = False, steps: int = 4) -> VideoPipeline:
    defaults = ModelDefaults(**SIZE, num_frames=9, fps=8.0, steps=steps, guidance_scale=5.0,
                             max_sequence_length=TINY_TEXT_TOKENS, dynamic_guidance=dynamic)
    return VideoPipeline.from_parts(components(kind), f"tiny-cogvideox-{kind}", defaults,
                                    index={"_class_name": pipeline_class(kind).__name__})


def reference(kind: str, **call) -> torch.Tensor:
    """diffusers' final latents as (C, F, H, W), with CogVideoX 1.5's padding frames in front."""
    call = {"prompt": PROMPT, "negative_prompt": NEGATIVE, **call}
    latents = pipeline_class(kind)(**components(kind))(
        max_sequence_length=TINY_TEXT_TOKENS, output_type="latent", **call).frames[0]  # (F, C, H, W)
    return latents.permute(1, 0, 2, 3)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.mark.parametrize("kind, dynamic", [("2b", False), ("5b", True), ("1.5", True)])
def test_text_to_video_matches_cogvideox_pipeline(kind, dynamic):
    """2B-style (sinusoidal positions, DDIM), 5B-style (rotary, DPM drawing noise each step, dynamic guidance)
    and 1.5 (temporal patch 2: 3 latent frames padded to 4 in front, the padding dropped)."""
    pipe = pipeline(kind, dynamic)
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, **SMALL, num_frames=9, steps=4,
                                guidance_scale=5.0, seed=11)
    ours = pipe.generate(request).latents
    call = dict(**SMALL, num_frames=9, num_inference_steps=4, guidance_scale=5.0, use_dynamic_cfg=dynamic)
    theirs = reference(kind, generator=seeded(11), **call)
    padding = 1 if kind == "1.5" else 0
    assert ours.shape == (4, 3, 4, 4) and theirs.shape == (4, 3 + padding, 4, 4)
    assert relative_error(ours, theirs[:, padding:]) < 1e-4
    # Discriminating weights: another prompt or seed moves the latents clearly (checked on diffusers' side,
    # which skips the decode).
    assert relative_error(reference(kind, generator=seeded(11), **{**call, "prompt": "a blue cube spins"}),
                          theirs) > 0.01
    assert relative_error(reference(kind, generator=seeded(12), **call), theirs) > 0.3


@pytest.mark.parametrize("kind", ["i2v", "1.5-i2v"])
def test_image_to_video_matches_cogvideox_image_to_video_pipeline(kind, tmp_path):
    """5B-I2V (learned positional table, the still's sampled posterior on the channels, drawn before the noise)
    and 1.5 I2V (offset embedding, inverted latent scale), with DPM and dynamic guidance."""
    still = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(still).save(tmp_path / "still.png")
    pipe = pipeline(kind, dynamic=True)
    assert pipe.modes["animate"] is None and "still at frame 0" in pipe.modes["t2v"]
    request = animate(str(tmp_path / "still.png"), PROMPT, negative_prompt=NEGATIVE, **SIZE, num_frames=9, steps=4,
                      guidance_scale=5.0, seed=2)
    result = pipe.generate(request)
    assert result.held is None  # held on the channels, not by replacement
    call = dict(**SIZE, num_frames=9, num_inference_steps=4, guidance_scale=5.0, use_dynamic_cfg=True)
    theirs = reference(kind, image=Image.fromarray(still), generator=seeded(2), **call)
    assert relative_error(result.latents, theirs[:, theirs.shape[1] - 3:]) < 1e-4
    # The still steers the clip.
    other = reference(kind, image=Image.fromarray(255 - still), generator=seeded(2), **call)
    assert relative_error(other, theirs) > 0.01


@pytest.mark.parametrize("kind, dynamic", [("2b", False), ("5b", True)])
def test_restyle_matches_cogvideox_video_to_video_pipeline(kind, dynamic, png_clip):
    """SDEdit: the init video's posterior sampled (eps drawn before the noise), noised with add_noise at the
    first of the last 60 % of the steps, as diffusers' get_timesteps keeps them."""
    path, clip = png_clip(9)
    pipe = pipeline(kind, dynamic, steps=5)
    request = restyle(path, PROMPT, strength=0.6, negative_prompt=NEGATIVE, **SMALL, fps=8.0, steps=5,
                      guidance_scale=4.0, seed=5)
    ours = pipe.generate(request).latents

    def theirs(strength: float) -> torch.Tensor:
        return CogVideoXVideoToVideoPipeline(**components(kind))(
            video=[Image.fromarray(f) for f in clip], prompt=PROMPT, negative_prompt=NEGATIVE, **SMALL,
            num_inference_steps=5, strength=strength, guidance_scale=4.0, use_dynamic_cfg=dynamic,
            generator=seeded(5), max_sequence_length=TINY_TEXT_TOKENS, output_type="latent").frames[0]

    reference_latents = theirs(0.6).permute(1, 0, 2, 3)
    assert relative_error(ours, reference_latents) < 1e-4
    assert relative_error(theirs(1.0).permute(1, 0, 2, 3), reference_latents) > 0.1


def _held_unchanged(result) -> bool:
    known = result.held.known[0, 0]  # (F, H, W)
    return bool(torch.equal(result.latents[:, known], result.held.clean[0][:, known]))


def test_extend_by_replacement_holds_the_context_frames(png_clip):
    pipe = pipeline("2b", steps=2)
    path, clip = png_clip(9, width=32, height=32)
    request = extend(path, "a red ball moves right", new_frames=8, context_frames=9, width=32, height=32,
                     steps=2, guidance_scale=4.0, seed=7, fps=8.0)
    assert request.num_frames == 17
    result = pipe.generate(request)
    assert result.frames.shape == (17, 32, 32, 3) and np.array_equal(result.frames[:9], clip)
    assert result.held.strategy == "replace"
    assert result.held.known[0, 0, :3].all() and not result.held.known[0, 0, 3:].any()
    assert _held_unchanged(result)


def test_connect_on_cogvideox_15_holds_both_clips_around_its_padding(png_clip):
    """CogVideoX 1.5 pads an odd latent count in front; the held clips stay where the window puts them."""
    pipe = pipeline("1.5", steps=2)
    path_a, clip_a = png_clip(9, name="a", seed=1, width=32, height=32)
    path_b, clip_b = png_clip(9, name="b", seed=2, width=32, height=32)
    request = connect(path_a, path_b, "a red ball", new_frames=7, context_frames=5, width=32, height=32, steps=2,
                      guidance_scale=4.0, seed=3, fps=8.0)
    assert request.num_frames == 17  # 5 latent frames, sampled as 6
    result = pipe.generate(request)
    assert result.latents.shape[1] == 5 and result.held.clean.shape[2] == 6
    assert result.held.known[0, 0, 1:3].all() and result.held.known[0, 0, -1].all()
    assert not result.held.known[0, 0, 0].any()  # the padding frame is never held
    known = result.held.known[0, 0, 1:]  # (F, H, W) of the window, after the padding frame
    assert torch.equal(result.latents[:, known], result.held.clean[0, :, 1:][:, known])
    assert np.array_equal(result.frames[:9], clip_a)  # A copied through, its tail held


def test_checks_refuse_what_a_checkpoint_cannot_take(tmp_path):
    still = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(still).save(tmp_path / "still.png")
    i2v = pipeline("i2v")
    with pytest.raises(ValueError, match="learned positional table was trained at 64x64 only"):
        i2v.generate(animate(str(tmp_path / "still.png"), PROMPT, width=32, height=32, num_frames=9, steps=1))
    with pytest.raises(ValueError, match="mode = 't2v' is not valid for this model: CogVideoX image-to-video"):
        i2v.generate(GenerationRequest(prompt=PROMPT, **SIZE, num_frames=9, steps=1))
    with pytest.raises(ValueError, match="no flow shift"):
        pipeline("2b").generate(GenerationRequest(prompt=PROMPT, **SIZE, num_frames=9, steps=1, shift=3.0))
    with pytest.raises(ValueError, match="image_first is not valid for CogVideoX 1.5"):
        pipeline("1.5").generate(GenerationRequest(prompt=PROMPT, **SIZE, num_frames=9, steps=1, image_first=True))


def test_a_saved_folder_loads_as_cogvideox_with_its_call_defaults(tmp_path):
    folder = save_folder(components("5b"), tmp_path / "tiny-5b", "5b")
    facts = inspect_model(str(folder))
    assert facts.family is CogVideoX and facts.geometry.grid == 16 and facts.geometry.temporal == 4
    d = facts.defaults  # CogVideoXPipeline's: the transformer's sample size, 49 frames at 8 fps, guidance 6
    assert (d.width, d.height, d.num_frames, d.fps, d.guidance_scale, d.max_sequence_length) == (64, 64, 9, 8.0, 6.0,
                                                                                                226)
    pipe = VideoPipeline.from_pretrained(str(folder), device="cpu")
    pipe.defaults = ModelDefaults(**SIZE, num_frames=9, fps=8.0, steps=1, max_sequence_length=TINY_TEXT_TOKENS)
    # An even latent count (5 frames: 2 latents) decodes to the window's 5 frames, as does image mode.
    assert pipe.generate(pipe.request("t2v", prompt=PROMPT, num_frames=5, width=32, height=32)).frames.shape == \
        (5, 32, 32, 3)
    assert pipe.generate(pipe.request("image", prompt=PROMPT, width=32, height=32)).frames.shape == (1, 32, 32, 3)


def test_animate_on_5b_i2v_takes_its_one_size_whatever_the_still(tmp_path):
    """The learned positional table fixes the size: a request left to follow the still's shape gets it."""
    Image.fromarray(np.zeros((48, 96, 3), np.uint8)).save(tmp_path / "wide.png")
    request = pipeline("i2v").request("animate", image=str(tmp_path / "wide.png"), prompt=PROMPT)
    assert (request.width, request.height) == (64, 64)
