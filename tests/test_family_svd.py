"""Stable Video Diffusion through the one pipeline: parity with diffusers' StableVideoDiffusionPipeline on tiny
discriminating weights, its knobs, the modes it refuses, and loading its folders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image

from tiny_svd import save_svd_folder, tiny_svd

from pipelines import GenerationRequest, VideoPipeline
from pipelines.families import SVD, inspect_model
from pipelines.loading import MODELS

FRAMES, WIDTH, HEIGHT, STEPS = 4, 48, 32, 2  # a small size and few steps; every knob at its default
INDEX = {"_class_name": "StableVideoDiffusionPipeline"}


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def still(path, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def parts() -> dict:
    return tiny_svd(num_frames=FRAMES)


@pytest.fixture(scope="module")
def svd(parts) -> VideoPipeline:
    # The registry's SVD defaults, with the tiny UNet's frame count (as read_defaults takes it from the config).
    defaults = dataclasses.replace(MODELS["svd"].defaults, num_frames=FRAMES)
    return VideoPipeline.from_parts(parts, "tiny-svd", defaults, index=INDEX)


@pytest.fixture(scope="module")
def base(svd, tmp_path_factory):
    """(request, latents) at the pipeline's defaults, which every other run is compared with."""
    image = still(tmp_path_factory.mktemp("stills") / "still.png", 3)
    request = svd.request("animate", image=image, prompt="", width=WIDTH, height=HEIGHT, steps=STEPS, seed=1)
    return request, svd.generate(request).latents


def test_matches_stable_video_diffusion_pipeline_at_its_defaults(parts, base):
    request, ours = base
    assert (request.num_frames, request.fps, request.guidance_scale) == (FRAMES, 7.0, 3.0)
    assert (request.motion_bucket_id, request.noise_aug_strength, request.min_guidance_scale) == (None, None, None)
    reference = StableVideoDiffusionPipeline(**parts)(
        Image.open(request.conditioning[0].source), height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
        generator=torch.Generator("cpu").manual_seed(1), output_type="latent").frames[0]  # (F, C, h, w)
    reference = reference.permute(1, 0, 2, 3)  # (C, F, h, w)
    assert ours.shape == reference.shape == (4, FRAMES, HEIGHT // 8, WIDTH // 8)
    assert relative_error(ours, reference) < 1e-4


@pytest.mark.parametrize("change", [dict(fps=8.0), dict(motion_bucket_id=100), dict(noise_aug_strength=0.1),
                                    dict(min_guidance_scale=2.0)])
def test_each_knob_changes_the_latents_clearly(svd, base, change):
    """The tiny weights are discriminating: an fps off by one (the model reads fps - 1) or a lost motion bucket
    would show here, far above the parity tolerance."""
    request, latents = base
    assert relative_error(svd.generate(request.replace(**change)).latents, latents) > 1e-2


def test_the_still_steers_the_clip_and_a_prompt_is_ignored_with_a_note(svd, base, tmp_path):
    request, latents = base
    other = request.replace(conditioning=(dataclasses.replace(request.conditioning[0],
                                                              source=still(tmp_path / "other.png", 4)),))
    assert relative_error(svd.generate(other).latents, latents) > 1e-2
    prompted = svd.generate(request.replace(prompt="a red ball", negative_prompt="blurry"))
    assert torch.equal(prompted.latents, latents)
    assert any("reads no prompt" in note for note in prompted.notes)


def test_modes_other_than_animate_are_refused_with_a_reason(svd, base):
    assert svd.modes["animate"] is None
    assert all(why for mode, why in svd.modes.items() if mode != "animate")
    assert svd.modes["t2v"] == "Stable Video Diffusion takes no prompt: it animates a still"
    with pytest.raises(ValueError, match="not valid for this model: Stable Video Diffusion takes no prompt"):
        svd.generate(svd.request("t2v", prompt="a cat", width=WIDTH, height=HEIGHT, steps=1))
    request, _ = base
    for change, message in ((dict(shift=3.0), "shift = 3 is not valid"),
                            (dict(conditioning_strategy="replace"), "holds its conditioning itself"),
                            (dict(conditioning=(dataclasses.replace(request.conditioning[0], strength=0.5),)),
                             "conditioning.strength = 0.5 is not valid")):
        with pytest.raises(ValueError, match=message):
            svd.check_request(request.replace(**change))
    svd.check_request(request.replace(guidance_scale=0.5))  # guidance off: the ramp from the default 1 is unused


def test_knobs_are_validated_and_refused_by_models_that_do_not_read_them(wan21, base):
    request, _ = base
    for field, value in (("motion_bucket_id", -1), ("motion_bucket_id", 1.5), ("noise_aug_strength", 11.0),
                         ("min_guidance_scale", 4.0)):
        with pytest.raises(ValueError, match=f"{field} = .* is not valid"):
            request.replace(**{field: value})
    wan_request = GenerationRequest(prompt="a cat", width=32, height=32, num_frames=9, motion_bucket_id=100)
    with pytest.raises(ValueError, match="motion_bucket_id = 100 is not valid for this model: None \\(Wan does not"):
        wan21.check_request(wan_request)
    # Only animate may leave the prompt empty, and only on a model that reads no prompt.
    with pytest.raises(ValueError, match="prompt = '' is not valid"):
        GenerationRequest(prompt="", mode="t2v")
    empty = request.replace(width=32, height=32, num_frames=9)
    with pytest.raises(ValueError, match="prompt = '' is not valid for this model: a non-empty text .*Wan reads"):
        wan21.check_request(empty)


def test_a_saved_folder_loads_and_runs_from_the_cli_without_a_prompt(parts, tmp_path, capsys):
    from studio.cli import main

    folder = save_svd_folder(parts, tmp_path / "svd")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]  # as the published folders
    facts = inspect_model(str(folder))
    assert facts.family is SVD and facts.offered == ["animate"]
    assert (facts.defaults.num_frames, facts.defaults.width, facts.defaults.height) == (FRAMES, 1024, 576)
    assert (facts.geometry.grid, facts.geometry.temporal) == (8, 1)
    image = still(tmp_path / "still.png", 5)
    out = tmp_path / "clip.mp4"
    args = ["animate", "--model", str(folder), "--image", image, "--width", "32", "--height", "32", "--frames", "3",
            "--steps", "1", "--seed", "3", "--motion-bucket", "40", "--quiet", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["request"]["prompt"] == "" and sidecar["request"]["motion_bucket_id"] == 40
    assert main(["t2v", "--model", str(folder), "--prompt", "a cat"]) == 2
    assert "cannot t2v: Stable Video Diffusion takes no prompt" in capsys.readouterr().err
    # transformers 5 without torchvision saves the processor as CLIPImageProcessorPil: that folder loads too.
    index["feature_extractor"] = ["transformers", "CLIPImageProcessorPil"]
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = VideoPipeline.from_pretrained(str(folder), device="cpu")
    assert list(loaded.family.feature_extractor.image_mean) == list(parts["feature_extractor"].image_mean)


def test_cli_refuses_svd_flags_for_a_model_that_does_not_read_them(tiny_model_dir, tmp_path, capsys):
    from studio.cli import main

    image = still(tmp_path / "still.png", 6)
    assert main(["animate", "--model", str(tiny_model_dir), "--image", image, "--prompt", "a cat",
                 "--motion-bucket", "40", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--motion-bucket applies to models that read it" in capsys.readouterr().err
    assert main(["animate", "--model", str(tiny_model_dir), "--image", image, "--out", str(tmp_path / "x.mp4")]) == 2
    assert "animate needs --prompt" in capsys.readouterr().err


def test_studio_animate_reads_the_knobs_from_the_advanced_panel(svd, tmp_path):
    from studio.app import ModelInfo, StudioApp, build
    from studio.engine import Engine
    from studio.outputs import History

    info = ModelInfo.of(svd)
    assert info.knobs == {"motion_bucket_id": 127, "noise_aug_strength": 0.02, "min_guidance_scale": 1.0}
    app = StudioApp(Engine(None, History(tmp_path / "outputs")), info)
    image = still(tmp_path / "still.png", 7)
    request = app.request("animate", dict(image=image, prompt="", negative="", seed=5, steps=2, guidance=3.0,
                                          sampler="default", size="32x32", seconds=0.5, fps=7, motion_bucket_id=40,
                                          noise_aug_strength=0.1, min_guidance_scale=2.0))
    assert (request.prompt, request.motion_bucket_id, request.noise_aug_strength, request.min_guidance_scale) == \
        ("", 40, 0.1, 2.0)
    demo = build(Engine(None, History(tmp_path / "outputs2")), info)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"animate-motion-bucket-id", "animate-noise-aug-strength", "animate-min-guidance-scale"} <= ids
    # Loading an output's settings brings its knobs back (the model's default where it left one unset).
    small = request.replace(width=32, height=32, num_frames=2, steps=1, noise_aug_strength=None)
    media, _ = app.history.write(svd.generate(small), gif=False)
    values = app.reproduce_values(media.name)
    assert (values["motion_bucket_id"], values["noise_aug_strength"], values["min_guidance_scale"]) == (40, 0.02, 2.0)
    # A model that reads none has none of these widgets, and its animate API is unchanged.
    assert ModelInfo("tiny", 32, 32, 9, 8.0, 2, 4.0, 16, 4).knobs == {}
