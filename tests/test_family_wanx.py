"""The rest of the Wan family against diffusers' own pipelines on the same tiny discriminating weights, seed and
settings: Wan 2.1 image-to-video (a still; a first and a last still) and Wan 2.2 A14B's two experts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image

from pipelines import ConditioningItem, GenerationRequest, ModelDefaults, VideoPipeline, animate, connect
from pipelines.families import FAMILIES, Configs, family_of, inspect_model
from pipelines.families.wan import Wan, WanImageToVideo
from pipelines.loading import MODELS
from tiny_models import tiny_wan21
from tiny_wanx import (A14B_INDEX, I2V_INDEX, REAL_CONFIGS, tiny_transformer, tiny_wan21_i2v, tiny_wan22_a14b,
                       with_expert, with_swapped_experts)

PROMPT, NEGATIVE = "a red ball moves left over the floor", "blurry"
SETTINGS = dict(negative_prompt=NEGATIVE, width=32, height=32, fps=8.0, steps=4, guidance_scale=4.0, seed=4)
# Four steps at flow shift 3 run at timesteps 999, 900, 750, 500: both sides of either boundary (875, 900).


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def defaults(**changes) -> ModelDefaults:
    base = dict(width=32, height=32, num_frames=9, fps=8.0, steps=4, guidance_scale=4.0)
    return ModelDefaults(**{**base, **changes})


@pytest.fixture(scope="module")
def stills(tmp_path_factory):
    """Two random 32x32 stills as PNG files: (path A, path B, A, B)."""
    folder = tmp_path_factory.mktemp("stills")
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(2))
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "b.png")
    return str(folder / "a.png"), str(folder / "b.png"), a, b


@pytest.fixture(scope="module")
def flf2v_components():
    return tiny_wan21_i2v(last_frame=True)


@pytest.fixture(scope="module")
def flf2v(flf2v_components):
    return VideoPipeline.from_parts(flf2v_components, "tiny-flf2v", defaults(), index=I2V_INDEX)


@pytest.fixture(scope="module")
def a14b_components():
    return tiny_wan22_a14b()


def a14b(components, **index) -> VideoPipeline:
    return VideoPipeline.from_parts(components, "tiny-a14b", defaults(guidance_scale_2=3.0, max_sequence_length=16),
                                    index={**A14B_INDEX["t2v"], **index})


# ---- Wan 2.1 image-to-video --------------------------------------------------------------------------------
def test_connecting_two_stills_matches_wan_i2v_with_a_last_image(flf2v, flf2v_components, stills):
    path_a, path_b, a, b = stills
    request = connect(path_a, path_b, PROMPT, 7, **SETTINGS)  # A at frame 0, B at frame 8: 9 frames
    assert [(i.frame_index, i.source_count) for i in request.conditioning] == [(0, 1), (8, 1)]
    result = flf2v.generate(request)
    reference = WanImageToVideoPipeline(**flf2v_components)(
        image=Image.fromarray(a), last_image=Image.fromarray(b), prompt=PROMPT, negative_prompt=NEGATIVE, width=32,
        height=32, num_frames=9, num_inference_steps=4, guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(4), output_type="latent").frames[0]
    assert result.latents.shape == reference.shape == (16, 3, 4, 4)
    assert relative_error(result.latents, reference) < 1e-4
    # The stills are copied through at both ends of the clip.
    assert len(result.frames) == 9 and np.array_equal(result.frames[0], a) and np.array_equal(result.frames[-1], b)
    # The last still, the prompt and the seed each change the clip by a clear margin.
    for changed in (connect(path_a, path_a, PROMPT, 7, **SETTINGS), request.replace(prompt="a blue kite over the beach"),
                    request.replace(seed=5)):
        assert relative_error(flf2v.generate(changed).latents, reference) > 0.05


def test_animating_a_still_matches_wan21_i2v(stills):
    path_a, path_b, a, _ = stills
    components = tiny_wan21_i2v()  # the 480p/720p checkpoints: one still, no positions for a second
    pipe = VideoPipeline.from_parts(components, "tiny-i2v", defaults(), index=I2V_INDEX)
    request = animate(path_a, PROMPT, num_frames=9, **SETTINGS)
    ours = pipe.generate(request).latents
    reference = WanImageToVideoPipeline(**components)(
        image=Image.fromarray(a), prompt=PROMPT, negative_prompt=NEGATIVE, width=32, height=32, num_frames=9,
        num_inference_steps=4, guidance_scale=4.0, generator=torch.Generator("cpu").manual_seed(4),
        output_type="latent").frames[0]
    assert relative_error(ours, reference) < 1e-4
    assert relative_error(pipe.generate(request.replace(conditioning=animate(path_b, PROMPT).conditioning)).latents,
                          reference) > 0.05
    # The image states matter on their own: the same condition with another CLIP tower's states differs.
    other = dict(components, image_encoder=tiny_wan21_i2v()["image_encoder"].apply(_perturb))
    changed = VideoPipeline.from_parts(other, "tiny-i2v", defaults(), index=I2V_INDEX).generate(request).latents
    assert relative_error(changed, reference) > 0.01
    # This checkpoint has no positions for a second still: connect is refused with the reason, before sampling.
    assert "first frame only" in pipe.modes["connect"]
    with pytest.raises(ValueError, match="mode = 'connect' is not valid for this model: .*first frame only"):
        pipe.generate(connect(path_a, path_b, PROMPT, 7, **SETTINGS))


def _perturb(module):
    if isinstance(module, torch.nn.Linear):
        with torch.no_grad():
            module.weight.mul_(-1)


def test_an_image_to_video_checkpoint_says_which_modes_it_lacks_and_what_it_holds(flf2v, stills, png_clip):
    path_a, path_b, _, _ = stills
    offered = [mode for mode, why in flf2v.modes.items() if why is None]
    assert offered == ["connect"]  # FLF2V reads two stills' states; the 480p/720p checkpoints animate one
    for mode in ("t2v", "image", "animate", "extend", "loop", "restyle"):
        assert flf2v.modes[mode]  # a sentence saying why
    with pytest.raises(ValueError, match="mode = 't2v' is not valid for this model: .*needs a still"):
        flf2v.generate(GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9))
    # It holds single stills at full strength: a clip's context or a weaker hold is refused with the rule.
    clip, _ = png_clip(9)
    with pytest.raises(ValueError, match="5 frames is not valid for this image-to-video checkpoint: 1 .*context_frames = 1"):
        flf2v.generate(connect(clip, clip, PROMPT, 7, context_frames=5, **SETTINGS))
    with pytest.raises(ValueError, match="mode = 'animate' is not valid for this model: .*reads two stills"):
        flf2v.generate(animate(path_a, PROMPT, num_frames=9, **SETTINGS))
    weak = (ConditioningItem(path_a, 0, strength=0.5, source_count=1), ConditioningItem(path_b, 8, source_count=1))
    with pytest.raises(ValueError, match="conditioning.strength = 0.5 is not valid for this model: 1"):
        flf2v.generate(GenerationRequest(PROMPT, mode="connect", conditioning=weak, num_frames=9, width=32, height=32))
    # Clips connect through their facing frames (context 1): A's last frame opens the window, B's first closes it.
    result = flf2v.generate(connect(clip, path_b, PROMPT, 7, context_frames=1, **SETTINGS))
    assert len(result.frames) == 9 + 8  # A's 9 frames, 7 new, B
    # On a text-to-video checkpoint a still cannot close the window: the pipeline says why.
    wan = VideoPipeline.from_parts(tiny_wan21(), "tiny", defaults(max_sequence_length=16))
    with pytest.raises(ValueError, match="a clip after frame 0 must start on a multiple of 4 and have at least 5"):
        wan.generate(connect(path_a, path_b, PROMPT, 7, **SETTINGS))


# ---- Wan 2.2 A14B: two experts ---------------------------------------------------------------------------------
def test_two_experts_match_wan_pipeline_and_both_are_used(a14b_components):
    pipe = a14b(a14b_components)
    assert pipe.family.denoisers == [a14b_components["transformer"], a14b_components["transformer_2"]]
    request = pipe.request("t2v", prompt=PROMPT, negative_prompt=NEGATIVE, seed=3)
    assert (request.guidance_scale, request.guidance_scale_2, request.steps) == (4.0, 3.0, 4)  # the model's own
    ours = pipe.generate(request).latents
    reference = WanPipeline(**a14b_components, boundary_ratio=0.875)(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=32, height=32, num_frames=9, num_inference_steps=4,
        guidance_scale=4.0, guidance_scale_2=3.0, generator=torch.Generator("cpu").manual_seed(3),
        max_sequence_length=16, output_type="latent").frames[0]
    assert relative_error(ours, reference) < 1e-4
    # Each expert, the boundary between them and the low-noise expert's guidance change the clip.
    changes = {
        "another high-noise expert": a14b(with_expert(a14b_components, "transformer", tiny_transformer(4))
                                          ).generate(request).latents,
        "another low-noise expert": a14b(with_expert(a14b_components, "transformer_2", tiny_transformer(4))
                                         ).generate(request).latents,
        "boundary 0.5": a14b(a14b_components, boundary_ratio=0.5).generate(request).latents,
        "guidance_scale_2 = 1": pipe.generate(request.replace(guidance_scale_2=1.0)).latents,
    }
    for name, latents in changes.items():
        assert relative_error(latents, reference) > 0.05, name


def test_image_to_video_a14b_matches_wan_i2v_with_two_experts(stills):
    path_a, path_b, a, b = stills
    components = tiny_wan22_a14b(i2v=True)
    pipe = VideoPipeline.from_parts(components, "tiny-a14b-i2v", defaults(guidance_scale_2=3.0, max_sequence_length=16),
                                    index=A14B_INDEX["i2v"])
    assert pipe.family.boundary == 900.0 and pipe.modes["connect"] is None  # it reads no image states: a mask only
    request = pipe.request("animate", image=path_a, prompt=PROMPT, negative_prompt=NEGATIVE, seed=4)
    ours = pipe.generate(request).latents
    reference = WanImageToVideoPipeline(**components, boundary_ratio=0.9)(
        image=Image.fromarray(a), prompt=PROMPT, negative_prompt=NEGATIVE, width=32, height=32, num_frames=9,
        num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=3.0, generator=torch.Generator("cpu").manual_seed(4),
        max_sequence_length=16, output_type="latent").frames[0]
    assert relative_error(ours, reference) < 1e-4
    swapped = VideoPipeline.from_parts(with_swapped_experts(components), "x", defaults(guidance_scale_2=3.0,
                                       max_sequence_length=16), index=A14B_INDEX["i2v"]).generate(request).latents
    assert relative_error(swapped, reference) > 0.05
    # Its frame mask takes a last still too (no image states to fit): connect matches diffusers' last_image.
    ours = pipe.generate(pipe.request("connect", clip_a=path_a, clip_b=path_b, prompt=PROMPT, negative_prompt=NEGATIVE,
                                      new_frames=7, seed=4)).latents
    reference = WanImageToVideoPipeline(**components, boundary_ratio=0.9)(
        image=Image.fromarray(a), last_image=Image.fromarray(b), prompt=PROMPT, negative_prompt=NEGATIVE, width=32,
        height=32, num_frames=9, num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=3.0,
        generator=torch.Generator("cpu").manual_seed(4), max_sequence_length=16, output_type="latent").frames[0]
    assert relative_error(ours, reference) < 1e-4


def test_guidance_scale_2_is_checked():
    with pytest.raises(ValueError, match="guidance_scale_2 = -1 is not valid: None .* or a number in \\[0, 50\\]"):
        GenerationRequest(prompt=PROMPT, guidance_scale_2=-1)
    assert GenerationRequest.from_json(GenerationRequest(prompt=PROMPT, guidance_scale_2=3.0).to_json()).guidance_scale_2 == 3.0
    wan = VideoPipeline.from_parts(tiny_wan21(), "tiny", defaults(max_sequence_length=16))
    with pytest.raises(ValueError, match="guidance_scale_2 = 3 is not valid for this model: None .it has one denoiser"):
        wan.generate(GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9, guidance_scale_2=3.0))


# ---- folders, the registry and their defaults ---------------------------------------------------------------
def test_an_image_to_video_folder_loads_as_its_family(tmp_path, flf2v_components, stills, png_clip):
    folder = tmp_path / "flf2v"
    WanImageToVideoPipeline(**flf2v_components).save_pretrained(folder)
    facts = inspect_model(str(folder))
    assert facts.family is WanImageToVideo and facts.offered == ["connect"]
    # diffusers' call defaults (832x480, 81 frames, 50 steps, guidance 5); connect holds each clip's facing frame
    assert facts.defaults == ModelDefaults(context_frames=1)
    assert set(WanImageToVideo.required(facts.configs)) >= {"image_encoder", "image_processor"}
    (folder / "studio.json").write_text('{"width": 32, "height": 32, "num_frames": 9, "fps": 8, "steps": 2}')
    pipe = VideoPipeline.from_pretrained(str(folder), device="cpu")
    clip, frames = png_clip(9)
    result = pipe.generate(pipe.request("connect", clip_a=clip, clip_b=stills[1], prompt=PROMPT, seed=1))
    # A's last frame opens the window and B closes it, 1 s at 8 fps apart: A's 9 frames, 7 new, B.
    assert [(i.frame_index, i.source_count) for i in result.request.conditioning] == [(0, 1), (8, 1)]
    assert len(result.frames) == 17 and np.array_equal(result.frames[8], frames[-1])
    # A Wan 2.2 A14B folder names its boundary and both experts; one expert alone is refused before loading.
    configs = Configs({"_class_name": "WanPipeline", "boundary_ratio": 0.875}, {})
    assert family_of(configs) is Wan and "transformer_2" in Wan.required(configs)


def test_registry_entries_name_their_checkpoints_and_defaults():
    expected = {
        "wan2.1-i2v-14b-480p": ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", 832, 480, 50, 5.0, None),
        "wan2.1-i2v-14b-720p": ("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", 1280, 720, 50, 5.0, None),
        "wan2.1-flf2v-14b-720p": ("Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers", 1280, 720, 50, 5.0, None),
        "wan2.2-t2v-a14b": ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", 1280, 720, 40, 4.0, 3.0),
        "wan2.2-i2v-a14b": ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", 1280, 720, 40, 3.5, 3.5),
    }
    for name, (source, width, height, steps, guidance, guidance_2) in expected.items():
        d = MODELS[name].defaults
        assert (MODELS[name].source, d.width, d.height, d.steps, d.guidance_scale, d.guidance_scale_2) == \
            (source, width, height, steps, guidance, guidance_2), name
        assert (d.num_frames, d.fps, d.max_sequence_length) == (81, 16.0, 512), name
        assert d.context_frames == (None if name == "wan2.2-t2v-a14b" else 1), name  # stills: one facing frame
    assert set(REAL_CONFIGS) == set(expected)
    assert FAMILIES["wan-i2v"] is WanImageToVideo
