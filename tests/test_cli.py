"""The headless command line on a tiny model saved in diffusers layout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile_media import _png
from pipelines.modes import SPECS
from pipelines.video_io import read_video
from studio.cli import main

JOIN_MODES = tuple(mode for mode, spec in SPECS.items() if spec.joins)

ROOT = Path(__file__).resolve().parent.parent


def generate(model: Path, mode: str, out: Path, *extra: str) -> int:
    return main([mode, "--model", str(model), "--prompt", "a red ball moves left", "--seed", "4", "--quiet",
                 "--out", str(out), *extra])


def test_every_mode_through_the_cli(tiny_model_dir, tmp_path, capsys):
    base = tmp_path / "base.mp4"
    assert generate(tiny_model_dir, "t2v", base, "--frames", "9", "--frames-out", str(tmp_path / "frames"),
                    "--image-first") == 0
    sidecar = json.loads((tmp_path / "base.mp4.json").read_text())
    assert sidecar["request"]["num_frames"] == 9 and sidecar["frames"] == 9 and sidecar["request"]["image_first"]
    assert {"torch", "diffusers", "transformers"} <= set(sidecar["versions"])
    assert (tmp_path / "base.mp4.latents.safetensors").is_file()
    assert len(list((tmp_path / "frames").glob("*.png"))) == 9
    assert read_video(base, fps=8).shape == (9, 32, 32, 3)

    Image.fromarray(np.full((48, 40, 3), 200, np.uint8)).save(tmp_path / "still.png")
    runs = {
        "image.png": ("image",),
        "animate.mp4": ("animate", "--image", str(tmp_path / "still.png"), "--frames", "5"),
        "forward.mp4": ("extend", "--video", str(base), "--frames", "4", "--context-frames", "5"),
        "backward.mp4": ("extend", "--video", str(base), "--direction", "backward", "--frames", "8"),
        "loop.mp4": ("loop", "--video", str(base), "--frames", "3", "--best-of", "2"),
        "restyle.mp4": ("restyle", "--video", str(base), "--strength", "0.5"),
        "restyle-frames.mp4": ("restyle", "--video", str(tmp_path / "frames"), "--strength", "0.5"),
        "connect.mp4": ("connect", "--video", str(base), "--video-b", str(tmp_path / "forward.mp4"), "--frames", "7"),
    }
    expected_frames = {"image.png": 1, "animate.mp4": 5, "forward.mp4": 13, "backward.mp4": 17, "loop.mp4": 12,
                       "restyle.mp4": 9, "restyle-frames.mp4": 9, "connect.mp4": 9 + 7 + 13}
    for name, (mode, *extra) in runs.items():
        assert generate(tiny_model_dir, mode, tmp_path / name, *extra) == 0, name
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert meta["frames"] == expected_frames[name], name
        assert meta["request"]["mode"] == mode
        # The model's studio.json gives extend, loop and connect their own default guidance.
        assert meta["request"]["guidance_scale"] == (1.5 if mode in JOIN_MODES else 4.0), name
    assert Image.open(tmp_path / "image.png").size == (32, 32)
    assert read_video(tmp_path / "connect.mp4", fps=8).shape[0] == 29
    parents = json.loads((tmp_path / "connect.mp4.json").read_text())["parents"]
    assert parents == [str(base), str(tmp_path / "forward.mp4")]
    out = capsys.readouterr().out
    assert "was continued from its saved latents" in out
    loop_meta = json.loads((tmp_path / "loop.mp4.json").read_text())
    assert loop_meta["request"]["best_of"] == 2 and len(loop_meta["joins"]) == 2  # the seam and the wrap
    assert "joins " in out and "x the median step" in out


def test_loop_from_a_prompt_makes_a_base_clip_then_bridges_it(tiny_model_dir, tmp_path):
    assert generate(tiny_model_dir, "loop", tmp_path / "loop.mp4", "--frames", "3") == 0
    assert (tmp_path / "loop.base.mp4").is_file()
    meta = json.loads((tmp_path / "loop.mp4.json").read_text())
    assert meta["frames"] == 9 + 3 and meta["parents"] == [str(tmp_path / "loop.base.mp4")]
    base = json.loads((tmp_path / "loop.base.mp4.json").read_text())
    assert (base["request"]["guidance_scale"], meta["request"]["guidance_scale"]) == (4.0, 1.5)


def test_reproduce_gives_the_same_frames(tiny_model_dir, tmp_path):
    assert generate(tiny_model_dir, "t2v", tmp_path / "a.mp4", "--frames", "5", "--frames-out", str(tmp_path / "fa")) == 0
    # The sidecar names the model: reproduce needs nothing but the sidecar.
    assert main(["reproduce", "--request", str(tmp_path / "a.mp4.json"), "--quiet",
                 "--out", str(tmp_path / "b.mp4"), "--frames-out", str(tmp_path / "fb")]) == 0
    first, again = sorted((tmp_path / "fa").iterdir()), sorted((tmp_path / "fb").iterdir())
    assert len(first) == len(again) == 5
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, again))


def test_seconds_snap_and_say_so(tiny_model_dir, tmp_path, capsys):
    assert generate(tiny_model_dir, "t2v", tmp_path / "s.mp4", "--seconds", "1", "--fps", "6") == 0
    assert "snapped to 5 frames" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.mp4.json").read_text())["request"]["num_frames"] == 5


@pytest.mark.parametrize("args, message", [
    (["t2v", "--frames", "10"], r"--frames 10 is not valid: 4k\+1 .*nearest: 9 or 13"),
    (["extend", "--frames", "6", "--video", "{clip}"], "frames = 6 is not valid for extend.*4 or 8"),
    (["connect", "--frames", "5", "--video", "{clip}", "--video-b", "{clip}"], "frames = 5 .*connect.*3 or 7"),
    (["t2v", "--width", "40"], "width = 40 is not valid: a multiple of 16.*32 or 48"),
    (["t2v", "--steps", "0"], "steps = 0 is not valid"),
    (["t2v", "--best-of", "3"], "best_of = 3 is not valid: 1 for a request without joins"),
    (["animate", "--image", "{clip}", "--image-first"], "--image-first applies to t2v, not animate"),
    (["animate"], "animate needs --image"),
    (["extend", "--video", "missing.mp4"], "--video 'missing.mp4' does not exist"),
    (["restyle", "--video", "{clip}", "--strength", "1.5"], "init_strength = 1.5"),
    (["t2v", "--out", "x.avi"], "--out .*a .mp4, .gif or .png"),
    (["t2v", "--sampler", "ddim"], "invalid choice: 'ddim'"),
    (["t2v", "--seconds", "1", "--frames", "9"], "--frames or --seconds, not both"),
    (["t2v", "--seconds", "0"], "--seconds 0 is not valid"),
    (["restyle", "--video", "{clip}", "--frames", "0"], "--frames 0 is not valid"),
    (["image", "--frames", "0"], "image makes one frame"),
    (["t2v", "--device", "cuda:x"], "--device 'cuda:x' is not valid"),
    (["t2v", "--device", "tpu"], "--device 'tpu' is not valid"),
    (["reproduce", "--request", "{bad_json}"], "request keys .*a request needs prompt"),
    (["animate", "--image", "{bomb}"], r"bomb.png: the image is 9000x9000 \(81.0 MP\); the studio takes images up to 50"),
    (["extend", "--video", "{playlist}"], "list.mp4: this is a playlist"),
])
def test_bad_invocations_fail_with_one_line(tiny_model_dir, tmp_path, capsys, args, message):
    clip = tmp_path / "clip.mp4"
    (tmp_path / "bad.json").write_text('{"request": {"width": 32}}')
    (tmp_path / "bomb.png").write_bytes(_png(9000, 9000, b"\0" * 10))
    (tmp_path / "list.mp4").write_bytes(b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n")
    args = [a.replace("{bad_json}", str(tmp_path / "bad.json")).replace("{bomb}", str(tmp_path / "bomb.png"))
            .replace("{playlist}", str(tmp_path / "list.mp4")) for a in args]
    if any("{clip}" in a for a in args):
        assert generate(tiny_model_dir, "t2v", clip, "--frames", "9") == 0
        capsys.readouterr()
    args = [a.replace("{clip}", str(clip)) for a in args]
    code = main([*args[:1], "--model", str(tiny_model_dir), "--prompt", "a ball", "--quiet", *args[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err


def test_entry_point_and_offline_hub_message(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, str(ROOT / "launch.py"), "generate", "t2v", "--model",
                          "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "--prompt", "a cat"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "not in the local Hugging Face cache" in run.stderr and "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in run.stderr

    run = subprocess.run([sys.executable, str(ROOT / "launch.py"), "generate", "t2v", "--model", str(tiny_model_dir),
                          "--prompt", "a cat", "--frames", "5", "--out", str(tmp_path / "x.mp4")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and (tmp_path / "x.mp4").is_file()
