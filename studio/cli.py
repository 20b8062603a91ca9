"""Headless generation: `python launch.py generate MODE [options]`, on the same pipeline as the studio.

An invalid invocation exits with status 2 and one line naming what was wrong and what is valid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from pipelines import acceleration, lora, memory, parallel
from pipelines.request import frames_text

log = logging.getLogger("studio.cli")

DEFAULT_OUTPUTS = Path("outputs")


class UsageError(Exception):
    """A problem with the invocation: printed as one line, exit status 2."""


class MissingInput(UsageError):
    """An input file that does not exist (yet: a batch's job may read what an earlier job writes)."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class BasePlan(NamedTuple):
    """A mode whose clip is made from the prompt first (`ModeSpec.base`: loop) needs the pipeline before its
    request can be built."""

    mode: str
    source: str  # the parameter the base clip fills
    params: dict[str, Any]  # modes.build's parameters for the mode, without its clip

    def base_params(self) -> dict[str, Any]:
        """The base clip's: the mode's settings without its own parameters, one candidate (they are for the
        joins)."""
        from pipelines.modes import spec_of

        own = {p.name for p in spec_of(self.mode).params}
        return {k: v for k, v in self.params.items() if k not in own} | {"best_of": 1}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from pipelines.loading import MODELS
    from pipelines.modes import SPECS
    from pipelines.samplers import SAMPLERS

    p = _Parser(prog="launch.py generate", description="Generate a clip without the browser studio.")
    p.add_argument("mode", choices=(*SPECS, "reproduce", "batch", "storyboard"),
                   help="what to make; reproduce re-runs the request in a sidecar given with --request; batch runs "
                        "every job in --jobs on one load of the model; storyboard renders the take --plan plans")
    p.add_argument("--request", help="reproduce: an output's JSON sidecar (its request is run again as it was)")
    p.add_argument("--jobs", help="batch: a JSON-lines file, one job a line: the options of a run by name "
                   '({"mode": "t2v", "prompt": "a cat", "seconds": 2}) or an output\'s sidecar')
    p.add_argument("--plan", help="storyboard: a JSON plan of shots (README: Storyboards)")
    p.add_argument("--shot", type=int, help="storyboard: re-render this shot (1-based) of the take in --out")
    p.add_argument("--model", help=f"a registry name ({', '.join(MODELS)}), a diffusers folder or a hub id "
                                   "(default: embedded; for reproduce, the model recorded in the sidecar)")
    p.add_argument("--prompt", required=False, help="what the clip shows (a model that reads no prompt, such "
                   "as Stable Video Diffusion, animates without one)")
    p.add_argument("--negative", default="", help="what to steer away from")
    add_mode_options(p)
    p.add_argument("--frames", type=int, help="frames of the clip; for extend, loop and connect the new frames")
    p.add_argument("--seconds", type=float, help="length instead of --frames, snapped to a valid frame count")
    p.add_argument("--fps", type=float, help="frames per second (the model's default when omitted)")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (<= 1 turns it off; the model's "
                                                "default for the mode when omitted)")
    p.add_argument("--seed", type=int, help="random seed (random when omitted; recorded in the sidecar)")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="extend, loop, connect: sample N candidates (seeds seed..seed+N-1), keep the smoothest joins")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="default")
    p.add_argument("--shift", type=float, help="flow shift (the checkpoint's when omitted)")
    p.add_argument("--lora", action="append", default=[], type=lora.argument, metavar="FILE[:STRENGTH]",
                   help="a .safetensors LoRA on the model at STRENGTH (default 1); repeat for several")
    p.add_argument("--enhance", action="store_true",
                   help="rewrite the prompt into the model's caption style with a language model first (--enhancer)")
    p.add_argument("--enhancer", default=os.environ.get("STUDIO_ENHANCER"), metavar="MODEL_OR_URL",
                   help="the language model --enhance uses: an instruct model's folder or cached hub id, or the URL "
                        "of a local OpenAI-compatible or Ollama server (default: $STUDIO_ENHANCER)")
    p.add_argument("--conditioning", choices=("per_token", "replace"), help="override the model's conditioning strategy")
    p.add_argument("--no-saved-latents", action="store_true", help="re-encode source clips even when they have latents")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    memory.add_arguments(p)  # --memory, --low-vram (= --memory low), --plan-only
    acceleration.add_arguments(p)
    parallel.add_arguments(p)  # --parallel ulysses=U,ring=R under torchrun
    from studio import variations_cli

    variations_cli.add_arguments(p)  # --grid, --seeds, --draft; reproduce --final
    p.add_argument("--out", help="output file: .mp4, .gif, or .png for one frame (default: a new name in outputs/, "
                                 "<time>-<mode>-<seed>.mp4)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out (and its sidecars) if it exists, and the frame files already in --frames-out; "
                        "never allowed over an input of the run")
    p.add_argument("--frames-out", help="also write every frame of the final clip as PNG into this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from studio import farm

    farm.add_cli_arguments(p)  # --farm-address
    return p


def mode_options() -> dict[str, list[tuple[Any, Any]]]:
    """Each mode option (but the length's --frames/--seconds) with the (spec, param) pairs that take it."""
    from pipelines.modes import SPECS

    options: dict[str, list[tuple[Any, Any]]] = {}
    for spec in SPECS.values():
        for param in spec.params:
            if param.kind != "length":
                options.setdefault(param.option, []).append((spec, param))
    return options


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def add_mode_options(p: argparse.ArgumentParser) -> None:
    """The modes' own options, made from their specs: one option may serve several modes (--video)."""
    kinds = {"start": float, "context": int, "int": int, "float": float, "image": str, "clip": str}
    for option, users in mode_options().items():
        param = users[0][1]
        helps: dict[str, list[str]] = {}
        for spec, user in users:
            default = "" if user.default is None or user.kind == "start" else f" (default {user.default})"
            if spec.base and user in spec.media():
                default += f" (when omitted, one is made from the prompt first, as {spec.base} makes it)"
            helps.setdefault(user.help + default, []).append(spec.name)
        text = "; ".join(f"{', '.join(names)}: {text}" for text, names in helps.items())
        if param.knob:
            text += " (models that read it: Stable Video Diffusion; the model's default when omitted)"
        if param.kind == "bool":
            p.add_argument(option, action=argparse.BooleanOptionalAction, default=None,
                           help=text + " (the model's default when omitted)")
        elif param.kind == "choice":
            p.add_argument(option, choices=param.choices, help=text)
        else:
            p.add_argument(option, type=kinds[param.kind], help=text)


# ---- from arguments to a request ------------------------------------------------------------------------
def _require_file(path: str | None, flag: str, mode: str) -> str:
    """The input's absolute path: the sidecar records it, and `reproduce` may run from another folder."""
    if not path:
        raise UsageError(f"{mode} needs {flag}")
    if not Path(path).exists():
        raise MissingInput(f"{flag} {path!r} does not exist", path)
    return str(Path(path).absolute())


def writable_folder(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created when missing), or None when they can."""
    existing = folder
    while not existing.exists():  # the folder is made at write time: its nearest existing ancestor decides
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is a file, not a folder"
    try:  # a real write: permission bits do not tell (root may write anywhere but /proc, a read-only mount)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
    except OSError as error:
        return f"{str(existing)!r} is not writable ({error.strerror or error})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_out_paths(out: Path, frames_out: str | None) -> None:
    """Refuse an --out or --frames-out that cannot be written, before the model loads (a failed write after
    a generation loses it)."""
    from studio.outputs import name_problem

    if out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a folder: give a file name ending in .mp4, .gif or .png")
    problem = name_problem(out) or writable_folder(out.parent)
    if problem:
        raise UsageError(f"--out {str(out)!r} cannot be written: {problem}")
    if frames_out is not None:
        folder = Path(frames_out)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--frames-out {frames_out!r} is a file: give a folder for the PNG frames")
        problem = writable_folder(folder)
        if problem:
            raise UsageError(f"--frames-out {frames_out!r} cannot be written: {problem}")


def _frames(args: argparse.Namespace, mode_kind: str, fps: float, temporal: int, default: int) -> int:
    """Frame count from --frames (checked) or --seconds (snapped, with a note)."""
    from pipelines.modes import MAX_SECONDS, check_new_frames, frames_for_seconds
    from pipelines.request import nearest_valid

    if args.frames is not None and args.seconds is not None:
        raise UsageError("give --frames or --seconds, not both")
    if args.frames is not None:
        if mode_kind == "window":
            if args.frames < 1 or (args.frames - 1) % temporal:
                near = " or ".join(map(str, nearest_valid(args.frames, temporal, offset=1)))
                raise UsageError(f"--frames {args.frames} is not valid: {temporal}k+1 frames for this model's VAE "
                                 f"(nearest: {near})")
        else:
            try:
                check_new_frames(mode_kind, args.frames, temporal)
            except ValueError as error:
                raise UsageError(f"--{error}") from None
        return args.frames
    if args.seconds is None:
        return default
    if not 0 < args.seconds <= MAX_SECONDS:  # NaN too
        raise UsageError(f"--seconds {args.seconds:g} is not valid: a positive number of seconds, at most {MAX_SECONDS}")
    snapped = frames_for_seconds(args.seconds, fps, mode_kind, temporal)
    print(f"note: --seconds {args.seconds:g} at {fps:g} fps snapped to {frames_text(snapped)} ({snapped / fps:.2f} s)")
    return snapped


def _enhanced(prompt: str, source: str | None, defaults: Any) -> str:
    """The prompt rewritten by the language model `source` in the model's caption style, printed (before any
    video model loads: the two are never in memory together)."""
    from pipelines import enhancer

    started = time.perf_counter()
    result = enhancer.enhance(enhancer.open_enhancer(source), prompt, defaults.enhancer_style)
    print(f"enhanced the prompt in {time.perf_counter() - started:.1f} s with {result.source}: {result.prompt}")
    return result.prompt


def _typed_text(value: str | None, flag: str) -> str | None:
    """A text argument as it was typed. Python decodes argv as UTF-8, keeping other bytes as lone surrogates
    (\\udc80-\\udcff), which no file or JSON reader takes: a shell in Latin-1 or Windows-1252 sends 'caf\\xe9'
    for 'café'. Those bytes are read as Windows-1252 (Latin-1 for the five bytes it leaves undefined), what such
    a shell sent, and a note says so; text no shell can send is left for the request to refuse."""
    from pipelines.request import unicode_problem

    if value is None or unicode_problem(value) is None:
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    print(f"note: {flag} is not UTF-8; read it as Windows-1252 (Latin-1): {text!r}")
    return text


def _names(modes: list[str]) -> str:
    return modes[0] if len(modes) == 1 else f"{', '.join(modes[:-1])} and {modes[-1]}"


def _check_applies(args: argparse.Namespace, spec: Any, knobs: tuple[str, ...]) -> None:
    """Refuse an option the mode (or the model) does not read, naming those that do."""
    length = next((p for p in spec.params if p.kind == "length"), None)
    if length is None and (args.frames is not None or args.seconds is not None):
        if spec.frames == 1:
            raise UsageError(f"{spec.name} makes one frame; drop --frames/--seconds")
        raise UsageError(f"{spec.name} has no length to set; drop --frames/--seconds")
    for option, users in mode_options().items():
        if getattr(args, _dest(option)) is None:
            continue
        param = spec.param(next((p.name for s, p in users if s is spec), ""))
        if param is None:
            raise UsageError(f"{option} applies to {_names([s.name for s, _ in users])}, not {spec.name}")
        if param.knob and param.name not in knobs:
            raise UsageError(f"{option} applies to models that read it (Stable Video Diffusion), not this one")


def _mode_value(args: argparse.Namespace, spec: Any, param: Any, fps: float, temporal: int) -> Any:
    """A mode parameter from its option, in the builder's units."""
    from pipelines import modes

    if param.kind == "length":
        return _frames(args, param.count, fps, temporal, None)
    value = getattr(args, _dest(param.option))
    if value is None:
        return None
    if param.is_media:
        return _require_file(value, param.option, spec.name)
    if param.kind == "start":
        return modes.trim(value, None, fps, temporal)[0]
    return value


def build_request(args: argparse.Namespace, defaults: Any, geometry: Any, reads_text: bool = True,
                  knobs: tuple[str, ...] = ()):
    """The request the options describe, made by the mode's spec; what they leave out takes the model's
    defaults (modes.build). `reads_text` False: the model reads no prompt (a promptless mode runs without
    --prompt); `knobs`: the optional request fields it reads (request.KNOBS)."""
    from pipelines import modes

    args.prompt, args.negative = _typed_text(args.prompt, "--prompt"), _typed_text(args.negative, "--negative")
    spec = modes.spec_of(args.mode)
    _check_applies(args, spec, knobs)
    if not args.prompt and (reads_text or not spec.promptless):
        raise UsageError(f"{spec.name} needs --prompt")
    enhanced_from = None
    if args.enhance:
        if not reads_text:
            raise UsageError("--enhance rewrites the prompt, and this model reads none")
        enhanced_from, args.prompt = args.prompt, _enhanced(args.prompt, args.enhancer, defaults)
    fps = args.fps if args.fps is not None else defaults.fps
    params: dict[str, Any] = dict(
        prompt=args.prompt or "", negative_prompt=args.negative, width=args.width, height=args.height, fps=fps,
        steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little"),
        sampler=args.sampler, shift=args.shift, conditioning_strategy=args.conditioning,
        use_saved_latents=not args.no_saved_latents, best_of=args.best_of, loras=tuple(args.lora),
        enhanced_from=enhanced_from,
    )
    missing = None
    for param in spec.params:
        params[param.name] = _mode_value(args, spec, param, fps, geometry.temporal)
        if param.is_media and params[param.name] is None:
            missing = missing or param
    if missing is not None:
        if spec.base is None:
            raise UsageError(f"{spec.name} needs {missing.option}")
        return BasePlan(spec.name, missing.name, {k: v for k, v in params.items() if k != missing.name})
    return modes.build(spec.name, defaults, geometry, **params)


def _reproduced(args: argparse.Namespace):
    path = _require_file(args.request, "--request", "reproduce")
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as error:
        raise UsageError(f"--request {path!r} cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--request {path!r} is not UTF-8 text, so not a sidecar this studio wrote") from None
    except RecursionError:
        raise UsageError(f"--request {path!r} nests too deep to be a sidecar this studio wrote") from None
    except ValueError as error:  # not JSON, or an integer longer than Python converts
        raise UsageError(f"--request {path!r} is not a readable JSON sidecar ({str(error)[:120]})") from None
    cache = data.get("step_cache") if isinstance(data, dict) else None
    if args.step_cache is None and not args.final and isinstance(cache, float) and 0 < cache < 1:
        args.step_cache = cache  # the output was made with it, and it changes the output
        print(f"note: the step cache on at {cache:g}, as the sidecar records (--final renders without it)")
    if args.final and args.steps is None:
        from studio.grid import final_steps

        args.steps = final_steps(data)  # a grid cell records its grid's steps; else the model's (below)
    return sidecar_request(data, Path(path).absolute().parent, f"--request {path!r}")


def sidecar_request(data: Any, folder: Path, where: str) -> tuple[Any, str | None]:
    """(the request, the model it records) of a sidecar's contents; `where` names it in errors."""
    from pipelines.request import GenerationRequest

    if not isinstance(data, dict) or "request" not in data:
        raise UsageError(f"{where} holds no 'request': pass the .json written beside an output")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise UsageError(f"{where} records a model that is not a name ({model!r:.60}); pass --model")
    request = GenerationRequest.from_dict(data["request"])
    return _sources_beside(request, folder), model


def _sources_beside(request: Any, folder: Path) -> Any:
    """Older sidecars recorded sources as given, relative to the folder the CLI ran in: a relative source
    that is not found from here is looked for relative to the sidecar's folder (where outputs usually sit)."""
    import dataclasses

    def found(source: str) -> str:
        if Path(source).is_absolute() or Path(source).exists() or not (folder / source).exists():
            return source
        return str(folder / source)

    from pipelines.modes import spec_of

    items = tuple(dataclasses.replace(item, source=found(item.source)) for item in request.conditioning)
    init = found(request.init_video) if request.init_video else request.init_video
    made = dict(request.mode_params)
    made.update({p.name: found(made[p.name]) for p in spec_of(request.mode).media() if made.get(p.name)})
    loras = tuple(lora.locate(item, (folder, lora.LORA_FOLDER)) for item in request.loras)  # by sha256
    return request.replace(conditioning=items, init_video=init, mode_params=made, loras=loras)


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not valid: cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r} is not valid: cpu, cuda or cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# ---- running and writing ---------------------------------------------------------------------------------
def _progress(quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(unit="step", leave=True)

    def callback(step: int, total: int, latents: Any) -> None:
        bar.total = total
        bar.update(step - bar.n)

    def close() -> None:
        bar.close()

    return callback, close


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from pipelines.families import inspect_model

    _check_device(args.device)
    parallel.start(args)  # joins torchrun's ranks; a shared seed
    from studio import variations_cli

    variations_cli.check(args)
    if args.mode == "batch":
        from studio.batch import run_batch

        return run_batch(args)
    if args.mode == "storyboard":
        from studio.storyboard_cli import run_storyboard

        return run_storyboard(args)
    built = None
    if args.mode == "reproduce":
        built, recorded = _reproduced(args)
        if args.model is None:
            args.model = recorded
        elif args.model != recorded:
            print(f"note: reproducing with {args.model}; the sidecar records {recorded}")
    args.model = args.model or "embedded"
    model = inspect_model(args.model)
    if args.final:  # a draft rendered in full: --steps or the model's, no step cache
        built = built.replace(steps=args.steps if args.steps is not None else model.defaults.steps)
        args.step_cache = None
    built, out = prepare(args, model, built)
    parallel.check_request(built, args)
    if args.farm_address:
        from studio import farm

        return farm.generate(args, built, out)
    pipe = load(args)
    if parallel.follower(args):  # ranks but 0 denoise alongside it and write nothing
        return parallel.follow(pipe, built)
    execute(pipe, model, built, out, args)
    return 0


def prepare(args: argparse.Namespace, model: Any, built: Any = None) -> tuple[Any, Path | None]:
    """(the request or base plan, the output path) of one run, checked before any weights load, which takes
    minutes for a real checkpoint. `built`: a request given whole (reproduce), else built from `args`."""
    from pipelines import modes
    from pipelines.request import GenerationRequest, check_grid

    defaults, geometry = model.defaults, model.geometry
    mode = built.mode if built is not None else args.mode
    if model.modes.get(mode):
        raise UsageError(f"{args.model} cannot {mode}: {model.modes[mode]}. It offers: {', '.join(model.offered)}")
    if built is None:
        built = build_request(args, defaults, geometry, model.family.reads_text, model.family.knobs)
    out = Path(args.out) if args.out else None
    check_out_paths(out if out is not None else DEFAULT_OUTPUTS / "new.mp4", args.frames_out)
    if out is not None and out.suffix.lower() not in (".mp4", ".gif", ".png"):
        raise UsageError(f"--out {str(out)!r} is not valid: a .mp4, .gif or .png file")
    if out is not None and out.suffix.lower() == ".png" and modes.spec_of(built.mode).frames != 1:
        raise UsageError("--out .png holds one frame: use it with the image mode, or write .mp4/.gif")
    _check_targets(out, args, _inputs_of(built, args), isinstance(built, BasePlan))
    probe = built if isinstance(built, GenerationRequest) else modes.build(
        modes.spec_of(built.mode).base, defaults, geometry, **built.base_params())
    check_grid(probe, geometry.grid, geometry.temporal)
    lora.check_fit(probe.loras, model)  # before the weights load
    return built, out


def load(args: argparse.Namespace) -> Any:
    """The pipeline of `--model`, with the speed options applied."""
    from pipelines import VideoPipeline

    _quiet_library_progress()
    started = time.perf_counter()
    pipe = VideoPipeline.from_pretrained(args.model, device=args.device, memory=memory.load_mode(args.memory))
    acceleration.apply_arguments(pipe, args)
    parallel.apply(pipe, args.parallel)
    print(f"loaded {pipe.model_id} on {pipe.device} in {time.perf_counter() - started:.1f} s")
    return pipe


def _measures(args: argparse.Namespace) -> bool:
    """Whether the planner may time the model before this run (once per model and device): when it must choose
    the memory mode (auto) or the plan is all that was asked for. A mode given by hand starts at once."""
    return args.memory == "auto" or args.plan_only


def execute(pipe: Any, model: Any, built: Any, out: Path | None, args: argparse.Namespace) -> Path | None:
    """Generate a prepared run and write it (a base plan makes its clip first); returns the output's path
    (None with --plan-only, which prints the first plan and stops)."""
    from pipelines import modes, planner
    from studio.outputs import PLANNER_FOLDER

    cache = DEFAULT_OUTPUTS / PLANNER_FOLDER  # beside the outputs, where the studio keeps it too
    if isinstance(built, BasePlan):  # its clip from the prompt first (loop: a text-to-video clip)
        # Without --guidance the base clip takes its own mode's guidance, the joins theirs.
        base = modes.build(modes.spec_of(built.mode).base, model.defaults, model.geometry, **built.base_params())
        base_out = None if out is None else out.with_name(out.stem + ".base.mp4")
        planner.announce(pipe, base, args.memory, cache, measure=_measures(args))
        if args.plan_only:
            return None
        clip = str(_generate_and_write(pipe, base, base_out, None, args.quiet, overwrite=False)[0])
        print(f"wrote the clip to {built.mode}: {clip}")
        built = modes.build(built.mode, model.defaults, model.geometry, **{built.source: clip}, **built.params)
    planner.announce(pipe, built, args.memory, cache, measure=_measures(args))  # refused when none fits
    if args.plan_only:
        return None
    if args.grid:
        from studio.variations_cli import run_grid

        return run_grid(pipe, built, out, args)
    out, sidecar = _generate_and_write(pipe, built, out, args.frames_out, args.quiet, args.overwrite)
    joins = f", joins {', '.join(f'{x:.2f}' for x in sidecar['joins'])}x the median step" if sidecar["joins"] else ""
    print(f"wrote {out} ({frames_text(sidecar['frames'])}, {sidecar['width']}x{sidecar['height']}, "
          f"{sidecar['fps']:g} fps, seed {built.seed}{joins}) and {out.name}.json")
    return out


def _quiet_library_progress() -> None:
    """Our own line reports loading; the libraries' per-file bars would bury it."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _inputs_of(built: Any, args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(flag, resolved path) of every file or folder the run reads."""
    from pipelines.request import GenerationRequest

    found = [("--request", args.request)] if args.mode == "reproduce" and args.request else []
    if isinstance(built, GenerationRequest):
        found += [("an input", item.source) for item in built.conditioning]
        found += [("--video", built.init_video)] if built.init_video else []
    media = [option for option, users in mode_options().items() if users[0][1].is_media]
    named = {Path(path).resolve(): option for option in media if (path := getattr(args, _dest(option)))}
    found += [(option, path) for path, option in named.items() if not isinstance(built, GenerationRequest)]
    return [(named.get(Path(path).resolve(), flag), Path(path).resolve()) for flag, path in found]


def _check_targets(out: Path | None, args: argparse.Namespace, inputs: list[tuple[str, Path]],
                   makes_base: bool = False) -> None:
    """Before anything loads: the run never writes over what it reads, nor over an existing file unless
    --overwrite names exactly that path."""
    from pipelines.video_io import FRAME_FILES
    from studio.outputs import files_of

    targets = [] if out is None else files_of(out, gif=False, latents=out.suffix.lower() == ".mp4")
    base = [] if out is None or not makes_base else \
        files_of(out.with_name(out.stem + ".base.mp4"), gif=False, latents=True)
    taken = [t.name for t in base if os.path.lexists(t)]
    if taken:  # --overwrite names --out alone
        raise UsageError(f"--out {str(out)!r}: the clip to loop would be written to {', '.join(taken)}, which "
                         "already exists; choose another --out, or loop that clip with --video")
    targets += base
    frames_out = Path(args.frames_out).resolve() if args.frames_out else None
    for flag, source in inputs:
        for target in targets:
            if target.resolve() == source:
                raise UsageError(f"--out {str(out)!r} would write {target.name} over {flag}, which this run reads: "
                                 "choose another --out")
        if frames_out is not None and (frames_out == source or frames_out in source.parents):
            raise UsageError(f"--frames-out {args.frames_out!r} is where {flag} lives, which this run reads: "
                             "choose another folder")
    existing = [t.name for t in targets if os.path.lexists(t)]  # a link counts, even one that points nowhere
    if existing and not args.overwrite:
        raise UsageError(f"--out {str(out)!r}: {', '.join(existing)} already exists; choose another name, or add "
                         "--overwrite to replace it")
    if frames_out is not None and frames_out.is_dir() and not args.overwrite:
        held = sorted(frames_out.glob(FRAME_FILES))
        if held:
            raise UsageError(f"--frames-out {args.frames_out!r} already holds {len(held)} frame files "
                             f"({held[0].name}...); choose an empty folder, or add --overwrite to replace them")


def _generate_and_write(pipe: Any, request: Any, out: Path | None, frames_out: str | None, quiet: bool,
                        overwrite: bool, extra: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Generate, then write to `out`, or under a new name in outputs/ when there is none (`extra`: more
    sidecar fields)."""
    callback, close = _progress(quiet)
    try:
        result = pipe.generate(request, callback=callback)
    finally:
        close()
    for note in result.notes:
        print(f"note: {note}")
    from studio.outputs import History, write_result

    if out is None:
        return History(DEFAULT_OUTPUTS).write(result, gif=False, frames_out=frames_out, extra=extra)
    return out, write_result(result, out, frames_out, overwrite=overwrite, extra=extra)


def main(argv: list[str] | None = None) -> int:
    from pipelines.enhancer import EnhancerUnavailable
    from pipelines.loading import ModelNotAvailable

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (UsageError, ValueError) as error:
        log.debug("invalid invocation", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ModelNotAvailable, EnhancerUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, an unwritable folder: what happened, not a traceback
        log.debug("could not write", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
