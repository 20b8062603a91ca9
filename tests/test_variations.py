"""Variations (pipelines/variations.py, studio/variations_cli.py): a grid of prompt variants times seeds on
one load, a contact sheet, drafts, and a draft cell rendered in full."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipelines import variations
from pipelines.video_io import read_video


def test_prompt_variants_multiply_and_braces_without_a_bar_stay():
    assert [p for p, _ in variations.expand("a {red|blue} {ball|star} {x}")] == [
        "a red ball {x}", "a red star {x}", "a blue ball {x}", "a blue star {x}"]
    grid = variations.cells("a {red| blue } ball", seed=7, seeds=2)
    assert [(c.prompt, c.seed, c.label) for c in grid] == [
        ("a red ball", 7, "red, seed 7"), ("a red ball", 8, "red, seed 8"),
        ("a blue ball", 7, "blue, seed 7"), ("a blue ball", 8, "blue, seed 8")]
    with pytest.raises(ValueError, match=r"prompt variant \{red\|\} is not valid"):
        variations.expand("a {red|} ball")
    with pytest.raises(ValueError, match="cells is too many: at most 64"):
        variations.cells("{a|b|c|d|e|f|g|h|i} {1|2|3|4|5|6|7|8}", 0, 1)
    with pytest.raises(ValueError, match="seeds = 0 is not valid"):
        variations.cells("a ball", 0, 0)


def test_a_two_by_two_draft_grid_then_one_cell_in_full(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import launch

    monkeypatch.chdir(tmp_path)
    common = ["--model", str(tiny_model_dir), "--device", "cpu", "--memory", "full", "--quiet"]
    assert launch.main(["generate", "t2v", *common, "--prompt", "a {red|blue} ball", "--seed", "3", "--steps", "10",
                        "--frames", "5", "--grid", "--seeds", "2", "--draft", "--out", "grid.mp4"]) == 0
    printed = capsys.readouterr().out
    assert "4 cells (red, seed 3, red, seed 4, blue, seed 3, blue, seed 4), 4 steps each (draft" in printed
    assert "--final --steps 10" in printed  # how to render one in full
    record = json.loads((tmp_path / "grid.grid.json").read_text())
    assert record["finished"] and record["draft"] and [c["output"] for c in record["cells"]] == [
        f"grid.{k}.mp4" for k in (1, 2, 3, 4)]
    requests = [json.loads((tmp_path / f"grid.{k}.mp4.json").read_text())["request"] for k in (1, 2, 3, 4)]
    assert [(r["prompt"], r["seed"], r["steps"]) for r in requests] == [
        ("a red ball", 3, 4), ("a red ball", 4, 4), ("a blue ball", 3, 4), ("a blue ball", 4, 4)]
    sheet = np.asarray(Image.open(tmp_path / "grid.sheet.png"))
    assert sheet.shape[0] >= 2 * 160 and sheet.shape[1] >= 2 * 3 * 160 and sheet.std() > 5  # 2x2 cells of 3 frames

    # The picked cell in full: the same prompt and seed at the full steps, the step cache off.
    assert launch.main(["generate", "reproduce", "--request", "grid.3.mp4.json", "--final", "--steps", "10",
                        *common[2:], "--out", "final.mp4"]) == 0
    final = json.loads((tmp_path / "final.mp4.json").read_text())
    assert (final["request"]["prompt"], final["request"]["seed"], final["request"]["steps"]) == ("a blue ball", 3, 10)
    assert final["step_cache"] is None
    # The draft itself reproduces as it was: its sidecar records the step cache it was made with.
    assert json.loads((tmp_path / "grid.3.mp4.json").read_text())["step_cache"] == variations.DRAFT_STEP_CACHE
    assert launch.main(["generate", "reproduce", "--request", "grid.3.mp4.json", *common[2:], "--out", "again.mp4"]) == 0
    assert "the step cache on at 0.1, as the sidecar records" in capsys.readouterr().out
    assert np.array_equal(read_video(tmp_path / "again.mp4", 8), read_video(tmp_path / "grid.3.mp4", 8))
    # A second grid never writes over the first.
    assert launch.main(["generate", "t2v", *common, "--prompt", "a ball", "--grid", "--out", "grid.mp4"]) == 2
    assert "grid.1.mp4 exists: choose another --out" in capsys.readouterr().err


def test_grid_options_out_of_place_are_refused_before_loading(tiny_model_dir, capsys):
    import launch

    assert launch.main(["generate", "t2v", "--model", str(tiny_model_dir), "--prompt", "a ball", "--seeds", "2"]) == 2
    assert "--seeds and --draft make a grid: add --grid" in capsys.readouterr().err
    assert launch.main(["generate", "t2v", "--model", str(tiny_model_dir), "--prompt", "a ball", "--final"]) == 2
    assert "--final renders a drafted output in full" in capsys.readouterr().err
