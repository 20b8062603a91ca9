"""Outputs survive SIGKILL at any moment of a write: the history lists only whole files."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_twenty_kills_during_writing_list_no_truncated_output(tiny_model_dir, tmp_path):
    report_path = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.kill_during_write", "--model", str(tiny_model_dir),
                          "--outputs", str(tmp_path / "outputs"), "--kills", "20", "--json", str(report_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["kills"] == 20 and report["broken_listed"] == [] and report["partial_after_sweep"] == 0
    assert report["unfinished_after_sweep"] == 0  # what the killed writers claimed went with the sweep
    assert report["listed"] >= 20  # the writers got work done between kills
    # The kills did land mid-write: they left temporaries (swept) or videos whose sidecar never came.
    assert report["partial_files_left_by_kills"] + report["videos_without_sidecar"] >= 10, report
