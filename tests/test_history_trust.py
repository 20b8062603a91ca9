"""The history as something other people write into: prompts that are not valid Unicode, sidecars that are
malformed or hostile, Markdown in prompts and file names, paths that point outside the outputs folder, and
uploads that keep the name a creator gave them. Everything goes through the served studio (gradio_client or
raw HTTP) or the command line, as a user or an attacker would."""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

from conftest import API_SETTINGS  # noqa: E402
from pipelines.video_io import write_mp4  # noqa: E402
from studio.outputs import History  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = API_SETTINGS
T2V = (*SETTINGS, 1.0, 8, False, False)  # seconds, fps, one frame, image first


def result_of(outputs: tuple) -> dict:
    assert outputs[4]["status"] == "done", outputs[0]
    return outputs[4]


@pytest.fixture(scope="module")
def base(client) -> dict:
    return result_of(client.predict("a red ball moves right", *T2V, api_name="/t2v"))


NOT_LISTED = "is not in the history|is not in the list of choices"  # our handler, or the Output dropdown's check


def history_names(client: Client) -> list[str]:
    """The History tab's listing (which also sets the session's Output choices that /show_entry takes)."""
    rows = client.predict(api_name="/history")[0]
    rows = rows["data"] if isinstance(rows, dict) else rows
    return [row[0] for row in rows]


def raw_call(url: str, api: str, body: str) -> tuple[int, str]:
    """POST a JSON body given as text (so it can hold what json.dumps would never write) to /call/<api>
    and read the event stream; returns (status of the POST, the stream's text)."""
    with httpx.Client(base_url=url, timeout=120) as http:
        posted = http.post(f"gradio_api/call/{api}", content=body.encode(),
                           headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return posted.status_code, posted.text
        event = posted.json()["event_id"]
        return 200, http.get(f"gradio_api/call/{api}/{event}").text


def plant(outputs: Path, base: dict, name: str, sidecar: str | bytes | dict, media: Path | None = None) -> Path:
    """An output in the folder: a copy of the base clip (or `media`) with the given sidecar text."""
    target = outputs / name
    shutil.copyfile(media or base["output"], target)
    if isinstance(sidecar, dict):
        sidecar = json.dumps(sidecar)
    path = outputs / f"{name}.json"
    path.write_bytes(sidecar if isinstance(sidecar, bytes) else sidecar.encode())
    return target


# ---- 5: text that is not Unicode ------------------------------------------------------------------------
def test_a_lone_surrogate_in_a_prompt_is_refused_and_history_keeps_working(server, client, base, outputs):
    url, _ = server
    before = sorted(p.name for p in outputs.iterdir())
    body = '{"data": ["a \\ud800 ball", "", 7, 2, 4.0, "default", "1:1 \\u00b7 32x32", 1.0, 8, false, false]}'
    status, stream = raw_call(url, "t2v", body)
    assert status == 200 and "event: error" in stream
    assert "prompt" in stream and "valid Unicode; it holds a lone surrogate" in stream and "Traceback" not in stream
    status, stream = raw_call(url, "t2v", body.replace('"a \\ud800 ball", ""', '"a ball", "\\udfff"'))
    assert "negative_prompt" in stream and "valid Unicode; it holds a lone surrogate" in stream
    assert sorted(p.name for p in outputs.iterdir()) == before  # nothing was written
    assert Path(base["output"]).name in history_names(client)


def test_a_sidecar_with_a_lone_surrogate_already_on_disk_does_not_break_history(server, client, base, outputs,
                                                                                 caplog):
    sidecar = json.loads(Path(base["output"] + ".json").read_text())
    sidecar["request"]["prompt"] = "a \ud800 ball"  # as an older version wrote it (json escapes it: \ud800)
    sidecar["notes"] = ["caf\udce9.mp4: no latent sidecar"]
    plant(outputs, base, "20000101-000000-000-t2v-5.mp4", sidecar)
    with caplog.at_level(logging.WARNING, logger="studio.outputs"):
        status, stream = raw_call(server[0], "history", '{"data": []}')  # the endpoint as the page calls it
        assert status == 200 and "event: complete" in stream, stream[:500]
        names = history_names(client)
    assert "20000101-000000-000-t2v-5.mp4" in names and Path(base["output"]).name in names
    assert "20000101-000000-000-t2v-5.mp4" in caplog.text and "Unicode" in caplog.text
    _, _, lineage, shown = client.predict("20000101-000000-000-t2v-5.mp4", api_name="/show_entry")  # listed above
    assert shown["request"]["prompt"] == "a \ufffd ball" and "a \ufffd ball" in lineage
    assert client.predict("20000101-000000-000-t2v-5.mp4", api_name="/reproduce")["prompt"] == "a \ufffd ball"


def cli(*args: bytes | str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUTF8": "1", "PYTHONPATH": str(ROOT)}  # argv decoded as UTF-8, surrogateescape
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), "generate", *args], cwd=cwd, env=env,
                          capture_output=True, timeout=600)


def test_the_cli_reads_a_latin1_prompt_as_the_text_it_was(tiny_model_dir, tmp_path):
    done = cli("image", "--model", str(tiny_model_dir), "--prompt", b"a caf\xe9 at dusk", "--negative", b"gr\xe2y",
               "--seed", "3", "--steps", "1", "--quiet", "--device", "cpu", "--out", str(tmp_path / "cafe.png"),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    request = json.loads((tmp_path / "cafe.png.json").read_text())["request"]
    assert request["prompt"] == "a café at dusk" and request["negative_prompt"] == "grây"
    assert "not UTF-8" in done.stdout.decode()  # and it says how it read them
    History(tmp_path).entries()  # the folder's history reads it


def test_the_cli_refuses_a_prompt_that_is_not_text(tiny_model_dir, tmp_path, capsys):
    from studio.cli import main

    assert main(["t2v", "--model", str(tiny_model_dir), "--prompt", "a \ud800 ball", "--quiet",
                 "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "prompt" in err and "valid Unicode; it holds a lone surrogate" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


# ---- 6: malformed sidecars --------------------------------------------------------------------------------
def malformed(valid: dict) -> dict[str, str | bytes | dict]:
    request = valid["request"]
    return {
        "not-utf8": b"\xff\xfe" + json.dumps(valid).encode(),
        "long-int": json.dumps(valid)[:-1] + ', "extra": 1' + "0" * 5000 + "}",
        "deep": "[" * 200_000 + "]" * 200_000,
        "deep-inside": json.dumps({**valid, "notes": "@"}).replace('"@"', "[" * 400 + "]" * 400),
        "wide-int": json.dumps({**valid, "timings": {"denoise": 10**40}}),
        "empty-request": {**valid, "request": {}},
        "parents-5": {**valid, "parents": 5},
        "parents-ints": {**valid, "parents": [1, 2]},
        "mode-3": {**valid, "request": {"mode": 3, "prompt": None}},
        "bytes-x": {**valid, "bytes": "x"},
        "bytes-true": {**valid, "bytes": True},
        "frames-dict": {**valid, "frames": {"a": 1}},
        "sampler-list": {**valid, "request": {**request, "sampler": []}},
        "request-list": {**valid, "request": [1]},
        "null": "null",
        "list": "[]",
        "string": '"x"',
        "fps-nan": json.dumps(valid).replace('"fps": 8.0', '"fps": NaN'),
    }


def test_malformed_sidecars_are_skipped_and_nothing_breaks(server, client, base, outputs, tmp_path, caplog):
    valid = json.loads(Path(base["output"] + ".json").read_text())
    bad = []
    for i, (label, sidecar) in enumerate(malformed(valid).items()):
        bad.append(plant(outputs, base, f"20010101-000000-{i:03d}-{label}.mp4", sidecar).name)
    # a sidecar that is a folder, and one that is a link to a valid sidecar outside the outputs
    folder_media = plant(outputs, base, "20010101-000001-000-dir.mp4", "{}")
    (outputs / f"{folder_media.name}.json").unlink()
    (outputs / f"{folder_media.name}.json").mkdir()
    linked = plant(outputs, base, "20010101-000001-001-link.mp4", "{}")
    (outputs / f"{linked.name}.json").unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps(valid))
    os.symlink(tmp_path / "elsewhere.json", outputs / f"{linked.name}.json")
    bad += [folder_media.name, linked.name]
    still_good = plant(outputs, base, "20010101-000002-000-t2v-1.mp4", valid).name

    with caplog.at_level(logging.WARNING, logger="studio.outputs"):
        listed = [e.media.name for e in History(outputs).entries()]
        names = history_names(client)
    assert still_good in listed and Path(base["output"]).name in listed
    assert not set(bad) & set(listed) and not set(bad) & set(names) and still_good in names
    for name in bad:
        assert name in caplog.text  # each skip says which file and why
        with pytest.raises(Exception, match=NOT_LISTED):
            client.predict(name, api_name="/show_entry")
        with pytest.raises(Exception, match="is not in the history"):
            client.predict(name, api_name="/reproduce")
    shown = client.predict(still_good, api_name="/show_entry")
    assert shown[3]["request"] == valid["request"]
    assert client.predict(still_good, api_name="/reproduce")["seed"] == 7
    # every upload walks the history: an upload mode still works
    clip = tmp_path / "clip.mp4"
    write_mp4(clip, np.full((9, 32, 32, 3), 90, np.uint8), 8.0)
    restyled = result_of(client.predict(handle_file(str(clip)), 0.6, "in pastel", *SETTINGS, 8, api_name="/restyle"))
    assert Path(restyled["output"]).is_file()


# ---- 7: Markdown in the lineage ----------------------------------------------------------------------------
HOSTILE_PROMPT = "![t](http://127.0.0.1:7999/t.png)<img src=x>[c](x:y)**b**"  # within the 60 shown
ODD_NAME = "[click](https_evil) _em_ &lt;b&gt; ~~s~~.mp4"  # what survives Gradio's file name filter


def rendered(markdown: str) -> str:
    """The lineage as a Markdown renderer with raw HTML on would make it."""
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)


def test_markdown_in_a_prompt_is_shown_as_text_in_the_lineage(client, base, tmp_path):
    made = result_of(client.predict(HOSTILE_PROMPT, *T2V, api_name="/t2v"))
    clip = tmp_path / ODD_NAME
    write_mp4(clip, np.full((9, 32, 32, 3), 120, np.uint8), 8.0)
    child = result_of(client.predict(handle_file(made["output"]), handle_file(str(clip)), 5, 1, "meet", *SETTINGS,
                                     0.375, 8, api_name="/connect"))
    history_names(client)
    _, _, lineage, _ = client.predict(Path(made["output"]).name, api_name="/show_entry")
    page = rendered(lineage)
    assert "<img" not in page and "<a " not in page
    assert page.count("<strong>") == 1  # the output's own name; not the prompt's **b**
    assert HOSTILE_PROMPT in html.unescape(page)  # shown literally
    _, _, lineage, _ = client.predict(Path(child["output"]).name, api_name="/show_entry")
    page = rendered(lineage)
    assert "<img" not in page and "<a " not in page and "<em>" not in page and "<s>" not in page
    assert page.count("<strong>") == 2  # the two outputs' names
    assert ODD_NAME in html.unescape(page) and HOSTILE_PROMPT in html.unescape(page)


# ---- 10: paths outside the outputs folder ----------------------------------------------------------------
def page_reproduce(url: str, name: str) -> list:
    """What the page's Reproduce button gets back (its event is private to the page, so it is called as the
    page calls it, by its index, after listing the history in the same session)."""
    with httpx.Client(base_url=url, timeout=60) as http:
        events = http.get("config").json()["dependencies"]
        listing = next(e["id"] for e in events if e.get("api_name") == "history")
        button = next(e["id"] for e in events if e.get("api_name") == "load_settings")
        session = {"session_hash": f"reproduce-{name}"}
        assert http.post("gradio_api/run/predict", json={"fn_index": listing, "data": [], **session}).is_success
        answer = http.post("gradio_api/run/predict", json={"fn_index": button, "data": [name], **session})
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        files = [value for value in data if isinstance(value, dict) and "url" in value]
        files += [value["value"] for value in data if isinstance(value, dict) and isinstance(value.get("value"), dict)
                  and "url" in value["value"]]
        return data, [http.get(file["url"]).content for file in files]


def test_reproduce_never_hands_out_a_path_outside_the_outputs(server, client, base, outputs, tmp_path):
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"secret bytes " * 100)
    shutil.copyfile(secret, outputs.parent / "near.mp4")  # beside the outputs, reached through ../
    valid = json.loads(Path(base["output"] + ".json").read_text())
    request = valid["request"]
    item = {"source": "x", "frame_index": 0, "strength": 1.0, "source_start": 0, "source_count": 5,
            "output": "source"}
    cases = {
        "20020101-000000-000-restyle-7.mp4": ({**request, "mode": "restyle", "init_video": "launch.py",
                                                "init_strength": 0.5}, "video"),
        "20020101-000000-001-extend-7.mp4": ({**request, "mode": "extend", "num_frames": 9,
                                               "conditioning": [{**item, "source": "/etc/passwd"}]}, "video"),
        "20020101-000000-002-animate-7.mp4": ({**request, "mode": "animate", "conditioning": [
            {**item, "source": str(secret), "source_count": 1, "output": "window"}]}, "image"),
        "20020101-000000-003-restyle-7.mp4": ({**request, "mode": "restyle", "init_strength": 0.5,
                                                "init_video": str(outputs / "uploads" / ".." / ".." / "near.mp4")},
                                               "video"),
    }
    for name, (req, _) in cases.items():
        plant(outputs, base, name, {**valid, "request": req})
    for name, (req, key) in cases.items():
        values = client.predict(name, api_name="/reproduce")
        assert values[key] is None, (name, values[key])
        assert "not in the outputs folder, so only the other settings were loaded" in values["note"]
        assert values["prompt"] == request["prompt"] and values["seed"] == 7  # the rest still loads
        assert not any(str(secret) in str(v) or "passwd" in str(v) or "launch.py" == v or "near.mp4" in str(v)
                       for k, v in values.items() if k != "note")
        data, fetched = page_reproduce(server[0], name)
        assert request["prompt"] in data  # the settings reach the page
        assert not any(b"secret bytes" in body or b"root:" in body or b"def main" in body for body in fetched)
        assert not any(marker in json.dumps(data) for marker in (str(secret), "passwd", "launch.py", "near.mp4"))
    # a source inside the outputs is handed back
    inside = {**request, "mode": "restyle", "init_video": base["output"], "init_strength": 0.5}
    plant(outputs, base, "20020101-000000-004-restyle-7.mp4", {**valid, "request": inside})
    values = client.predict("20020101-000000-004-restyle-7.mp4", api_name="/reproduce")
    assert values["video"] == base["output"] and "note" not in values
    _, fetched = page_reproduce(server[0], "20020101-000000-004-restyle-7.mp4")
    assert fetched == [Path(base["output"]).read_bytes()]  # the page is handed the clip itself


def test_a_symlinked_output_pointing_outside_is_neither_listed_nor_shown(server, client, base, outputs, tmp_path):
    name = "20030101-000000-000-t2v-7.mp4"
    secret = tmp_path / name  # the link's own name: listed under it, it was shown
    shutil.copyfile(base["output"], secret)
    with open(secret, "ab") as handle:
        handle.write(b"SECRET-TAIL")
    valid = json.loads(Path(base["output"] + ".json").read_text())
    os.symlink(secret, outputs / name)
    (outputs / f"{name}.json").write_text(json.dumps({**valid, "bytes": secret.stat().st_size}))
    assert name not in history_names(client)
    assert all(e.media.parent == outputs.resolve() and e.media.name != name for e in History(outputs).entries())
    (outputs / "20030101-000000-001-t2v-7.mp4").symlink_to(base["output"])  # a link inside is not listed either
    (outputs / "20030101-000000-001-t2v-7.mp4.json").write_text(json.dumps(valid))
    assert "20030101-000000-001-t2v-7.mp4" not in history_names(client)
    try:
        shown = client.predict(name, api_name="/show_entry")
    except Exception as error:  # noqa: BLE001 - gradio_client raises AppError
        assert re.search(NOT_LISTED, str(error))
    else:
        video = shown[0]["video"] if isinstance(shown[0], dict) else shown[0]
        assert b"SECRET-TAIL" not in Path(video).read_bytes(), "the outside file was served"
        pytest.fail(f"{name} was shown")
    with pytest.raises(Exception, match="is not in the history"):
        client.predict(name, api_name="/reproduce")


# ---- 13: an upload keeps its name ------------------------------------------------------------------------
def test_an_upload_keeps_its_name_in_notes_and_lineage(client, tmp_path):
    beach = tmp_path / "beach.mp4"
    write_mp4(beach, np.stack([np.full((32, 32, 3), 20 * i, np.uint8) for i in range(9)]), 8.0)
    made = result_of(client.predict(handle_file(str(beach)), "forward", 5, False, 1, "on it goes", *SETTINGS, 0.5, 8,
                                    api_name="/extend"))
    parent = Path(made["sidecar"]["parents"][0])
    assert parent.name == "beach.mp4" and "uploads" in parent.parts
    history_names(client)
    notes = made["sidecar"]["notes"]
    assert any(note.startswith("beach.mp4 has no saved latents, so it was re-encoded from its pixels")
               for note in notes), notes
    assert not any(parent.parent.name in note for note in notes)  # no content hash in what the creator reads
    _, _, lineage, _ = client.predict(Path(made["output"]).name, api_name="/show_entry")
    assert "made from beach\\.mp4 (uploaded)" in lineage
    assert "made from beach.mp4 (uploaded)" in html.unescape(rendered(lineage))
    # the same bytes uploaded again, under another name, are the same upload
    again = tmp_path / "copy of beach.mp4"
    shutil.copyfile(beach, again)
    twice = result_of(client.predict(handle_file(str(again)), "forward", 5, False, 1, "more", *SETTINGS, 0.5, 8,
                                     api_name="/extend"))
    assert twice["sidecar"]["parents"] == [str(parent)]


def test_an_upload_name_is_made_safe_to_keep(tmp_path):
    outputs = History(tmp_path / "outputs")
    odd = tmp_path / "in" / "a\u202egnp.mp4\u200b \u00e9t\u00e9 [x](y).MP4"
    odd.parent.mkdir()
    odd.write_bytes(b"not really a clip")
    kept = outputs.keep_upload(odd)
    assert kept.name == "agnp.mp4 \u00e9t\u00e9 [x](y).mp4" and kept.read_bytes() == b"not really a clip"
    assert kept.parent.parent == outputs.uploads
    assert outputs.keep_upload(odd) == kept
    long = tmp_path / "in" / ("\u00e9" * 120 + ".png")
    long.write_bytes(b"x")
    assert outputs.keep_upload(long).name == "\u00e9" * 58 + ".png"  # at most 120 bytes
