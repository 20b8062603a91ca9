"""A soak through the served studio: 50 mixed-mode jobs via gradio_client, every fifth cancelled."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("gradio_client")


def test_fifty_mixed_jobs_with_cancels_no_crash_and_no_memory_drift(tiny_model_dir, tmp_path):
    report = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--model", str(tiny_model_dir), "--jobs", "50",
                          "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(report.read_text())["summary"]
    rows = json.loads(report.read_text())["rows"]
    assert summary["jobs"] == 50 and summary["cancelled"] == 10 and summary["done"] == 40
    assert summary["unexpected"] == [] and summary["server_alive"]
    assert {r["kind"] for r in rows} >= {"t2v", "image", "animate", "extend", "extend back", "loop", "restyle", "connect"}
    assert all(0 < r["step"] < 60 for r in rows if r["status"] == "cancelled")  # stopped mid-run
    assert abs(summary["drift"]) < 0.05
