"""One home per mode (pipelines.modes.SPECS): a mode added with a spec and a builder alone is offered by the
CLI and the studio and read back by Reproduce; Reproduce gives the settings it gave before the specs, for
sidecars written then and for outputs written now."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import moving_square
from pipelines import modes
from pipelines.request import ConditioningItem, GenerationRequest
from pipelines.video_io import write_mp4, write_png
from studio.app import ModelInfo, StudioApp, build, tab_inputs, tab_modes
from studio.creator_tools import CREATOR, NO_LORA
from studio.cli import build_parser, main
from studio.engine import Engine
from studio.outputs import History

BEFORE = Path(__file__).parent / "data" / "sidecars_before_mode_specs.json"


def open_on(image: str, prompt: str, num_frames: int, hold: float = 0.5, **settings) -> GenerationRequest:
    """A mode no one wrote before this test: the clip opens on the still, held loosely."""
    item = ConditioningItem(source=image, frame_index=0, strength=hold, source_count=1)
    return GenerationRequest(prompt=prompt, mode="open_on", num_frames=num_frames, conditioning=(item,), **settings)


@pytest.fixture
def open_on_mode():
    spec = modes.register(modes.ModeSpec("open_on", "Open on a still", open_on, (
        modes.Param("image", "image", "a still to open on", flag="--open-image"),
        modes.Param("hold", "float", "how firmly the still is held", default=0.5),
        modes.Param("num_frames", "length", "length of the clip", widget="seconds", model_default="num_frames"),
    ), held=1))
    try:
        yield spec
    finally:
        modes.SPECS.pop(spec.name)


def test_a_mode_added_with_a_spec_and_a_builder_is_offered_everywhere(open_on_mode, tiny_model_dir, wan21, tmp_path):
    still = tmp_path / "still.png"
    write_png(still, moving_square(1, 32, 32, seed=9)[0])
    # The CLI: a choice with its own options (refused for other modes, as any mode's are).
    assert main(["open_on", "--model", str(tiny_model_dir), "--prompt", "a ball", "--open-image", str(still),
                 "--hold", "0.75", "--frames", "9", "--seed", "2", "--quiet", "--out", str(tmp_path / "a.mp4"),
                 "--frames-out", str(tmp_path / "fa")]) == 0
    request = json.loads((tmp_path / "a.mp4.json").read_text())["request"]
    assert (request["mode"], request["conditioning"][0]["strength"]) == ("open_on", 0.75)
    assert request["mode_params"] == {"image": str(still.absolute()), "hold": 0.75, "num_frames": 9}
    assert main(["t2v", "--model", str(tiny_model_dir), "--prompt", "x", "--hold", "0.5", "--quiet"]) == 2
    # Reproduce from its sidecar gives the same frames.
    assert main(["reproduce", "--request", str(tmp_path / "a.mp4.json"), "--quiet", "--out", str(tmp_path / "b.mp4"),
                 "--frames-out", str(tmp_path / "fb")]) == 0
    first, again = sorted((tmp_path / "fa").iterdir()), sorted((tmp_path / "fb").iterdir())
    assert len(first) == 9 and [a.read_bytes() for a in first] == [b.read_bytes() for b in again]
    # The studio lists it, serves a tab for it, builds its request by widget name and loads it back.
    assert [spec.name for spec in tab_modes()["open_on"]] == ["open_on"]
    info = ModelInfo.of(wan21)
    history = History(tmp_path / "outputs")
    demo = build(Engine(wan21, history), info)
    assert "open_on" in {fn.api_name for fn in demo.fns.values()}
    names = tab_inputs("open_on", info)
    assert names == ["image", "hold", "prompt", "negative", "seed", "steps", "guidance", "sampler", "size", "seconds",
                     "fps"]
    app = StudioApp(Engine(wan21, history), info)
    request = app.request("open_on", dict(image=str(still), hold=0.25, prompt="a ball", negative="", seed=2, steps=2,
                                          guidance=4.0, sampler="default", size="32x32", seconds=0.5, fps=8))
    assert (request.mode, request.num_frames, request.conditioning[0].strength) == ("open_on", 5, 0.25)
    media, _ = history.write(wan21.generate(request), gif=False)
    values = app.reproduce_values(media.name)
    assert (values["tab"], values["seconds"], values["hold"]) == ("open_on", 5 / 8, 0.25)
    assert Path(values["image"]).read_bytes() == still.read_bytes()
    again = app.request("open_on", {name: values[name] for name in names})
    assert again == request.replace(conditioning=(request.conditioning[0].__class__(
        **{**request.conditioning[0].__dict__, "source": values["image"]}),))


def _outputs_from_before(tmp_path: Path) -> tuple[History, dict]:
    """The sidecars the studio wrote before the specs, in an outputs folder with their media and uploads
    (clips and a still of the lengths and sizes they were made from)."""
    outputs = tmp_path / "outputs"
    cases = json.loads(BEFORE.read_text().replace("{outputs}", str(outputs.resolve())))
    lengths = {"clip.mp4": 17, "other.mp4": 13, "still.png": 1}
    for case in cases.values():
        for path in map(Path, case["sidecar"]["parents"]):
            path.parent.mkdir(parents=True, exist_ok=True)
            frames = moving_square(lengths[path.name], 48, 32, seed=len(path.name))
            write_png(path, frames[0]) if path.suffix == ".png" else write_mp4(path, frames, 8.0)
    for case in cases.values():
        media = outputs / case["media"]
        shutil.copyfile(next(p for p in outputs.glob("uploads/*/*") if p.suffix == media.suffix), media)
        case["sidecar"]["bytes"] = media.stat().st_size
        Path(f"{media}.json").write_text(json.dumps(case["sidecar"]))
    return History(outputs), cases


def without_creator_tools(values: dict) -> dict:
    """The values the sidecars from before recorded: the LoRA slots and the enhancer's record came later, and
    a request without them fills them empty."""
    assert {k: values[k] for k in CREATOR} == {**{k: NO_LORA for k in CREATOR if k.startswith("lora_") and
                                                  not k.startswith("lora_strength")},
                                               **{k: 1.0 for k in CREATOR if k.startswith("lora_strength")},
                                               "enhanced": None}
    return {k: v for k, v in values.items() if k not in CREATOR}


def test_sidecars_written_before_the_specs_reproduce_as_they_did(wan21, tmp_path):
    history, cases = _outputs_from_before(tmp_path)
    app = StudioApp(Engine(wan21, history), ModelInfo.of(wan21))
    assert {case["sidecar"]["request"]["mode"] for case in cases.values()} == set(modes.SPECS)
    for name, case in cases.items():
        assert "mode_params" not in case["sidecar"]["request"], name
        assert without_creator_tools(app.reproduce_values(case["media"])) == case["values"], name


def test_outputs_written_now_record_their_parameters_and_reproduce_as_before(wan21, tmp_path):
    """The requests of the sidecars from before, built now from the parameters read off their layout: the
    same requests; written now, recording those parameters, they reproduce as the sidecars from before did."""
    history, cases = _outputs_from_before(tmp_path)
    app = StudioApp(Engine(wan21, history), ModelInfo.of(wan21))
    for name, case in cases.items():
        then = GenerationRequest.from_dict(case["sidecar"]["request"])
        spec = modes.spec_of(then.mode)
        settings = {k: getattr(then, k) for k in ("negative_prompt", "width", "height", "fps", "steps", "seed",
                                                  "guidance_scale", "sampler", "best_of")}
        now = spec.builder(prompt=then.prompt, **spec.values(then), **settings)
        assert now == then and now.mode_params == {**spec.values(then), **now.mode_params}, name
        media, sidecar = history.write(wan21.generate(now), gif=False)
        assert sidecar["request"]["mode_params"] == now.mode_params, name
        assert without_creator_tools(app.reproduce_values(media.name)) == case["values"], name


def test_every_option_and_widget_is_a_specs(wan21):
    """The CLI has an option for every mode parameter, and each studio tab's widgets include every parameter
    of its modes that the studio offers, and the checkboxes that pick them."""
    options = {option for action in build_parser()._actions for option in action.option_strings}
    info = ModelInfo.of(wan21)
    for spec in modes.SPECS.values():
        for param in spec.params:
            assert (param.option if param.kind != "length" else "--frames") in options, (spec.name, param.name)
    for tab, specs in tab_modes().items():
        names = tab_inputs(tab, info)
        for spec in specs:
            assert all(p.key in names for p in spec.params if p.studio and not p.knob), (tab, spec.name)
            assert spec.switch is None or spec.switch in names
