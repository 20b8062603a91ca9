"""`python launch.py [options]`: load the model once and serve the studio on 127.0.0.1:7860."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

from pipelines import acceleration, memory

log = logging.getLogger("studio.serve")

DEFAULT_QUEUE_SIZE = 8


def build_parser() -> argparse.ArgumentParser:
    from pipelines.loading import MODELS

    p = argparse.ArgumentParser(prog="launch.py", description="Start the video studio in the browser.",
                                epilog="Headless generation: python launch.py generate --help")
    p.add_argument("--model", default="embedded",
                   help=f"a registry name ({', '.join(MODELS)}), a local diffusers folder or a hub id")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but 127.0.0.1/localhost needs --listen-anywhere")
    p.add_argument("--listen-anywhere", action="store_true",
                   help="allow a non-local --host (anyone who can reach this machine can then use the studio)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="where outputs and history live")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    memory.add_arguments(p, plan_only=False)  # --memory (default auto), --low-vram (= --memory low)
    p.add_argument("--loras", type=Path, default=Path("loras"), help="the folder of .safetensors LoRAs the picker lists")
    p.add_argument("--enhancer", default=os.environ.get("STUDIO_ENHANCER"), metavar="MODEL_OR_URL",
                   help="the prompt enhancer's language model: an instruct model's folder or cached hub id, or the "
                        "URL of a local OpenAI-compatible or Ollama server (default: $STUDIO_ENHANCER; none: the "
                        "Enhance button is off)")
    acceleration.add_arguments(p)
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE,
                   help="generations that may wait for the device; more are turned away")
    p.add_argument("--auth", help="user:password required to open the studio")
    p.add_argument("--max-upload", default="500MB", help="largest file a browser may upload")
    from studio import farm

    farm.add_arguments(p)  # --farm, --ray-address, --replicas, --replica-cpus
    return p


def load_pipeline(model: str, device: str | None = None, memory_mode: str = "full",
                  speed: argparse.Namespace | None = None):
    from pipelines import VideoPipeline

    started = time.perf_counter()
    pipe = VideoPipeline.from_pretrained(model, device=device, memory=memory.load_mode(memory_mode))
    log.info("loaded %s on %s in %.1f s", pipe.model_id, pipe.device, time.perf_counter() - started)
    if speed is not None:
        log.info("speed settings: %s", acceleration.apply_arguments(pipe, speed))
    return pipe


class PendingPipeline:
    """The pipeline of a studio that serves its page while the weights load (`python launch.py`): importing
    diffusers and loading take longer than the page. What the page is built from (the model's id, defaults,
    geometry, modes and family) is read from its configs at once, so an unknown or missing model is still
    refused before anything is served; any other use (checking a request, generating) waits for `load`."""

    def __init__(self, model: str, device: str | None = None, memory_mode: str = "full",
                 speed: argparse.Namespace | None = None):
        from pipelines.families import inspect_model

        self._facts = inspect_model(model)
        self._load_args = (model, device, memory_mode, speed)
        self._pipe = None
        self._failure: str | None = None
        self._loaded = threading.Event()

    def load(self) -> None:
        """Load the weights; until this returns, users of the pipeline wait."""
        try:
            self._pipe = load_pipeline(*self._load_args)
        except BaseException as error:
            self._failure = str(error) or type(error).__name__
            raise
        finally:
            self._loaded.set()

    @property
    def loaded(self) -> bool:
        """Whether the weights are in (what waits for them can run without waiting)."""
        return self._pipe is not None

    def __getattr__(self, name: str):  # only names the instance does not hold
        if name.startswith("_"):  # private and special names are never the pipeline's (copy, pickle)
            raise AttributeError(name)
        if not self._loaded.is_set():
            facts = self._facts
            known = {"model_id": facts.model_id, "defaults": facts.defaults, "modes": facts.modes,
                     "family": facts.family, "grid": facts.geometry.grid, "temporal": facts.geometry.temporal,
                     "spatial": facts.geometry.spatial}
            if name in known:
                return known[name]
            self._loaded.wait()
        if self._pipe is None:
            raise RuntimeError(f"the model did not load: {self._failure}")
        return getattr(self._pipe, name)


def create(model: str, outputs: Path, device: str | None = None, memory_mode: str = "full",
           queue_size: int = DEFAULT_QUEUE_SIZE, speed: argparse.Namespace | None = None,
           pipe: PendingPipeline | None = None, loras: Path | None = None, enhancer: str | None = None):
    """The Gradio app with its pipeline loaded (tests call this with a tiny model), or with `pipe`, which the
    caller loads once the page is served. `memory_mode`: full, low, minimal, or auto (the planner picks one
    per generation, timing the model on its first; pipelines/planner.py)."""
    from studio.app import ModelInfo, build
    from studio.engine import Engine
    from studio.outputs import PLANNER_FOLDER, History

    history = History(outputs)
    history.sweep()
    pipe = pipe if pipe is not None else load_pipeline(model, device, memory_mode, speed)
    engine = Engine(pipe, history, max_waiting=queue_size, max_per_session=per_session(queue_size),
                    memory=memory_mode, planner_cache=Path(outputs) / PLANNER_FOLDER)
    demo = build(engine, ModelInfo.of(pipe), loras, enhancer)
    return demo, history


def per_session(queue_size: int) -> int:
    """Generations one session may have unfinished: half the places (at least one), so one page or script
    can never fill a queue that others share."""
    return max(1, (queue_size + 1) // 2)


def blocked_paths(model: str, outputs: Path) -> list[str]:
    """Folders Gradio must never serve even if a path slips past `allowed_paths`: the model's, the hub
    cache and the home folder's secrets. (A blocked folder that holds the outputs or Gradio's upload folder
    would hide them, so one never is.)"""
    from huggingface_hub import constants

    home = Path.home()
    candidates = [Path(constants.HF_HUB_CACHE), Path(constants.HF_HOME), home / ".cache", home / ".ssh",
                  home / ".config", home / ".aws", home / ".netrc", Path(__file__).resolve().parents[1] / "assets"]
    if Path(model).expanduser().exists():
        candidates.append(Path(model).expanduser())
    from gradio.utils import get_upload_folder

    served = [outputs.resolve(), Path(get_upload_folder()).resolve()]  # outputs, and where uploads land
    return sorted({str(p.resolve()) for p in candidates
                   if not any(folder.is_relative_to(p.resolve()) for folder in served)})


def launch_kwargs(args: argparse.Namespace, history) -> dict:
    auth = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            raise SystemExit("error: --auth must be user:password")
        auth = (user, password)
    return dict(server_name=args.host, server_port=args.port, allowed_paths=[str(history.folder)],
                blocked_paths=blocked_paths(args.model, history.folder), max_file_size=args.max_upload, auth=auth,
                show_error=True, footer_links=["api"])


MAX_UPLOAD_FORMAT = re.compile(r"^\s*\d+\s*(b|kb|mb|gb|tb)\s*$", re.IGNORECASE)  # what Gradio parses


def invalid_argument(args: argparse.Namespace) -> str | None:
    """The first argument that would fail only after the model has loaded (minutes for a real checkpoint), as
    one line saying what is valid; None when all are usable."""
    from studio.cli import writable_folder

    if not 1 <= args.port <= 65535:
        return f"--port {args.port} is not valid: a port number from 1 to 65535"
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        socket.create_server((args.host, args.port), family=family).close()  # what the server will bind
    except OSError as error:
        return (f"--port {args.port} on {args.host} cannot be used ({error.strerror or error}): another program "
                "(perhaps another studio) is listening there; pick another --port")
    if args.outputs.exists() and not args.outputs.is_dir():
        return f"--outputs {str(args.outputs)!r} is a file: give a folder for the outputs and history"
    problem = writable_folder(args.outputs)
    if problem:
        return f"--outputs {str(args.outputs)!r} cannot be written: {problem}"
    if not MAX_UPLOAD_FORMAT.match(args.max_upload):
        return (f"--max-upload {args.max_upload!r} is not valid: a whole number and a unit, e.g. 500MB "
                "(b, kb, mb, gb, tb)")
    if args.auth is not None:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            return "--auth must be user:password"
    return None


def main(argv: list[str]) -> int:
    from pipelines.loading import ModelNotAvailable

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.listen_anywhere:
        print(f"error: --host {args.host} would let other machines use the studio; add --listen-anywhere "
              "(and consider --auth) if that is what you want", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can generate and read outputs%s",
                    args.host, "" if args.auth else " (no --auth given)")
    if args.queue_size < 1:
        print(f"error: --queue-size {args.queue_size} is not valid: at least 1", file=sys.stderr)
        return 2
    from studio import farm

    problem = invalid_argument(args) or farm.invalid_arguments(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.farm:
        try:
            return farm.serve(args)
        except (ModelNotAvailable, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    try:
        pipe = PendingPipeline(args.model, args.device, args.memory, speed=args)
        demo, history = create(args.model, args.outputs, args.device, args.memory, args.queue_size, pipe=pipe,
                               loras=args.loras, enhancer=args.enhancer)
    except (ModelNotAvailable, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    demo.launch(prevent_thread_lock=True, **launch_kwargs(args, history))
    log.info("loading the model; the page is up, and generations wait for it")
    try:
        pipe.load()
    except (ModelNotAvailable, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        demo.close()
        return 1
    demo.block_thread()
    return 0
