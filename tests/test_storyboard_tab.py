"""The studio's Storyboard tab (studio/storyboard_tab.py) on the embedded model at 64x64 and 2 steps, driven
through its handlers as the page calls them: a take lands in the outputs folder and the History, bad plans
name the shot and field, cancel keeps finished windows, two sessions never share a file, one shot re-renders."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import gradio as gr
import pytest

from pipelines import VideoPipeline
from pipelines import storyboard as sb
from studio.app import ModelInfo, StudioApp, build
from studio.engine import Engine
from studio.outputs import History
from studio.storyboard_tab import CLIP_NOT_PLACED, SHOT_ROWS, plan_of

SETTINGS = (5, 2, 64, 64, None)  # seed, steps, width, height, context frames (None: the model's)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny windows (conftest.py)


@pytest.fixture(scope="module")
def embedded() -> VideoPipeline:
    return VideoPipeline.from_pretrained("embedded", device="cpu")


@pytest.fixture
def app(embedded, tmp_path) -> StudioApp:
    return StudioApp(Engine(embedded, History(tmp_path / "outputs")), ModelInfo.of(embedded))


def rows(*shots) -> list:
    """The tab's row values for `shots` ((prompt, seconds, transition), ...), the other rows empty."""
    values = []
    for k in range(SHOT_ROWS):
        prompt, seconds, transition = shots[k] if k < len(shots) else ("", 1.0, "continue")
        values += [prompt, seconds, transition, None]
    return values


THREE = rows(("a red ball on green grass", 1.0, "cut"), ("a red ball under an orange sky", 0.5, "continue"),
             ("a blue cube on yellow sand", 0.5, "cut"))


def session(name: str):
    return SimpleNamespace(session_hash=name)


def test_a_take_renders_into_the_outputs_folder_and_the_history(app):
    updates = list(app.storyboard.render(session("s1"), *SETTINGS, *THREE))
    status, video, table = updates[-1]
    assert status.startswith("Done"), status
    out = app.history.folder / video.split("/")[-1]
    assert out.is_file() and sb.manifest_path(out).is_file()
    manifest = json.loads(sb.manifest_path(out).read_text())
    assert manifest["finished"] and len(manifest["plan"]["shots"]) == 3
    assert [row[0] for row in table] == [1, 2, 3]
    assert [row[1] for row in table] == [s["frames"] for s in sb.shot_summary(
        sb.Storyboard.from_dict(manifest["plan"]), manifest["windows"])]
    assert sum(row[1] for row in table) == len(sb.read_take(out))
    entry = app.history.read(out)
    assert entry is not None and entry.sidecar["storyboard"] == manifest["plan"]
    assert out.name in [e.media.name for e in app.history.entries()]
    # window progress was shown while it rendered, and the latest window as a clip
    assert any(isinstance(u[0], str) and u[0].startswith("Window ") for u in updates[:-1])

    # re-render shot 2 of this session's last take with a new prompt: the take keeps its name
    changed = list(THREE)
    changed[4] = "a red ball under a purple sky"
    status, video, table = list(app.storyboard.rerender(session("s1"), 2, *SETTINGS, *changed))[-1]
    assert status.startswith("Done") and "shot 2 re-rendered" in status
    assert video == str(out)
    assert json.loads(sb.manifest_path(out).read_text())["plan"]["shots"][1]["prompt"] == changed[4]
    assert app.history.read(out) is not None  # its sidecar was rewritten for the new bytes
    with pytest.raises(gr.Error, match="Render a take in this session first"):
        list(app.storyboard.rerender(session("s2"), 2, *SETTINGS, *changed))


@pytest.mark.parametrize("shots, expected", [
    (rows(("a", 1.0, "cut"), ("b", -1.0, "continue")), "shot 2: seconds = -1.0 is not valid"),
    (rows(("a", 1.0, "cut"), ("b", 1.0, "continue"), ("c", 700.0, "cut")), "shot 3: seconds = 700 is more than"),
    (rows(), "the plan: shots = [] is not valid"),
])
def test_a_bad_plan_names_the_shot_and_the_field(app, shots, expected):
    with pytest.raises(gr.Error) as error:
        list(app.storyboard.render(session("s1"), *SETTINGS, *shots))
    assert expected in error.value.message and "\n" not in error.value.message
    assert not list(app.history.folder.glob("*.mp4"))  # refused before a name was claimed


def test_cancel_keeps_the_finished_windows(app):
    long_take = rows(("a red ball on green grass", 1.0, "cut"), ("a red ball on grass", 1.0, "continue"),
                     ("a red ball at dusk", 1.0, "continue"))
    updates = []
    for update in app.storyboard.render(session("s1"), *SETTINGS, *long_take):
        updates.append(update)
        if isinstance(update[0], str) and update[0].startswith("Window 2 "):
            app.engine.cancel(session="s1")  # what the Cancel button asks
    status = updates[-1][0]
    assert status.startswith("Cancelled after window "), status
    out = next(app.history.folder.glob("*-storyboard-*.mp4"))
    manifest = json.loads(sb.manifest_path(out).read_text())
    assert not manifest["finished"] and 1 <= len(manifest["windows"]) < 4
    assert all((sb.windows_folder(out) / r["folder"]).is_dir() for r in manifest["windows"])
    assert len(sb.read_take(out)) == sum(r["frames"] for r in manifest["windows"])
    assert app.history.read(out).sidecar["finished"] is False  # listed, marked unfinished
    kept = sb.read_take(out)

    # Render take again with the same rows: the take resumes into the same file, its finished windows kept
    status, video, _ = list(app.storyboard.render(session("s1"), *SETTINGS, *long_take))[-1]
    assert status.startswith("Done"), status
    assert video == str(out) and len(list(app.history.folder.glob("*-storyboard-*.mp4"))) == 1
    whole = sb.read_take(out)
    assert len(whole) > len(kept) and (whole[:len(kept)] == kept).all()
    assert app.history.read(out).sidecar["finished"] is True


def test_two_sessions_takes_never_share_a_file(app):
    short = rows(("a red ball on green grass", 0.5, "cut"))
    results = {}

    def take(name):
        results[name] = list(app.storyboard.render(session(name), *SETTINGS, *short))[-1]

    threads = [threading.Thread(target=take, args=(name,)) for name in ("s1", "s2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    videos = {name: result[1] for name, result in results.items()}
    assert all(r[0].startswith("Done") for r in results.values()), results
    assert videos["s1"] != videos["s2"]
    assert len(list(app.history.folder.glob("*-storyboard-*.mp4"))) == 2
    # the same plan and seed gives the same frames in each
    a, b = (sb.read_take(app.history.folder / v.split("/")[-1]) for v in videos.values())
    assert (a == b).all()
    # a fresh name is never an existing file
    assert app.storyboard.new_take(5) not in {app.history.folder / v.split("/")[-1] for v in videos.values()}


def test_a_keyframe_upload_is_kept_in_the_outputs_folder(app, tmp_path):
    import numpy as np

    from pipelines.video_io import write_png

    write_png(tmp_path / "still.png", np.full((64, 64, 3), 200, np.uint8))
    values = rows(("a red ball", 1.0, "cut"))
    values[3] = str(tmp_path / "still.png")
    plan = plan_of(values, *SETTINGS, keep=app.history.keep_upload)
    kept = plan.shots[0].keyframes[0]
    assert kept.at == 0.0 and kept.kind == "image"
    assert app.history.inside(kept.source) is not None  # under uploads/, not Gradio's temporary copy


def test_send_to_storyboard_fills_shot_one_and_the_page_builds(app, embedded):
    request = embedded.request("t2v", prompt="a lighthouse at dawn", num_frames=5, width=64, height=64, steps=1,
                               seed=3)
    out, _ = app.history.write(embedded.generate(request), gif=False)
    assert app.storyboard.send(str(out)) == ("a lighthouse at dawn", CLIP_NOT_PLACED)
    with pytest.raises(gr.Error, match="Generate a clip first"):
        app.storyboard.send(None)
    demo = build(app.engine, app.info)
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"storyboard", "storyboard_rerender", "send_to_storyboard"} <= names
