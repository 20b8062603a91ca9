"""The studio's Storyboard tab: shot rows become a `Storyboard` (pipelines/storyboard.py), rendered as one
engine job (so a take never shares the device with another generation) into the outputs folder under a new
name, with a sidecar that lists it in the History; each finished window is shown as it lands, the drift per
shot after the take, and one shot of the session's last take can be re-rendered in place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines import storyboard as sb
from studio.outputs import claim_fresh, output_name, sidecar_of

SHOT_ROWS = 6
ROW_FIELDS = ("prompt", "seconds", "transition", "keyframe")  # each row's widgets, in the handler's order
DRIFT_HEADERS = ["shot", "frames", "drift (max)", "drift before anchoring (max)", "worst join"]
CLIP_NOT_PLACED = ("Its prompt is in shot 1. The clip itself is not placed: the tab's keyframes are images (a plan "
                   "file for `generate storyboard` can open a shot with a clip); add its last frame as shot 1's "
                   "keyframe to start from it.")


def plan_of(rows: list[Any], seed: Any, steps: Any, width: Any, height: Any, context: Any = None,
            keep: Any = str) -> sb.Storyboard:
    """The plan the rows describe (rows with neither prompt nor keyframe are left out); gr.Error with the
    plan's one line naming the shot and the field when it is not valid. `keep` maps an uploaded keyframe to
    the path the plan records (the History's kept copy, so the take can be reproduced)."""
    shots = []
    for k in range(0, len(rows), len(ROW_FIELDS)):
        prompt, seconds, transition, keyframe = rows[k:k + len(ROW_FIELDS)]
        if not (prompt or "").strip() and not keyframe:
            continue
        shot: dict[str, Any] = {"prompt": prompt or "", "seconds": seconds, "transition": transition or "continue"}
        if keyframe:
            shot["keyframes"] = [{"image": str(keep(keyframe)), "at": 0.0}]
        shots.append(shot)
    def whole(value: Any) -> Any:  # a browser number is a float; the plan wants whole numbers
        return int(value) if isinstance(value, float) and value.is_integer() else value
    data = {"seed": whole(seed), "steps": whole(steps), "width": whole(width), "height": whole(height), "shots": shots}
    if context not in (None, ""):
        data["context_frames"] = whole(context)
    try:
        return sb.Storyboard.from_dict(data)
    except ValueError as error:
        raise gr.Error(str(error)) from None


def drift_rows(take: sb.Take) -> list[list[Any]]:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"
    return [[s["shot"], s["frames"], cell(s["drift_max"]), cell(s["drift_before_anchoring_max"]), cell(s["join_max"])]
            for s in take.shots]


class StoryboardTab:
    """The tab's handlers, on a StudioApp's engine and history. Each session's last take is kept for
    "re-render shot K"."""

    def __init__(self, app: Any):
        self.app = app
        self.engine = app.engine
        self.history = app.history
        self._takes: dict[str, tuple[Path, sb.Storyboard]] = {}  # session -> its last take and plan

    def new_take(self, seed: int) -> Path:
        """A fresh .mp4 in the outputs folder, claimed by creating it: never a file that exists (nor a take's
        manifest or windows), nor one another session is given at the same moment."""
        return claim_fresh(self.history.folder, output_name("storyboard", seed), ".mp4",
                           beside=(".mp4" + sb.MANIFEST_SUFFIX, ".mp4" + sb.WINDOWS_SUFFIX))

    def _write_sidecar(self, out: Path, plan: sb.Storyboard, take: sb.Take | None) -> None:
        """The sidecar the History lists the take by: the take's sizing request (a valid request for the
        History's checks), the plan, its frames and notes; the manifest beside it has the rest."""
        from pipelines.video_io import atomic_path

        manifest = json.loads(sb.manifest_path(out).read_text(encoding="utf-8"))
        request = sb.sizing_request(self.engine.pipe, plan)
        settings = manifest["settings"]
        data = {"request": request.to_dict(), "storyboard": plan.to_dict(), "parents": [],
                "frames": sum(r["frames"] for r in manifest["windows"]), "width": settings["width"],
                "height": settings["height"], "fps": settings["fps"], "notes": list(manifest.get("notes", [])),
                "finished": manifest.get("finished", False), "manifest": sb.manifest_path(out).name,
                "shots": take.shots if take is not None else sb.shot_summary(plan, manifest["windows"]),
                "bytes": out.stat().st_size}
        with atomic_path(sidecar_of(out), scratch=self.history.folder) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1), encoding="utf-8")

    def _work(self, plan: sb.Storyboard, out: Path, shot: int | None, done: list):
        """The engine job's work: render (or re-render one shot of) the take; the finished Take goes in `done`."""
        previews = self.app.previews

        def work(pipe: Any, job: Any, on_step: Any) -> tuple[Path, str]:
            from pipelines.video_io import read_media, write_mp4

            job.out = out

            def on_window(record: dict[str, Any], total: int) -> None:
                job.window, job.windows = record["index"] + 1, total
                frames = read_media(sb.windows_folder(out) / record["folder"], settings.fps)
                clip = previews / f"job{job.id}-window{job.window}.mp4"
                write_mp4(clip, frames[record["skip"]:record["skip"] + record["frames"]], settings.fps)
                job.latest = str(clip)
                job._notify()

            settings = sb.Settings.of(plan, pipe)
            shots = sb.layout(plan, settings)
            job.windows = len(shots[shot - 1].windows) if shot else sum(len(s.windows) for s in shots)
            take = None
            started = time.perf_counter()
            try:
                if shot is None:
                    take = sb.render(pipe, plan, out, on_window=on_window, callback=on_step)
                else:
                    take = sb.rerender_shot(pipe, plan, out, shot, callback=on_step)
            finally:
                if sb.manifest_path(out).is_file():  # a cancelled take keeps its finished windows, listed
                    self._write_sidecar(out, plan, take)
            done.append(take)
            what = f"shot {shot} re-rendered" if shot else f"{len(take.records)} windows"
            return out, (f"Done in {time.perf_counter() - started:.1f} s: {what}, {take.frames} frames at "
                         f"{take.settings.fps:g} fps.")

        return work

    def _run(self, plan: sb.Storyboard, out: Path, shot: int | None, request: Any) -> Iterator[tuple]:
        """Yield (status, video, drift rows) as the take goes."""
        from studio.engine import QueueFull

        session = getattr(request, "session_hash", "") or ""
        done: list[sb.Take] = []
        try:
            job = self.engine.submit(sb.sizing_request(self.engine.pipe, plan), session,
                                     work=self._work(plan, out, shot, done))
        except QueueFull as full:
            raise gr.Error(str(full)) from None
        self._takes[session] = (out, plan)
        def describe(state: Any) -> str:
            if shot is not None:  # rerender_shot reports no windows, only steps
                return f"Re-rendering shot {shot} ({state.windows} windows), step {state.step} of {state.total}."
            return (f"Window {state.window + 1 if state.window < state.windows else state.window} of "
                    f"{state.windows}, step {state.step} of {state.total}.")

        try:
            for text, latest in self.engine.follow_parts(job, describe):
                yield text, gr.skip() if latest is None else latest, gr.skip()
            if job.status == "failed":
                raise gr.Error(job.message)
            if job.status == "cancelled":
                kept = f"Cancelled after window {job.window} of {job.windows}: the finished windows are kept in {out.name}."
                yield kept, job.latest, gr.skip()
                return
            yield job.message, str(out), drift_rows(done[0])
        finally:
            if not job.finished:
                self.engine.cancel(job_id=job.id)
            elif not sb.manifest_path(out).is_file():  # cancelled or refused before its first window
                out.unlink(missing_ok=True)
            for clip in self.app.previews.glob(f"job{job.id}-window*.mp4"):  # Gradio has its own copies by now
                clip.unlink(missing_ok=True)

    def render(self, request: gr.Request | None, seed: Any, steps: Any, width: Any, height: Any, context: Any,
               *rows: Any) -> Iterator[tuple]:
        plan = plan_of(list(rows), seed, steps, width, height, context, self.history.keep_upload)
        try:
            self.engine.pipe.check_request(sb.sizing_request(self.engine.pipe, plan))
        except ValueError as error:
            raise gr.Error(str(error)) from None
        session = getattr(request, "session_hash", "") or ""
        last = self._takes.get(session)
        if last is not None and last[1] == plan and sb.manifest_path(last[0]).is_file() and \
                not json.loads(sb.manifest_path(last[0]).read_text(encoding="utf-8")).get("finished"):
            out = last[0]  # the same plan after a cancel: the take resumes from its last finished window
        else:
            out = self.new_take(plan.seed)
        yield from self._run(plan, out, None, request)

    def rerender(self, request: gr.Request | None, shot: Any, seed: Any, steps: Any, width: Any, height: Any,
                 context: Any, *rows: Any) -> Iterator[tuple]:
        """Re-render shot `shot` of this session's last take, as the rows now describe it (only that shot may
        differ from the take's plan)."""
        session = getattr(request, "session_hash", "") or ""
        if session not in self._takes:
            raise gr.Error("Render a take in this session first: re-render shot K works on the last take.")
        out, _ = self._takes[session]
        plan = plan_of(list(rows), seed, steps, width, height, context, self.history.keep_upload)
        if not isinstance(shot, (int, float)) or shot != int(shot) or not 1 <= shot <= len(plan.shots):
            raise gr.Error(f"Shot {shot!r} is not valid: a shot from 1 to {len(plan.shots)}")
        if not sb.manifest_path(out).is_file() or not json.loads(sb.manifest_path(out).read_text()).get("finished"):
            raise gr.Error(f"{out.name} is unfinished: render the take to its end before re-rendering a shot.")
        yield from self._run(plan, out, int(shot), request)

    def send(self, output: str | None) -> tuple[str, str]:
        """→ Storyboard: the result's prompt fills shot 1; the clip itself is not placed (see CLIP_NOT_PLACED)."""
        if not output:
            raise gr.Error("Generate a clip first.")
        return self.app.entry(output).prompt, CLIP_NOT_PLACED


def build_tab(tab: StoryboardTab, info: Any) -> dict[str, Any]:
    """The tab's widgets and events, inside an open gr.Tab; returns what the app wires to: the shot-1 prompt
    and the note ("→ Storyboard"), and the render events (the History refreshes after them)."""
    rows: list[Any] = []
    gr.Markdown("Shots in order; a row with no prompt is left out. *continue* carries the previous shot's motion "
                "on, *cut* starts fresh. A keyframe image sits at the shot's first frame.")
    for k in range(1, SHOT_ROWS + 1):
        with gr.Row():
            prompt = gr.Textbox(label=f"Shot {k} prompt", scale=4, elem_id=f"sb-prompt-{k}")
            seconds = gr.Number(value=1.0, label="Seconds", minimum=0, scale=1, elem_id=f"sb-seconds-{k}")
            transition = gr.Radio(list(sb.TRANSITIONS), value="continue" if k > 1 else "cut", label="Into it",
                                  scale=1)
            keyframe = gr.Image(label="Keyframe at 0 s", type="filepath", height=90, scale=1)
            rows += [prompt, seconds, transition, keyframe]
    with gr.Row():
        seed = gr.Number(value=1, label="Seed", precision=0, elem_id="sb-seed")
        steps = gr.Slider(1, 100, value=info.steps, step=1, label="Steps", elem_id="sb-steps")
        width = gr.Number(value=info.width, label="Width", precision=0)
        height = gr.Number(value=info.height, label="Height", precision=0)
        choices = sb.context_choices(info.num_frames, info.temporal)
        own = info.context_frames if info.context_frames in choices else None  # the model's studio.json
        context = gr.Dropdown(choices, value=own or sb.default_context(info.num_frames, info.temporal),
                              label="Context frames (of the previous window each window sees)", elem_id="sb-context")
    go = gr.Button("Render take", variant="primary", elem_id="sb-render")
    status = gr.Markdown("", elem_id="sb-status")
    video = gr.Video(label="Take (the latest window while it renders)", interactive=False, format=None,
                     autoplay=True, loop=True, elem_id="sb-video")
    table = gr.Dataframe(headers=DRIFT_HEADERS, interactive=False, label="Drift per shot", elem_id="sb-drift")
    with gr.Row():
        shot = gr.Number(value=1, label="Shot", precision=0, scale=1)
        again = gr.Button("Re-render shot", scale=1, elem_id="sb-rerender")
    note = gr.Markdown("", elem_id="sb-note")
    settings = [seed, steps, width, height, context]
    out = [status, video, table]
    run: dict[str, Any] = {"concurrency_limit": None, "show_progress": "minimal"}

    def render(request: gr.Request, *values: Any):
        yield from tab.render(request, *values)

    def rerender(request: gr.Request, *values: Any):
        yield from tab.rerender(request, *values)

    events = [go.click(render, settings + rows, out, api_name="storyboard", **run),
              again.click(rerender, [shot] + settings + rows, out, api_name="storyboard_rerender", **run)]
    return {"prompt": rows[0], "note": note, "events": events}
