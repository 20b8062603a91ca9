"""The request type: strict validation on construction, exact JSON round trips."""

from __future__ import annotations

import json

import pytest

from pipelines import ConditioningItem, GenerationRequest

BASE = dict(prompt="a red ball bounces", width=32, height=32, num_frames=9)


def test_json_round_trip_is_exact():
    request = GenerationRequest(
        **BASE, negative_prompt="blurry", fps=12.5, steps=7, guidance_scale=3.25, seed=2**63 + 5, sampler="euler",
        shift=5.0, conditioning_strategy="replace",
        conditioning=(ConditioningItem("a.mp4", 0, 0.75, 3, 5, "source"), ConditioningItem("b.png", 8)),
        init_video="c.mp4", init_strength=0.55, use_saved_latents=False, mode="connect", image_first=False)
    text = request.to_json()
    again = GenerationRequest.from_json(text)
    assert again == request
    assert again.to_json() == text
    assert json.loads(text)["conditioning"][0]["strength"] == 0.75


@pytest.mark.parametrize("field, value, message", [
    ("prompt", "  ", "prompt"),
    ("width", 0, "width"),
    ("width", 32.0, "width"),
    ("height", True, "height"),
    ("num_frames", 0, "num_frames"),
    ("num_frames", 9.5, "num_frames"),
    ("fps", 0, "fps"),
    ("fps", float("nan"), "fps"),
    ("steps", 0, "steps"),
    ("guidance_scale", -1, "guidance_scale"),
    ("seed", -1, "seed"),
    ("seed", 2**64, "seed"),
    ("sampler", "ddim", "sampler.*default, unipc, euler"),
    ("shift", 0, "shift"),
    ("mode", "dance", "mode.*t2v"),
    ("conditioning_strategy", "concat", "conditioning_strategy.*per_token, replace"),
    ("init_strength", 0.5, "init_strength.*None unless init_video"),
    ("use_saved_latents", 1, "use_saved_latents"),
    ("image_first", 1, "image_first.*None .the model's default., True or False"),
])
def test_bad_fields_name_the_field_and_what_is_valid(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationRequest(**{**BASE, field: value})


def test_image_first_is_for_text_to_video_only():
    assert GenerationRequest(**BASE, image_first=True).image_first is True
    still = (ConditioningItem("a.png"),)
    assert GenerationRequest(**{**BASE, "mode": "animate"}, conditioning=still, image_first=False).image_first is False
    for bad in (dict(mode="animate", conditioning=(ConditioningItem("a.png"),)), dict(num_frames=1),
                dict(mode="restyle", init_video="c.mp4", init_strength=0.5)):
        with pytest.raises(ValueError, match="image_first = True is not valid: .*text-to-video"):
            GenerationRequest(**{**BASE, **bad}, image_first=True)


def test_init_video_needs_a_strength_that_runs_a_step():
    with pytest.raises(ValueError, match="init_strength"):
        GenerationRequest(**BASE, init_video="clip.mp4")
    with pytest.raises(ValueError, match=r"at least 1/steps"):
        GenerationRequest(**BASE, init_video="clip.mp4", init_strength=0.01, steps=10)
    assert GenerationRequest(**BASE, init_video="clip.mp4", init_strength=0.1, steps=10).init_strength == 0.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(source=""), "source"),
    (dict(source="a.png", frame_index=-1), "frame_index"),
    (dict(source="a.png", strength=0.0), "strength.*\\(0, 1\\]"),
    (dict(source="a.png", strength=1.5), "strength"),
    (dict(source="a.png", source_count=0), "source_count"),
    (dict(source="a.png", output="keep"), "output.*window, source, omit"),
])
def test_bad_conditioning_items(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConditioningItem(**kwargs)


def test_item_must_sit_inside_the_window():
    with pytest.raises(ValueError, match="frame_index.*0 to 8"):
        GenerationRequest(**BASE, conditioning=(ConditioningItem("a.png", frame_index=9),))


def test_unknown_keys_in_json_are_refused():
    data = GenerationRequest(**BASE).to_dict()
    data["cfg"] = 7
    with pytest.raises(ValueError, match="request keys.*cfg"):
        GenerationRequest.from_dict(data)
    data = GenerationRequest(**BASE).to_dict()
    data["format"] = 99
    with pytest.raises(ValueError, match="format"):
        GenerationRequest.from_dict(data)


@pytest.mark.parametrize("mode, fields, message", [
    ("extend", {}, "conditioning = \\(\\) is not valid: at least 1 item for extend"),
    ("connect", {"conditioning": (ConditioningItem("a.mp4"),)}, "at least 2 items for connect"),
    ("loop", {}, "at least 2 items for loop"),
    ("animate", {}, "at least 1 item for animate"),
    ("restyle", {}, "init_video = None is not valid: the footage to restyle"),
])
def test_a_mode_without_what_it_holds_is_refused(mode, fields, message):
    """A hand-made or edited request (a crafted sidecar) must not reach code that reads its items by position."""
    with pytest.raises(ValueError, match=message):
        GenerationRequest(**{**BASE, "mode": mode, **fields})
