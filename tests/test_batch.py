"""Batch jobs: one load of the model for many requests, a failed line recorded while the rest run."""

from __future__ import annotations

import json
from pathlib import Path

from studio.cli import main


def test_a_batch_with_a_bad_line_writes_the_rest_and_says_what_failed(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["t2v", "--model", str(tiny_model_dir), "--prompt", "a seed clip", "--frames", "5", "--seed", "9",
                 "--quiet", "--out", "made-before.mp4"]) == 0
    sidecar = json.loads(Path("made-before.mp4.json").read_text())
    lines = [
        {"mode": "t2v", "prompt": "a red ball", "frames": 5, "seed": 1, "out": "a.mp4"},
        {"mode": "t2v", "prompt": "a blue ball", "frames": 6, "out": "bad.mp4"},  # not a valid length
        {"mode": "extend", "prompt": "on it goes", "video": "a.mp4", "frames": 4, "seed": 2, "out": "b.mp4"},
        {**sidecar, "request": {**sidecar["request"], "seed": 10}},  # an output's sidecar, another seed
        {"mode": "image", "prompt": "-a dash first", "seed": 3, "no_saved_latents": True, "out": "c.png"},
    ]
    Path("jobs.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
    capsys.readouterr()
    assert main(["batch", "--model", str(tiny_model_dir), "--jobs", "jobs.jsonl", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.count("loaded ") == 1  # the weights, once
    summary = json.loads(Path("jobs.summary.json").read_text())
    status = {r["line"]: r["status"] for r in summary["results"]}
    assert status == {1: "done", 2: "failed", 3: "done", 4: "done", 5: "done"}
    assert "--frames 6 is not valid" in summary["results"][1]["error"]
    assert "batch: 4 of 5 jobs done, 1 not (lines 2)" in out
    outputs = [Path(r["output"]) for r in summary["results"] if r["status"] == "done"]
    assert len(outputs) == 4 and all(p.is_file() and Path(f"{p}.json").is_file() for p in outputs)
    made = {p.name: json.loads(Path(f"{p}.json").read_text())["request"] for p in outputs}
    assert made["b.mp4"]["conditioning"][0]["source"] == str(Path("a.mp4").absolute())  # line 1's output, extended
    assert made["c.png"]["prompt"] == "-a dash first" and made["c.png"]["use_saved_latents"] is False
    again = next(r for name, r in made.items() if name not in ("a.mp4", "b.mp4", "c.png"))
    assert {k: v for k, v in again.items() if k != "seed"} == {k: v for k, v in sidecar["request"].items() if k != "seed"}
    assert again["seed"] == 10
    # A second run never writes over the first one's outputs or summary.
    before = {p: p.read_bytes() for p in Path(".").iterdir() if p.is_file()}
    assert main(["batch", "--model", str(tiny_model_dir), "--jobs", "jobs.jsonl", "--quiet"]) == 1
    assert all(p.read_bytes() == data for p, data in before.items())
    summary = json.loads(Path("jobs.summary-2.json").read_text())
    assert "already exists" in summary["results"][0]["error"]


def test_a_job_may_not_set_what_holds_for_the_whole_batch(tiny_model_dir, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"mode": "t2v", "prompt": "x", "model": "embedded"}) + "\n" +
                    json.dumps({"mode": "t2v", "prompt": "x", "bogus": 1}) + "\n" + "[1, 2]\n")
    assert main(["batch", "--model", str(tiny_model_dir), "--jobs", str(jobs), "--quiet"]) == 1
    errors = [r["error"] for r in json.loads((tmp_path / "jobs.summary.json").read_text())["results"]]
    assert "'model' holds for the whole batch" in errors[0]
    assert "'bogus' is not an option of generate" in errors[1]
    assert "not a JSON object" in errors[2]
    assert "loaded " not in capsys.readouterr().out  # nothing valid: the model never loads
    assert main(["batch", "--model", str(tiny_model_dir), "--jobs", str(tmp_path / "none.jsonl")]) == 2
