"""Nothing a user saved is lost: simultaneous jobs and CLI runs get names of their own, the CLI never writes
over its inputs or an existing file unasked, and a full disk leaves no half output behind."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest
from safetensors.torch import load_file

from conftest import ROOT, fill, launched_studio
from pipelines import text_to_video
from studio import cli
from studio.engine import Engine
from studio.outputs import LOCK_NAME, DiskFull, History, _folder_lock

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

SETTINGS = ("", 7, 2, 4.0, "default", "1:1 · 32x32")  # negative, seed, steps, guidance, sampler, size


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def assert_whole(media: Path) -> dict:
    """The output's sidecar, after checking that every file it names is whole."""
    sidecar = json.loads((media.parent / f"{media.name}.json").read_text())
    assert media.stat().st_size == sidecar["bytes"]
    assert decoded_frames(media) == sidecar["frames"]
    assert load_file(str(media.parent / sidecar["latents"]))["latents"].numel() > 0
    return sidecar


def test_twenty_simultaneous_submissions_with_one_seed_give_twenty_outputs(tiny_model_dir, tmp_path):
    with launched_studio(tiny_model_dir, tmp_path / "outputs", queue_size=20) as (url, history):
        clients = [Client(url, verbose=False) for _ in range(20)]
        start = threading.Barrier(20)

        def submit(index: int) -> dict:
            start.wait()
            return clients[index].predict(f"ball number {index}", *SETTINGS, 1.0, 8, False, False, api_name="/t2v")[4]

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(submit, range(20)))
        assert [r["status"] for r in results] == ["done"] * 20
        outputs = {r["output"] for r in results}
        assert len(outputs) == 20
        prompts = {assert_whole(Path(o))["request"]["prompt"] for o in outputs}
        assert prompts == {f"ball number {i}" for i in range(20)}  # each output is its own request's
        assert len(history.entries()) == 20


def test_cli_runs_started_together_keep_every_output(tiny_model_dir, tmp_path):
    # Two processes, as two terminals would start them; the CLI's default folder is ./outputs.
    runs = [subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "generate", "t2v", "--model",
                              str(tiny_model_dir), "--prompt", f"run {index}", "--seed", "3", "--frames", "5",
                              "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for index in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [run.stderr.read() for run in runs]
    sidecars = sorted((tmp_path / "outputs").glob("*.mp4.json"))
    assert {json.loads(s.read_text())["request"]["prompt"] for s in sidecars} == {"run 0", "run 1"}


@pytest.fixture(scope="module")
def clip(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    assert cli.main(["t2v", "--model", str(tiny_model_dir), "--prompt", "a ball", "--seed", "1", "--frames", "9",
                     "--quiet", "--out", str(folder / "clip.mp4"), "--frames-out", str(folder / "frames")]) == 0
    return folder / "clip.mp4"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("mode, extra, message", [
    ("restyle", ["--video", "{clip}", "--strength", "0.5", "--out", "{clip}"], "would write clip.mp4 over --video"),
    ("extend", ["--video", "{clip}", "--frames", "4", "--out", "{clip}"], "would write clip.mp4 over --video"),
    ("loop", ["--video", "{clip}", "--frames", "3", "--out", "{clip}"], "would write clip.mp4 over --video"),
    ("connect", ["--video", "{other}", "--video-b", "{clip}", "--frames", "3", "--out", "{clip}"],
     "would write clip.mp4 over --video-b"),
    ("restyle", ["--video", "{frames}", "--strength", "0.5", "--out", "{new}", "--frames-out", "{frames}"],
     "--frames-out .* is where --video lives"),
    ("restyle", ["--video", "{clip}", "--strength", "0.5", "--out", "{clip}", "--overwrite"],
     "would write clip.mp4 over --video"),
    ("t2v", ["--out", "{clip}"], "clip.mp4, clip.mp4.latents.safetensors, clip.mp4.json already exists; .*--overwrite"),
])
def test_the_cli_never_writes_over_its_input_or_an_existing_output(tiny_model_dir, clip, capsys, mode, extra,
                                                                   message):
    folder = clip.parent
    before = snapshot(folder)
    fill = {"{clip}": str(clip), "{frames}": str(folder / "frames"), "{new}": str(folder / "new.mp4"),
            "{other}": str(folder / "other.mp4")}
    if "{other}" in extra and not (folder / "other.mp4").exists():
        (folder / "other.mp4").write_bytes(clip.read_bytes())
        before = snapshot(folder)
    args = [fill.get(a, a) for a in extra]
    code = cli.main([mode, "--model", str(tiny_model_dir), "--prompt", "x", "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert snapshot(folder) == before  # not a byte of the input, its sidecars or frames changed


def test_overwrite_replaces_exactly_the_asked_path(tiny_model_dir, tmp_path):
    target = tmp_path / "take.mp4"
    args = ["t2v", "--model", str(tiny_model_dir), "--frames", "5", "--quiet", "--out", str(target)]
    assert cli.main([*args, "--prompt", "first", "--seed", "1"]) == 0
    assert cli.main([*args, "--prompt", "second", "--seed", "2"]) == 2  # refused: it exists
    assert json.loads((tmp_path / "take.mp4.json").read_text())["request"]["prompt"] == "first"
    assert cli.main([*args, "--prompt", "second", "--seed", "2", "--overwrite"]) == 0
    assert assert_whole(target)["request"]["prompt"] == "second"


def test_files_in_the_way_are_kept_and_the_name_moves_on(wan21, tmp_path, monkeypatch):
    import studio.outputs

    monkeypatch.setattr(studio.outputs, "output_name", lambda mode, seed: "20260101-120000-000-t2v-4")  # one clock
    history = History(tmp_path / "outputs")
    result = wan21.generate(text_to_video("a ball", num_frames=5, width=32, height=32, steps=1, seed=4))
    first, _ = history.write(result)
    assert first.name == "20260101-120000-000-t2v-4.mp4"
    # Someone put files at the names the next writes would get: they are kept, each output goes further on.
    crafted = [history.folder / name for name in ("20260101-120000-000-t2v-4-2.mp4.latents.safetensors",
                                                  "20260101-120000-000-t2v-4-3.mp4.json",
                                                  "20260101-120000-000-t2v-4-4.gif")]
    for path in crafted:
        path.write_bytes(b"not mine to replace")
    paths = [history.write(result)[0] for _ in range(2)]
    assert [p.name for p in paths] == ["20260101-120000-000-t2v-4-5.mp4", "20260101-120000-000-t2v-4-6.mp4"]
    assert all(assert_whole(p) for p in paths)
    assert all(path.read_bytes() == b"not mine to replace" for path in crafted)
    assert not (history.folder / "20260101-120000-000-t2v-4-2.mp4").exists()  # claims released on a clash


def test_the_sweep_keeps_files_no_writer_of_ours_claimed(wan21, tmp_path):
    """A video whose sidecar was deleted by hand, and a user's own file, are not a crash's leftovers: they stay
    (unlisted). What a killed writer left is swept: tests/test_review_findings.py and test_crash_safety.py."""
    history = History(tmp_path / "outputs")
    result = wan21.generate(text_to_video("a ball", num_frames=5, width=32, height=32, steps=1, seed=4))
    kept, _ = history.write(result)
    bare, _ = history.write(result)
    (bare.parent / f"{bare.name}.json").unlink()
    mine = tmp_path / "outputs" / "holiday.mp4"
    mine.write_bytes(b"precious")
    assert history.sweep() == [] and bare.is_file() and mine.read_bytes() == b"precious"
    assert [e.media for e in history.entries()] == [kept]


def test_the_sweep_waits_for_a_writer_in_another_process(tmp_path):
    history = History(tmp_path / "outputs")
    leftover = history.folder / ".20260101-000000-000-t2v-1.abc.partial.mp4"
    leftover.write_bytes(b"\0")
    swept = threading.Event()
    with _folder_lock(history.folder, exclusive=False):  # a writer is busy
        threading.Thread(target=lambda: (history.sweep(), swept.set()), daemon=True).start()
        assert not swept.wait(0.5) and leftover.exists()
    assert swept.wait(10) and not leftover.exists()


def test_a_full_disk_keeps_nothing_half_written_and_says_so(wan21, tmp_path, small_disk):
    result = wan21.generate(text_to_video("a ball", num_frames=9, width=32, height=32, steps=1, seed=4))
    probe = History(tmp_path / "probe")
    out, _ = probe.write(result)
    video = out.stat().st_size
    history = History(small_disk / "outputs")
    engine = Engine(wan21, history)
    before = sorted(p.name for p in history.folder.rglob("*"))
    fill(small_disk, leave=video + 4096)  # room for the video, not for the rest
    job = engine.run(result.request)
    assert job.status == "failed" and "is full" in job.message and "Free some space" in job.message, job.message
    assert sorted(p.name for p in history.folder.rglob("*")) == before  # nothing of the output was kept
    with pytest.raises(DiskFull, match="is full"):
        history.write(result)
    assert sorted(p.name for p in history.folder.rglob("*")) == before
    (small_disk / "filler").unlink()
    assert engine.run(result.request).status == "done"  # with room again, the same request saves


def test_a_full_disk_is_one_line_from_the_cli(tiny_model_dir, small_disk, capsys):
    fill(small_disk, leave=8192)
    code = cli.main(["t2v", "--model", str(tiny_model_dir), "--prompt", "a ball", "--frames", "9", "--quiet",
                     "--out", str(small_disk / "clip.mp4")])
    err = capsys.readouterr().err
    assert code == 1 and "is full" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert LOCK_NAME  # the folder of a plain --out needs no lock file


def test_a_fresh_name_skips_what_exists_beside_it_and_is_claimed_by_creating_it(tmp_path):
    from studio.outputs import claim_fresh

    (tmp_path / "take.mp4").write_bytes(b"someone's")  # the name itself, taken
    (tmp_path / "take-2.mp4.windows").mkdir()  # what a name brings beside it, taken
    (tmp_path / "take-3.mp4.storyboard.json").symlink_to(tmp_path / "nowhere")  # a dangling link counts too
    got = claim_fresh(tmp_path, "take", ".mp4", beside=(".mp4.windows", ".mp4.storyboard.json"))
    assert got == tmp_path / "take-4.mp4" and got.read_bytes() == b""
    assert (tmp_path / "take.mp4").read_bytes() == b"someone's"
    assert claim_fresh(tmp_path, "take", ".mp4") == tmp_path / "take-2.mp4"  # the next caller: another name
