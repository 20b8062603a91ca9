"""The studio in front of a farm: `python launch.py --farm` serves the same page, but its jobs run on a Ray
Serve application whose replicas each hold one loaded pipeline (studio/farm_replica.py), one GPU each on a
GPU cluster or `--replica-cpus` cores each on CPUs; `python launch.py generate ... --farm-address ADDRESS`
submits one job to a running farm.

`FarmEngine` is the studio's `Engine` with one slot per replica: the same Job objects, queue bound (those
running plus --queue-size waiting), positions, QueueFull messages and cancel calls, so the page needs no
change. What travels to a replica is the request as JSON (media paths in it are uploads kept in the outputs
folder, which on a cluster must be one shared path); the replica writes the output there with History
(atomic, sidecar last) and streams back progress, previews and the output's path. Cancel goes through a
small named Ray actor (the cancel board) that the replica's stream waits on, so it arrives within a step.
A replica that dies mid-job is replaced by Serve; the job is retried once (same request and seed, so the
same frames), else it fails with a message. Ray is imported only here and only when a farm is used.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.engine import Engine, Job

log = logging.getLogger("studio.farm")

APP = "studio-farm"  # the Serve application's name
NAMESPACE = "studio-farm"  # the Ray namespace of the cancel board
BOARD = "studio-farm-cancels"
ROOT = Path(__file__).resolve().parents[1]  # this checkout: replicas import the studio from it
RECONNECT_S = 600.0  # how long a job waits for the application to come back (a restart, a model loading)


# ---- the command lines --------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """`python launch.py --farm` and its options."""
    p.add_argument("--farm", action="store_true",
                   help="run generations on a Ray Serve farm of --replicas, each holding the model (README: Farm)")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="farm: the Ray cluster to use (HOST:6379, or auto for the one started on this machine "
                        "with `ray start --head`); default: start a local Ray instance")
    p.add_argument("--replicas", type=int, default=1, help="farm: replicas, each holding one loaded model")
    p.add_argument("--replica-cpus", type=int, default=1,
                   help="farm without GPUs: CPU cores per replica (its torch threads)")


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--farm-address", metavar="ADDRESS",
                   help="submit to the farm running on this Ray cluster (HOST:6379, or auto for this machine) "
                        "instead of loading the model here; the farm writes into its outputs folder")


def invalid_arguments(args: argparse.Namespace) -> str | None:
    if not args.farm:
        given = [flag for flag, value, default in (("--ray-address", args.ray_address, None),
                                                   ("--replicas", args.replicas, 1),
                                                   ("--replica-cpus", args.replica_cpus, 1)) if value != default]
        return f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for a farm: add --farm" if given else None
    if args.replicas < 1:
        return f"--replicas {args.replicas} is not valid: at least 1"
    if args.replica_cpus < 1:
        return f"--replica-cpus {args.replica_cpus} is not valid: at least 1"
    return None


# ---- Ray ----------------------------------------------------------------------------------------------
def connect(address: str | None, cpus: int = 1) -> None:
    """Join the Ray cluster at `address`, or start a local Ray instance with at least `cpus` CPUs."""
    import ray

    if ray.is_initialized():
        return
    # The replicas import the studio from this checkout (an installed copy works too; the path is then unused).
    runtime_env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    if address:
        ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=False)
    else:
        # Logical CPUs: a replica per core even where the machine has fewer (it then shares them).
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus), namespace=NAMESPACE, runtime_env=runtime_env,
                 include_dashboard=False, log_to_driver=False)


def start(model: str, outputs: Path, replicas: int, replica_cpus: int, memory: str = "full",
          device: str | None = None, preview_interval: float | None = None,
          speed: dict[str, Any] | None = None) -> None:
    """Deploy (or update) the farm's Serve application on the connected cluster and wait until it serves.
    `speed`: the speed options by name (attention, compile, step_cache), as launch.py takes them."""
    import ray

    from studio import farm_replica
    from studio.engine import PREVIEW_INTERVAL_S

    gpus = device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
    if Path(model).expanduser().exists():  # a folder: named absolutely, since replicas start elsewhere
        model = str(Path(model).expanduser().resolve())
    farm_replica.board()
    farm_replica.deploy(farm_replica.application(
        model, str(Path(outputs).resolve()), replicas, replica_cpus, gpus, memory,
        PREVIEW_INTERVAL_S if preview_interval is None else preview_interval, speed))
    log.info("the farm serves %s on %d replica%s (%s each)", model, replicas, "s" * (replicas != 1),
             "one GPU" if gpus else f"{replica_cpus} CPU core{'s' * (replica_cpus != 1)}")


class FarmClient:
    """Runs jobs on the farm: one stream per job, retried once on another replica if the one running it dies."""

    def __init__(self):
        self._handle = None

    def handle(self, stopped: Callable[[], bool]) -> Any | None:
        """A handle on the farm's application once it serves (it may be being redeployed: wait for it up to
        RECONNECT_S); None if `stopped()` turns true meanwhile."""
        from ray import serve

        deadline = time.monotonic() + RECONNECT_S
        while self._handle is None:
            try:
                app = serve.status().applications.get(APP)
                if app is not None and app.status == "RUNNING":
                    self._handle = serve.get_app_handle(APP)
                    break
            except Exception:  # noqa: BLE001 - Serve itself restarting; asked again below
                log.debug("the farm's application is not reachable yet", exc_info=True)
            if stopped():
                return None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the farm's application did not serve within {RECONNECT_S:.0f} s")
            time.sleep(1.0)
        return self._handle

    def cancel(self, key: str) -> None:
        import ray

        from studio import farm_replica

        ray.get(farm_replica.board().cancel.remote(key), timeout=30)

    def run(self, request: Any, key: str, on_event: Callable[[dict], None],
            on_retry: Callable[[str], bool] = lambda why: True, stopped: Callable[[], bool] = lambda: False) -> dict:
        """Stream `request` on a replica, calling on_event for each event; returns the "finished" event.
        An error of the farm (not of the generation, which comes back as a message) after the job started on
        a replica retries it once, unless on_retry(why) says not to (the job was cancelled meanwhile); before
        it started (the application being redeployed), it waits for the application to serve again."""
        import ray

        from studio import farm_replica

        def ended(status: str, message: str) -> dict:
            return {"event": "finished", "status": status, "out": None, "step": 0, "total": 0, "cancel_at": None,
                    "message": message}

        try:
            failures = 0
            while True:
                started, finished = False, None
                try:
                    handle = self.handle(stopped)
                    if handle is None:
                        return ended("cancelled", "Cancelled before it started.")
                    for event in handle.options(stream=True).generate.remote(request.to_json(), key):
                        started = True
                        on_event(event)
                        if event["event"] == "finished":
                            finished = event
                    if finished is not None:
                        return finished
                    why = "its replica ended the job without a result"
                except KeyboardInterrupt:  # the command line's Ctrl-C: the replica stops too
                    self.cancel(key)
                    raise
                except TimeoutError as error:
                    return ended("failed", f"The farm is not serving: {error}. Nothing was written.")
                except Exception as error:  # noqa: BLE001 - a dead replica or a redeploy; the log has the rest
                    log.warning("job %s: the farm failed it (started: %s)", key, started, exc_info=True)
                    why = _why(error)
                self._handle = None  # a restarted application is reached through a new handle
                if not started:
                    continue
                failures += 1
                if failures == 2:
                    return ended("failed", f"The generation failed twice on the farm ({why}); nothing was written. "
                                           "Try again.")
                if not on_retry(why):
                    return ended("cancelled", f"Cancelled ({why}).")
        finally:
            try:
                ray.get(farm_replica.board().forget.remote(key), timeout=30)
            except Exception:  # noqa: BLE001 - the board forgets nothing it must keep
                log.warning("could not tell the cancel board that job %s ended", key, exc_info=True)


def _why(error: Exception) -> str:
    from ray.exceptions import ActorDiedError, RayActorError

    if isinstance(error, (ActorDiedError, RayActorError)):
        return "the replica running it stopped"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")


# ---- the studio's side ----------------------------------------------------------------------------------
class FarmPipeline:
    """What the page reads of the model (its id, defaults, geometry, modes, family) from its configs, without
    weights: the replicas hold those. A request is checked against the model on the replica (the job then
    fails with the same "Cannot generate this: ..." message before its first step)."""

    loaded = True

    def __init__(self, model: str):
        from pipelines.families import inspect_model

        facts = inspect_model(model)
        self.model_id, self.defaults, self.modes, self.family = facts.model_id, facts.defaults, facts.modes, facts.family
        self.geometry = facts.geometry
        self.grid, self.temporal, self.spatial = facts.geometry.grid, facts.geometry.temporal, facts.geometry.spatial

    def request(self, mode: str, *args: Any, **params: Any) -> Any:
        from pipelines.modes import build

        return build(mode, self.defaults, self.geometry, *args, **params)

    def check_request(self, request: Any) -> None:
        """Checked on the replica, which holds the model (see the class)."""

    def uses_image_first(self, request: Any) -> bool:
        from pipelines.pipeline import VideoPipeline

        return VideoPipeline.uses_image_first(self, request)  # reads only the defaults and the geometry


class FarmEngine(Engine):
    """The studio's engine with one slot per replica; each job runs on the farm (module docstring)."""

    def __init__(self, pipe: Any, history: Any, replicas: int, max_waiting: int = 8,
                 max_per_session: int | None = None):
        super().__init__(pipe, history, max_waiting=max_waiting, max_per_session=max_per_session)
        self.slots = replicas
        self.client = FarmClient()
        self._keys: dict[int, str] = {}  # running job -> its key on the farm
        self.replica_pids: dict[int, int] = {}  # job -> the process of the replica running it (tests kill it)
        self.cancel_steps: dict[int, tuple[int, int]] = {}  # job -> (steps done when Cancel reached it, at stop)

    def plan(self, request: Any) -> str:
        return "Time and memory: each replica of the farm plans its own generation."

    def cancel(self, session: str | None = None, job_id: int | None = None) -> int:
        asked = super().cancel(session, job_id)
        with self._registry:
            running = [key for job_id, key in self._keys.items() if job_id in self._jobs and
                       self._jobs[job_id].cancel.is_set()]
        for key in running:
            self.client.cancel(key)
        return asked

    def _generate(self, job: Job) -> None:
        if job.work is not None:  # a job of many parts on one pipeline (a storyboard take, a variations grid)
            job.status, job.message = "failed", ("This runs on one machine, not yet on a farm: start the studio "
                                                 "without --farm to make it.")
            return
        key = uuid.uuid4().hex
        with self._registry:
            self._keys[job.id] = key
        if job.cancel.is_set():  # pressed before the key was known to cancel()
            self.client.cancel(key)
        try:
            finished = self.client.run(job.request, key, lambda event: self._update(job, event),
                                       lambda why: self._retrying(job, why), job.cancel.is_set)
        finally:
            with self._registry:
                self._keys.pop(job.id, None)
        if finished["cancel_at"] is not None:
            self.cancel_steps[job.id] = (finished["cancel_at"], finished["step"])
        status, message = finished["status"], finished["message"]
        if status == "done":
            job.out = Path(finished["out"])
            job.entry = self.history.read(job.out)
            if job.entry is None:
                status, message = "failed", (f"The farm wrote {job.out.name} where this studio cannot read it: the "
                                             "outputs folder must be the same shared path on every machine.")
        job.status, job.message = status, message

    def _update(self, job: Job, event: dict) -> None:
        if event["event"] == "started":
            self.replica_pids[job.id] = event["pid"]
            return
        if event["step"] != job.step:
            job.step_times.append(time.perf_counter())
        job.step, job.total = event["step"], event["total"]
        if event["preview"] is not None:
            job.preview = event["preview"]
        if event["event"] == "progress":
            job.message = event["message"]
        job._notify()

    def _retrying(self, job: Job, why: str) -> bool:
        """The replica died mid-job: clear what it left half-written and run the job again from step 0
        (False: it was cancelled meanwhile, so it is not run again)."""
        self.history.sweep()
        if job.cancel.is_set():
            return False
        job.step, job.total, job.step_times, job.preview = 0, 0, [], None  # the page shows the message
        job.message = f"Retrying on another replica ({why})..."
        job._notify()
        return True


def create(model: str, outputs: Path, replicas: int = 1, replica_cpus: int = 1, address: str | None = None,
           queue_size: int = 8, memory_mode: str = "full", device: str | None = None,
           loras: Path | None = None, enhancer: str | None = None, speed: dict[str, Any] | None = None):
    """The studio's page in front of a farm (tests call this): (the Gradio app, its history, its engine)."""
    from studio.app import ModelInfo, build
    from studio.outputs import History
    from studio.serve import per_session

    history = History(outputs)
    history.sweep()
    pipe = FarmPipeline(model)  # an unknown model is refused here, before Ray starts
    connect(address, replicas * replica_cpus)
    start(model, history.folder, replicas, replica_cpus, memory_mode, device, speed=speed)
    engine = FarmEngine(pipe, history, replicas, max_waiting=queue_size, max_per_session=per_session(queue_size))
    return build(engine, ModelInfo.of(pipe), loras, enhancer), history, engine


def serve(args: argparse.Namespace) -> int:
    """`python launch.py --farm ...` once its arguments were checked."""
    from studio.serve import launch_kwargs

    speed = {name: getattr(args, name) for name in ("attention", "compile", "step_cache")}
    demo, history, _ = create(args.model, args.outputs, args.replicas, args.replica_cpus, args.ray_address,
                              args.queue_size, args.memory, args.device, args.loras, args.enhancer, speed)
    demo.launch(prevent_thread_lock=True, **launch_kwargs(args, history))
    demo.block_thread()
    return 0


def generate(args: argparse.Namespace, request: Any, out: Path | None) -> int:
    """`launch.py generate ... --farm-address ADDRESS`: run one request on the farm and print where it went."""
    from studio.cli import UsageError, _progress

    if out is not None or args.frames_out:
        raise UsageError("--out and --frames-out are not valid with --farm-address: the farm writes into its own "
                         "outputs folder (the path is printed)")
    if not hasattr(request, "to_json"):
        raise UsageError(f"--farm-address runs one request: give {args.mode} its --video (the farm does not make "
                         "the clip first)")
    connect(args.farm_address)
    callback, close = _progress(args.quiet)
    client, key = FarmClient(), uuid.uuid4().hex

    def on_event(event: dict) -> None:
        if callback is not None and event["event"] != "started" and event["total"]:
            callback(event["step"], event["total"], None)

    try:
        finished = client.run(request, key, on_event, lambda why: print(f"note: retrying: {why}") or True)
    finally:
        close()
    if finished["status"] != "done":
        print(f"error: {finished['message']}")
        return 1
    print(f"{finished['message']} Wrote {finished['out']} (on the farm's outputs folder)")
    return 0
