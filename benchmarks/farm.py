"""The farm's throughput: jobs per minute of 1 and of 2 replicas (one CPU core each) on the same 8 jobs, in one
run on one local Ray instance. Each round runs the jobs on 1 replica, then on 2 (the application is scaled in
place: the replica it keeps is not reloaded), so a slow spell of the machine lands on both; the figures are
the minimum and median over the rounds, and the ratio is the median of the rounds' own ratios (target: 2
replicas at least 1.6 times 1). All jobs are submitted at once through the studio's FarmEngine, as the page
would; a job's time runs from its submission to its output being listed in the history. Each phase also
records the cores the replicas used and those the rest of the machine used meanwhile (other work on a
shared machine takes cores a second replica would have had).

The reference, in the same rounds: the same jobs in 1 and in 2 plain processes (no Ray, no studio page),
each loading the model and running its share of the jobs with the studio's Engine on one torch thread. Its
ratio is what this machine gives two processes of this work at best (two processes share the last-level
cache and memory bandwidth, and on a virtual machine the host's other tenants), so the farm's ratio is read
against it: `--reference 0` leaves it out.

Then, on the 2 replicas, `--cancels` long jobs are each cancelled after a few steps: for each, the steps the
job had done on its replica when the cancel reached it and when it stopped, and the seconds from the cancel
call to the job's end.

    python -m benchmarks.farm                      # 3 rounds of 8 jobs, the embedded model at its default size
    python -m benchmarks.farm --rounds 5 --steps 10 --out farm.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds of the machine, of the farm's replica processes) so far."""
    import psutil

    replicas = 0.0
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "ServeReplica:" in " ".join(process.info["cmdline"] or []):
                times = process.cpu_times()
                replicas += times.user + times.system
        except psutil.Error:  # ended meanwhile
            continue
    machine = psutil.cpu_times()
    return machine.user + machine.system + machine.nice + getattr(machine, "irq", 0) + getattr(machine, "softirq", 0), replicas


def run_jobs(engine, requests) -> tuple[float, float, float]:
    """(seconds for the farm to finish every request, submitted at once; cores its replicas used; cores the
    rest of the machine used meanwhile)."""
    machine, replicas = busy_seconds()
    started = time.perf_counter()
    jobs = [engine.submit(request, session=f"bench-{k}") for k, request in enumerate(requests)]
    for job in jobs:
        for _ in engine.follow(job):
            pass
        if job.status != "done":
            raise SystemExit(f"a benchmark job did not finish: {job.status}: {job.message}")
    seconds = time.perf_counter() - started
    machine_after, replicas_after = busy_seconds()
    used = (replicas_after - replicas) / seconds
    return seconds, used, (machine_after - machine) / seconds - used


def plain_worker(model: str, requests_json: list[str]) -> None:
    """One process of the reference: load the model, say "ready", wait for a line on stdin, run the jobs one
    after another as a replica does (the studio's Engine, one torch thread), say "done"."""
    import torch

    torch.set_num_threads(1)
    from pipelines.request import GenerationRequest
    from studio.engine import Engine
    from studio.outputs import History
    from studio.serve import load_pipeline

    engine = Engine(load_pipeline(model, "cpu", "full"), History(Path(tempfile.mkdtemp(prefix="farm-ref-"))))
    print("ready", flush=True)
    sys.stdin.readline()
    for text in requests_json:
        job = engine.submit(GenerationRequest.from_json(text))
        for _ in engine.follow(job):
            pass
        if job.status != "done":
            raise SystemExit(f"a reference job did not finish: {job.status}: {job.message}")
    print("done", flush=True)


def run_plain(model: str, requests, processes: int) -> float:
    """Seconds for `processes` plain processes to run the requests (job k in process k mod processes), from
    the moment all have loaded the model to the last one's end."""
    workers = []
    for k in range(processes):
        share = [request.to_json() for request in requests[k::processes]]
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.farm", "--worker", model, json.dumps(share)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    try:
        for worker in workers:
            if worker.stdout.readline().strip() != "ready":
                raise SystemExit("a reference process failed to load the model")
        started = time.perf_counter()
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            if worker.stdout.readline().strip() != "done":
                raise SystemExit("a reference process failed its jobs")
        return time.perf_counter() - started
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.farm", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, help="steps per job (the model's default when omitted)")
    p.add_argument("--frames", type=int, help="frames per job (the model's default when omitted)")
    p.add_argument("--cancels", type=int, default=5, help="jobs cancelled mid-way, to time Cancel")
    p.add_argument("--reference", type=int, default=1, choices=(0, 1),
                   help="1: also run the jobs in 1 and 2 plain processes each round (the machine's own scaling)")
    p.add_argument("--out", type=Path, help="also write the figures here as JSON")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # one reference process: MODEL REQUESTS_JSON
    args = p.parse_args(argv)
    if args.worker:
        plain_worker(args.worker[0], json.loads(args.worker[1]))
        return 0

    import ray
    from ray import serve

    from studio import farm
    from studio.outputs import History

    outputs = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    history = History(outputs)
    pipe = farm.FarmPipeline(args.model)
    extra = {"steps": args.steps} if args.steps else {}
    extra |= {"num_frames": args.frames} if args.frames else {}
    requests = [pipe.request("t2v", prompt=f"a red ball moves right {k}", seed=100 + k, **extra)
                for k in range(args.jobs)]
    load = os.getloadavg()
    farm.connect(None, 2)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    plain: dict[int, list[float]] = {1: [], 2: []}
    cores: dict[int, list[tuple[float, float]]] = {1: [], 2: []}  # (the replicas', the rest of the machine's)
    cancels = []
    try:
        for round_ in range(args.rounds):
            for replicas in (1, 2):
                farm.start(args.model, outputs, replicas, 1, device="cpu")
                engine = farm.FarmEngine(pipe, history, replicas, max_waiting=args.jobs)
                took, used, rest = run_jobs(engine, requests)
                seconds[replicas].append(took)
                cores[replicas].append((used, rest))
                print(f"round {round_ + 1}: {replicas} replica{'s' * (replicas > 1)}: {args.jobs} jobs in "
                      f"{took:.1f} s ({60 * args.jobs / took:.1f} jobs/min); the replicas used {used:.2f} cores, "
                      f"the rest of the machine {rest:.2f}", flush=True)
            for processes in (1, 2) if args.reference else ():
                took = run_plain(args.model, requests, processes)
                plain[processes].append(took)
                print(f"round {round_ + 1}: {processes} plain process{'es' * (processes > 1)}: {args.jobs} jobs in "
                      f"{took:.1f} s ({60 * args.jobs / took:.1f} jobs/min)", flush=True)
        long = pipe.request("t2v", prompt="a long one", seed=7, steps=200)
        for k in range(args.cancels):
            job = engine.submit(long)
            while job.step < 2 + k and not job.finished:
                time.sleep(0.005)
            asked = time.perf_counter()
            engine.cancel(job_id=job.id)
            for _ in engine.follow(job, interval=0.01):
                pass
            reached, stopped = engine.cancel_steps[job.id]
            cancels.append({"reached_at_step": reached, "stopped_at_step": stopped,
                            "seconds": time.perf_counter() - asked,
                            "step_s": (job.step_times[-1] - job.step_times[0]) / max(1, len(job.step_times) - 1)})
            print(f"cancel {k + 1}: reached the replica after step {reached}, stopped after step {stopped}, "
                  f"{cancels[-1]['seconds']:.2f} s after the call (a step: {cancels[-1]['step_s']:.2f} s)", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    per_minute = {n: [60 * args.jobs / s for s in runs] for n, runs in seconds.items()}
    ratios = [two / one for one, two in zip(per_minute[1], per_minute[2])]
    plain_ratios = [one / two for one, two in zip(plain[1], plain[2])]  # seconds, so 1 over 2
    result = {"model": args.model, "jobs": args.jobs, "steps": requests[0].steps, "frames": requests[0].num_frames,
              "size": f"{requests[0].width}x{requests[0].height}", "rounds": args.rounds,
              "load_before": load, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
              "jobs_per_minute": {n: {"min": min(v), "median": statistics.median(v), "all": v}
                                  for n, v in per_minute.items()},
              "ratio_2_over_1": {"median": statistics.median(ratios), "min": min(ratios), "all": ratios},
              "cores": {n: [{"replicas": u, "rest": r} for u, r in v] for n, v in cores.items()},
              "plain_processes": {"seconds": plain, "ratio_2_over_1": plain_ratios},
              "cancels": cancels}
    print(f"\n{args.jobs} jobs of {result['size']} x {result['frames']} frames, {result['steps']} steps; "
          f"{args.rounds} rounds; load average {load[0]:.2f} before, {result['load_after'][0]:.2f} after")
    print("| replicas | jobs/min (min) | jobs/min (median) |\n|---|---|---|")
    for n, row in result["jobs_per_minute"].items():
        print(f"| {n} | {row['min']:.1f} | {row['median']:.1f} |")
    print(f"| 2 / 1 | {result['ratio_2_over_1']['min']:.2f} | {result['ratio_2_over_1']['median']:.2f} |")
    print("rounds, 2 replicas / 1: " + ", ".join(f"{r:.2f}" for r in ratios))
    if plain_ratios:
        print("rounds, 2 plain processes / 1 (the machine's own scaling): "
              + ", ".join(f"{r:.2f}" for r in plain_ratios)
              + f"; median {statistics.median(plain_ratios):.2f}; the farm's ratio over it, per round: "
              + ", ".join(f"{f / r:.2f}" for f, r in zip(ratios, plain_ratios)))
    if cancels:
        late = [c["stopped_at_step"] - c["reached_at_step"] for c in cancels]
        print(f"Cancel: stopped at most {max(late)} step{'s' * (max(late) != 1)} after reaching the replica; "
              f"{statistics.median(c['seconds'] for c in cancels):.2f} s median from the call to the job's end")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
