"""The planner (pipelines/planner.py) and the memory modes (pipelines/memory.py) on the embedded model.

Prediction accuracy against measured runs is shown by `python -m benchmarks.planner`; these tests hold the
behaviour: predictions grow with the work, a request that fits no mode is refused before any step with the
largest fitting size named, `auto` picks a lower mode when the memory demands it, whose saving is real and
whose run is the run of that mode by hand, and the calibration is cached.
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch

from pipelines import VideoPipeline, memory, planner
from pipelines.memory import MODES

PROMPT = "a red ball moving left"


@pytest.fixture(scope="module")
def pipe(one_torch_thread):
    # One thread (conftest.py): the calibration's timed steps take several times longer on two shared cores;
    # the planner keys its calibration by the thread count, so nothing here depends on it.
    return VideoPipeline.from_pretrained("embedded", device="cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("planner")


class Forwards:
    """Counts the denoiser's forwards while active."""

    def __init__(self, pipe):
        self.pipe, self.count = pipe, 0

    def __enter__(self):
        self.hook = self.pipe.transformer.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *exc):
        self.hook.remove()


@pytest.fixture(scope="module")
def calibrated(pipe, cache):
    """The first plan: it calibrates (timed sampling steps on the denoiser) and writes the cache."""
    planner.Calibration._memory.clear()
    with Forwards(pipe) as forwards:
        first = planner.plan(pipe, pipe.request("t2v", prompt=PROMPT), "full", cache=cache)
    return first, forwards.count


def test_calibration_is_cached_and_reused(pipe, cache, calibrated):
    first, forwards = calibrated
    assert forwards > 0  # the first plan timed the denoiser
    stored = json.loads((cache / planner.CALIBRATION_FILE).read_text())
    entry = stored["entries"][planner.calibration_key(pipe)]
    assert {"step", "decode", "text"} <= set(entry)
    assert len(entry["step"]["points"]) >= 3  # several token counts were timed
    planner.Calibration._memory.clear()  # only the file can answer now
    with Forwards(pipe) as again:
        second = planner.plan(pipe, pipe.request("t2v", prompt=PROMPT), "full", cache=cache)
    assert again.count == 0
    assert second.seconds == pytest.approx(first.seconds) and second.tokens == first.tokens


def test_predictions_grow_with_the_work(pipe, cache, calibrated):
    def plan(**settings):
        return planner.plan(pipe, pipe.request("t2v", prompt=PROMPT, **settings), "full", cache=cache)

    sizes = [plan(width=w, height=w) for w in (64, 128, 256, 512)]
    lengths = [plan(num_frames=f) for f in (5, 17, 65)]
    for series in (sizes, lengths):
        assert [p.tokens for p in series] == sorted({p.tokens for p in series})
        assert all(a.seconds < b.seconds for a, b in zip(series, series[1:]))
        assert all(a.peak <= b.peak for a, b in zip(series, series[1:])) and series[0].peak < series[-1].peak
    more_steps, unguided = plan(steps=40), plan(guidance_scale=1.0)
    assert more_steps.seconds > plan().seconds > unguided.seconds  # 40 steps; guidance runs two branches
    first = plan(image_first=True)
    assert first.passes == 2 and first.seconds > plan().seconds
    assert sizes[0].line.startswith("about ") and sizes[0].line.endswith(" GB")


def largest_named(message: str) -> tuple[int, int, int]:
    width, height, frames = map(int, re.search(r"at most (\d+)x(\d+) at (\d+) frames?", message).groups())
    return width, height, frames


def test_a_request_no_mode_fits_is_refused_before_any_step(pipe, cache, calibrated):
    request = pipe.request("t2v", prompt=PROMPT, width=512, height=384, num_frames=17, steps=2)
    small = planner.plan(pipe, request.replace(width=256, height=192), "minimal", cache=cache)
    capacity = small.peak + 2**20  # room for about 256x192, far less than 512x384 needs in any mode
    steps = []
    with Forwards(pipe) as forwards, pytest.raises(ValueError) as refused:
        planner.prepare(pipe, request, "auto", cache=cache, capacity=capacity)
        pipe.generate(request, callback=lambda *step: steps.append(step))
    assert forwards.count == 0 and steps == []
    message = str(refused.value)
    assert "512x384 at 17 frames does not fit" in message and "memory mode minimal" in message
    width, height, frames = largest_named(message)
    assert frames == 17 and width % pipe.grid == 0 and height % pipe.grid == 0
    assert abs(width / height - 512 / 384) < 0.2  # the same aspect, on the grid
    named = planner.plan(pipe, request.replace(width=width, height=height), "minimal", cache=cache, capacity=capacity)
    assert named.fits
    bigger = planner.plan(pipe, request.replace(width=width + pipe.grid, height=height + pipe.grid), "minimal",
                          cache=cache, capacity=capacity)
    assert not bigger.fits
    # The shorter length it names fits too.
    length = int(re.search(r"or 512x384 at (\d+) frames?", message).group(1))
    assert planner.plan(pipe, request.replace(num_frames=length), "minimal", cache=cache, capacity=capacity).fits


def measured(pipe, request) -> tuple[np.ndarray, int]:
    """(frames, peak bytes of the process's resident set above its use before) of one generation."""
    meter = planner.Meter(pipe.device)
    base = meter.start()
    frames = pipe.generate(request).frames
    peak = meter.peak() - base
    meter.stop()
    return frames, peak


def test_auto_picks_a_lower_mode_when_memory_demands_it(pipe, cache, calibrated):
    # Wider than a VAE tile (256 px): the lower modes decode in tiles, a smaller working set.
    request = pipe.request("t2v", prompt=PROMPT, width=512, height=256, num_frames=1, steps=1, seed=3)
    plans = {mode: planner.plan(pipe, request, mode, cache=cache) for mode in MODES}
    assert plans["full"].seconds <= min(p.seconds for p in plans.values())  # full is the fastest
    lower = min((p for p in plans.values() if p.peak < plans["full"].peak), key=lambda p: p.seconds)
    capacity = (plans["full"].peak + lower.peak) // 2
    planner.apply_memory(pipe, "full")
    _, full_peak = measured(pipe, request)
    chosen = planner.prepare(pipe, request, "auto", cache=cache, capacity=capacity)
    assert chosen.mode == lower.mode != "full" and chosen.fits and pipe.family.memory.name == lower.mode
    by_auto, auto_peak = measured(pipe, request)
    assert auto_peak < 0.8 * full_peak  # measured, not predicted: the mode's saving is real
    planner.apply_memory(pipe, "full")
    planner.apply_memory(pipe, lower.mode)  # the same mode, set by hand
    by_hand = pipe.generate(request).frames
    assert torch.equal(torch.from_numpy(by_auto), torch.from_numpy(by_hand))
    # With room for everything, auto keeps everything resident.
    assert planner.prepare(pipe, request, "auto", cache=cache).mode == "full"


def test_offloading_hooks_leave_the_output_unchanged(pipe):
    """Below a VAE tile and with guidance batched, low differs from full only by accelerate's hooks, which
    move nothing on a CPU: the clip is the same."""
    request = pipe.request("t2v", prompt=PROMPT, num_frames=5, steps=2, seed=5)
    frames = {}
    for mode in ("full", "low", "full"):
        planner.apply_memory(pipe, mode)
        assert pipe.family.memory.name == mode
        frames.setdefault(mode, pipe.generate(request).frames)
    assert np.array_equal(frames["full"], frames["low"])
    assert hasattr(pipe.transformer, "_hf_hook") is False  # back to full: no hooks left


def test_memory_arguments():
    parser = argparse.ArgumentParser()
    memory.add_arguments(parser)
    assert parser.parse_args([]).memory == "auto"
    assert parser.parse_args(["--low-vram"]).memory == "low"
    assert parser.parse_args(["--memory", "minimal", "--plan-only"]).plan_only
    assert memory.load_mode("auto") == "low" and memory.load_mode("full") == "full"
    with pytest.raises(ValueError, match="memory = 'tiny' is not valid: one of auto, full, low, minimal"):
        planner.plan(None, None, "tiny")


def test_a_crafted_calibration_file_is_not_trusted(pipe, cache, calibrated, tmp_path):
    """The file lives in the outputs folder: entries of another shape (edited or crafted) are measured again,
    never read as measurements, and nothing breaks."""
    key = planner.calibration_key(pipe)
    good = json.loads((cache / planner.CALIBRATION_FILE).read_text())["entries"][key]
    request = pipe.request("t2v", prompt=PROMPT)
    planner.Calibration._memory.clear()
    path = tmp_path / planner.CALIBRATION_FILE
    crafted = [
        {"step": {**good["step"], "beyond": "1; rm -rf"}, "decode": good["decode"]},
        {"step": {**good["step"], "points": [[1, 2]]}, "decode": good["decode"]},
        {"step": good["step"], "decode": {"time": [1.0, float("nan")], "memory": good["decode"]["memory"]}},
        {"step": {**good["step"], "overhead": True}, "decode": good["decode"]},
        {"step": good["step"], "decode": []},
    ]
    for entry in crafted:
        path.write_text(json.dumps({"version": planner.CALIBRATION_VERSION, "entries": {key: entry}}))
        assert planner.plan(pipe, request, "full", cache=tmp_path, calibrate=False) is None, entry
    for text in ("[1, 2]", "not json", json.dumps({"version": planner.CALIBRATION_VERSION, "entries": [1]})):
        path.write_text(text)
        assert planner.plan(pipe, request, "full", cache=tmp_path, calibrate=False) is None
    # The well-formed entry answers without timing anything.
    path.write_text(json.dumps({"version": planner.CALIBRATION_VERSION, "entries": {key: good}}))
    with Forwards(pipe) as forwards:
        assert planner.plan(pipe, request, "full", cache=tmp_path, calibrate=False).seconds > 0
    assert forwards.count == 0


def test_the_cli_measures_only_when_it_must_choose(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A memory mode given by hand starts at once (it prints the plan only if the model was measured);
    --plan-only measures, prints the plan and writes nothing else; auto then reads the measurements."""
    import launch

    monkeypatch.chdir(tmp_path)
    run = ["generate", "t2v", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--device", "cpu", "--quiet"]
    calibration = tmp_path / "outputs" / ".planner" / planner.CALIBRATION_FILE
    assert launch.main([*run, "--memory", "low", "--out", "by-hand.mp4"]) == 0
    printed = capsys.readouterr().out
    assert "plan: memory low; this model's time and memory on this device are not measured yet" in printed
    assert not calibration.exists() and (tmp_path / "by-hand.mp4").is_file()

    assert launch.main([*run, "--plan-only", "--out", "planned.mp4"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"plan: about \d+ s, [\d.]+ of [\d.]+ GB \(memory full;", printed), printed
    assert calibration.is_file() and not (tmp_path / "planned.mp4").exists()

    assert launch.main([*run, "--memory", "minimal", "--out", "known.mp4"]) == 0
    assert re.search(r"plan: about \d+ s, .*\(memory minimal;", capsys.readouterr().out)


def test_the_studio_shows_the_plan_once_the_model_is_measured(tiny_model_dir, tmp_path):
    """Under --memory auto the studio measures the model on its first generation; its plan line says so
    until then, and gives the time and memory after (a line that times nothing itself)."""
    from studio.app import ModelInfo, StudioApp
    from studio.engine import Engine
    from studio.outputs import History

    planner.Calibration._memory.clear()  # what this process measured before (the CLI's test) answers otherwise
    tiny = VideoPipeline.from_pretrained(str(tiny_model_dir), device="cpu", memory="low")
    engine = Engine(tiny, History(tmp_path / "outputs"), memory="auto", planner_cache=tmp_path / "outputs" / ".planner")
    app = StudioApp(engine, ModelInfo.of(tiny))
    values = {"prompt": PROMPT, "seed": 1, "steps": 2, "seconds": 1.0, "fps": 8, "size": "32x32",
              "guidance": 4.0}
    assert app.plan("t2v", values) == "Time and memory: measured on this model's first generation (once per " \
                                      "model and device)."
    assert app.plan("animate", {**values, "image": None}) == ""  # nothing to plan before an upload
    assert app.plan("t2v", {**values, "size": "33x32"}).startswith("Cannot generate this: ")
    job = engine.submit(app.request("t2v", values))
    seen = {state.message for state in engine.follow(job, interval=0.01) if state.status == "running"}
    assert job.status == "done", job.message
    assert "Timing this model on this device first (once per model and device)..." in seen  # the status says why
    line = app.plan("t2v", values)
    assert re.fullmatch(r"Time and memory: about \d+ s, [\d.]+ of [\d.]+ GB \(memory full\)\.", line), line


def test_a_probe_the_smaller_ones_predict_too_costly_is_not_run(pipe, tmp_path, monkeypatch):
    """A large model calibrates on its smallest probes only, rather than for hours or out of memory, and
    still plans (reading further past its largest probe)."""
    monkeypatch.setattr(planner, "PROBE_BUDGET_S", 1e-6)
    planner.Calibration._memory.clear()
    request = pipe.request("t2v", prompt=PROMPT, width=256, height=256, num_frames=17)
    with Forwards(pipe) as forwards:
        plan = planner.plan(pipe, request, "full", cache=tmp_path)
    entry = json.loads((tmp_path / planner.CALIBRATION_FILE).read_text())["entries"][planner.calibration_key(pipe)]
    assert len(entry["step"]["points"]) == 1 and len(entry["decode"]["points"]) == 1
    assert forwards.count <= 4 * planner.PROBE_STEPS  # one size (and image-first's probe), not four
    assert plan.seconds > 0 and plan.peak > 0
    planner.Calibration._memory.clear()
