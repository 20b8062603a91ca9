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

from pipelines import acceleration, planner
from pipelines.request import MODES, frames_text

log = logging.getLogger("studio.cli")

DEFAULT_OUTPUTS = Path("outputs")
PLANNER_CACHE = DEFAULT_OUTPUTS / ".planner"  # the planner's calibration (pipelines/planner.py)


class UsageError(Exception):
    """A problem with the invocation: printed as one line, exit status 2."""


class LoopPlan(NamedTuple):
    """loop needs the pipeline before its request can be built when it starts from a prompt alone."""

    video: str | None
    params: dict[str, Any]  # modes.build's parameters for the loop, without its clip

    def base_params(self) -> dict[str, Any]:
        """The text-to-video base clip's: the loop's settings, one candidate (they are for the bridge)."""
        return {k: v for k, v in self.params.items() if k not in ("new_frames", "context_frames")} | {"best_of": 1}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from pipelines.loading import MODELS
    from pipelines.modes import DEFAULT_RESTYLE_STRENGTH
    from pipelines.samplers import SAMPLERS

    p = _Parser(prog="launch.py generate", description="Generate a clip without the browser studio.")
    p.add_argument("mode", choices=MODES + ("reproduce",),
                   help="what to make; reproduce re-runs the request in a sidecar given with --request")
    p.add_argument("--request", help="reproduce: an output's JSON sidecar (its request is run again as it was)")
    p.add_argument("--model", help=f"a registry name ({', '.join(MODELS)}), a diffusers folder or a hub id "
                                   "(default: embedded; for reproduce, the model recorded in the sidecar)")
    p.add_argument("--prompt", required=False, help="what the clip shows (a model that reads no prompt, such "
                   "as Stable Video Diffusion, animates without one)")
    p.add_argument("--negative", default="", help="what to steer away from")
    p.add_argument("--image", help="animate: the still that becomes frame 0")
    p.add_argument("--video", help="extend, loop, restyle: the clip; connect: clip A")
    p.add_argument("--video-b", help="connect: clip B")
    p.add_argument("--direction", choices=("forward", "backward"), default="forward", help="extend: which way")
    p.add_argument("--start", type=float, default=0.0, metavar="SECONDS",
                   help="restyle: where in the clip the window starts (the trim's in point; --frames or --seconds "
                        "is its length)")
    p.add_argument("--frames", type=int, help="frames of the clip; for extend, loop and connect the new frames")
    p.add_argument("--seconds", type=float, help="length instead of --frames, snapped to a valid frame count")
    p.add_argument("--fps", type=float, help="frames per second (the model's default when omitted)")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (<= 1 turns it off; the model's "
                                                "default for the mode when omitted)")
    p.add_argument("--strength", type=float,
                   help="restyle: how far the clip is noised (0-1, default "
                        f"{DEFAULT_RESTYLE_STRENGTH:g}); animate: how firmly the still is held")
    p.add_argument("--context-frames", type=int, help="extend, loop, connect: frames of each clip the model sees")
    p.add_argument("--seed", type=int, help="random seed (random when omitted; recorded in the sidecar)")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="extend, loop, connect: sample N candidates (seeds seed..seed+N-1), keep the smoothest joins")
    p.add_argument("--image-first", action=argparse.BooleanOptionalAction, default=None,
                   help="t2v: sample the first frame alone, then the clip with it held (the model's default when "
                        "omitted)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="default")
    p.add_argument("--shift", type=float, help="flow shift (the checkpoint's when omitted)")
    p.add_argument("--motion-bucket", type=int, metavar="ID", help="animate, Stable Video Diffusion: how much motion "
                   "(0-1023, more is more; the model's 127 when omitted)")
    p.add_argument("--noise-aug", type=float, metavar="STRENGTH", help="animate, Stable Video Diffusion: noise "
                   "added to the still before encoding (more departs further from it; the model's 0.02 when omitted)")
    p.add_argument("--min-guidance", type=float, help="animate, Stable Video Diffusion: the first frame's guidance, "
                   "rising to --guidance at the last (the model's 1 when omitted)")
    p.add_argument("--conditioning", choices=("per_token", "replace"), help="override the model's conditioning strategy")
    p.add_argument("--no-saved-latents", action="store_true", help="re-encode source clips even when they have latents")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    planner.add_arguments(p)  # --memory, --low-vram (= --memory low), --plan-only
    acceleration.add_arguments(p)
    p.add_argument("--out", help="output file: .mp4, .gif, or .png for one frame (default: a new name in outputs/, "
                                 "<time>-<mode>-<seed>.mp4)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out (and its sidecars) if it exists, and the frame files already in --frames-out; "
                        "never allowed over an input of the run")
    p.add_argument("--frames-out", help="also write every frame of the final clip as PNG into this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# ---- from arguments to a request ------------------------------------------------------------------------
def _require_file(path: str | None, flag: str, mode: str) -> str:
    """The input's absolute path: the sidecar records it, and `reproduce` may run from another folder."""
    if not path:
        raise UsageError(f"{mode} needs {flag}")
    if not Path(path).exists():
        raise UsageError(f"{flag} {path!r} does not exist")
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


# The flags of GenerationRequest's KNOBS: only families that read them (Family.knobs) take them.
KNOB_FLAGS = {"motion_bucket_id": ("--motion-bucket", "motion_bucket"),
              "noise_aug_strength": ("--noise-aug", "noise_aug"),
              "min_guidance_scale": ("--min-guidance", "min_guidance")}


def build_request(args: argparse.Namespace, defaults: Any, geometry: Any, reads_text: bool = True,
                  knobs: tuple[str, ...] = ()):
    """The request the flags describe; what they leave out takes the model's defaults (modes.build).
    `reads_text` False: the model reads no prompt (animate runs without --prompt); `knobs`: the optional
    request fields it reads (request.KNOBS)."""
    from pipelines import modes
    from pipelines.request import PROMPTLESS_MODES

    args.prompt, args.negative = _typed_text(args.prompt, "--prompt"), _typed_text(args.negative, "--negative")
    mode, prompt, temporal = args.mode, args.prompt, geometry.temporal
    for knob, (flag, attribute) in KNOB_FLAGS.items():
        if getattr(args, attribute) is not None and knob not in knobs:
            raise UsageError(f"{flag} applies to models that read it (Stable Video Diffusion), not this one")
    if not prompt and (reads_text or mode not in PROMPTLESS_MODES):
        raise UsageError(f"{mode} needs --prompt")
    prompt = prompt or ""
    if args.strength is not None and mode not in ("restyle", "animate"):
        raise UsageError(f"--strength applies to restyle and animate, not {mode}")
    if args.start and mode != "restyle":
        raise UsageError(f"--start applies to restyle, not {mode}")
    if args.image_first is not None and mode != "t2v":
        raise UsageError(f"--image-first applies to t2v, not {mode}")
    fps = args.fps if args.fps is not None else defaults.fps
    params: dict[str, Any] = dict(
        prompt=prompt, negative_prompt=args.negative, width=args.width, height=args.height, fps=fps,
        steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little"),
        sampler=args.sampler, shift=args.shift, conditioning_strategy=args.conditioning,
        use_saved_latents=not args.no_saved_latents, best_of=args.best_of,
        **{knob: getattr(args, attribute) for knob, (_, attribute) in KNOB_FLAGS.items()},
    )
    if mode == "t2v":
        params.update(num_frames=_frames(args, "window", fps, temporal, None), image_first=args.image_first)
    elif mode == "animate":
        params.update(image=_require_file(args.image, "--image", mode), strength=args.strength,
                      num_frames=_frames(args, "window", fps, temporal, None))
    elif mode == "restyle":
        params.update(video=_require_file(args.video, "--video", mode), strength=args.strength,
                      start=modes.trim(args.start, None, fps, temporal)[0],
                      num_frames=_frames(args, "window", fps, temporal, None))
    elif mode == "extend":
        params.update(clip=_require_file(args.video, "--video", mode), direction=args.direction,
                      new_frames=_frames(args, "extend", fps, temporal, None), context_frames=args.context_frames)
    elif mode == "connect":
        params.update(clip_a=_require_file(args.video, "--video", mode),
                      clip_b=_require_file(args.video_b, "--video-b", mode),
                      new_frames=_frames(args, "connect", fps, temporal, None), context_frames=args.context_frames)
    elif mode == "loop":
        params.update(new_frames=_frames(args, "loop", fps, temporal, None), context_frames=args.context_frames)
        return LoopPlan(args.video and _require_file(args.video, "--video", mode), params)
    elif mode != "image":
        raise UsageError(f"unknown mode {mode!r}")
    return modes.build(mode, defaults, geometry, **params)


def _reproduced(args: argparse.Namespace):
    from pipelines.request import GenerationRequest

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
    if not isinstance(data, dict) or "request" not in data:
        raise UsageError(f"--request {path!r} holds no 'request': pass the .json written beside an output")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise UsageError(f"--request {path!r} records a model that is not a name ({model!r:.60}); pass --model")
    request = GenerationRequest.from_dict(data["request"])
    return _sources_beside(request, Path(path).absolute().parent), model


def _sources_beside(request: Any, folder: Path) -> Any:
    """Older sidecars recorded sources as given, relative to the folder the CLI ran in: a relative source
    that is not found from here is looked for relative to the sidecar's folder (where outputs usually sit)."""
    import dataclasses

    def found(source: str) -> str:
        if Path(source).is_absolute() or Path(source).exists() or not (folder / source).exists():
            return source
        return str(folder / source)

    items = tuple(dataclasses.replace(item, source=found(item.source)) for item in request.conditioning)
    init = found(request.init_video) if request.init_video else request.init_video
    return request.replace(conditioning=items, init_video=init)


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
    if args.mode == "image" and (args.frames is not None or args.seconds is not None):
        raise UsageError("image makes one frame; drop --frames/--seconds")
    recorded = None
    if args.mode == "reproduce":
        built, recorded = _reproduced(args)
        if args.model is None:
            args.model = recorded
        elif args.model != recorded:
            print(f"note: reproducing with {args.model}; the sidecar records {recorded}")
    args.model = args.model or "embedded"
    model = inspect_model(args.model)
    defaults, geometry = model.defaults, model.geometry
    mode = getattr(built, "mode", "loop") if args.mode == "reproduce" else args.mode
    if model.modes.get(mode):
        raise UsageError(f"{args.model} cannot {mode}: {model.modes[mode]}. It offers: {', '.join(model.offered)}")
    if args.mode != "reproduce":
        built = build_request(args, defaults, geometry, model.family.reads_text, model.family.knobs)
    out = Path(args.out) if args.out else None
    check_out_paths(out if out is not None else DEFAULT_OUTPUTS / "new.mp4", args.frames_out)
    if out is not None and out.suffix.lower() not in (".mp4", ".gif", ".png"):
        raise UsageError(f"--out {str(out)!r} is not valid: a .mp4, .gif or .png file")
    if out is not None and out.suffix.lower() == ".png" and getattr(built, "mode", args.mode) != "image":
        raise UsageError("--out .png holds one frame: use it with the image mode, or write .mp4/.gif")
    _check_targets(out, args, _inputs_of(built, args))

    from pipelines import VideoPipeline, modes
    from pipelines.request import GenerationRequest, check_grid

    # Checked before the weights load, which takes minutes for a real checkpoint.
    probe = built if isinstance(built, GenerationRequest) else modes.build("t2v", defaults, geometry,
                                                                           **built.base_params())
    check_grid(probe, geometry.grid, geometry.temporal)
    _quiet_library_progress()
    started = time.perf_counter()
    pipe = VideoPipeline.from_pretrained(args.model, device=args.device, memory=planner.load_mode(args.memory))
    acceleration.apply_arguments(pipe, args)
    print(f"loaded {pipe.model_id} on {pipe.device} in {time.perf_counter() - started:.1f} s")
    if isinstance(built, LoopPlan):  # from a clip, or from the prompt through a text-to-video base clip
        video = built.video
        if video is None:  # without --guidance the base clip takes text-to-video's, the bridge the join guidance
            base = modes.build("t2v", defaults, geometry, **built.base_params())
            base_out = None if out is None else out.with_name(out.stem + ".base.mp4")
            planner.announce(pipe, base, args.memory, PLANNER_CACHE)
            if args.plan_only:
                return 0
            video = str(_generate_and_write(pipe, base, base_out, None, args.quiet, overwrite=False)[0])
            print(f"wrote the clip to loop: {video}")
        built = modes.build("loop", defaults, geometry, clip=video, **built.params)
    planner.announce(pipe, built, args.memory, PLANNER_CACHE)
    if args.plan_only:
        return 0
    out, sidecar = _generate_and_write(pipe, built, out, args.frames_out, args.quiet, args.overwrite)
    joins = f", joins {', '.join(f'{x:.2f}' for x in sidecar['joins'])}x the median step" if sidecar["joins"] else ""
    print(f"wrote {out} ({frames_text(sidecar['frames'])}, {sidecar['width']}x{sidecar['height']}, "
          f"{sidecar['fps']:g} fps, "
          f"seed {built.seed}{joins}) and {out.name}.json")
    return 0


def _quiet_library_progress() -> None:
    """Our own line reports loading; the libraries' per-file bars would bury it."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _inputs_of(built: Any, args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(flag, resolved path) of every file or folder the run reads."""
    from pipelines.request import GenerationRequest

    found = [("--request", args.request)] if args.mode == "reproduce" else []
    if isinstance(built, GenerationRequest):
        found += [("an input", item.source) for item in built.conditioning]
        found += [("--video", built.init_video)] if built.init_video else []
    elif built.video:
        found.append(("--video", built.video))
    named = {Path(path).resolve(): flag for path, flag in ((args.image, "--image"), (args.video, "--video"),
                                                            (args.video_b, "--video-b")) if path}
    return [(named.get(Path(path).resolve(), flag), Path(path).resolve()) for flag, path in found]


def _check_targets(out: Path | None, args: argparse.Namespace, inputs: list[tuple[str, Path]]) -> None:
    """Before anything loads: the run never writes over what it reads, nor over an existing file unless
    --overwrite names exactly that path."""
    from pipelines.video_io import FRAME_FILES
    from studio.outputs import files_of

    targets = [] if out is None else files_of(out, gif=False, latents=out.suffix.lower() == ".mp4")
    base = [] if out is None or args.mode != "loop" or args.video else \
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
                        overwrite: bool) -> tuple[Path, dict[str, Any]]:
    """Generate, then write to `out`, or under a new name in outputs/ when there is none."""
    callback, close = _progress(quiet)
    try:
        result = pipe.generate(request, callback=callback)
    finally:
        close()
    for note in result.notes:
        print(f"note: {note}")
    from studio.outputs import History, write_result

    if out is None:
        return History(DEFAULT_OUTPUTS).write(result, gif=False, frames_out=frames_out)
    return out, write_result(result, out, frames_out, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    from pipelines.loading import ModelNotAvailable

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (UsageError, ValueError) as error:
        log.debug("invalid invocation", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModelNotAvailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, an unwritable folder: what happened, not a traceback
        log.debug("could not write", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
