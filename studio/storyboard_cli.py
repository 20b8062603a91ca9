"""`python launch.py generate storyboard --plan PLAN.json --out TAKE.mp4 [--shot K]`: render a storyboard
(pipelines/storyboard.py), resume an unfinished take, or re-render one shot of a finished take."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from studio.cli import DEFAULT_OUTPUTS, UsageError, _measures, _progress, check_out_paths, load

# generate's options that mean something to a storyboard; the plan holds the rest (prompts, lengths, seed).
STORYBOARD_OPTIONS = {"plan", "shot", "out", "model", "device", "low_vram", "attention", "compile", "step_cache",
                      "overwrite", "quiet", "mode", "memory", "plan_only"}


def _check_options(args: argparse.Namespace) -> None:
    defaults = vars(_defaults())
    given = sorted(name for name, value in vars(args).items()
                   if name not in STORYBOARD_OPTIONS and value != defaults.get(name))
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"storyboard takes its prompts, lengths, size, seed and switches from --plan, not {flags}")


def _defaults() -> argparse.Namespace:
    from studio.cli import build_parser

    return build_parser().parse_args(["storyboard"])


def run_storyboard(args: argparse.Namespace) -> int:
    from pipelines import storyboard as sb
    from pipelines.families import inspect_model

    _check_options(args)
    if not args.plan:
        raise UsageError("storyboard needs --plan, a JSON file of shots")
    if not args.out or Path(args.out).suffix.lower() != ".mp4":
        raise UsageError(f"--out {args.out!r} is not valid for a storyboard: a .mp4 file (the take)")
    out = Path(args.out)
    plan = sb.Storyboard.read(args.plan)
    args.model = args.model or "embedded"
    inspect_model(args.model)  # an unknown model fails before the plan is rendered
    if args.shot is None:
        check_out_paths(out, None)
        if out.exists() and not args.overwrite and not sb.manifest_path(out).is_file():
            raise UsageError(f"--out {str(out)!r} exists and is no storyboard take: give --overwrite to replace it")
        if args.overwrite:
            sb.manifest_path(out).unlink(missing_ok=True)
            shutil.rmtree(sb.windows_folder(out), ignore_errors=True)
    elif not sb.manifest_path(out).is_file():
        raise UsageError(f"--shot {args.shot}: {out.name} has no storyboard manifest ({sb.manifest_path(out).name}); "
                         "render the take first")
    pipe = load(args)
    from pipelines import planner
    from studio.outputs import PLANNER_FOLDER

    # The memory mode is chosen once for the take, by a full window (refused when none fits).
    planner.announce(pipe, sb.sizing_request(pipe, plan), args.memory, DEFAULT_OUTPUTS / PLANNER_FOLDER,
                     measure=_measures(args))
    if args.plan_only:
        return 0
    callback, close = _progress(args.quiet)

    def finished(record: dict, total: int) -> None:
        drift = f", drift {record['drift']['mean']:.2f}" if "drift" in record else ""
        print(f"window {record['index'] + 1}/{total} (shot {record['shot']}, {record['mode']}, "
              f"{record['frames']} frames{drift})")

    try:
        if args.shot is None:
            take = sb.render(pipe, plan, out, on_window=finished, callback=callback)
        else:
            take = sb.rerender_shot(pipe, plan, out, args.shot, callback=callback)
    finally:
        close()
    for note in take.notes:
        print(f"note: {note}")
    print("shot  frames  drift(max, anchored)  drift(max, before)  worst join")
    for shot in take.shots:
        cells = [shot["drift_max"], shot["drift_before_anchoring_max"], shot["join_max"]]
        text = ["-" if value is None else f"{value:.2f}" for value in cells]
        print(f"{shot['shot']:>4}  {shot['frames']:>6}  {text[0]:>20}  {text[1]:>18}  {text[2]:>10}")
    print(f"wrote {out} ({take.frames} frames, {take.settings.fps:g} fps) and {sb.manifest_path(out).name}")
    return 0
