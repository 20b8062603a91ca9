"""Our pipeline against diffusers' own Wan pipelines on the same tiny random weights, seed and settings."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline, WanVideoToVideoPipeline
from PIL import Image

from pipelines import GenerationRequest, animate, restyle

PROMPT, NEGATIVE = "a red ball moves left over the floor", "blurry"


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def test_text_to_video_matches_wan_pipeline(wan21, wan21_components):
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=32, height=32, num_frames=9,
                                steps=3, guidance_scale=5.0, seed=11)
    ours = wan21.generate(request).latents
    reference = WanPipeline(**wan21_components)(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=32, height=32, num_frames=9, num_inference_steps=3,
        guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(11), max_sequence_length=16,
        output_type="latent").frames[0]
    assert ours.shape == reference.shape == (16, 3, 4, 4)
    assert relative_error(ours, reference) < 1e-4


def test_restyle_matches_video_to_video_pipeline(wan21, wan21_components, png_clip):
    path, clip = png_clip(9)
    request = restyle(path, PROMPT, strength=0.6, negative_prompt=NEGATIVE, width=32, height=32, fps=8.0,
                      steps=5, guidance_scale=4.0, seed=5)
    assert request.num_frames == 9 and request.init_strength == 0.6
    ours = wan21.generate(request).latents
    reference = WanVideoToVideoPipeline(**wan21_components)(
        video=[Image.fromarray(f) for f in clip], prompt=PROMPT, negative_prompt=NEGATIVE, width=32, height=32,
        num_inference_steps=5, strength=0.6, guidance_scale=4.0, generator=torch.Generator("cpu").manual_seed(5),
        max_sequence_length=16, output_type="latent").frames[0]
    assert relative_error(ours, reference) < 1e-4


def test_animate_per_token_matches_wan22_ti2v(ti2v, ti2v_components, tmp_path):
    still = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(still).save(tmp_path / "still.png")
    request = animate(str(tmp_path / "still.png"), PROMPT, negative_prompt=NEGATIVE, width=64, height=64,
                      num_frames=9, steps=3, guidance_scale=5.0, seed=2, conditioning_strategy="per_token")
    ours = ti2v.generate(request).latents
    reference = WanImageToVideoPipeline(
        **ti2v_components, image_encoder=None, image_processor=None, transformer_2=None, boundary_ratio=None,
        expand_timesteps=True)(
        image=Image.fromarray(still), prompt=PROMPT, negative_prompt=NEGATIVE, width=64, height=64, num_frames=9,
        num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(2),
        max_sequence_length=16, output_type="latent").frames[0]
    assert ours.shape == reference.shape == (48, 3, 4, 4)
    assert relative_error(ours, reference) < 1e-4
    # The first latent frame is the still's encoding, untouched by sampling.
    assert torch.equal(ours[:, 0], reference[:, 0])
