"""Batch jobs: `python launch.py generate batch --jobs JOBS.jsonl` runs many requests on one load of the model.

Each line of the jobs file is one job, a JSON object in either form:
- a run's options by name, as `generate` takes them: {"mode": "t2v", "prompt": "a cat", "seconds": 2,
  "out": "cat.mp4"} (true turns a flag on, false off);
- an output's sidecar ({"request": {...}, ...}), or a request in a sidecar's form ({"format": 1, ...}): run
  as recorded.
Every job runs on the batch's model, device and speed options. All lines are checked before the model loads,
so a typo costs nothing (a job that reads what an earlier one writes is checked when its turn comes); a line
that fails, then or while it runs, is recorded and the batch goes on. The summary is printed and written
beside the jobs file.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from studio.cli import MissingInput, UsageError, build_parser, execute, load, prepare, sidecar_request

log = logging.getLogger("studio.batch")

MAX_JOBS = 10_000
MAX_LINE_BYTES = 1 << 20
# Options that hold for the whole batch (its command line), not for one job.
BATCH_OPTIONS = ("model", "device", "memory", "plan_only", "attention", "compile", "step_cache", "jobs", "request",
                 "quiet")


def read_jobs(path: str | None) -> list[tuple[int, Any]]:
    """(line number, the parsed JSON or the reason it is not a job) of every non-blank line."""
    if not path:
        raise UsageError("batch needs --jobs, a JSON-lines file with one job a line")
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"--jobs {path!r} cannot be read ({error.strerror or error})") from None
    jobs: list[tuple[int, Any]] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(jobs) == MAX_JOBS:
            raise UsageError(f"--jobs {path!r} holds more than {MAX_JOBS} jobs: split it")
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ValueError(f"the line is {len(line):,} bytes long, more than a job needs")
            jobs.append((number, json.loads(line.decode("utf-8"))))
        except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, nested too deep
            jobs.append((number, UsageError(f"not a JSON object: {str(error)[:120]}")))
    if not jobs:
        raise UsageError(f"--jobs {path!r} holds no jobs")
    return jobs


def job_args(job: dict[str, Any], batch: argparse.Namespace) -> argparse.Namespace:
    """A job given as options, parsed as `generate` parses its command line, with the batch's own options."""
    parser = build_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    argv = [str(job.get("mode", ""))]
    for key, value in job.items():
        name = str(key).replace("_", "-")
        if key == "mode" or value is None or value is False and f"--no-{name}" not in known:
            continue
        if name.replace("-", "_") in BATCH_OPTIONS:
            raise UsageError(f"{key!r} holds for the whole batch: give it on the batch's command line")
        if f"--{name}" not in known:
            raise UsageError(f"{key!r} is not an option of generate")
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, (str, int, float)):
            argv.append(f"--{name}={value}")  # one token: a value that starts with "-" stays a value
        else:
            raise UsageError(f"{key!r} = {value!r:.60} is not an option's value: text, a number or true/false")
    args = parser.parse_args(argv)
    for name in BATCH_OPTIONS:
        setattr(args, name, getattr(batch, name))
    return args


def plan_job(job: Any, batch: argparse.Namespace, model: Any, folder: Path) -> tuple[argparse.Namespace, Any, Any]:
    """(its arguments, the request or base plan, the output path) of one job, checked; a UsageError or
    ValueError says what is wrong with it."""
    if isinstance(job, Exception):
        raise job
    if not isinstance(job, dict):
        raise UsageError("not a JSON object: a job is an object of options, or a sidecar")
    if "request" in job or "format" in job:  # a sidecar, or a request in its form
        request, recorded = sidecar_request(job if "request" in job else {"request": job}, folder, "the line")
        if recorded not in (None, batch.model):
            print(f"note: running with {batch.model}; the sidecar records {recorded}")
        args = job_args({"mode": "reproduce"}, batch)
        return (args, *prepare(args, model, request))
    args = job_args(job, batch)
    if args.mode in ("reproduce", "batch"):
        raise UsageError(f"a job's mode is one of generate's modes, not {args.mode}: give a sidecar as the line")
    return (args, *prepare(args, model))


def run_batch(batch: argparse.Namespace) -> int:
    from pipelines.families import inspect_model

    jobs = read_jobs(batch.jobs)
    batch.model = batch.model or "embedded"
    model = inspect_model(batch.model)
    folder = Path(batch.jobs).absolute().parent
    results: dict[int, dict[str, Any]] = {}
    planned: list[tuple[int, Any]] = []
    targets: dict[Path, int] = {}
    for number, job in jobs:  # every line checked before the model loads
        try:
            args, built, out = plan_job(job, batch, model, folder)
            if out is not None and out.resolve() in targets:
                raise UsageError(f"--out {str(out)!r} is line {targets[out.resolve()]}'s output too")
            if out is not None:
                targets[out.resolve()] = number
            planned.append((number, (args, built, out)))
        except MissingInput as missing:
            if Path(missing.path).resolve() not in targets:
                results[number] = {"line": number, "status": "failed", "error": str(missing)}
            else:  # an earlier job's output: checked when its turn comes
                planned.append((number, job))
        except (UsageError, ValueError, OSError) as error:
            results[number] = {"line": number, "status": "failed", "error": str(error)}
    print(f"{len(planned)} of {len(jobs)} jobs are valid" + "".join(
        f"\nline {n}: error: {r['error']}" for n, r in sorted(results.items())))
    if planned:
        pipe = load(batch)
        for done, (number, plan) in enumerate(planned, start=1):
            print(f"job {done}/{len(planned)} (line {number})")
            started = time.perf_counter()
            try:
                args, built, out = plan if isinstance(plan, tuple) else plan_job(plan, batch, model, folder)
                output = execute(pipe, model, built, out, args)
                results[number] = {"line": number, "status": "done", "output": str(output),
                                   "seconds": round(time.perf_counter() - started, 1)}
            except KeyboardInterrupt:
                results[number] = {"line": number, "status": "failed", "error": "interrupted"}
                break
            except Exception as error:  # one job's failure is recorded; the batch goes on
                log.debug("job on line %d failed\n%s", number, traceback.format_exc())
                reason = str(error) if isinstance(error, (UsageError, ValueError, OSError)) else \
                    f"{type(error).__name__}: {error} (an internal error; run it alone to see the traceback)"
                print(f"line {number}: error: {reason}")
                results[number] = {"line": number, "status": "failed", "error": reason}
    return _summarise(batch, [results.get(n, {"line": n, "status": "not run"}) for n, _ in jobs])


def _summarise(batch: argparse.Namespace, results: list[dict[str, Any]]) -> int:
    """Print the summary and write it beside the jobs file under a name no file has; 1 if any job failed."""
    done = [r for r in results if r["status"] == "done"]
    failed = [r for r in results if r["status"] != "done"]
    print(f"batch: {len(done)} of {len(results)} jobs done" +
          (f", {len(failed)} not (lines {', '.join(str(r['line']) for r in failed)})" if failed else ""))
    summary = {"jobs": str(Path(batch.jobs).absolute()), "model": batch.model, "results": results}
    stem = Path(batch.jobs).with_suffix("")
    for attempt in range(1, 1000):
        path = Path(f"{stem}.summary{'' if attempt == 1 else f'-{attempt}'}.json")
        try:
            with open(path, "x", encoding="utf-8") as file:  # never over an existing file
                json.dump(summary, file, indent=2)
            print(f"summary: {path}")
            break
        except FileExistsError:
            continue
        except OSError as error:
            print(f"note: the summary could not be written beside the jobs file ({error.strerror or error})")
            break
    return 1 if failed else 0

