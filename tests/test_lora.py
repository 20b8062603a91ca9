"""LoRAs (issue 29, item 1): adapters made here with peft on the tiny Wan transformer, loaded through diffusers'
own loaders and converters (pipelines/lora.py), switched per request, recorded for Reproduce."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import WanPipeline, WanTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from conftest import make_pipeline
from tiny_models import tiny_wan21
from tiny_wan_real import WAN_BLOCKS
from pipelines import VideoPipeline
from pipelines.lora import MAX_LORAS, Lora, argument, misfit
from pipelines.request import GenerationRequest
from studio.cli import main

RANK, ALPHA = 4, 2  # alpha != rank: the scale alpha/rank must survive every layout
# Every linear layer of a Wan block, with its names in musubi-tuner's and the original checkpoints' layouts
# (the layouts diffusers converts: the musubi converter expects all of them in every block).
LAYERS = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
          "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
          "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0",
          "ffn.net.2": "ffn.2"}


def peft_lora(config: dict, seed: int) -> WanTransformer3DModel:
    """A transformer of `config` with a LoRA "made" on every block layer, random (peft's init without zeros)."""
    transformer = WanTransformer3DModel.from_config(config)
    torch.manual_seed(seed)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(LAYERS), init_lora_weights=False)
    transformer.add_adapter(lora, adapter_name="made")
    return transformer


def state_of(transformer: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    """Its LoRA as peft saves it (keys relative to the transformer)."""
    return get_peft_model_state_dict(transformer, adapter_name="made")


def in_layout(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A peft-layout LoRA written as musubi-tuner (lora_unet_blocks_0_self_attn_q.lora_down) or the original
    Wan checkpoints' trainers (diffusion_model.blocks.0.self_attn.q.lora_A) save it, with alpha per layer."""
    out = {}
    for key, value in state.items():
        block, rest = key.split(".", 2)[1], key.split(".", 2)[2]
        layer, part = rest.rsplit(".", 2)[0], rest.rsplit(".", 2)[1]
        theirs = LAYERS[layer]
        if layout == "musubi":
            name = f"lora_unet_blocks_{block}_{theirs.replace('.', '_')}"
            out[f"{name}.{'lora_down' if part == 'lora_A' else 'lora_up'}.weight"] = value
        else:
            name = f"diffusion_model.blocks.{block}.{theirs}"
            out[f"{name}.{part}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(float(ALPHA))
    return out


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline(tiny_wan21())  # its own: the LoRAs must not reach the session's shared pipeline


@pytest.fixture(scope="module")
def files(pipe, tmp_path_factory) -> dict[str, Path]:
    """LoRA files: a and b (peft, saved by diffusers' model and pipeline savers), a in musubi-tuner's and the
    original layouts, and misfits (other widths, more blocks, another model's layer names)."""
    folder = tmp_path_factory.mktemp("loras")
    config = dict(pipe.transformer.config)
    made_a, made_b = peft_lora(config, seed=1), peft_lora(config, seed=2)
    made_a.save_lora_adapter(folder, adapter_name="made", weight_name="a.safetensors")  # the model's saver
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=state_of(made_b), weight_name="b.safetensors",
                                  transformer_lora_adapter_metadata=made_b.peft_config["made"].to_dict())
    a = state_of(made_a)
    for layout in ("musubi", "original"):
        save_file(in_layout(a, layout), folder / f"a-{layout}.safetensors")
    for name, change in (("wide", {"attention_head_dim": 16}), ("deep", {"num_layers": 3})):
        save_file({f"transformer.{k}": v for k, v in state_of(peft_lora({**config, **change}, seed=3)).items()},
                  folder / f"{name}.safetensors")
    save_file({f"transformer.transformer_blocks.{k.split('.', 1)[1]}": v for k, v in a.items()},
              folder / "other.safetensors")  # LTX-Video's block names
    return {path.stem: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def run(pipe):
    """The result of the module's one request with these LoRAs ((name, strength) pairs), each made once."""
    made: dict[tuple, object] = {}

    def generate(files: dict[str, Path], *loras: tuple[str, float], fresh: bool = False):
        if fresh or loras not in made:
            chosen = tuple(Lora.of_file(files[name], strength) for name, strength in loras)
            request = pipe.request("t2v", prompt="a red square moves", seed=3, num_frames=5, loras=chosen)
            made[loras] = pipe.generate(request)
        return made[loras]

    return generate


def same(x, y) -> bool:
    return torch.equal(x.latents, y.latents) and (x.frames == y.frames).all()


def test_a_lora_changes_the_output_and_strength_0_or_none_give_the_base_bit_for_bit(pipe, files, run):
    base = run(files)
    with_a = run(files, ("a", 1.0))
    assert (with_a.latents - base.latents).abs().max() > 0.05
    assert same(run(files, ("a", 0.0)), base)  # loaded, left out of the active set
    assert same(run(files, fresh=True), base)  # the next request without LoRAs: disabled
    assert same(run(files, ("a", 1.0), fresh=True), with_a)  # switched back on
    assert list(pipe.transformer.peft_config) == [f"lora_{Lora.of_file(files['a']).sha256[:16]}"]  # loaded once
    pipe.adapters.clear()  # unloaded: the layers run as before any LoRA was loaded
    assert not pipe.adapters.loaded
    assert same(run(files, fresh=True), base)


def test_two_loras_stack_each_loaded_once(pipe, files, run):
    a, b = run(files, ("a", 1.0)), run(files, ("b", 0.5))
    both = run(files, ("a", 1.0), ("b", 0.5))
    base = run(files)
    for alone in (a, b, base):
        assert (both.latents - alone.latents).abs().max() > 0.01
    # LoRAs add: with a small second one, both together lies nearer a than b or the base does.
    assert (both.latents - a.latents).norm() < (b.latents - a.latents).norm()
    assert sorted(pipe.adapters.loaded) == sorted(Lora.of_file(files[n]).sha256 for n in ("a", "b"))


@pytest.mark.parametrize("layout", ["musubi", "original"])
def test_kohya_musubi_and_original_layouts_load_through_diffusers_as_the_diffusers_one(files, run, layout):
    assert same(run(files, (f"a-{layout}", 1.0)), run(files, ("a", 1.0)))


@pytest.mark.parametrize("name, message", [
    ("wide", r"does not fit tiny: it adapts blocks\.0\.attn1\.to_(\w) as 32 -> 32 features, this model's "
             r"blocks\.0\.attn1\.to_\1 is 24 -> 24: it was made for another size of model"),
    ("deep", r"does not fit tiny: 10 of the 30 layers it adapts are not in this model \(such as blocks\.2\."),
    ("other", r"does not fit tiny: none of the 20 layers it adapts is in this model \(such as transformer_blocks"),
])
def test_a_lora_that_does_not_fit_is_refused_naming_the_mismatch(pipe, files, name, message):
    loaded = dict(pipe.adapters.loaded)
    request = pipe.request("t2v", prompt="a square", num_frames=1, loras=(Lora.of_file(files[name]),))
    with pytest.raises(ValueError, match=f"^LoRA {name}.safetensors {message}"):
        pipe.generate(request)
    assert pipe.adapters.loaded == loaded  # nothing was injected


def test_a_changed_file_is_refused(pipe, files):
    changed = Lora(str(files["b"]), Lora.of_file(files["wide"]).sha256)  # another file now at the path
    request = pipe.request("t2v", prompt="a square", num_frames=1, loras=(changed,))
    with pytest.raises(ValueError, match="b.safetensors has changed: its sha256 is"):
        pipe.generate(request)


def test_the_request_validates_and_round_trips_its_loras(files):
    a = Lora.of_file(files["a"], 0.75)
    request = GenerationRequest(prompt="x", num_frames=5, loras=(a, Lora.of_file(files["b"], -1)))
    again = GenerationRequest.from_json(request.to_json())
    assert again == request and again.loras[0].path == str(files["a"])
    assert json.loads(request.to_json())["loras"][0] == {"path": str(files["a"]), "sha256": a.sha256,
                                                         "strength": 0.75}
    for strength in (math.nan, math.inf, 4.5, True):
        with pytest.raises(ValueError, match="lora.strength = .* is not valid: a number in \\[-4, 4\\]"):
            Lora(a.path, a.sha256, strength)
    with pytest.raises(ValueError, match="is not valid: each file once"):
        GenerationRequest(prompt="x", loras=(a, a))
    with pytest.raises(ValueError, match=f"loras = '9 LoRAs' is not valid: at most {MAX_LORAS}"):
        GenerationRequest(prompt="x", loras=[{"path": "x", "sha256": f"{i:064x}"} for i in range(9)])
    with pytest.raises(ValueError, match="lora.sha256 = 'abc' is not valid"):
        GenerationRequest.from_dict({"prompt": "x", "loras": [{"path": "x", "sha256": "abc"}]})
    assert argument(f"{files['a']}:0.5") == Lora(str(files["a"]), a.sha256, 0.5)
    assert argument(str(files["a"])).strength == 1.0


def test_reproduce_loads_the_same_loras_found_by_sha256(tiny_model_dir, files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("a", "b"):
        shutil.copy(files[name], mine / f"{name}.safetensors")
    common = ["--quiet", "--memory", "full"]
    assert main(["t2v", "--model", str(tiny_model_dir), "--prompt", "a red ball", "--seed", "5", "--frames", "5",
                 "--lora", f"{mine / 'a.safetensors'}:0.7", "--lora", str(mine / "b.safetensors"),
                 "--out", "first.mp4", "--frames-out", "f1", *common]) == 0
    recorded = json.loads((tmp_path / "first.mp4.json").read_text())["request"]["loras"]
    assert [(Path(x["path"]).name, x["strength"]) for x in recorded] == [("a.safetensors", 0.7), ("b.safetensors", 1.0)]
    # Moved into loras/ and renamed: found by its sha256.
    (tmp_path / "loras").mkdir()
    (mine / "a.safetensors").rename(tmp_path / "loras" / "renamed.safetensors")
    assert main(["reproduce", "--request", "first.mp4.json", "--out", "again.mp4", "--frames-out", "f2",
                 *common]) == 0
    first, again = sorted((tmp_path / "f1").iterdir()), sorted((tmp_path / "f2").iterdir())
    assert len(first) == 5 and [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    # Gone: refused before the model loads, naming the file and where it was looked for.
    (tmp_path / "loras" / "renamed.safetensors").unlink()
    capsys.readouterr()
    assert main(["reproduce", "--request", "first.mp4.json", "--out", "third.mp4", *common]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: LoRA a.safetensors (sha256 ") and "is not found" in error and "loras" in error


def test_the_command_line_refuses_a_misfit_before_the_weights_load(tiny_model_dir, files, tmp_path, monkeypatch,
                                                                   capsys):
    def loads(*args, **kwargs):
        pytest.fail("the weights loaded before the LoRA was checked")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", loads)
    assert main(["t2v", "--model", str(tiny_model_dir), "--prompt", "a red ball", "--lora", str(files["wide"]),
                 "--out", str(tmp_path / "x.mp4"), "--quiet"]) == 2
    assert re.match(r"error: LoRA wide\.safetensors does not fit .*tiny-wan: it adapts blocks\.0\.attn1\.to_\w as "
                    r"32 -> 32 features", capsys.readouterr().err)


# Published Wan transformers: (width, ffn width, blocks).
PUBLISHED = {"wan2.1-1.3b": (1536, 8960, 30), "wan2.1-14b": (5120, 13824, 40), "wan2.2-ti2v-5b": (3072, 14336, 30)}


def published(name: str) -> WanTransformer3DModel:
    """The published transformer's modules, without weights (meta tensors: nothing is allocated)."""
    dim, ffn, blocks = PUBLISHED[name]
    with init_empty_weights():
        return WanTransformer3DModel.from_config({**WAN_BLOCKS, "num_attention_heads": dim // 128, "ffn_dim": ffn,
                                                  "num_layers": blocks})


def musubi_lora(name: str) -> dict[str, torch.Tensor]:
    """A rank-1 musubi-tuner LoRA on every block layer of a published transformer, after diffusers' conversion."""
    dim, ffn, blocks = PUBLISHED[name]
    state = {}
    for i in range(blocks):
        for ours in LAYERS:
            takes, gives = {"ffn.net.0.proj": (dim, ffn), "ffn.net.2": (ffn, dim)}.get(ours, (dim, dim))
            state[f"blocks.{i}.{ours}.lora_A.weight"] = torch.zeros(1, takes)
            state[f"blocks.{i}.{ours}.lora_B.weight"] = torch.zeros(gives, 1)
    converted = WanLoraLoaderMixin.lora_state_dict(in_layout(state, "musubi"))
    return {k.removeprefix("transformer."): v for k, v in converted.items()}


@pytest.mark.parametrize("name", PUBLISHED)
def test_musubi_loras_for_the_published_wan_transformers_target_their_layers(name):
    """Every layer a musubi-tuner LoRA for a published Wan transformer adapts exists there, with its shapes; a
    LoRA for another size is refused on it (the 14B's on the 1.3B, the 1.3B's on the others)."""
    state = musubi_lora(name)
    assert len(state) == 20 * PUBLISHED[name][2] and misfit(state, published(name)) is None
    other = "wan2.1-14b" if name == "wan2.1-1.3b" else "wan2.1-1.3b"
    why = misfit(musubi_lora(other), published(name))
    assert why.startswith(f"it adapts blocks.0.attn1.to_q as {PUBLISHED[other][0]} -> {PUBLISHED[other][0]} "
                          f"features, this model's blocks.0.attn1.to_q is {PUBLISHED[name][0]} -> {PUBLISHED[name][0]}")


def test_the_studio_picker_takes_loras_by_name_and_reproduce_loads_them_back(pipe, files, run, tmp_path):
    import gradio as gr

    from studio.app import ModelInfo, StudioApp
    from studio.creator_tools import NO_LORA
    from studio.engine import Engine
    from studio.outputs import History

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(files["a"], folder / "style.safetensors")
    (folder / "notes.txt").write_text("not a LoRA")
    app = StudioApp(Engine(pipe, History(tmp_path / "outputs")), ModelInfo.of(pipe), loras=folder)
    assert app.creator.lora_files() == ["style.safetensors"]
    d = pipe.defaults
    values = dict(prompt="a red square moves", negative="", seed=3, steps=d.steps, guidance=d.guidance_scale,
                  sampler="default", size=f"{d.width}x{d.height}", seconds=5 / d.fps, fps=d.fps,
                  lora_1="style.safetensors", lora_strength_1=0.5, lora_2=NO_LORA, lora_strength_2=1.0)
    request = app.request("t2v", values)
    assert [(Path(x.path).name, x.strength) for x in request.loras] == [("style.safetensors", 0.5)]
    assert request.loras[0].sha256 == Lora.of_file(files["a"]).sha256
    # Only a file the picker lists: never a path a request names (raw HTTP), nor a file of another kind.
    for name in ("../a.safetensors", str(files["a"]), "notes.txt"):
        with pytest.raises(gr.Error, match="is not in the LoRA folder: pick one of style.safetensors"):
            app.request("t2v", {**values, "lora_1": name})

    job = app.engine.run(request)
    assert job.status == "done", job.message
    assert app.history.read(job.out).sidecar["request"]["loras"][0]["sha256"] == request.loras[0].sha256
    shown = app.reproduce_values(job.out.name)
    assert (shown["lora_1"], shown["lora_strength_1"], shown["lora_2"]) == ("style.safetensors", 0.5, NO_LORA)
    assert app.request("t2v", {**values, **{k: v for k, v in shown.items() if k.startswith("lora")}}) == request
    (folder / "style.safetensors").rename(folder / "renamed.safetensors")  # found again by its contents
    assert app.reproduce_values(job.out.name)["lora_1"] == "renamed.safetensors"
    (folder / "renamed.safetensors").unlink()
    gone = app.reproduce_values(job.out.name)
    assert gone["lora_1"] == NO_LORA and "No file in the LoRA folder or uploaded by this page is style.safetensors" in gone["note"]


def test_a_lora_uploaded_in_the_page_serves_that_page_only(pipe, files, tmp_path):
    """An upload is kept in the outputs folder (content-addressed), offered in the uploading page's picker and
    taken by its requests; another page never sees or takes it, and the LoRA folder is never written."""
    import gradio as gr
    from safetensors.torch import save_file

    from studio.app import ModelInfo, StudioApp
    from studio.creator_tools import NO_LORA, UPLOADED
    from studio.engine import Engine
    from studio.outputs import History

    class Page:
        def __init__(self, session_hash: str):
            self.session_hash = session_hash

    folder = tmp_path / "loras"
    folder.mkdir()
    app = StudioApp(Engine(pipe, History(tmp_path / "outputs")), ModelInfo.of(pipe), loras=folder)
    mine, theirs = Page("mine"), Page("theirs")
    value = app.creator.upload_lora(str(files["b"]), mine)
    assert value == UPLOADED + "b.safetensors" and app.creator.lora_choices(mine) == [NO_LORA, value]
    assert app.creator.lora_choices(theirs) == [NO_LORA] and not list(folder.iterdir())
    d = pipe.defaults
    values = dict(prompt="a red square moves", negative="", seed=3, steps=d.steps, guidance=d.guidance_scale,
                  sampler="default", size=f"{d.width}x{d.height}", seconds=5 / d.fps, fps=d.fps, lora_1=value,
                  lora_strength_1=1.0)
    request = app.request("t2v", {**values, **app.creator.picks(mine)})
    assert request.loras[0].sha256 == Lora.of_file(files["b"]).sha256
    assert Path(request.loras[0].path).is_relative_to(app.history.uploads)  # the kept copy, not the browser's
    job = app.engine.run(request)
    assert job.status == "done", job.message
    assert app.history.read(job.out).sidecar["request"]["loras"][0]["sha256"] == request.loras[0].sha256
    with pytest.raises(gr.Error, match="is not in the LoRA folder"):  # their page names my upload
        app.request("t2v", {**values, **app.creator.picks(theirs)})
    # Reproduce on my page puts my upload back in the slot; on theirs it is not offered.
    shown = app.reproduce_values(job.out.name, mine)
    assert (shown["lora_1"], shown["lora_strength_1"]) == (value, 1.0) and "note" not in shown
    assert app.request("t2v", {**values, **{k: v for k, v in shown.items() if k.startswith("lora")},
                               **app.creator.picks(mine)}) == request
    hidden = app.reproduce_values(job.out.name, theirs)
    assert hidden["lora_1"] == NO_LORA and "uploaded by this page is b.safetensors" in hidden["note"]
    # Not a LoRA: a model's weights, or text under the suffix.
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    with pytest.raises(gr.Error, match="model.safetensors holds no LoRA weights"):
        app.creator.upload_lora(str(tmp_path / "model.safetensors"), mine)
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(gr.Error, match="text.safetensors is not a readable safetensors file"):
        app.creator.upload_lora(str(tmp_path / "text.safetensors"), mine)
