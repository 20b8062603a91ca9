"""Storyboards (pipelines/storyboard.py) on the embedded model at 64x64 and 2 steps: plans, snapped frame
counts, resuming a cancelled take, re-rendering one shot in place, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from pipelines import VideoPipeline
from pipelines.sampling import GenerationCancelled
from pipelines.storyboard import (
    Keyframe,
    Settings,
    Shot,
    Storyboard,
    TakeMismatch,
    _Renderer,
    anchor_colours,
    colour_stats,
    drift,
    layout,
    manifest_path,
    read_take,
    render,
    rerender_shot,
    windows_folder,
)
from pipelines.video_io import Mp4Writer, count_frames, write_mp4, write_png

SMALL = dict(width=64, height=64, steps=2)
SIX_SHOTS = [
    {"prompt": "a red ball on green grass", "seconds": 2.0},
    {"prompt": "a red ball on green grass under an orange sky", "seconds": 1.5, "transition": "continue"},
    {"prompt": "a blue cube on yellow sand", "seconds": 1.0, "transition": "cut"},
    {"prompt": "a blue cube on sand at night", "seconds": 1.0},
    {"prompt": "a white cube on sand at night", "seconds": 0.5},
    {"prompt": "a white cube on grey snow", "seconds": 3.0},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny windows (conftest.py)


@pytest.fixture(scope="module")
def embedded() -> VideoPipeline:
    return VideoPipeline.from_pretrained("embedded", device="cpu")


def plan_of(shots, **settings) -> Storyboard:
    return Storyboard.from_dict({"seed": 5, **SMALL, **settings, "shots": shots})


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the plan ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shots, expected", [
    ([], "the plan: shots = [] is not valid"),
    ([{"prompt": "a", "seconds": 1}, {"prompt": "b", "seconds": 1, "keyframes": [{"image": "x.png", "at": 1.5}]}],
     "shot 2: keyframes[1].at = 1.5 s is after the shot's end"),
    ([{"prompt": "a", "seconds": 2, "keyframes": [{"image": "x.png", "at": 0.5}, {"image": "y.png", "at": 0.5}]}],
     "shot 1: keyframes[1] and keyframes[2] overlap"),
    ([{"prompt": "a", "seconds": 1}, {"prompt": "b", "seconds": 1}, {"prompt": "c", "seconds": -1}],
     "shot 3: seconds = -1 is not valid"),
    ([{"prompt": "a", "seconds": 0}], "shot 1: seconds = 0 is not valid"),
    ([{"prompt": "a", "seconds": 1}, {"prompt": "b", "seconds": 700}], "shot 2: seconds = 700 is more than this plan"),
    ([{"prompt": "a", "seconds": 1, "transition": "fade"}], "shot 1: transition = 'fade' is not valid"),
    ([{"prompt": " ", "seconds": 1}], "shot 1: prompt = ' ' is not valid"),
])
def test_a_bad_plan_fails_with_one_line_naming_the_shot_and_the_field(shots, expected):
    with pytest.raises(ValueError) as error:
        plan_of(shots)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_the_plan_allows_what_its_max_shot_seconds_says():
    with pytest.raises(ValueError, match=r"^shot 1: seconds = 5 is more than this plan allows: at most 4"):
        plan_of([{"prompt": "a", "seconds": 5}], max_shot_seconds=4)


def test_a_plan_round_trips_through_json_and_reads_keyframes_beside_its_file(tmp_path):
    plan = plan_of(SIX_SHOTS[:3] + [{"prompt": "d", "seconds": 1, "transition": "cut", "seed": 9,
                                     "keyframes": [{"image": "still.png", "at": 0}]}], held_noise=0.1)
    again = Storyboard.from_json(plan.to_json())
    assert again == plan and again.shots[3].keyframes == (Keyframe("still.png", 0, "image"),)
    (tmp_path / "plan.json").write_text(plan.to_json())
    read = Storyboard.read(tmp_path / "plan.json")
    assert read.shots[3].keyframes[0].source == str(tmp_path / "still.png")
    with pytest.raises(ValueError, match=r"^the plan: keys = \['colour'\] is not valid"):
        Storyboard.from_dict({"seed": 1, "colour": 1, "shots": SIX_SHOTS})


def test_six_shots_snap_to_the_vae_rule_and_say_how(embedded):
    plan = plan_of(SIX_SHOTS)
    shots = layout(plan, Settings.of(plan, embedded))
    # 8 fps: fresh shots (1 and the cut, 3) are 4k+1 frames; continuing ones add multiples of 4.
    assert [s.frames for s in shots] == [17, 12, 9, 8, 4, 24]
    assert [s.start for s in shots] == [0, 17, 29, 38, 46, 50]
    assert shots[0].note == "shot 1: 2 s at 8 fps = 17 frames (16 snapped to 17; 4k+1 frames (a fresh shot))"
    assert "exact; a multiple of 4 frames (continuing)" in shots[1].note
    for shot in shots:  # windows cover the shot exactly, none longer than the model's window takes
        assert sum(w.frames for w in shot.windows) == shot.frames
        assert all(w.frames <= embedded.defaults.num_frames - 9 for w in shot.windows if w.kind == "extend")
    assert [w.kind for w in shots[2].windows] == ["t2v"]


def test_a_keyframe_past_the_snapped_end_or_on_one_frame_is_refused(embedded):
    plan = plan_of([{"prompt": "a", "seconds": 1.0, "keyframes": [{"image": "a.png", "at": 0.0},
                                                                  {"image": "b.png", "at": 0.01}]}])
    with pytest.raises(ValueError, match=r"^shot 1: keyframes overlap at 8 fps"):
        layout(plan, Settings.of(plan, embedded))


# ---- drift -----------------------------------------------------------------------------------------------------
def test_colour_anchoring_brings_a_window_to_the_anchor_by_its_end_and_the_meter_sees_it():
    rng = np.random.default_rng(0)
    anchor_frames = np.repeat(rng.integers(40, 200, (1, 8, 8, 3)).astype(np.uint8), 6, axis=0)  # a still scene
    drifted = np.clip(anchor_frames.astype(int) + [30, -10, 5], 0, 255).astype(np.uint8)
    anchor = colour_stats(anchor_frames)
    assert drift(drifted, anchor)["mean"] == pytest.approx(15, abs=0.5)
    held = anchor_colours(drifted, anchor)
    error = [np.abs(held[i].astype(int) - anchor_frames[i]).mean() for i in range(6)]
    # Eased in: the first frame (beside the join) moves by a sixth of the correction, the last by all of it.
    assert error[-1] < 1 and error[0] == pytest.approx(15 * 5 / 6, abs=1)
    assert all(a > b for a, b in zip(error, error[1:]))
    assert drift(held[-1:], colour_stats(anchor_frames[-1:]))["mean"] < 1


def test_held_noise_lowers_the_hold_of_a_continuing_windows_frames(embedded, tmp_path):
    plan = plan_of(SIX_SHOTS[:2], held_noise=0.1)
    take = render(embedded, plan, tmp_path / "take.mp4")
    renderer = _Renderer(embedded, plan, tmp_path / "take.mp4", take.settings)
    previous = windows_folder(tmp_path / "take.mp4") / take.records[0]["folder"]
    request = renderer.request(layout(plan, take.settings)[1].windows[0], previous)
    assert request.mode == "extend" and [i.strength for i in request.conditioning] == [pytest.approx(0.9)]
    assert "drift" not in take.records[1] and "drift" in take.records[2]  # shot 2 is anchored on its first window


# ---- rendering -------------------------------------------------------------------------------------------------
def test_cancelling_then_resuming_gives_the_frames_of_an_uncancelled_run(embedded, tmp_path):
    plan = plan_of([{"prompt": "a red ball rolls on green grass", "seconds": 6.0}])  # 1 + 4 windows
    whole = render(embedded, plan, tmp_path / "whole.mp4")
    assert whole.finished and len(whole.records) == 5

    def cancel_after_two(record, total):
        if record["index"] == 1:
            raise GenerationCancelled()

    out = tmp_path / "cut.mp4"
    with pytest.raises(GenerationCancelled):
        render(embedded, plan, out, on_window=cancel_after_two)
    manifest = json.loads(manifest_path(out).read_text())
    assert not manifest["finished"] and len(manifest["windows"]) == 2
    assert count_frames(out, 8.0) == 17 + 8  # the finished windows were written
    resumed = render(embedded, plan, out)
    assert resumed.finished and [r["seed"] for r in resumed.records] == [r["seed"] for r in whole.records]
    assert np.array_equal(read_take(out), read_take(tmp_path / "whole.mp4"))
    assert sha(out) == sha(tmp_path / "whole.mp4")
    with pytest.raises(TakeMismatch, match="another plan"):
        render(embedded, plan.replace(seed=6), out)


def test_re_rendering_a_shot_keeps_the_others_bit_identical(embedded, tmp_path):
    shots = [{"prompt": "a red ball on green grass", "seconds": 2.0},
             {"prompt": "a red ball on green grass", "seconds": 1.0},
             {"prompt": "a red ball on blue grass", "seconds": 2.0},
             {"prompt": "a red ball on green grass", "seconds": 1.0},
             {"prompt": "a red ball on green grass", "seconds": 1.0}]
    plan = plan_of(shots)
    out = tmp_path / "take.mp4"
    first = render(embedded, plan, out)
    before = read_take(out)
    edited = plan.replace(shots=plan.shots[:2] + (Shot("a red ball on purple grass", 2.0, seed=77),) + plan.shots[3:])
    again = rerender_shot(embedded, edited, out, 3)
    after = read_take(out)
    start, frames = 17 + 8, 16  # shot 3's frames in the take
    assert after.shape == before.shape
    assert np.array_equal(after[:start], before[:start])
    assert np.array_equal(after[start + frames:], before[start + frames:])
    assert not np.array_equal(after[start:start + frames], before[start:start + frames])
    assert [r["mode"] for r in again.records if r["shot"] == 3] == ["extend", "connect"]
    kept = [r["folder"] for r in first.records if r["shot"] != 3]
    assert [r["folder"] for r in again.records if r["shot"] != 3] == kept
    assert count_frames(out, 8.0) == len(after)
    joins = [r["join"] for r in again.records if r["joined"]]
    assert len(joins) == 5 and all(j > 0 for j in joins)
    # The manifest now records the edited plan's take: rendering it again has nothing left to do.
    assert render(embedded, edited, out).finished and np.array_equal(read_take(out), after)
    with pytest.raises(ValueError, match="outside shot 3"):
        rerender_shot(embedded, edited.replace(shots=edited.shots[:1] + (Shot("x", 1.0),) + edited.shots[2:]), out, 3)


def test_an_image_at_the_start_of_a_cut_animates_it(embedded, tmp_path):
    still = np.zeros((64, 64, 3), np.uint8)
    still[:, :, 2] = 255
    write_png(tmp_path / "blue.png", still)
    plan = plan_of([{"prompt": "a red ball", "seconds": 1.0},
                    {"prompt": "a blue wall", "seconds": 1.0, "transition": "cut",
                     "keyframes": [{"image": str(tmp_path / "blue.png"), "at": 0}]}])
    take = render(embedded, plan, tmp_path / "take.mp4")
    assert [r["mode"] for r in take.records] == ["t2v", "animate"]
    frames = read_take(tmp_path / "take.mp4")
    assert frames[9, ..., 2].mean() > frames[9, ..., 0].mean() + 100  # the shot opens on the blue still


def test_a_still_later_in_a_shot_is_held_where_it_falls(embedded, tmp_path):
    still = np.zeros((64, 64, 3), np.uint8)
    still[:, :, 0] = 255
    write_png(tmp_path / "red.png", still)
    key = {"image": str(tmp_path / "red.png"), "at": 1.0}
    plan = plan_of([{"prompt": "a ball on green grass", "seconds": 2.0},
                    {"prompt": "a ball on green grass", "seconds": 2.0, "keyframes": [key]}])
    shots = layout(plan, Settings.of(plan, embedded))
    # 1 s into shot 2 is take frame 25: the window it closes ends 4 frames later, on the latent grid.
    assert [(w.start, w.frames, w.keyframe is not None) for w in shots[1].windows] == \
        [(17, 4, False), (21, 8, True), (29, 4, False)]
    assert shots[1].note.endswith("keyframes[1] (1 s) held at 1-1.375 s")
    render(embedded, plan, tmp_path / "take.mp4")
    frames = read_take(tmp_path / "take.mp4").astype(float)
    redness = frames[..., 0].mean(axis=(1, 2)) - frames[..., 2].mean(axis=(1, 2))
    assert redness[25:29].min() > 100 and redness[17:21].max() < 0
    too_soon = plan_of([{"prompt": "a", "seconds": 2.0}, {"prompt": "b", "seconds": 2.0, "keyframes": [
        {**key, "at": 0.25}]}])
    with pytest.raises(ValueError, match=r"^shot 2: keyframes\[1\].at = 0.25 s cannot be held there"):
        layout(too_soon, Settings.of(too_soon, embedded))


def test_the_streamed_mp4_is_byte_identical_to_one_written_whole(tmp_path):
    frames = np.random.default_rng(1).integers(0, 255, (7, 32, 48, 3), dtype=np.uint8)
    write_mp4(tmp_path / "whole.mp4", frames, 8.0)
    with Mp4Writer(tmp_path / "streamed.mp4", 48, 32, 8.0) as writer:
        writer.write(frames[:2])
        writer.write(frames[2:])
    assert sha(tmp_path / "whole.mp4") == sha(tmp_path / "streamed.mp4")
    with pytest.raises(RuntimeError), Mp4Writer(tmp_path / "failed.mp4", 48, 32, 8.0) as writer:
        writer.write(frames)
        raise RuntimeError("a failed take leaves no file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mp4", "whole.mp4"]


def test_the_cli_renders_a_six_shot_plan_of_the_planned_length(tmp_path, capsys):
    from studio.cli import main

    (tmp_path / "plan.json").write_text(json.dumps({"seed": 3, **SMALL, "shots": SIX_SHOTS}))
    out = tmp_path / "take.mp4"
    assert main(["storyboard", "--plan", str(tmp_path / "plan.json"), "--out", str(out), "--quiet",
                 "--memory", "full"]) == 0
    printed = capsys.readouterr().out
    assert count_frames(out, 8.0) == 17 + 12 + 9 + 8 + 4 + 24
    assert "note: shot 3: 1 s at 8 fps = 9 frames (8 snapped to 9" in printed
    assert main(["storyboard", "--plan", str(tmp_path / "plan.json"), "--out", str(out), "--seconds", "3"]) == 2
    assert "--seconds" in capsys.readouterr().err


def test_the_benchmarks_run_end_to_end(tmp_path):
    from benchmarks import storyboard_drift, storyboard_memory

    drift_figures = storyboard_drift.run(["--windows", "3", "--seeds", "1", "--size", "32", "--steps", "1",
                                          "--columns", "plain,all"])
    assert set(drift_figures["columns"]) == {"plain", "all"}
    assert all(len(row["runs"][0]["joins"]) == 2 for row in drift_figures["columns"].values())
    memory = storyboard_memory.run(["--windows", "3", "--cancel-at", "2", "--size", "32", "--steps", "1"])
    assert memory["cancelled_at"] == 2 and memory["resumed_same_frames"] and memory["resumed_same_mp4_bytes"]
    assert memory["peak_mb_after_last"] >= memory["peak_mb_after_10"] > 0


def test_the_default_context_fits_a_short_window():
    from pipelines.storyboard import context_choices, default_context

    assert context_choices(9, 4) == [5] and default_context(9, 4) == 5  # a 9-frame window: 5 seen, 4 new
    assert default_context(81, 4) == 9 and context_choices(17, 4) == [5, 9, 13]


def test_a_clip_opens_a_shot_and_the_shot_continues_it(embedded, tmp_path):
    """A clip keyframe at 0 s of a cut: its frames (at the take's size, down to 4k+1) open the shot as they
    are, the shot's drift is measured against them, and the windows after continue it."""
    from conftest import moving_square

    clip = tmp_path / "clip.mp4"
    write_mp4(clip, moving_square(11, 64, 64), 8)  # 11 frames: the shot takes 9 (4k+1), the 2 left over are not used
    shots = [{"prompt": "a red ball on green grass", "seconds": 1.0},
             {"prompt": "a coloured square moves right", "seconds": 2.0, "transition": "cut",
              "keyframes": [{"clip": str(clip), "at": 0.0}]}]
    plan = plan_of(shots)
    second = layout(plan, Settings.of(plan, embedded))[1]
    assert [(w.kind, w.frames) for w in second.windows] == [("clip", 9), ("extend", 8)]
    assert "the clip opens it (9 frames)" in second.note
    take = render(embedded, plan, tmp_path / "take.mp4")
    frames = read_take(tmp_path / "take.mp4")
    assert len(frames) == 9 + 17  # 1 s fresh: 9 frames; 2 s: 17, of which the clip gives 9
    from pipelines.video_io import read_media

    opened = read_media(clip, 8, size=(64, 64))[:9]
    assert np.abs(frames[9:18].astype(int) - opened.astype(int)).mean() < 3  # the clip itself, through the MP4
    assert [r["mode"] for r in take.records] == ["t2v", "clip", "extend"] and take.records[2]["joined"]
    assert take.shots[1]["drift_max"] is not None  # measured against the clip
    # Re-rendering the shot keeps the clip and makes its continuation anew; shot 1 stays bit for bit.
    changed = plan.replace(shots=(plan.shots[0], dataclasses.replace(plan.shots[1], prompt="a square moves left")))
    rerender_shot(embedded, changed, tmp_path / "take.mp4", 2)
    again = read_take(tmp_path / "take.mp4")
    assert np.array_equal(again[:18], frames[:18]) and not np.array_equal(again[18:], frames[18:])

    for bad, why in ((dict(at=0.5), "a clip opens a shot"),):
        wrong = [shots[0], {**shots[1], "keyframes": [{"clip": str(clip), **bad}]}]
        with pytest.raises(ValueError, match=f"shot 2: keyframes\\[1\\] \\(a clip\\) at 0.5 s is not valid: {why}"):
            layout(plan_of(wrong), Settings.of(plan_of(wrong), embedded))
    continuing = [shots[0], {**shots[1], "transition": "continue"}]
    with pytest.raises(ValueError, match="a clip opens a shot"):
        layout(plan_of(continuing), Settings.of(plan_of(continuing), embedded))
    short = tmp_path / "short.mp4"
    write_mp4(short, moving_square(3, 64, 64), 8)
    too_short = [shots[0], {**shots[1], "keyframes": [{"clip": str(short), "at": 0.0}]}]
    with pytest.raises(ValueError, match="short.mp4 has 3 frames at 8 fps; a clip that opens a shot needs at least 5"):
        layout(plan_of(too_short), Settings.of(plan_of(too_short), embedded))


def test_the_anchor_eases_in_over_the_frames_a_plan_gives():
    rng = np.random.default_rng(0)
    anchor_frames = np.repeat(rng.integers(40, 200, size=(1, 16, 16, 3)).astype(np.uint8), 8, axis=0)  # a still
    drifted = np.clip(anchor_frames.astype(int) + [30, -10, 5], 0, 255).astype(np.uint8)
    held = anchor_colours(drifted, colour_stats(anchor_frames), ease=4)
    error = [np.abs(held[i].astype(int) - anchor_frames[i]).mean() for i in range(8)]
    assert error[0] == pytest.approx(15 * 3 / 4, abs=1) and all(e < 1 for e in error[3:])
    with pytest.raises(ValueError, match="anchor_frames = 0 is not valid: none"):
        plan_of([{"prompt": "a", "seconds": 1.0}], anchor_frames=0)
    assert "anchor_frames" not in plan_of([{"prompt": "a", "seconds": 1.0}]).to_dict()  # old takes still resume


def test_a_window_after_a_short_one_sees_all_of_it(embedded, tmp_path):
    """A continuing window after one shorter than the context (a 5-frame opening clip, a 0.5 s fresh shot)
    takes that window whole as its context instead of failing after the windows before it were made."""
    from conftest import moving_square

    clip = tmp_path / "short.mp4"
    write_mp4(clip, moving_square(5, 64, 64), 8)
    plan = plan_of([{"prompt": "a red ball on green grass", "seconds": 0.5},
                    {"prompt": "the ball rolls on", "seconds": 1.0},
                    {"prompt": "a coloured square moves right", "seconds": 1.5, "transition": "cut",
                     "keyframes": [{"clip": str(clip), "at": 0.0}]}])
    assert Settings.of(plan, embedded).context == 9
    take = render(embedded, plan, tmp_path / "take.mp4")
    assert [(r["mode"], r["frames"]) for r in take.records] == [("t2v", 5), ("extend", 8), ("clip", 5),
                                                              ("extend", 8)]
    assert len(read_take(tmp_path / "take.mp4")) == 26
