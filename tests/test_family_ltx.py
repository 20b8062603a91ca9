"""The LTX-Video adapter against diffusers' LTXPipeline and LTXConditionPipeline on the same tiny discriminating
weights, seed and settings; its schedule choices, decode, geometry, defaults and every mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import LTXConditionPipeline, LTXPipeline
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
from PIL import Image
from tiny_ltx import SCHEDULER_095, VAE_091, VAE_095, tiny_ltx

from pipelines import GenerationRequest, ModelDefaults, VideoPipeline
from pipelines.families import FAMILIES, Configs
from pipelines.families.ltx import LTX, LTXSchedule
from pipelines.loading import MODELS
from pipelines.video_io import write_frames

PROMPT, NEGATIVE = "a red ball moves left over the floor", "blurry"
W, H, FRAMES, STEPS = 96, 64, 9, 4  # 3x2 latents, 2 latent frames: 12 tokens
SETTINGS = dict(negative_prompt=NEGATIVE, width=W, height=H, num_frames=FRAMES, steps=STEPS, guidance_scale=3.0,
                fps=25.0)
REFERENCE = dict(negative_prompt=NEGATIVE, width=W, height=H, num_frames=FRAMES, num_inference_steps=STEPS,
                 guidance_scale=3.0, frame_rate=25, max_sequence_length=16, output_type="latent")


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def make(components: dict, pipeline_class: str) -> VideoPipeline:
    defaults = ModelDefaults(width=W, height=H, num_frames=FRAMES, fps=25.0, steps=STEPS, guidance_scale=3.0,
                             conditioning_strategy="per_token", max_sequence_length=16)
    return VideoPipeline.from_parts(components, "tiny-ltx", defaults, index={"_class_name": pipeline_class})


@pytest.fixture(scope="module")
def ltx091():
    """0.9.1's published scheduler (dynamic shift from the token count, terminal stretch), as LTXPipeline."""
    components = tiny_ltx()
    return components, make(components, "LTXPipeline")


@pytest.fixture(scope="module")
def ltx095():
    """0.9.5's published scheduler (no shift), as LTXConditionPipeline."""
    components = tiny_ltx(SCHEDULER_095)
    return components, make(components, "LTXConditionPipeline")


@pytest.fixture(scope="module")
def still(tmp_path_factory):
    frame = np.random.default_rng(3).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("ltx") / "still.png"
    Image.fromarray(frame).save(path)
    return str(path), frame


def test_text_to_video_matches_ltx_pipeline(ltx091):
    components, pipe = ltx091
    request = GenerationRequest(prompt=PROMPT, seed=11, **SETTINGS)
    ours = pipe.generate(request).latents
    packed = LTXPipeline(**components)(prompt=PROMPT, generator=torch.Generator().manual_seed(11), **REFERENCE).frames
    reference = LTXPipeline._unpack_latents(packed, 2, 2, 3)[0]
    assert ours.shape == reference.shape == (8, 2, 2, 3)
    assert relative_error(ours, reference) < 1e-4
    # The weights discriminate: the prompt, the seed, fps (rotary positions) and guidance each move the result.
    for change in (dict(prompt="a blue cube"), dict(seed=12), dict(fps=12.0), dict(guidance_scale=1.5)):
        assert relative_error(pipe.generate(dataclasses.replace(request, **change)).latents, ours) > 0.05, change


def test_image_at_frame_0_matches_ltx_condition_pipeline(ltx095, still):
    components, pipe = ltx095
    path, frame = still
    request = pipe.request("animate", image=path, prompt=PROMPT, seed=2, **SETTINGS)
    assert pipe.family.image_cond_noise_scale == 0.15  # LTXConditionPipeline's default
    ours = pipe.generate(request).latents
    reference = LTXConditionPipeline(**components)(
        conditions=[LTXVideoCondition(image=Image.fromarray(frame), frame_index=0)], prompt=PROMPT,
        generator=torch.Generator().manual_seed(2), **REFERENCE).frames[0]
    assert ours.shape == reference.shape == (8, 2, 2, 3)
    # Diffusers holds a posterior sample of the image, we hold its mode: the tiny VAE's std is e^-15.
    assert relative_error(ours, reference) < 1e-4
    # The image reaches the generated frames, and the per-step re-noising of held tokens matters.
    flipped = path.replace(".png", "-flipped.png")
    Image.fromarray(frame[::-1].copy()).save(flipped)
    item = dataclasses.replace(request.conditioning[0], source=flipped)
    other = pipe.generate(dataclasses.replace(request, conditioning=(item,)))
    assert relative_error(other.latents[:, 1:], ours[:, 1:]) > 0.05
    pipe.family.image_cond_noise_scale = 0.0
    try:
        assert relative_error(pipe.generate(request).latents[:, 1:], ours[:, 1:]) > 1e-3
    finally:
        pipe.family.image_cond_noise_scale = 0.15


def test_conditioning_with_dynamic_shift_keeps_the_released_schedule(ltx091, still):
    """LTXConditionPipeline refuses 0.9.0/0.9.1's dynamic-shifting scheduler; we hold frames under LTXPipeline's
    schedule (shifted linspace) instead of failing."""
    components, pipe = ltx091
    path, frame = still
    with pytest.raises(ValueError, match="mu"):
        LTXConditionPipeline(**components)(
            conditions=[LTXVideoCondition(image=Image.fromarray(frame), frame_index=0)], prompt=PROMPT,
            generator=torch.Generator().manual_seed(2), **REFERENCE)
    request = pipe.request("animate", image=path, prompt=PROMPT, seed=2, **SETTINGS)
    schedule = pipe.family.schedule(request, (1, 8, 2, 2, 3))
    assert isinstance(schedule, LTXSchedule) and components["scheduler"].config.use_dynamic_shifting
    assert not torch.allclose(schedule.sigmas, torch.linspace(1, 1 / STEPS, STEPS))  # shifted by mu
    result = pipe.generate(request)
    assert torch.isfinite(result.latents).all()
    assert relative_error(result.latents[:, :1], pipe.encode(frame[None])[0]) < 0.05  # the image is held


def test_later_clip_matches_ltx_condition_pipeline_and_is_held(ltx095, tmp_path):
    """Connect: clip A's last 9 frames open the window, clip B's first 17 sit at frame 16 (window 33 frames,
    5 latents). As LTXConditionPipeline does, B's first two latents are extra tokens at frames 16 and 17 and its
    third is held in the window (latent 4); window latent 3 is generated beside the extra tokens."""
    from conftest import moving_square

    _, pipe = ltx095
    components = ltx095[0]
    a, b = moving_square(13, W, H, seed=1), moving_square(17, W, H, seed=2)[::-1].copy()
    write_frames(tmp_path / "a", a)
    write_frames(tmp_path / "b", b)
    request = pipe.request("connect", clip_a=str(tmp_path / "a"), clip_b=str(tmp_path / "b"), prompt=PROMPT,
                           new_frames=7, context_frames=9, seed=4, **{**SETTINGS, "num_frames": None})
    request = dataclasses.replace(request, num_frames=33, conditioning=(
        request.conditioning[0], dataclasses.replace(request.conditioning[1], source_count=17)))
    assert [item.frame_index for item in request.conditioning] == [0, 16]
    ours = pipe.generate(request)
    reference = LTXConditionPipeline(**components)(
        conditions=[LTXVideoCondition(video=[Image.fromarray(x) for x in a[-9:]], frame_index=0),
                    LTXVideoCondition(video=[Image.fromarray(x) for x in b], frame_index=16)],
        prompt=PROMPT, generator=torch.Generator().manual_seed(4), **{**REFERENCE, "num_frames": 33}).frames[0]
    assert ours.latents.shape == reference.shape == (8, 5, 2, 3)
    assert relative_error(ours.latents, reference) < 1e-4
    assert ours.held.hold[0, 0, :, 0, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert ours.held.extra_frames == 2 and len(ours.frames) == 13 + 7 + 17 and np.array_equal(ours.frames[:13], a)
    # B's extra tokens steer the generated latent beside them.
    write_frames(tmp_path / "c", b[:, ::-1].copy())
    other = dataclasses.replace(request, conditioning=(request.conditioning[0], dataclasses.replace(
        request.conditioning[1], source=str(tmp_path / "c"))))
    assert relative_error(pipe.generate(other).latents[:, 3], ours.latents[:, 3]) > 0.05
    # Without LTX's per-step re-noising, B's held latent ends exactly on its encoding whatever the seed, while the
    # bridge is generated; with it, the held latent keeps the last step's noise_scale * (t / 1000)^2 of noise.
    clean_b = pipe.encode(b)[0, :, 2:]  # (C, 1, 2, 3)
    pipe.family.image_cond_noise_scale = 0.0
    try:
        exact = pipe.generate(request).latents
        reseeded = pipe.generate(dataclasses.replace(request, seed=5)).latents
    finally:
        pipe.family.image_cond_noise_scale = 0.15
    assert relative_error(exact[:, 4:], clean_b) < 1e-5 and relative_error(reseeded[:, 4:], clean_b) < 1e-5
    assert relative_error(reseeded[:, 2:4], exact[:, 2:4]) > 0.05
    t_last = float(pipe.family.schedule(request, (1, 8, 5, 2, 3)).timesteps[-1]) / 1000
    spread = float((ours.latents[:, 4:] - clean_b).std())
    assert 0.5 < spread / (0.15 * t_last**2) < 2.0


def test_every_mode_and_sampler_runs(ltx095, still, tmp_path):
    from conftest import moving_square

    _, pipe = ltx095
    path, _ = still
    clip = moving_square(17, 64, 64)
    write_frames(tmp_path / "clip", clip)
    small = dict(width=64, height=64, steps=2, seed=1)
    requests = {
        "t2v": pipe.request("t2v", prompt=PROMPT, num_frames=9, **small),
        "image": pipe.request("image", prompt=PROMPT, **small),
        "animate": pipe.request("animate", image=path, prompt=PROMPT, num_frames=9, **small),
        "extend": pipe.request("extend", clip=str(tmp_path / "clip"), prompt=PROMPT, new_frames=8, **small),
        "loop": pipe.request("loop", clip=str(tmp_path / "clip"), prompt=PROMPT, new_frames=7, **small),
        "restyle": pipe.request("restyle", video=str(tmp_path / "clip"), prompt=PROMPT, strength=0.5,
                                num_frames=9, **small),
    }
    assert all(why is None for why in pipe.modes.values())
    for mode, request in requests.items():
        result = pipe.generate(request)
        assert np.isfinite(result.latents.numpy()).all() and len(result.frames) >= 1, mode
    euler = pipe.generate(dataclasses.replace(requests["t2v"], sampler="euler"))
    replace = pipe.generate(dataclasses.replace(requests["animate"], conditioning_strategy="replace"))
    assert euler.frames.shape == replace.frames.shape == (9, 64, 64, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        pipe.generate(dataclasses.replace(requests["t2v"], width=48))
    with pytest.raises(ValueError, match="8k\\+1"):
        pipe.generate(dataclasses.replace(requests["t2v"], num_frames=13))


def test_timestep_aware_decode_is_deterministic():
    """0.9.1+: the decoder denoises from decode_timestep after the latents move decode_noise_scale towards
    noise (fixed, so decodes repeat)."""
    components = tiny_ltx(SCHEDULER_095, timestep_conditioning=True)
    pipe = make(components, "LTXPipeline")
    latents = torch.randn(1, 8, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    first, again = pipe.decode(latents), pipe.decode(latents)
    assert first.shape == (9, 64, 64, 3) and np.array_equal(first, again)
    pipe.family.decode_timestep = pipe.family.decode_noise_scale = 0.0
    assert np.abs(pipe.decode(latents).astype(int) - first.astype(int)).max() > 0


def test_configs_geometry_defaults_and_registry():
    assert FAMILIES["ltx"] is LTX
    for vae in (VAE_091, VAE_095):
        configs = Configs({"_class_name": "LTXPipeline"}, {"vae": vae, "transformer": {"patch_size": 1}})
        geometry = LTX.read_geometry(configs)
        assert (geometry.spatial, geometry.temporal, geometry.patch, geometry.channels) == (32, 8, (1, 1, 1), 128)
        assert geometry.grid == 32
    defaults = LTX.read_defaults(Configs({"_class_name": "LTXConditionPipeline"}, {}))
    assert (defaults.width, defaults.height, defaults.num_frames, defaults.fps, defaults.guidance_scale,
            defaults.steps, defaults.max_sequence_length) == (704, 512, 161, 25.0, 3.0, 50, 128)
    for name in ("ltx-video-0.9.1", "ltx-video-0.9.5"):
        assert MODELS[name].defaults == defaults
    assert set(LTX.pipelines) == {"LTXPipeline", "LTXConditionPipeline", "LTXImageToVideoPipeline"}
