"""The benchmark scripts run end to end (tiny settings; the figures themselves come from real runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_benchmark_compares_ours_with_diffusers(tiny_model_dir, tmp_path):
    out = tmp_path / "cpu.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.cpu_vs_diffusers", "--model", str(tiny_model_dir),
                           "--steps", "2", "--width", "32", "--height", "32", "--frames", "5", "--repeats", "1", "--rounds", "1",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ours"]["step_s"] > 0 and result["diffusers"]["step_s"] > 0
    assert result["psnr_ours_vs_diffusers_db"] > 40  # the same computation, so nearly the same frames
    assert "| ours / diffusers |" in done.stdout


def test_startup_benchmark_times_each_start_against_importing_torch(tiny_model_dir, tmp_path):
    out = tmp_path / "startup.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--model", str(tiny_model_dir), "--rounds", "1",
                           "--steps", "2", "--clips", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    result = json.loads(out.read_text())
    seconds = result["seconds"]
    assert set(seconds) == {"torch", "first_step", "page", "cli", "diffusers"}
    # Every start imports torch; the CLI's first step comes before its whole run ends.
    assert all(0 < seconds["torch"]["min"] < row["min"] for name, row in seconds.items() if name != "torch")
    assert seconds["first_step"]["min"] < seconds["cli"]["min"]
    assert set(result["cpu_seconds"]) == set(seconds) and all(row["min"] > 0 for row in result["cpu_seconds"].values())
    assert set(result["ratios"]) == {"first_step/torch", "page/torch", "cli/diffusers"}
    clips = result["clips"]
    assert 0 < clips["first_step_after_page"] <= clips["first_clip_after_page"]
    assert 0 < clips["second_step"] <= clips["second_clip"]
    assert "| first_step/torch |" in done.stdout


def test_gpu_benchmark_runs_on_a_cpu_with_the_tiny_shape(tmp_path):
    """The CUDA benchmark's own code path, checked here on the tiny shape (compile variants excepted: they
    take a minute to compile on a CPU and gain nothing there)."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.cuda_wan", "--shape", "tiny", "--device", "cpu",
                           "--steps", "3", "--variants", "ours,attention,low-vram", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert list(rows) == ["diffusers", "ours", "attention", "low-vram"]
    assert result["dit_flops_per_step"] > 0 and result["matmul_peak_tflops"] > 0
    for name, row in rows.items():
        assert row["step_s"] > 0 and row["total_s"] > 0 and row["dit_tflops"] > 0, name
        assert row["psnr_db"] > 40, name  # batching, the backend and offloading do not change the output
    assert rows["attention"]["knobs"]["attention"] == "native"  # the only backend a CPU has
    assert "| fast" not in done.stdout and "| low-vram |" in done.stdout


def test_lora_benchmark_times_loading_switching_and_steps(tmp_path):
    out = tmp_path / "lora.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.lora", "--blocks", "1", "--rank", "4", "--tokens", "60",
                           "--rounds", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["ratios"]) == {"step_one/step_none", "step_two/step_none", "load_first/switch"}
    assert all(row["min"] > 0 for row in result["seconds"].values())
    assert "| load_first/switch |" in done.stdout


def test_parallel_benchmark_runs_each_layout_or_says_why_not(tiny_model_dir, tmp_path):
    out = tmp_path / "parallel.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.parallel", "--model", str(tiny_model_dir), "--device",
                           "cpu", "--size", "32x32", "--frames", "9", "--steps", "2", "--layouts", "cfg", "ring=2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    layouts = json.loads(out.read_text())["layouts"]
    assert layouts["cfg"]["ranks"] == 2 and layouts["cfg"]["mean_abs_error"] <= 1e-3
    assert layouts["ring=2"]["refused"].startswith("--parallel ring runs on CUDA only")  # on CPU: said, not hidden
