"""The procedural world and its judge: deterministic scenes, paraphrased captions, a clean held-out split."""

from __future__ import annotations

import numpy as np

from pipelines.seams import seam_ratio, wrap_ratio
from training.judge import held_out_prompts, read_clip
from training.world import (COLOURS, DIRECTIONS, TRANSITION_CONTEXT, TRANSITION_JOINS, Scene, Thing, _start_for,
                            caption, clip, held_out, mirrored, mirrored_clip, render, sample_scene, transition_clip)


def test_clips_are_deterministic_by_seed_at_any_size():
    a, caption_a, _ = clip(5, 128, 128, 17, 8.0)
    b, caption_b, _ = clip(5, 128, 128, 17, 8.0)
    assert np.array_equal(a, b) and caption_a == caption_b
    other, _, _ = clip(6, 128, 128, 17, 8.0)
    assert not np.array_equal(a, other)
    for width, height, frames in ((160, 96, 9), (96, 160, 25), (64, 64, 1)):
        assert clip(1, width, height, frames, 8.0)[0].shape == (frames, height, width, 3)


def test_captions_paraphrase_and_leave_attributes_out():
    scene = Scene((Thing("ball", "red", "right", True),), "sunset", look="glowing")
    texts = {caption(scene, seed=s, drop=0.5) for s in range(40)}
    assert len(texts) > 10
    assert any("crimson" in t or "scarlet" in t for t in texts) and any("red" in t for t in texts)
    assert any("sunset" not in t and "evening" not in t for t in texts)  # background sometimes omitted


def test_training_scenes_never_show_a_held_out_combination():
    for seed in range(1500):
        scene = sample_scene(seed)
        for thing in scene.things[:1]:
            assert not held_out(thing.colour, thing.motion, scene.background)
    held = sample_scene(3, split="heldout")
    assert held_out(held.things[0].colour, held.things[0].motion, held.background)
    assert len(held_out_prompts(108)) == 108


def test_mirroring_swaps_left_and_right():
    scene = Scene((Thing("star", "green", "up-left", False, (0.3, 0.5)),), "day")
    flipped = mirrored(scene, 1.0)
    assert flipped.things[0].motion == "up-right" and abs(flipped.things[0].start[0] - 0.7) < 1e-9
    video = render(scene, 64, 64, 9, 8.0)
    assert np.abs(render(flipped, 64, 64, 9, 8.0)[:, :, ::-1].astype(int) - video).mean() < 2


def test_mirror_twins_differ_from_their_clips_in_the_sideways_words_alone():
    swap = {"left": "right", "right": "left", "leftward": "rightward", "rightward": "leftward",
            "up-left": "up-right", "up-right": "up-left", "down-left": "down-right", "down-right": "down-left"}
    twins = 0
    for seed in range(60):
        video, text, scene = clip(seed, 96, 64, 9, 8.0)
        twin = mirrored_clip(seed, 96, 64, 9, 8.0)
        sideways = any(DIRECTIONS.get(t.motion, (0, 0))[0] for t in scene.things)
        flipped_first = mirrored(scene, 1.5).things[0]
        if not sideways or held_out(flipped_first.colour, flipped_first.motion, scene.background):
            assert twin is None
            continue
        twins += 1
        twin_video, twin_text, twin_scene = twin
        assert twin_text.split() == [swap.get(w, w) for w in text.split()] != text.split()
        assert not held_out(twin_scene.things[0].colour, twin_scene.things[0].motion, twin_scene.background)
        if DIRECTIONS.get(scene.things[0].motion, (0, 0))[0] and len(scene.things) == 1:
            (dx, dy), (twin_dx, twin_dy) = read_clip(video).displacement, read_clip(twin_video).displacement
            assert dx * twin_dx < 0 and abs(dx + twin_dx) < 0.1 and abs(dy - twin_dy) < 0.1  # the other way
    assert twins >= 15



def test_transition_clips_crossfade_from_a_clip_into_the_next_at_a_join():
    joins, captions, bridged, faded = set(), set(), 0, 0
    for seed in range(12):
        video, text, objects, join = transition_clip(seed, 96, 64)
        again, same_text, _, same_join = transition_clip(seed, 96, 64)
        assert np.array_equal(video, again) and (text, join) == (same_text, same_join)
        assert video.shape == (25, 64, 96, 3) and objects.shape == (25, 64, 96) and join in TRANSITION_JOINS
        assert objects[join].any()  # the next clip's objects weigh in the loss
        joins.add(join)
        captions.add(text)
        # Before the bridge: A's own frames; across it each frame moves towards the next clip's first frame.
        frames = video.astype(np.float32)
        to_next = [np.abs(frames[i] - frames[join]).mean() for i in range(TRANSITION_CONTEXT - 1, join)]
        if to_next[0] > 1:  # else A already ends as the next clip starts (a still scene's loop)
            bridged += 1
            assert to_next[-1] < 0.5 * to_next[0]
        if to_next[0] > 20:  # the fade, not A's own motion, makes most of the change: it eases in and out
            faded += 1
            closing = -np.diff(to_next + [0.0])  # (join - TRANSITION_CONTEXT + 2,): how far each frame closes in
            assert max(closing[0], closing[-1]) < 0.25 * closing.max()  # a linear fade closes in evenly
            wait = (join - TRANSITION_CONTEXT + 1) // 4  # the bridge's first quarter continues A alone
            assert np.abs(closing[:wait]).max() < 0.1 * closing.max()
    assert len(joins) >= 2 and len(captions) == 12 and bridged >= 8 and faded >= 3

def test_the_judge_reads_ground_truth_renders():
    rng = np.random.default_rng(0)
    cases = held_out_prompts(30)
    correct = 0
    for colour, shape, motion, background in cases:
        scene = Scene((Thing(shape, colour, motion, True, _start_for(motion, rng, 1.0, 2.0)),), background)
        reading = read_clip(render(scene, 128, 128, 17, 8.0))
        correct += (reading.colour, reading.motion, reading.background) == (colour, motion, background)
    assert correct >= 29
    still = Scene((Thing("ball", "blue", "still", True),), "floor")
    assert read_clip(render(still, 128, 128, 9, 8.0)).motion == "still"
    assert set(COLOURS) >= {"red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black"}
    assert len(DIRECTIONS) == 8


def test_seam_measures_see_a_cut():
    scene = Scene((Thing("ball", "red", "right", True, (0.2, 0.5)),), "day")
    video = render(scene, 64, 64, 16, 8.0)
    assert seam_ratio(video, 8) < 1.5
    cut = np.concatenate([video[:8], video[:8]])  # jumps back at frame 8
    assert seam_ratio(cut, 8) > 3
    assert wrap_ratio(video) > 3
