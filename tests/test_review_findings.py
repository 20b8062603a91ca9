"""What the independent adversarial review of issue 27 found, pinned: the CLI's frame folder and long names,
crafted sidecars given to `reproduce`, a crafted entry with many parents, seeds a browser cannot hold, and a
size sent as something other than a label."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from conftest import API_SETTINGS, fill, launched_studio
from studio import cli
from studio.outputs import History

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402


def run(tiny_model_dir, *args) -> int:
    return cli.main([*args[:1], "--model", str(tiny_model_dir), "--prompt", "a ball", "--quiet", *args[1:]])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_frames_out_never_replaces_frames_already_there_unasked(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "F"
    folder.mkdir()
    for i in range(25):
        (folder / f"frame_{i:05d}.png").write_text("mine")
    assert run(tiny_model_dir, "image", "--frames-out", str(folder), "--out", str(tmp_path / "a.png")) == 2
    err = one_line(capsys)
    assert "already holds 25 frame files" in err and "--overwrite" in err
    assert sorted(p.read_text() for p in folder.iterdir()) == ["mine"] * 25
    assert run(tiny_model_dir, "image", "--frames-out", str(folder), "--out", str(tmp_path / "b.png"),
               "--overwrite") == 0
    assert len(list(folder.iterdir())) == 1  # asked for: the image's one frame, the old ones gone


@pytest.mark.parametrize("stem_bytes", [215, 240])
def test_an_out_name_too_long_for_its_temporaries_is_refused_before_loading(tiny_model_dir, tmp_path, capsys,
                                                                            stem_bytes):
    out = tmp_path / ("n" * stem_bytes + ".mp4")
    started = time.perf_counter()
    assert run(tiny_model_dir, "t2v", "--frames", "5", "--out", str(out)) == 2
    err = one_line(capsys)
    assert "its name is too long for this file system: at most" in err and "loaded" not in capsys.readouterr().out
    assert not list(tmp_path.iterdir()) and time.perf_counter() - started < 30


@pytest.mark.parametrize("content, message", [
    ('{"request": ' + "[" * 200_000 + "]" * 200_000 + "}", "nests too deep"),
    ('{"request": {"prompt": "x"}, "model": 123}', "records a model that is not a name"),
    ('{"request": {"prompt": "x"}, "model": ["a"]}', "records a model that is not a name"),
    ('{"request": {"prompt": "x", "seed": ' + "9" * 5000 + "}}", "is not a readable JSON sidecar"),
    (b'{"request": {"prompt": "caf\xe9"}}', "is not UTF-8 text"),
    ('{"request": {"prompt": "x", "mode": "extend", "conditioning": []}}', "at least 1 item for extend"),
])
def test_reproduce_refuses_a_crafted_sidecar_in_one_line(tiny_model_dir, tmp_path, capsys, content, message):
    sidecar = tmp_path / "crafted.mp4.json"
    sidecar.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = cli.main(["reproduce", "--request", str(sidecar), "--quiet", "--out", str(tmp_path / "x.mp4")])
    assert code == 2 and message in one_line(capsys)
    assert not (tmp_path / "x.mp4").exists()


def test_an_entry_naming_more_parents_than_sources_is_skipped_fast(tmp_path, wan21):
    from pipelines import text_to_video

    history = History(tmp_path / "outputs")
    out, sidecar = history.write(wan21.generate(text_to_video("a ball", num_frames=5, width=32, height=32, steps=1)))
    crafted = history.folder / "o.mp4"
    shutil.copyfile(out, crafted)
    (history.folder / "o.mp4.json").write_text(json.dumps({**sidecar, "parents": ["/x"] * 300_000}))
    started = time.perf_counter()
    assert [e.media.name for e in history.entries()] == [out.name] and history.children(out) == []
    assert time.perf_counter() - started < 10


def test_seeds_a_browser_cannot_hold_are_refused_not_rounded(tiny_model_dir, tmp_path):
    with launched_studio(tiny_model_dir, tmp_path / "outputs") as (url, history):
        client = Client(url, verbose=False)
        negative, _, steps, guidance, sampler, size = API_SETTINGS
        with pytest.raises(Exception, match=r"Seed 9007199254740992 is not valid: .*9007199254740991.*command line"):
            client.predict("a ball", negative, 2**53, steps, guidance, sampler, size, 1.0, 8, False, False,
                           api_name="/t2v")
        made = client.predict("a ball", *API_SETTINGS, 1.0, 8, False, False, api_name="/t2v")[4]
        big = history.folder / "big-seed.mp4"  # what the CLI writes for --seed 18446744073709551615
        shutil.copyfile(made["output"], big)
        sidecar = {**made["sidecar"], "request": {**made["sidecar"]["request"], "seed": 2**64 - 1}}
        (history.folder / "big-seed.mp4.json").write_text(json.dumps(sidecar))
        values = client.predict("big-seed.mp4", api_name="/reproduce")
        assert values["seed"] is None and "larger than a browser holds exactly" in values["note"]
        with pytest.raises(Exception, match=r"size \['a'\] is not valid: a preset's label, or WIDTHxHEIGHT"):
            client.predict("a ball", negative, 1, steps, guidance, sampler, ["a"], 1.0, 8, False, False,
                           api_name="/t2v")


def test_animate_from_the_last_frame_of_an_output_with_a_long_name(tiny_model_dir, tmp_path):
    with launched_studio(tiny_model_dir, tmp_path / "outputs") as (url, history):
        client = Client(url, verbose=False)
        made = client.predict("a ball", *API_SETTINGS, 1.0, 8, False, False, api_name="/t2v")[4]
        long = history.folder / ("L" * 246 + ".mp4")  # a legal name, that a CLI --out can make
        shutil.copyfile(made["output"], long)
        shutil.copyfile(made["output"] + ".json", f"{long}.json")
        client.predict(api_name="/history")
        still, prompt, seed = client.predict(long.name, api_name="/send_entry_to_animate")
        assert Path(still).is_file() and (prompt, seed) == ("a ball", 7)


# ---- the second review ---------------------------------------------------------------------------------------
def test_a_failed_overwrite_leaves_the_output_it_was_to_replace(tiny_model_dir, small_disk, capsys):
    out = small_disk / "x.mp4"
    assert run(tiny_model_dir, "t2v", "--frames", "9", "--seed", "1", "--out", str(out)) == 0
    before = {p.name: p.read_bytes() for p in small_disk.iterdir()}
    fill(small_disk, leave=1024)  # less than any one of the new files takes
    assert run(tiny_model_dir, "t2v", "--frames", "9", "--seed", "2", "--out", str(out), "--overwrite") == 1
    assert "is full" in one_line(capsys)
    assert {p.name: p.read_bytes() for p in small_disk.iterdir() if p.name != "filler"} == before
    assert [e.media for e in History(small_disk).entries()] == [out]  # still whole, still listed


def test_frames_out_on_a_full_disk_names_that_disk_and_keeps_nothing(tiny_model_dir, small_disk, tmp_path, capsys):
    fill(small_disk, leave=8192)
    frames = small_disk / "frames"
    assert run(tiny_model_dir, "t2v", "--frames", "9", "--out", str(tmp_path / "z.mp4"), "--frames-out",
               str(frames)) == 1
    err = one_line(capsys)
    assert f"The disk holding {frames} is full, so the PNG frames of z.mp4" in err
    assert list(frames.iterdir()) == [] and not (tmp_path / "z.mp4").exists()


def test_frames_another_run_wrote_meanwhile_are_kept(wan21, tmp_path):
    """The check before loading can be outrun: the frames are claimed one by one as they are written."""
    from pipelines import text_to_video
    from studio.outputs import write_result

    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "frame_00003.png").write_bytes(b"the other run's")
    result = wan21.generate(text_to_video("a ball", num_frames=9, width=32, height=32, steps=1))
    with pytest.raises(FileExistsError, match="frame_00003.png already exists in .*: choose an empty folder"):
        write_result(result, tmp_path / "a.mp4", str(folder))
    assert [p.name for p in folder.iterdir()] == ["frame_00003.png"] and not (tmp_path / "a.mp4").exists()


def test_an_upload_name_of_dots_keeps_the_suffix_it_was_checked_with(tmp_path):
    from conftest import moving_square
    from pipelines.media_check import check_media
    from pipelines.video_io import write_mp4

    history = History(tmp_path / "outputs")
    odd, plain = tmp_path / "a" / "....mp4", tmp_path / "b" / "holiday.mp4"
    for path in (odd, plain):
        path.parent.mkdir()
        write_mp4(path, moving_square(9), 8.0)
    kept = [history.keep_upload(path) for path in (odd, plain)]
    assert kept[0] == kept[1] and kept[0].suffix == ".mp4"  # the same bytes: one copy, the first name
    check_media(str(kept[0]))


@pytest.mark.parametrize("args, message", [
    (["restyle", "--video", "{clip}", "--start", "1e308"], r"trim start = 1e\+308 s is not valid: .* from 0 to 3600"),
    (["t2v", "--seconds", "inf"], "--seconds inf is not valid"),
    (["t2v", "--seconds", "nan"], "--seconds nan is not valid"),
    (["restyle", "--video", "{clip}", "--start", "1", "--seconds", "2", "--strength", "0.5"],
     r"the trim 1-3.125 s goes past the clip's end \(1.12 s at 8 fps\)"),
])
def test_durations_out_of_range_are_one_line(tiny_model_dir, tmp_path, capsys, args, message):
    import re

    from conftest import moving_square
    from pipelines.video_io import write_mp4

    write_mp4(tmp_path / "clip.mp4", moving_square(9), 8.0)
    assert run(tiny_model_dir, *[a.replace("{clip}", str(tmp_path / "clip.mp4")) for a in args]) == 2
    err = one_line(capsys)
    assert re.search(message, err), err


def test_restyle_takes_the_models_window_of_long_footage(tiny_model_dir, tmp_path):
    from conftest import moving_square
    from pipelines.video_io import write_mp4

    write_mp4(tmp_path / "long.mp4", moving_square(200), 8.0)  # 25 s; the tiny model's window is 9 frames
    assert run(tiny_model_dir, "restyle", "--video", str(tmp_path / "long.mp4"), "--strength", "0.5", "--out",
               str(tmp_path / "r.mp4")) == 0
    assert json.loads((tmp_path / "r.mp4.json").read_text())["request"]["num_frames"] == 9


def test_a_dangling_link_at_an_output_name_is_refused_before_loading(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "y.mp4.latents.safetensors").symlink_to(tmp_path / "nowhere")
    assert run(tiny_model_dir, "t2v", "--frames", "5", "--out", str(tmp_path / "y.mp4")) == 2
    assert "y.mp4.latents.safetensors already exists" in one_line(capsys)
    assert "loaded" not in capsys.readouterr().out


def test_an_upload_on_a_full_disk_gets_a_sentence(tiny_model_dir, small_disk, tmp_path):
    from gradio_client import handle_file

    from conftest import moving_square
    from pipelines.video_io import write_mp4

    write_mp4(tmp_path / "clip.mp4", moving_square(9), 8.0)
    with launched_studio(tiny_model_dir, small_disk / "outputs") as (url, history):
        fill(small_disk, leave=0)
        with pytest.raises(Exception, match=r"The disk holding .*outputs is full, so the upload clip.mp4 could not"):
            Client(url, verbose=False).predict(handle_file(str(tmp_path / "clip.mp4")), 0.5, "x", *API_SETTINGS, 8,
                                               api_name="/restyle")
        assert list(history.uploads.iterdir()) == []


# ---- the third review ----------------------------------------------------------------------------------------
def test_the_sweep_removes_what_a_killed_writer_claimed_and_nothing_else(wan21, tmp_path):
    """Files that only look like the studio's own (another case, another suffix, a copy put back without its
    sidecar, notes) are never swept: only what a marker written before the claim lists."""
    import os
    import signal

    from pipelines import text_to_video

    history = History(tmp_path / "outputs")
    result = wan21.generate(text_to_video("a ball", num_frames=9, width=32, height=32, steps=1))
    kept, _ = history.write(result)
    lookalikes = {"20260101-000000-000-t2v-1.MP4": b"a", "20260101-000000-000-t2v-2.final.mp4": b"b",
                  "20261101-120000-000-t2v-77.mp4": kept.read_bytes(), "20261101-120000-000-t2v-5.txt": b"my notes"}
    for name, data in lookalikes.items():
        (history.folder / name).write_bytes(data)
    pid = os.fork()
    if pid == 0:  # a writer killed after claiming its names, before its sidecar
        try:
            import studio.outputs as outputs

            outputs._write_files = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
            history.write(result)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    left = {p.name for p in history.folder.iterdir()} - {kept.name, f"{kept.name}.json", kept.with_suffix(".gif").name,
                                                           f"{kept.name}.latents.safetensors", ".studio.lock",
                                                           "uploads", *lookalikes}
    assert len(left) == 4, left  # the marker and the names it claimed: video, latents, GIF
    swept = {p.name for p in history.sweep()}
    assert swept == left
    assert all((history.folder / name).read_bytes() == data for name, data in lookalikes.items())
    assert [e.media for e in history.entries()] == [kept]


def test_a_failed_overwrite_keeps_the_old_frames_too(tiny_model_dir, small_disk, tmp_path, capsys):
    frames = small_disk / "frames"
    out = tmp_path / "a.mp4"
    assert run(tiny_model_dir, "t2v", "--frames", "5", "--seed", "1", "--out", str(out), "--frames-out",
               str(frames)) == 0
    before = {p.name: p.read_bytes() for p in frames.iterdir()}
    fill(small_disk, leave=1024)
    assert run(tiny_model_dir, "t2v", "--frames", "9", "--seed", "2", "--out", str(out), "--frames-out",
               str(frames), "--overwrite") == 1
    assert "is full" in one_line(capsys)
    assert {p.name: p.read_bytes() for p in frames.iterdir()} == before
    assert json.loads((tmp_path / "a.mp4.json").read_text())["request"]["seed"] == 1


def test_overwrite_never_reaches_the_loop_base_clip(tiny_model_dir, tmp_path, capsys):
    base = tmp_path / "k.base.mp4"
    assert run(tiny_model_dir, "t2v", "--frames", "9", "--out", str(base)) == 0
    before = base.read_bytes()
    assert run(tiny_model_dir, "loop", "--frames", "3", "--out", str(tmp_path / "k.mp4"), "--overwrite") == 2
    assert "k.base.mp4" in one_line(capsys) and base.read_bytes() == before


def test_one_session_cannot_fill_the_queue_others_share(tiny_model_dir, tmp_path):
    with launched_studio(tiny_model_dir, tmp_path / "outputs", queue_size=4) as (url, _):
        greedy, other = Client(url, verbose=False), Client(url, verbose=False)
        long = ("busy", "", 1, 100, 4.0, "default", "1:1 · 64x64", 4.0, 8, False, False)
        jobs = [greedy.submit(*long, api_name="/t2v") for _ in range(5)]  # they reach the queue in any order
        deadline = time.time() + 60
        while time.time() < deadline and sum(job.done() for job in jobs) < 3:
            time.sleep(0.05)
        refused = 0
        for job in (job for job in jobs if job.done()):
            try:
                job.result(timeout=1)
            except Exception as error:  # noqa: BLE001 - the refusals come back as errors
                refused += "You have 2 generations in the queue already" in str(error)
        assert refused == 3  # 4 places in the queue, 2 of them for one session
        made = other.predict("mine", *API_SETTINGS, 1.0, 8, False, False, api_name="/t2v")[4]
        assert made["status"] == "done"
        greedy.predict(api_name="/cancel")


# ---- the fourth review ---------------------------------------------------------------------------------------
def test_the_sweep_passes_over_a_writer_that_is_still_running(tmp_path):
    """A CLI run writing into a folder before any studio made its lock: its marker is locked while it lives."""
    import fcntl
    import os

    history = History(tmp_path / "outputs")
    media = history.folder / "c.mp4"
    media.write_bytes(b"being written")
    marker = history.folder / ".c.mp4.writing"
    handle = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o666)
    fcntl.flock(handle, fcntl.LOCK_EX)
    os.write(handle, b"c.mp4")
    try:
        assert history.sweep() == [] and media.exists() and marker.exists()
    finally:
        os.close(handle)  # the writer is gone: what it claimed goes with the next sweep
    assert {p.name for p in history.sweep()} == {"c.mp4", ".c.mp4.writing"}


def test_a_marker_that_is_not_ours_removes_nothing(tmp_path):
    history = History(tmp_path / "outputs")
    notes = history.folder / "notes.txt"
    notes.write_text("mine")
    (history.folder / ".whatever.writing").write_text("notes.txt")  # names a file that is not its own
    (history.folder / ".notes.txt.writing").write_text("notes.txt")  # not a media file
    (history.folder / ".a.partial").mkdir()  # a folder with a temporary's name
    history.sweep()
    assert notes.read_text() == "mine" and (history.folder / ".a.partial").is_dir()


def test_the_refusal_names_the_flag_of_an_input_given_relative(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from conftest import moving_square
    from pipelines.video_io import write_mp4

    monkeypatch.chdir(tmp_path)
    write_mp4(tmp_path / "clip.mp4", moving_square(9), 8.0)
    assert run(tiny_model_dir, "restyle", "--video", "clip.mp4", "--strength", "0.5", "--out", "./clip.mp4") == 2
    assert "would write clip.mp4 over --video, which this run reads" in one_line(capsys)
