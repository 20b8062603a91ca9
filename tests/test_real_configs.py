"""The real-configuration harness (issue 26): every model of the registry, built from its checkpoint's published
configs with random weights (only depths and the text encoder's vocabulary shrink), is served by the studio with
every tab's defaults and presets valid, and runs each mode it offers once through the command line.

Builders come from every `tests/tiny_*.py` module's REAL_CONFIGS (a registry name -> a function writing the
diffusers folder), so a family's module joins the harness without an edit here; a registry name without a builder
fails. Each folder is put where the registry name resolves to it (the hub cache, as `hf download` leaves it), so
`--model NAME` runs exactly as for a user; it is built once and deleted after its tests.

The studio runs in this process on the loaded pipeline, its page read through gradio_client; the command-line
runs are separate processes, as a user starts them, each at a small size (a few grid cells, the fewest valid
frames, one step).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from conftest import free_port, launched_studio, moving_square  # noqa: E402
from pipelines import VideoPipeline  # noqa: E402
from pipelines.families import Configs, inspect_model, supported  # noqa: E402
from pipelines.loading import ASSETS, MODELS  # noqa: E402
from pipelines.modes import new_frame_counts  # noqa: E402
from pipelines.modes import SPECS  # noqa: E402
from pipelines.video_io import read_media, write_mp4  # noqa: E402
import studio.app  # noqa: E402
from studio.app import ModelInfo, StudioApp, default_preset, parse_size, tab_inputs, tab_title  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EMBEDDED = ASSETS / "embedded-model"
TAB_MODES = ("t2v", "animate", "extend", "restyle", "connect")  # a tab's endpoint is named after its mode
PROMPT = "a red ball bounces on a blue floor"


def _shipped(folder: Path) -> Path:
    """The embedded model is shipped built."""
    return EMBEDDED


def collect_builders() -> dict[str, Callable[[Path], Path]]:
    """REAL_CONFIGS of every tests/tiny_*.py module, and the shipped embedded model."""
    found: dict[str, Callable[[Path], Path]] = {"embedded": _shipped}
    for path in sorted(TESTS.glob("tiny_*.py")):
        for name, builder in getattr(importlib.import_module(path.stem), "REAL_CONFIGS", {}).items():
            assert name not in found, f"{name} has two real-configuration builders ({path.name} and another)"
            found[name] = builder
    return found


BUILDERS = collect_builders()


def test_every_registry_entry_has_a_real_configuration_builder():
    missing = sorted(set(MODELS) - set(BUILDERS))
    assert not missing, (f"registry entries without a REAL_CONFIGS builder in a tests/tiny_*.py module: "
                         f"{', '.join(missing)}")
    unknown = sorted(set(BUILDERS) - set(MODELS))
    assert not unknown, f"REAL_CONFIGS names that are not registry entries: {', '.join(unknown)}"


# ---- building: one folder per registry entry, where its name resolves ---------------------------------
@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """An empty hub cache, offline, for this module and the processes it starts."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hub-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setenv("HF_HUB_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield cache


def cache_folder(cache: Path, repo_id: str) -> Path:
    """Where `hf download repo_id` leaves a snapshot (refs/main names it), so the registry name finds it."""
    from huggingface_hub.file_download import repo_folder_name

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = "0" * 40
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return storage / "snapshots" / commit


@dataclass
class RealModel:
    name: str  # registry name
    folder: Path
    seconds_to_build: float
    _pipe: VideoPipeline | None = None
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def pipe(self) -> VideoPipeline:
        """Loaded on first use, by its registry name as `--model NAME` loads it."""
        if self._pipe is None:
            self._pipe = VideoPipeline.from_pretrained(self.name, device="cpu")
        return self._pipe

    def release(self) -> None:
        """Free the weights before the command-line runs load their own."""
        self._pipe = None
        gc.collect()


@pytest.fixture(scope="module", params=sorted(MODELS))
def real_model(request, hub_cache, tmp_path_factory):
    """The entry's folder at its real configuration, built once (pytest runs an entry's tests together)."""
    name = request.param
    if name not in BUILDERS:
        pytest.fail(f"{name} has no REAL_CONFIGS builder (see test_every_registry_entry_has_a_real_configuration_builder)")
    source = MODELS[name].source
    target = Path(source) if Path(source).is_absolute() else cache_folder(hub_cache, source)
    started = time.perf_counter()
    folder = BUILDERS[name](target)
    built = time.perf_counter() - started
    assert Path(folder).resolve() == target.resolve(), f"{name}'s builder wrote {folder}, not {target}"
    assert not (target / "studio.json").exists() or name == "embedded", \
        f"{name}'s folder has a studio.json: the harness checks the registry's defaults, as a download has them"
    model = RealModel(name, target, built)
    yield model
    model.release()
    if target.resolve() != EMBEDDED.resolve():
        shutil.rmtree(target.parent.parent, ignore_errors=True)  # the snapshot and its refs


# ---- inputs ----------------------------------------------------------------------------------------------
def write_still(path: Path, width: int, height: int) -> str:
    Image.fromarray(moving_square(1, width, height, seed=3)[0]).save(path)
    return str(path)


def write_clip(path: Path, frames: int, width: int, height: int, fps: float) -> str:
    write_mp4(path, moving_square(frames, width, height, seed=5), fps)
    return str(path)


def frames_of(path: Path, fps: float) -> int:
    return len(read_media(path, fps))


# ---- the studio -------------------------------------------------------------------------------------------
def endpoint_defaults(client: Client) -> dict[str, list[dict]]:
    """Each tab endpoint's parameters as the served page gives them (label, default, choices)."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    return {tab: api[f"/{tab}"]["parameters"] for tab in TAB_MODES}


def default_values(parameters: list[dict], media: dict[str, str]) -> list[Any]:
    """The served defaults, with what a person must give: a prompt, and each tab's input files."""
    values = []
    for p in parameters:
        if p["label"] in media:
            values.append(media[p["label"]])
        elif p["label"] == "Prompt":
            values.append(PROMPT)
        elif p["parameter_has_default"]:
            values.append(p["parameter_default"])
        else:  # a Textbox left empty (the negative prompt)
            values.append("")
    return values


def served_text(config: dict) -> str:
    return "\n".join(str(c.get("props", {}).get("value", "")) for c in config["components"])


def check_served_defaults(url: str, pipe: VideoPipeline, history, media: dict[str, str]) -> None:
    client = Client(url, verbose=False)
    d, info, modes = pipe.defaults, ModelInfo.of(pipe), pipe.modes
    app = StudioApp(SimpleNamespace(history=history, pipe=pipe), info)  # the studio's own request builders
    parameters = endpoint_defaults(client)
    page = served_text(client.config)
    for tab in TAB_MODES:
        why = modes.get(tab)
        values = default_values(parameters[tab], media)
        if why:  # the tab says why, and a raw call to its endpoint gets the same reason
            assert why in page, f"the {tab_title(tab)} tab does not say why this model lacks it ({why})"
            with pytest.raises(Exception, match="not available for this model"):
                client.predict(*[gradio_client.handle_file(v) if v in media.values() else v for v in values],
                               api_name=f"/{tab}")
            continue
        names = tab_inputs(tab, info)

        def request(**changes: Any):  # the tab's request from its served values, some changed
            return app.request(tab, {**dict(zip(names, values, strict=True)), **changes})

        built = request()
        pipe.check_request(built)
        assert (built.steps, built.guidance_scale, built.fps) == (d.steps, d.guidance_for(tab), d.fps), tab
        if tab in ("t2v", "animate"):
            assert built.num_frames == d.num_frames, f"the {tab_title(tab)} tab's default length is not the model's"
        if tab == "extend" and not modes.get("loop"):  # the same tab's loop
            pipe.check_request(request(loop=True))
        if tab == "t2v":
            assert (built.width, built.height) == (d.width, d.height)
            if not modes.get("image"):  # one frame
                pipe.check_request(request(one_frame=True))
            # Every preset is the model's: the default size among them, each valid at the longest duration.
            size = next(p for p in parameters[tab] if p["label"] == "Aspect ratio and size")
            presets = size["type"]["enum"]
            assert size["parameter_default"] == default_preset(info) and \
                parse_size(default_preset(info)) == (d.width, d.height)
            seconds = next(p for p in parameters[tab] if p["label"] == "Duration (s)")
            longest = float(seconds["type"]["description"].split()[-1])  # "numeric value between 0.25 and 10.0"
            for preset in presets:
                for duration in (values[names.index("seconds")], longest):
                    pipe.check_request(request(size=preset, seconds=duration))


def test_the_studio_serves_valid_defaults(real_model, tmp_path, monkeypatch):
    """The studio starts on the entry, by its registry name and as a bare folder (its family's defaults, as a
    folder with no studio.json gets them: Wan 2.1's 832x480 once crashed the studio), and every tab's served
    defaults build a request the loaded model accepts."""
    pipe = real_model.pipe
    registry = pipe.defaults
    folder = inspect_model(str(real_model.folder))
    grid = pipe.grid
    media = {}
    for label in ("Still (becomes the first frame)",):
        media[label] = write_still(tmp_path / "still.png", 3 * grid, 2 * grid)
    clip = write_clip(tmp_path / "clip.mp4", 4 * pipe.temporal + 1, 3 * grid, 2 * grid, registry.fps)
    for label in ("Clip", "Footage", "Clip A (before)", "Clip B (after)"):
        media[label] = clip
    variants = {"registry": (real_model.name, registry)}
    if folder.defaults != registry:
        variants["folder"] = (str(real_model.folder), folder.defaults)
    # The studio takes the pipeline this test loaded (one load per entry); all else is `launch.py --model`'s.
    monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(lambda cls, *args, **kwargs: pipe))
    engines = []  # Gradio keeps a closed studio's handlers, and so its engine: they let go of the weights after
    build = studio.app.build
    monkeypatch.setattr(studio.app, "build",
                        lambda engine, *args, **kwargs: (engines.append(engine), build(engine, *args, **kwargs))[1])
    for variant, (model, defaults) in variants.items():
        pipe.defaults = defaults
        try:
            with launched_studio(Path(model), tmp_path / f"outputs-{variant}") as (url, history):
                check_served_defaults(url, pipe, history, media)
        finally:
            pipe.defaults = registry
            for engine in engines:
                engine.pipe = None


# ---- the command line -------------------------------------------------------------------------------------
def small_size(grid: int) -> tuple[int, int]:
    """A small size on the model's grid, wider than tall (a swapped width and height shows)."""
    return grid * -(-64 // grid), grid * -(-32 // grid)


# CogVideoX-5B-I2V animates at its one size, 720x480: about 520 s on CI's two cores, more on a loaded machine.
RUN_TIMEOUT_S = 1200


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})


COVERED: dict[str, str] = {}  # a configuration's fingerprint -> the entry whose command-line runs covered it


def fingerprint(folder: Path) -> str:
    """A checkpoint's configs without bookkeeping keys: registry entries that differ only in their defaults
    (one checkpoint's 480p and 720p entries) have the same one."""
    configs = Configs.of_folder(folder)
    strip = lambda d: {k: v for k, v in d.items() if k == "_class_name" or not k.startswith("_")}  # noqa: E731
    return json.dumps([strip(configs.index), {n: strip(c) for n, c in configs.components.items()}], sort_keys=True,
                      default=str)


@dataclass
class Run:
    mode: str
    args: list[str]
    frames: int  # the output's


def plan_runs(pipe: VideoPipeline, inputs: Path) -> list[Run]:
    """One run per offered mode at a small size with the fewest valid frames, each checked by the loaded
    model first (a size or length a family refuses falls back to its default). Extend, loop, restyle and
    connect take the text-to-video output where there is one, else a clip written here."""
    g, t, d = pipe.grid, pipe.temporal, pipe.defaults
    offered = [mode for mode in SPECS if not pipe.modes.get(mode)]
    sizes = [small_size(g), (d.width, d.height)]
    windows = [t + 1, 2 * t + 1, d.num_frames]
    still = write_still(inputs / "still.png", *sizes[0])
    clip_frames = t + 1

    def accepted(mode: str, **params) -> dict | None:
        for width, height in sizes:
            for frames in windows if "num_frames" in params else [None]:
                chosen = {**params, "width": width, "height": height}
                if frames is not None:
                    chosen["num_frames"] = frames
                try:
                    pipe.check_request(pipe.request(mode, **chosen))
                    return chosen
                except ValueError:
                    continue
        return None

    runs = []
    window = None
    size_taken = sizes[0]  # the size a window mode was accepted at (a fixed-size checkpoint: its own)
    for mode in offered:
        if mode in ("t2v", "animate"):
            chosen = accepted(mode, prompt=PROMPT, num_frames=None, **({"image": still} if mode == "animate" else {}))
            size_taken = (chosen["width"], chosen["height"]) if chosen else size_taken
        elif mode == "image":
            chosen = accepted(mode, prompt=PROMPT)
        else:
            chosen = {"width": size_taken[0], "height": size_taken[1]}
        assert chosen is not None, f"{mode}: no small request is valid for this model"
        size = ["--width", str(chosen["width"]), "--height", str(chosen["height"])]
        if mode == "t2v":
            window = chosen["num_frames"]
            runs.append(Run(mode, ["--frames", str(window), *size, "--out", "t2v.mp4"], window))
        elif mode == "image":
            runs.append(Run(mode, [*size, "--out", "image.png"], 1))
        elif mode == "animate":
            runs.append(Run(mode, ["--image", still, "--frames", str(chosen["num_frames"]), *size,
                                   "--out", "animate.mp4"], chosen["num_frames"]))
        else:
            clip = "t2v.mp4" if "t2v" in offered else None
            frames = window if clip else clip_frames
            if clip is None:
                clip = write_clip(inputs / "clip.mp4", clip_frames, *sizes[0], d.fps)
            new = new_frame_counts(mode, t)[0] if mode != "restyle" else 0
            context = ["--context-frames", str(d.context_frames or t + 1)]
            if mode == "extend":
                runs.append(Run(mode, ["--video", clip, "--frames", str(new), *context, *size, "--out", "extend.mp4"],
                                frames + new))
            elif mode == "loop":
                runs.append(Run(mode, ["--video", clip, "--frames", str(new), *context, *size, "--out", "loop.mp4"],
                                frames + new))
            elif mode == "connect":
                runs.append(Run(mode, ["--video", clip, "--video-b", clip, "--frames", str(new), *context, *size,
                                       "--out", "connect.mp4"], 2 * frames + new))
            elif mode == "restyle":  # the whole clip, from the start of the one step
                runs.append(Run(mode, ["--video", clip, "--frames", str(frames), "--strength", "1", *size,
                                       "--out", "restyle.mp4"], frames))
    return runs


def test_each_mode_runs_through_the_cli(real_model, tmp_path, monkeypatch, capsys):
    """Every mode the entry offers, once, as `python launch.py generate MODE --model NAME ...`: the first as
    its own process, the others through the same entry point in this process (each loads the weights as a
    run does; only Python's start-up and imports, several seconds a run, are shared), at a small size with the
    fewest valid frames and one step."""
    import launch

    same = COVERED.setdefault(fingerprint(real_model.folder), real_model.name)
    if same != real_model.name:
        pytest.skip(f"{real_model.name} is {same}'s checkpoint with other defaults: its modes ran there")
    runs = plan_runs(real_model.pipe, tmp_path)
    fps = real_model.pipe.defaults.fps
    assert [r.mode for r in runs] == inspect_model(real_model.name).offered
    real_model.release()
    monkeypatch.chdir(tmp_path)  # outputs named relative to it, as from a shell there
    seconds = {}
    for k, run in enumerate(runs):
        started = time.perf_counter()
        # A memory mode by hand: auto would first time the model at up to twice its default size, hours on two
        # cores at these configurations (the planner's own tests run on the embedded model).
        argv = ["generate", run.mode, "--model", real_model.name, "--prompt", PROMPT, "--steps", "1", "--seed", "1",
                "--memory", "full", "--quiet", *run.args]
        if k == 0:
            done = cli(*argv, cwd=tmp_path)
            code, err = done.returncode, done.stderr
        else:
            # Unguided after the first run (the model's guidance, whose batch of two is the one shape guidance
            # changes, ran there): half the text encoding and denoising, the bulk of a run besides decoding.
            code, err = launch.main([*argv, "--guidance", "1"]), capsys.readouterr().err
            gc.collect()  # a run's modules hold reference cycles (cpu_kernels binds methods to them): free them now
        assert code == 0, f"{run.mode}: {err[-2000:]}"
        out = tmp_path / run.args[run.args.index("--out") + 1]
        sidecar = json.loads(out.with_name(out.name + ".json").read_text())
        stages = {k: round(v, 1) for k, v in sidecar.get("timings", {}).items() if v >= 0.05}
        seconds[run.mode] = f"{time.perf_counter() - started:.1f} {stages}"
        assert sidecar["request"]["mode"] == run.mode and sidecar["frames"] == run.frames, (run.mode, sidecar["frames"])
        assert frames_of(out, fps) == run.frames, run.mode
    with capsys.disabled():
        print(f"\n{real_model.name}: built in {real_model.seconds_to_build:.0f} s; CLI runs (s):")
        for mode, text in seconds.items():
            print(f"  {mode}: {text}")


# ---- what the studio does not run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def unsupported_folder(tmp_path_factory) -> Path:
    """A diffusers folder of a pipeline no family runs (its components need not exist: it is refused first)."""
    folder = tmp_path_factory.mktemp("unsupported") / "hunyuan"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanVideoPipeline", "_diffusers_version": "0.42.1",
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    return folder


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_a_pipeline_no_family_runs_is_refused_in_one_line(unsupported_folder, tmp_path, command):
    args = (["generate", "t2v", "--prompt", PROMPT, "--quiet"] if command == "generate" else
            ["--port", str(free_port()), "--outputs", str(tmp_path / "outputs")])
    done = cli(*args, "--model", str(unsupported_folder), cwd=tmp_path)
    assert done.returncode != 0
    line = one_error_line(done.stderr)
    assert "HunyuanVideoPipeline" in line and supported() in line, line
    assert not list(tmp_path.glob("**/*.mp4"))


# ---- a mode the model lacks --------------------------------------------------------------------------
LACKS = "this test's model animates nothing"


@pytest.fixture
def without_animate(monkeypatch):
    """The tiny Wan model, as a family that lacks Animate would read its modes."""
    from pipelines.families.wan import Wan

    read = Wan.read_modes.__func__
    monkeypatch.setattr(Wan, "read_modes", classmethod(
        lambda cls, configs: {**read(cls, configs), "animate": LACKS}))


def test_a_tab_the_model_lacks_says_why(tiny_model_dir, tmp_path, without_animate):
    with launched_studio(tiny_model_dir, tmp_path / "outputs") as (url, _):
        client = Client(url, verbose=False)
        components = client.config["components"]
        note = [c["props"]["value"] for c in components if c["props"].get("elem_id") == "animate-unavailable"]
        assert note and LACKS in note[0] and "Animate Image" in note[0]
        button = next(c for c in components if c["props"].get("elem_id") == "animate-generate")
        assert button["props"]["interactive"] is False
        others = [c for c in components if c["props"].get("elem_id") in ("t2v-generate", "extend-generate")]
        assert all(c["props"].get("interactive") is not False for c in others)
        still = write_still(tmp_path / "still.png", 32, 32)
        with pytest.raises(Exception, match=LACKS):  # a raw API call gets the same reason
            client.predict(gradio_client.handle_file(still), PROMPT, "", 1, 1, 4.0, "default", "match the input",
                           1.0, 8, api_name="/animate")


def test_the_cli_refuses_a_mode_the_model_lacks_in_one_line(tiny_model_dir, tmp_path, without_animate, capsys):
    from studio.cli import main

    still = write_still(tmp_path / "still.png", 32, 32)
    code = main(["animate", "--model", str(tiny_model_dir), "--image", still, "--prompt", PROMPT, "--quiet",
                 "--out", str(tmp_path / "a.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "a.mp4").exists()
    line = one_error_line(err)
    assert LACKS in line and "It offers: t2v, image, extend, loop, restyle, connect" in line, line


def test_tab_widgets_follow_the_models_geometry():
    """Context choices are the VAE's temporal*k+1 counts; the default duration gives the default length back."""
    wan = ModelInfo("wan", 832, 480, 81, 16.0, 50, 5.0, 16, 4)
    ltx = ModelInfo("ltx", 704, 512, 161, 25.0, 50, 3.0, 32, 8)
    svd = ModelInfo("svd", 1024, 576, 14, 7.0, 25, 3.0, 8, 1)
    assert wan.context_choices(False) == [1, 5, 9, 13, 17] and wan.context_choices(True) == [5, 9, 13, 17]
    assert ltx.context_choices(False) == [1, 9, 17, 25, 33] and ltx.context_choices(True) == [9, 17, 25, 33]
    assert (wan.seconds, ltx.seconds, svd.seconds) == (5.0, 6.4, 2.0)
    from pipelines.modes import frames_for_seconds

    for info in (wan, ltx, svd):
        assert frames_for_seconds(info.seconds, info.fps, "window", info.temporal) == info.num_frames
    assert replace(wan, modes={"animate": "no"}).why_not("animate") == "no" and wan.why_not("animate") is None
