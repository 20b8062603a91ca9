"""Variations (pipelines/variations.py, studio/variations_cli.py): a grid of prompt variants times seeds on
one load, a contact sheet, drafts, and a draft cell rendered in full."""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    assert "--final (at 10 steps, the grid's own)" in printed  # how to render one in full
    record = json.loads((tmp_path / "grid.grid.json").read_text())
    assert record["finished"] and record["draft"] and [c["output"] for c in record["cells"]] == [
        f"grid.{k}.mp4" for k in (1, 2, 3, 4)]
    sidecars = [json.loads((tmp_path / f"grid.{k}.mp4.json").read_text()) for k in (1, 2, 3, 4)]
    requests = [s["request"] for s in sidecars]
    assert [s["grid"] for s in sidecars][2] == {"record": "grid.grid.json", "cell": 3, "of": 4, "label": "blue, seed 3",
                                                "draft": True, "final_steps": 10}  # each cell's lineage to its grid
    assert [(r["prompt"], r["seed"], r["steps"]) for r in requests] == [
        ("a red ball", 3, 4), ("a red ball", 4, 4), ("a blue ball", 3, 4), ("a blue ball", 4, 4)]
    sheet = np.asarray(Image.open(tmp_path / "grid.sheet.png"))
    assert sheet.shape[0] >= 2 * 160 and sheet.shape[1] >= 2 * 3 * 160 and sheet.std() > 5  # 2x2 cells of 3 frames

    # The picked cell in full: the same prompt and seed at the grid's full steps, the step cache off.
    assert launch.main(["generate", "reproduce", "--request", "grid.3.mp4.json", "--final",
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


# ---- the studio: each tab's "Generate variations", the shared panel, "Render final" ------------------------------
@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory):
    from conftest import launched_studio

    with launched_studio(tiny_model_dir, tmp_path_factory.mktemp("grid-outputs")) as (url, history):
        yield url, history


def t2v_inputs(prompt: str, seed: int, steps: int, size: str = "1:1 · 32x32") -> tuple:
    """The t2v tab's inputs as its endpoints take them (prompt, negative, seed, steps, guidance, sampler, size,
    seconds, fps, one_frame)."""
    return prompt, "", seed, steps, 4.0, "default", size, 1.0, 8, False


def grid_cells(history, record_name: str) -> list[dict]:
    return json.loads((history.folder / record_name).read_text())["cells"]


def test_a_two_by_two_grid_in_the_studio_then_a_cell_in_full(studio):
    from gradio_client import Client
    from safetensors.torch import load_file

    url, history = studio
    client = Client(url, verbose=False)
    status, sheet, picked = client.predict(2, True, *t2v_inputs("a {red|blue} ball", 5, 10), api_name="/t2v_grid")
    assert "Done in" in status and "4 cells" in status and "Render final" in status
    sidecars = {e.media.name: e.sidecar for e in history.entries() if "grid" in e.sidecar}
    assert len(sidecars) == 4
    record = next(iter(sidecars.values()))["grid"]["record"]
    cells = grid_cells(history, record)
    assert [(c["prompt"], c["seed"], c["steps"]) for c in cells] == [
        ("a red ball", 5, 4), ("a red ball", 6, 4), ("a blue ball", 5, 4), ("a blue ball", 6, 4)]
    assert sorted(c["output"] for c in cells) == sorted(sidecars)  # each cell an ordinary output in the History
    assert all(s["step_cache"] == variations.DRAFT_STEP_CACHE and s["grid"]["final_steps"] == 10
               for s in sidecars.values())
    # the picker offers each cell by its label, the first picked
    assert picked["choices"] == [[f"{k}. {c['label']}", c["output"]] for k, c in enumerate(cells, 1)]
    assert picked["value"] == cells[0]["output"]
    shown = np.asarray(Image.open(sheet))
    assert shown.shape[0] >= 2 * 160 and shown.shape[1] >= 2 * 3 * 160 and shown.std() > 5
    assert np.array_equal(shown, np.asarray(Image.open(history.folder / record.replace(".grid.json", ".sheet.png"))))

    # Render final of cell 3: its prompt and seed at the grid's 10 steps, the step cache off; the same frames
    # as a plain generation of those settings, and not the draft's.
    final = client.predict(cells[2]["output"], api_name="/render_final")[4]
    assert final["status"] == "done"
    made = final["sidecar"]
    assert (made["request"]["prompt"], made["request"]["seed"], made["request"]["steps"]) == ("a blue ball", 5, 10)
    assert made["step_cache"] is None and made["final_of"] == cells[2]["output"]
    plain = client.predict(*t2v_inputs("a blue ball", 5, 10), api_name="/t2v")[4]
    def latents(output: str):
        return load_file(f"{output}.latents.safetensors")["latents"]
    assert latents(final["output"]).equal(latents(plain["output"]))
    draft = latents(str(history.folder / cells[2]["output"]))
    assert (draft - latents(final["output"])).abs().mean() > 0.05
    # Only a cell this session's grid offers is taken: another output, or a path, is refused.
    for name in (Path(plain["output"]).name, "../../etc/passwd"):
        with pytest.raises(Exception, match="is not in the list of choices"):
            client.predict(name, api_name="/render_final")
    with pytest.raises(Exception, match="Pick a cell of a grid first"):
        Client(url, verbose=False).predict(None, api_name="/render_final")
    with pytest.raises(Exception, match="Seeds per variant 2.5 is not valid: a whole number from 1 to 16"):
        client.predict(2.5, True, *t2v_inputs("a ball", 5, 10), api_name="/t2v_grid")


def test_cancelling_mid_grid_keeps_the_finished_cells(studio):
    from gradio_client import Client

    url, history = studio
    client = Client(url, verbose=False)
    before = {e.media.name for e in history.entries()}
    # 4 cells of 40 full steps at 64x64: long enough to cancel in cell 2.
    job = client.submit(4, False, *t2v_inputs("a green star", 11, 40, "1:1 · 64x64"), api_name="/t2v_grid")
    deadline = time.time() + 120
    while time.time() < deadline and not any("Cell 2 of 4" in str(o[0]) for o in job.outputs()):
        time.sleep(0.05)
    assert client.predict(api_name="/cancel") == "Cancelling after the current step..."
    status, sheet, picked = job.result(timeout=120)
    assert "Cancelled after 1 of 4 cells: the finished cells are kept" in status
    new = {e.media.name: e.sidecar for e in history.entries()}
    made = {name: s for name, s in new.items() if name not in before}
    assert len(made) == 1 and picked["value"] in made  # the finished cell, listed; nothing of the cancelled one
    record = made[picked["value"]]["grid"]["record"]
    summary = json.loads((history.folder / record).read_text())
    assert summary["finished"] is False and summary["of"] == 4 and [c["output"] for c in summary["cells"]] == [picked["value"]]
    assert np.asarray(Image.open(sheet)).std() > 5
    assert not [p.name for p in history.folder.iterdir() if "partial" in p.name or p.name.endswith(".writing")]


def test_a_model_too_shallow_for_the_step_cache_drafts_without_it_and_says_why(tiny_model_dir, tmp_path):
    """First Block Cache needs two blocks: on one (the real-config builders shrink to one) `--step-cache` is a
    plain error, not diffusers' IndexError, and a draft grid runs with fewer steps only."""
    from pipelines import VideoPipeline
    from studio.grid import Grid

    pipe = VideoPipeline.from_pretrained(str(tiny_model_dir), device="cpu")
    base = pipe.request("t2v", prompt="a {red|blue} ball", seed=1, num_frames=5)
    draft = Grid(base, variations.cells(base.prompt, 1, 1), True, tmp_path / "s.png", tmp_path / "r.json")
    assert pipe.can_step_cache and draft.step_cache(pipe) == variations.DRAFT_STEP_CACHE
    denoiser = pipe.family.denoisers[0]
    denoiser.blocks = denoiser.blocks[:1]
    assert not pipe.can_step_cache and draft.step_cache(pipe) is None
    with pytest.raises(ValueError, match="the step cache needs a denoiser of at least 2 transformer blocks .* has 1"):
        pipe.accelerate(step_cache=0.1)
    assert pipe.step_cache is None and not any(getattr(m, "is_cache_enabled", False) for m in pipe.family.denoisers)
