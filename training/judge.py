"""A judge for the procedural world: reads a clip's background, object colour and motion from pixels alone,
and scores a model's prompt adherence on held-out attribute combinations and its fidelity in every mode.

    python -m training.judge --model assets/embedded-model            # prints the table, writes judge.json
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.seams import closing_seam, seam_ratio, wrap_ratio
from training.world import (BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, Scene, Thing, _background, held_out,
                            prompt_for, render, sample_scene)

STILL_THRESHOLD = 0.08  # normalised displacement below which an object counts as still


@dataclass
class Reading:
    background: str
    colour: str | None
    motion: str | None
    displacement: tuple[float, float]


def _row_profile(frame: np.ndarray) -> np.ndarray:
    return np.median(frame.astype(np.float32), axis=1)  # (H, 3): robust to objects and stars


@functools.lru_cache(maxsize=8)
def _background_templates(width: int, height: int) -> dict[str, np.ndarray]:
    short = min(width, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = (xs + 0.5) / short, (ys + 0.5) / short
    templates = {}
    for name in BACKGROUNDS:
        if name == "solid":
            continue
        templates[name] = _background(Scene((), name), xs, ys, 0.0)
    for colour in COLOURS:
        templates[f"solid:{colour}"] = _background(Scene((), "solid", colour), xs, ys, 0.0)
    return templates


def read_clip(video: np.ndarray) -> Reading:
    """Background, the main object's colour, and its motion direction, from (F, H, W, 3) uint8 frames."""
    frames, height, width, _ = video.shape
    templates = _background_templates(width, height)
    profile = np.median(np.stack([_row_profile(f) for f in video]), axis=0)  # (H, 3)
    scores = {name: np.abs(_row_profile(t) - profile).mean() for name, t in templates.items()}
    best = min(scores, key=scores.get)
    background = "solid" if best.startswith("solid:") else best
    reference = templates[best]
    short = min(width, height)
    centroids, colours = [], []
    for frame in video.astype(np.float32):
        difference = np.abs(frame - reference).sum(-1)
        mask = difference > 90
        if mask.sum() < 4:
            continue
        ys, xs = np.nonzero(mask)
        centroids.append((xs.mean() / short, ys.mean() / short))
        colours.append(np.median(frame[mask], axis=0))
    if not centroids:
        return Reading(background, None, None, (0.0, 0.0))
    colour_rgb = np.median(np.stack(colours), axis=0)
    colour = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - colour_rgb).sum())
    dx, dy = centroids[-1][0] - centroids[0][0], centroids[-1][1] - centroids[0][1]
    motion = "still"
    if math.hypot(dx, dy) >= STILL_THRESHOLD:
        motion = min(DIRECTIONS, key=lambda d: -(DIRECTIONS[d][0] * dx + DIRECTIONS[d][1] * dy))
    return Reading(background, colour, motion, (round(dx, 3), round(dy, 3)))


def held_out_prompts(count: int) -> list[tuple[str, str, str, str]]:
    """(colour, shape, motion, background) combinations never in training, shapes cycled for variety."""
    combos = [(c, m, b) for c, m, b in itertools.product(COLOURS, DIRECTIONS, BACKGROUNDS) if held_out(c, m, b)]
    shapes = itertools.cycle(SHAPES)
    out = []
    while len(out) < count:
        for c, m, b in combos:
            out.append((c, next(shapes), m, b))
    return out[:count]


# ---- fidelity -------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def vae_ceiling(pipe, clips: int, width: int, height: int, num_frames: int, fps: float) -> dict:
    """The judge's reading of VAE round trips of held-out clips: what a perfect DiT could score at most, since
    every generated clip is a decode of latents."""
    hits = {"colour": 0, "motion": 0, "background": 0}
    for i in range(clips):
        scene = sample_scene(10_000 + i, width / min(width, height), num_frames / fps, split="heldout")
        reading = read_clip(pipe.decode(pipe.encode(render(scene, width, height, num_frames, fps))))
        hits["colour"] += reading.colour == scene.things[0].colour
        hits["motion"] += reading.motion == scene.things[0].motion
        hits["background"] += reading.background == scene.background
    return {k: round(v / clips, 3) for k, v in hits.items()}


def evaluate(model: str, prompts: int, steps: int | None, seed: int, guidance: float | None = None,
             best_of: int = 1, image_first: bool | None = None) -> dict:
    from pipelines import VideoPipeline

    pipe = VideoPipeline.from_pretrained(model, device="cpu")
    d = pipe.defaults
    chosen = dict(steps=steps, guidance_scale=guidance)  # None: the model's own, filled by pipe.request
    image_first = d.image_first if image_first is None else image_first
    settings = {"width": d.width, "height": d.height, "fps": d.fps, "steps": steps or d.steps,
                "guidance_scale": d.guidance_scale if guidance is None else guidance}
    join_guidance = d.guidance_for("extend") if guidance is None else guidance
    results: dict = {"model": model, "settings": {**settings, "join_guidance_scale": join_guidance,
                                                  "image_first": image_first}, "adherence": {}, "fidelity": {}}

    hits = {"colour": 0, "motion": 0, "background": 0}
    cases = held_out_prompts(prompts)
    started = time.time()
    for i, (colour, shape, motion, background) in enumerate(cases):
        request = pipe.request("t2v", prompt=prompt_for(colour, shape, motion, background), seed=seed + i,
                               image_first=image_first, **chosen)
        reading = read_clip(pipe.generate(request).frames)
        hits["colour"] += reading.colour == colour
        hits["motion"] += reading.motion == motion
        hits["background"] += reading.background == background
    elapsed = time.time() - started
    results["adherence"] = {k: round(v / len(cases), 3) for k, v in hits.items()}
    results["adherence"]["prompts"] = len(cases)
    results["seconds_per_clip"] = round(elapsed / len(cases), 2)
    results["vae_ceiling"] = vae_ceiling(pipe, min(prompts, 40), d.width, d.height, d.num_frames, d.fps)

    results["fidelity"] = fidelity(pipe, chosen, seed, best_of)
    return results


def fidelity(pipe, chosen: dict, seed: int, best_of: int = 1) -> dict:
    """Animate, extend, loop and connect on four in-world clips: first-frame PSNR and the worst seam ratios
    (extend, loop and connect run at the model's join guidance unless `chosen` sets one, and keep the best of
    `best_of` candidates). `chosen`: steps and guidance_scale, None for the model's own."""
    from PIL import Image

    from pipelines.video_io import write_frames

    d = pipe.defaults
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        animate_psnr, extend_seams, loop_wraps, connect_seams = [], [], [], []
        for i in range(4):
            scene = Scene((Thing(SHAPES[i], list(COLOURS)[i * 2], list(DIRECTIONS)[i], True, (0.5, 0.5)),),
                          BACKGROUNDS[1 + i % 4], seed=i)
            source = render(scene, d.width, d.height, d.num_frames, d.fps)
            prompt = prompt_for(scene.things[0].colour, scene.things[0].shape, scene.things[0].motion, scene.background)
            clip_dir = tmp / f"clip{i}"
            write_frames(clip_dir, source)
            still = tmp / f"still{i}.png"
            Image.fromarray(source[0]).save(still)
            frames = pipe.generate(pipe.request("animate", image=str(still), prompt=prompt, seed=seed, **chosen)).frames
            animate_psnr.append(psnr(frames[0], source[0]))
            joins = dict(chosen, seed=seed, best_of=best_of)
            extended = pipe.generate(pipe.request("extend", clip=str(clip_dir), prompt=prompt, new_frames=8, **joins)).frames
            extend_seams.append(seam_ratio(extended, len(source)))
            looped = pipe.generate(pipe.request("loop", clip=str(clip_dir), prompt=prompt, new_frames=7, **joins)).frames
            loop_wraps.append(max(seam_ratio(looped, len(source)), wrap_ratio(looped)))
            other = Scene((Thing(SHAPES[i + 1], list(COLOURS)[i * 2 + 1], "still", True, (0.5, 0.5)),),
                          scene.background, seed=i + 10)
            other_dir = tmp / f"other{i}"
            clip_b = render(other, d.width, d.height, d.num_frames, d.fps)
            write_frames(other_dir, clip_b)
            joined = pipe.generate(pipe.request("connect", clip_a=str(clip_dir), clip_b=str(other_dir), prompt=prompt,
                                                new_frames=7, **joins)).frames
            b_seam = closing_seam(joined, clip_b, len(source) + 7)  # B copied from its first or its second frame
            connect_seams.append(max(seam_ratio(joined, len(source)), seam_ratio(joined, b_seam)))
        return {
            "animate_first_frame_psnr_db": round(float(np.mean(animate_psnr)), 2),
            "extend_seam_ratio": round(float(np.max(extend_seams)), 2),
            "loop_seam_ratio": round(float(np.max(loop_wraps)), 2),
            "connect_seam_ratio": round(float(np.max(connect_seams)), 2),
            "best_of": best_of,
        }


def table(results: dict) -> str:
    a, f, s = results["adherence"], results["fidelity"], results["settings"]
    of = f" (best of {f['best_of']})" if f.get("best_of", 1) > 1 else ""
    ceiling = results.get("vae_ceiling")
    through_vae = (f"{ceiling['colour']:.0%} / {ceiling['motion']:.0%} / {ceiling['background']:.0%}"
                   if ceiling else "not measured")
    rows = [
        ("held-out prompts", f"{a['prompts']}", ""),
        ("text to video", "image first" if s.get("image_first") else "all frames at once", ""),
        ("guidance (t2v and animate / extend, loop, connect)", f"{s['guidance_scale']:g} / "
                                                               f"{s.get('join_guidance_scale', s['guidance_scale']):g}", ""),
        ("read from VAE round trips (colour / motion / bg)", through_vae, "ceiling"),
        ("colour accuracy", f"{a['colour']:.1%}", ">= 85 %"),
        ("motion direction accuracy", f"{a['motion']:.1%}", ">= 75 %"),
        ("background accuracy", f"{a['background']:.1%}", ">= 85 %"),
        ("animate: first frame PSNR", f"{f['animate_first_frame_psnr_db']:.1f} dB", ">= 28 dB"),
        (f"extend: worst seam / median step{of}", f"{f['extend_seam_ratio']:.2f}", "<= 1.5"),
        (f"loop: worst seam or wrap / median step{of}", f"{f['loop_seam_ratio']:.2f}", "<= 1.5"),
        (f"connect: worst join / median step{of}", f"{f['connect_seam_ratio']:.2f}", "<= 1.5"),
        ("seconds per clip (t2v, CPU)", f"{results['seconds_per_clip']:.1f}", "<= 15"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure'.ljust(width)} | value | target |", f"|{'-' * (width + 2)}|-------|--------|"]
    lines += [f"| {name.ljust(width)} | {value} | {target} |" for name, value, target in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", type=int, default=108)
    parser.add_argument("--steps", type=int, help="sampling steps (the model's default when omitted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, help="guidance scale of every mode (the model's defaults, which "
                                                       "may differ for extend, loop and connect, when omitted)")
    parser.add_argument("--best-of", type=int, default=1, help="candidates per extend, loop and connect (keeps the "
                                                                "smoothest joins)")
    parser.add_argument("--image-first", action=argparse.BooleanOptionalAction, default=None,
                        help="text-to-video samples the first frame, then the clip (the model's default when omitted)")
    parser.add_argument("--out", type=Path, default=Path("judge.json"))
    args = parser.parse_args(argv)
    results = evaluate(args.model, args.prompts, args.steps, args.seed, args.guidance, args.best_of,
                       args.image_first)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
