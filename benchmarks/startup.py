"""Start-up: how long a new process takes to be useful, against a bare `python -c "import torch"` measured in
the same run. Each round runs every measure once, in turn, so that a slow spell of the machine lands on all
of them; each figure is the minimum and median over the rounds, and each ratio the median of the rounds'
own ratios (and the ratio of the minimums).

- torch: `python -c "import torch"`, process start to exit; the floor every measure below pays.
- first step: `python launch.py generate t2v ...` (`--steps`, the model's size) from process start to the
  progress bar's first completed step on stderr (the CLI's step callback draws it; the process is then
  killed). This is what the user sees, and needs no hook in the CLI.
- page: `python launch.py` from process start to the first HTTP 200 on the root URL.
- CLI / diffusers: `launch.py generate t2v` as a whole process (load, generate, write the MP4 and sidecar)
  against benchmarks/diffusers_wan_script.py, diffusers' `WanPipeline` as a plain script on the same folder,
  size, steps, guidance, seed and prompt length.

Each measure also records the process's CPU seconds (user + system) up to that point. On a machine shared
with other work the wall-clock figures stretch with the load; the CPU figures much less (the load averages
at the start and end of the run are printed), so both ratios are given.

With `--clips`, the last round's studio also makes two clips through its API, as the browser does: seconds
from the page to the first step and to the finished clip, then the same for a second clip (weights load once).
That studio's outputs folder is new, so its first clip includes the planner's one-time timing of the model
(`--memory auto`); the command line's is made once before the rounds (`--plan-only`) and printed apart.

    python -m benchmarks.startup                         # the embedded model, 5 rounds, 10 steps
    python -m benchmarks.startup --model DIR --rounds 7 --clips
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a red ball bounces on a floor"
# tqdm's bar once a step is done: "10%|#    | 1/10 [00:00<...". The step callback runs after each step.
PROGRESS = re.compile(rb"(\d+)/(\d+) \[")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failed(what: str, process: subprocess.Popen, output: bytes) -> SystemExit:
    return SystemExit(f"{what} exited with {process.returncode}:\n{output.decode(errors='replace')[-3000:]}")


def cpu_so_far(pid: int) -> float:
    """CPU seconds (user + system, all threads) a running process has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def time_exit(command: list[str], limit: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds) from starting `command` to its exit (status 0)."""
    with tempfile.TemporaryFile() as output:
        begin = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        deadline = begin + limit
        while True:  # wait4 gives the finished process's own CPU accounting
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                raise SystemExit(f"{' '.join(command[:4])} ... ran past {limit:.0f} s")
            time.sleep(0.005)
        seconds = time.perf_counter() - begin
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            output.seek(0)
            raise failed(" ".join(command[:4]) + " ...", process, output.read())
    return seconds, usage.ru_utime + usage.ru_stime


def time_first_step(command: list[str], limit: float) -> tuple[float, float, int]:
    """(wall seconds from starting the CLI to its progress bar's first completed step, CPU seconds by then,
    the step it showed). tqdm redraws at most every 0.1 s, so a step shorter than that may show as a later
    one: the step is returned."""
    begin = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            while time.perf_counter() - begin < limit:
                if not selector.select(timeout=1.0):
                    continue
                chunk = os.read(process.stderr.fileno(), 65536)
                if not chunk:
                    process.wait(10)
                    raise failed("the CLI", process, seen)
                seen += chunk
                steps = [int(m.group(1)) for m in PROGRESS.finditer(seen) if int(m.group(1)) > 0]
                if steps:
                    return time.perf_counter() - begin, cpu_so_far(process.pid), steps[0]
        raise SystemExit(f"no progress from the CLI after {limit:.0f} s:\n{seen.decode(errors='replace')[-3000:]}")
    finally:
        process.kill()
        process.wait(30)


def wait_for_page(url: str, process: subprocess.Popen, limit: float) -> None:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise failed("the studio", process, process.stdout.read())
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no page at {url} after {limit:.0f} s")


def generate(client, defaults: list) -> tuple[float, float]:
    """(seconds to the first step's progress, seconds to the finished clip) of one text-to-video run with
    the tab's default settings: (prompt, negative, seed, steps, guidance, sampler, size, seconds, fps, image)."""
    values = list(defaults)
    values[0], values[2], values[7] = PROMPT, 0, 2.0
    begin = time.perf_counter()
    job = client.submit(*values, api_name="/t2v")
    first = None
    while not job.done():
        if first is None and any("step" in str(o[0]) for o in job.outputs()):
            first = time.perf_counter() - begin
        time.sleep(0.02)
    result = job.result()[4]
    if result.get("status") != "done":
        raise SystemExit(f"generation did not finish: {result}")
    return (first or time.perf_counter() - begin), time.perf_counter() - begin


def time_page(model: str, outputs: Path, limit: float, clips: bool) -> dict[str, float]:
    """Seconds from starting the studio to a 200 on its root URL (and its CPU seconds by then); with `clips`,
    then two clips' timings."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    begin = time.perf_counter()
    process = subprocess.Popen([sys.executable, "launch.py", "--model", model, "--port", str(port),
                                "--outputs", str(outputs), "--device", "cpu"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_page(url, process, limit)
        found = {"page": time.perf_counter() - begin, "page_cpu": cpu_so_far(process.pid)}
        if clips:
            from gradio_client import Client

            client = Client(url, verbose=False)
            info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/t2v"]["parameters"]
            defaults = [p["parameter_default"] for p in info]
            found["first_step_after_page"], found["first_clip_after_page"] = generate(client, defaults)
            found["second_step"], found["second_clip"] = generate(client, defaults)
        return found
    finally:
        process.terminate()
        process.wait(30)


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values)}


def ratio(over: list[float], under: list[float]) -> dict[str, float]:
    """The median of the rounds' own ratios (each pair ran close together in time) and the minimums' ratio."""
    return {"median": statistics.median(a / b for a, b in zip(over, under)), "of_min": min(over) / min(under)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers folder (default: the embedded model or its architecture)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--clips", action="store_true", help="also time two clips through the last studio's API")
    parser.add_argument("--limit", type=float, default=300, help="seconds any one process may take")
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args(argv)
    from benchmarks.cpu_vs_diffusers import default_model
    from pipelines.families import inspect_model
    from pipelines.loading import component_path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, label = (args.model, args.model) if args.model else default_model(tmp)
        facts = inspect_model(model)
        size = {"width": facts.defaults.width, "height": facts.defaults.height, "frames": facts.defaults.num_frames,
                "guidance": facts.defaults.guidance_scale}
        settings = [f"--{name}={value:g}" for name, value in size.items()] + [f"--steps={args.steps}", "--seed=0"]
        cli = [sys.executable, "launch.py", "generate", "t2v", "--model", model, "--prompt", PROMPT, "--device", "cpu",
               *settings, "--out", str(tmp / "cli.mp4"), "--overwrite"]
        reference = [sys.executable, "benchmarks/diffusers_wan_script.py", "--model", model, *settings,
                     f"--fps={facts.defaults.fps:g}", f"--max-sequence-length={facts.defaults.max_sequence_length}",
                     "--prompt", PROMPT, "--out", str(tmp / "diffusers.mp4")]
        encoder = component_path(facts.folder, "text_encoder")
        if encoder != facts.folder / "text_encoder":  # taken from a package (studio.json)
            reference += ["--text-encoder", str(encoder)]

        # The planner times the model on the CLI's first run on this machine (once; kept in outputs/.planner):
        # a one-time cost, timed here apart, so that every round measures a run as it is from then on.
        calibration, _ = time_exit([*cli, "--plan-only"], args.limit * 4)
        print(f"first run's planner calibration, with --plan-only: {calibration:.1f} s", flush=True)
        measures = ("torch", "first_step", "page", "cli", "diffusers")
        times: dict[str, list[float]] = {name: [] for name in measures}
        cpu: dict[str, list[float]] = {name: [] for name in measures}
        shown_steps, clips, load = [], {}, [os.getloadavg()[0]]
        for index in range(args.rounds):
            last = index == args.rounds - 1
            seconds, used = time_exit([sys.executable, "-c", "import torch"], args.limit)
            times["torch"].append(seconds)
            cpu["torch"].append(used)
            seconds, used, step = time_first_step(cli, args.limit)
            times["first_step"].append(seconds)
            cpu["first_step"].append(used)
            shown_steps.append(step)
            found = time_page(model, tmp / "outputs", args.limit, clips=args.clips and last)
            times["page"].append(found.pop("page"))
            cpu["page"].append(found.pop("page_cpu"))
            clips |= found
            # The pair alternates which runs first, so neither always follows the other's page cache.
            for name in (("cli", "diffusers") if index % 2 == 0 else ("diffusers", "cli")):
                seconds, used = time_exit(cli if name == "cli" else reference, args.limit)
                times[name].append(seconds)
                cpu[name].append(used)
            print(f"round {index + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
        load.append(os.getloadavg()[0])

    pairs = {"first_step/torch": ("first_step", "torch"), "page/torch": ("page", "torch"),
             "cli/diffusers": ("cli", "diffusers")}
    ratios = {key: ratio(times[a], times[b]) for key, (a, b) in pairs.items()}
    cpu_ratios = {key: ratio(cpu[a], cpu[b]) for key, (a, b) in pairs.items()}
    targets = {"first_step/torch": 2.5, "page/torch": 5.0, "cli/diffusers": 0.7}
    result = {"model": label, "rounds": args.rounds, "steps": args.steps, "size": size, "cpus": os.cpu_count(),
              "first_run_calibration_s": calibration,
              "load_average_1min": {"start": load[0], "end": load[1]},
              "seconds": {k: summary(v) for k, v in times.items()}, "cpu_seconds": {k: summary(v) for k, v in cpu.items()},
              "runs": times, "cpu_runs": cpu, "first_step_shown": shown_steps,
              "ratios": ratios, "cpu_ratios": cpu_ratios, "targets": targets, "clips": clips}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"\nmodel: {label}; {size['width']}x{size['height']}x{size['frames']}, {args.steps} steps, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs, 1-minute load average {load[0]:.1f} at the start and "
          f"{load[1]:.1f} at the end")
    names = {"torch": '`python -c "import torch"`', "first_step": "`launch.py generate t2v` to its first step",
             "page": "`python launch.py` to a usable page", "cli": "`launch.py generate t2v`, whole process",
             "diffusers": "diffusers' `WanPipeline` script, whole process"}
    print("| measure | wall s: min | median | CPU s: min | median |")
    print("|---|---|---|---|---|")
    for key, name in names.items():
        print(f"| {name} | {min(times[key]):.2f} | {statistics.median(times[key]):.2f} | {min(cpu[key]):.2f} | "
              f"{statistics.median(cpu[key]):.2f} |")
    print("\n| ratio | wall: median of rounds | of minimums | CPU: median of rounds | of minimums | target |")
    print("|---|---|---|---|---|---|")
    for key, value in ratios.items():
        print(f"| {key} | {value['median']:.2f} | {value['of_min']:.2f} | {cpu_ratios[key]['median']:.2f} | "
              f"{cpu_ratios[key]['of_min']:.2f} | <= {targets[key]:g} |")
    if any(step != 1 for step in shown_steps):
        print(f"note: the progress bar first showed steps {shown_steps} (a step under tqdm's 0.1 s redraw)")
    if clips:
        print("\nthe last studio, through its API (a 2 s clip at the model's defaults):")
        print(f"| then to the first denoising step | {clips['first_step_after_page']:.1f} |")
        print(f"| then to the first finished clip | {clips['first_clip_after_page']:.1f} |")
        print(f"| a second clip: first step / finished | {clips['second_step']:.1f} / {clips['second_clip']:.1f} |")


if __name__ == "__main__":
    main()
