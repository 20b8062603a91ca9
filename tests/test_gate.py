"""Every input through the gate, tried as an attacker and a careless client would, through the served API:
a Cancel without a session, a fake image, data: URLs and links in place of files, work past the model's
budget, a huge prompt, and numbers that are not what the field takes."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from benchmarks.hostile_media import _png  # noqa: E402
from conftest import launched_studio, moving_square  # noqa: E402
from pipelines.request import MAX_BEST_OF, MAX_PROMPT_CHARS  # noqa: E402
from pipelines.video_io import write_mp4, write_png  # noqa: E402

SIZE = "1:1 · 32x32"
SETTINGS = ("", 7, 2, 4.0, "default", SIZE)  # negative, seed, steps, guidance, sampler, size
FILE = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory):
    """A studio with its own Gradio upload folder (so that what lands there can be counted); yields
    (url, outputs folder, upload folder)."""
    root = tmp_path_factory.mktemp("gate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
        with launched_studio(tiny_model_dir, root / "outputs", "--max-upload", "100kb") as (url, history):
            yield url, history.folder, root / "gradio"


def call(url: str, api_name: str, body: str) -> str:
    """POST a raw JSON body to Gradio's /call route (no session) and return the whole event stream."""
    posted = httpx.post(f"{url}gradio_api/call/{api_name}", content=body,
                        headers={"content-type": "application/json"}, timeout=60)
    assert posted.status_code == 200, posted.text
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{posted.json()['event_id']}", timeout=600) as stream:
        return "".join(stream.iter_text())


def error_of(stream: str) -> str:
    """The message of an event stream that ended in an error (an AssertionError if it did not)."""
    assert "event: error" in stream, stream[-2000:]
    data = stream.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
    return json.loads(data)["error"]


def fn_index(url: str, api_name: str) -> int:
    config = httpx.get(url + "config").json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_a_cancel_without_a_session_cancels_nobodys_job(studio):
    url, _, _ = studio
    client = Client(url, verbose=False)
    # 100 steps at 64x64x33: busy long enough for the session-less Cancel below to arrive mid-way.
    job = client.submit("a long one", "", 1, 100, 4.0, "default", "1:1 · 64x64", 4.0, 8, False, api_name="/t2v")
    deadline = time.time() + 120
    while time.time() < deadline and not any("step" in str(o[0]) for o in job.outputs()):
        time.sleep(0.05)
    answer = httpx.post(url + "gradio_api/run/predict", json={"fn_index": fn_index(url, "cancel"), "data": []})
    assert not job.done()  # the Cancel arrived while the job ran
    assert answer.status_code == 200 and answer.json()["data"] == ["Nothing is running."], answer.text
    final = job.result(timeout=600)
    assert final[4]["status"] == "done", final[0]


def test_an_image_that_is_not_one_gets_the_studios_own_message(studio, tmp_path):
    url, outputs, _ = studio
    fake = tmp_path / "holiday.png"
    fake.write_text("this is a shopping list, not a picture\n")
    with pytest.raises(Exception, match="holiday.png: this is a text file, not an image or a video"):
        Client(url, verbose=False).predict(handle_file(str(fake)), "a ball", *SETTINGS, 1.0, 8, api_name="/animate")
    assert files_under(outputs / "uploads") == set()


def test_data_urls_links_and_other_files_are_refused_before_anything_decodes_them(studio, tmp_path):
    url, outputs, uploads = studio
    write_png(tmp_path / "still.png", moving_square(1)[0])
    small = base64.b64encode((tmp_path / "still.png").read_bytes()).decode()
    bomb = base64.b64encode(_png(12000, 12000, b"\0" * 10)).decode()  # claims 144 MP in a few bytes
    before_outputs, before_uploads = files_under(outputs), files_under(uploads)
    refusals = {
        "data: URL": ({"url": f"data:image/png;base64,{small}", "meta": FILE}, "must be sent as a file"),
        "data: URL of a bomb": ({"url": f"data:image/png;base64,{bomb}", "meta": FILE}, "must be sent as a file"),
        "a link": ({"path": "http://127.0.0.1:9/still.png", "meta": FILE}, "must be sent as a file"),
        # a path that was never uploaded, sent without the file marker Gradio's own path check looks for
        "a file on the server": ({"path": str(tmp_path / "still.png")}, "was not uploaded to the studio"),
    }
    for label, (image, reason) in refusals.items():
        body = json.dumps({"data": [image, "a ball", *SETTINGS, 1.0, 8]})
        assert reason in error_of(call(url, "animate", body)), label
    link = {"video": {"path": "http://127.0.0.1:9/clip.mp4", "meta": FILE}, "subtitles": None}
    body = json.dumps({"data": [link, "forward", 9, False, 1, "more", *SETTINGS, 0.5, 8]})
    assert "The clip must be sent as a file" in error_of(call(url, "extend", body))
    # nothing was decoded, downloaded or kept: no image written to Gradio's cache, no upload, no output
    assert files_under(uploads) == before_uploads and files_under(outputs) == before_outputs


def test_work_past_the_models_budget_and_huge_prompts_are_refused_at_once(studio):
    url, outputs, _ = studio
    client = Client(url, verbose=False)
    before = files_under(outputs)
    # tiny_model_dir's studio.json allows 1,200 latent tokens (16x16-pixel patches, 4 frames per latent)
    with pytest.raises(Exception, match=r"4096x4096 at 1 frame is more than this model takes at once: "
                                        r"65,536 latent tokens, at most 1,200"):
        client.predict("a ball", "", 7, 2, 4.0, "default", "custom · 4096x4096", 1.0, 8, True, api_name="/t2v")
    with pytest.raises(Exception, match=r"512x512 at 5 frames .*2,048 latent tokens, at most 1,200"):
        client.predict("a ball", "", 7, 2, 4.0, "default", "custom · 512x512", 0.5, 8, False, api_name="/t2v")
    with pytest.raises(Exception, match=rf"prompt is 1,000,000 characters long: at most {MAX_PROMPT_CHARS:,}"):
        client.predict("a" * 1_000_000, *SETTINGS, 1.0, 8, False, api_name="/t2v")
    with pytest.raises(Exception, match=rf"negative_prompt is 5,000 characters long: at most {MAX_PROMPT_CHARS:,}"):
        client.predict("a ball", "b" * 5000, *SETTINGS[1:], 1.0, 8, False, api_name="/t2v")
    assert files_under(outputs) == before


def made(outputs: Path) -> set[Path]:
    """The outputs (uploads kept for a request aside)."""
    return {p for p in outputs.iterdir() if p.is_file()}


def test_numbers_are_validated_not_coerced(studio, tmp_path):
    url, outputs, _ = studio
    client = Client(url, verbose=False)
    before = made(outputs)
    t2v = ("a ball", "", 7, 2, 4.0, "default", SIZE, 1.0, 8, False)

    def with_(index: int, value):
        return t2v[:index] + (value,) + t2v[index + 1:]

    seed_rule = r"a whole number from 0 to \d+, or -1 for a random one"
    for args, message in [
        (with_(2, 1.5), rf"Seed 1.5 is not valid: {seed_rule}"),
        (with_(2, -5), rf"Seed -5 is not valid: {seed_rule}"),
        (with_(2, None), rf"Seed is empty: enter {seed_rule}"),
        (with_(3, 2.7), r"Steps 2.7 is not valid: a whole number from 1 to 100"),
        (with_(8, None), r"Frames per second is empty: enter a number from 1 to 60"),
    ]:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/t2v")
    clip = tmp_path / "clip.mp4"
    write_mp4(clip, moving_square(9), 8)
    with pytest.raises(Exception, match=rf"Candidates 'abc' is not valid: a whole number from 1 to {MAX_BEST_OF}"):
        client.predict(handle_file(str(clip)), "forward", 9, False, "abc", "more", *SETTINGS, 0.5, 8,
                       api_name="/extend")
    # NaN is not JSON, but Gradio's parser takes it: raw bodies carry it to a slider and a number box
    raw = '["a ball", "", 7, {steps}, {guidance}, "default", "{size}", 1.0, {fps}, false, false]'
    for values, message in [
        (dict(steps="NaN", guidance=4.0, fps=8), "Steps nan is not valid: a whole number from 1 to 100"),
        (dict(steps=2, guidance="NaN", fps=8), "Guidance nan is not valid: a number from 0 to 15"),
        (dict(steps=2, guidance=4.0, fps="NaN"), "Frames per second nan is not valid: a number from 1 to 60"),
    ]:
        body = '{"data": ' + raw.format(size=SIZE, **values) + "}"
        assert error_of(call(url, "t2v", body)) == message
    assert made(outputs) == before  # nothing ran
    # -1, and only -1, means a random seed
    done = client.predict(*with_(2, -1), api_name="/t2v")
    assert done[4]["status"] == "done" and 0 <= done[4]["sidecar"]["request"]["seed"] < 2**31


def test_requests_are_checked_and_kept_a_few_at_a_time(tmp_path):
    """However many requests arrive at once, at most BUILDING_AT_ONCE check headers and copy uploads together."""
    import threading

    import gradio as gr

    from studio.app import BUILDING_AT_ONCE, ModelInfo, StudioApp
    from studio.engine import Engine
    from studio.outputs import History

    app = StudioApp(Engine(None, History(tmp_path)), ModelInfo("tiny", 32, 32, 9, 8.0, 2, 4.0, 16, 4))
    lock, inside, most = threading.Lock(), [0], [0]
    everyone_in = threading.Event()

    def build():  # stands in for the checks and the copy; refuses, so that nothing reaches the engine
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if inside[0] == BUILDING_AT_ONCE + 1:
                everyone_in.set()
        everyone_in.wait(2)  # the bound holds them out: this gives up, and they enter two by two
        with lock:
            inside[0] -= 1
        raise ValueError("refused")

    errors = []

    def request():
        try:
            list(app.stream(build, None))
        except gr.Error as error:
            errors.append(error.message)

    threads = [threading.Thread(target=request) for _ in range(BUILDING_AT_ONCE + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == ["refused"] * (BUILDING_AT_ONCE + 1) and most[0] == BUILDING_AT_ONCE
