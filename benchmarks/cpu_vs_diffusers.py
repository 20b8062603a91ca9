"""CPU: the studio's pipeline against diffusers' `WanPipeline` on the same weights, size, steps and seed.

Each side runs in its own process (so peak RSS is its own), loads once, warms up with a one-step run, then
times `--repeats` full generations; `--rounds` such processes per side alternate and the median counts.
Printed last: seconds per step, total seconds, peak RSS, the ratio
ours/theirs, and the PSNR of our decoded frames against theirs (the same computation, so it should be high).

    python -m benchmarks.cpu_vs_diffusers                       # the embedded model, or its architecture
    python -m benchmarks.cpu_vs_diffusers --model DIR --steps 20 --width 128 --height 128 --frames 17

Without `--model`, the shipped embedded model is used if present, else the same architecture with random
weights (same shapes, so the same speed).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def default_model(scratch: Path) -> tuple[str, str]:
    """(folder, label): the shipped embedded model, else its architecture with random weights (same shapes,
    so the same speed) saved under `scratch` the way the trained one is."""
    import torch

    from training.components import new_transformer, new_vae, save_model

    shipped = Path(__file__).resolve().parents[1] / "assets" / "embedded-model"
    if (shipped / "model_index.json").is_file():
        return str(shipped), "embedded"
    torch.manual_seed(0)
    return str(save_model(scratch / "model", new_vae(), new_transformer())), "embedded architecture, random weights"


def worker(impl: str, model: str, args: argparse.Namespace, frames_out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from pipelines import VideoPipeline, text_to_video

    started = time.perf_counter()
    ours = VideoPipeline.from_pretrained(model, device="cpu", dtype=torch.float32)
    prompt = "a red ball bounces on a floor"
    if impl == "ours":
        def run(steps: int, stamps: list[float]):
            request = text_to_video(prompt, width=args.width, height=args.height, num_frames=args.frames, fps=8.0,
                                    steps=steps, guidance_scale=args.guidance, seed=args.seed)
            return ours.generate(request, callback=lambda *_: stamps.append(time.perf_counter())).frames
    else:
        from diffusers import AutoencoderKLWan, WanPipeline

        from pipelines.loading import component_path, resolve_model

        # Their own VAE object: ours has its Conv3d layers routed through oneDNN (pipelines/cpu_kernels.py).
        vae = AutoencoderKLWan.from_pretrained(component_path(resolve_model(model)[0], "vae"),
                                               torch_dtype=torch.float32).eval()
        theirs = WanPipeline(tokenizer=ours.family.prompts.tokenizer, text_encoder=ours.family.text_encoder, vae=vae,
                             transformer=ours.transformer, scheduler=ours.family.scheduler,
                             expand_timesteps=ours.defaults.conditioning_strategy == "per_token")
        theirs.set_progress_bar_config(disable=True)

        def run(steps: int, stamps: list[float]):
            def on_step(pipe, i, t, kwargs):
                stamps.append(time.perf_counter())
                return kwargs

            video = theirs(prompt=prompt, negative_prompt="", width=args.width, height=args.height,
                           num_frames=args.frames, num_inference_steps=steps, guidance_scale=args.guidance,
                           generator=torch.Generator().manual_seed(args.seed),
                           max_sequence_length=ours.defaults.max_sequence_length, output_type="np",
                           callback_on_step_end=on_step).frames[0]
            return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    load_s = time.perf_counter() - started
    run(1, [])  # warm-up: first-call allocations and kernel selection
    totals, per_step = [], []
    for _ in range(args.repeats):
        stamps: list[float] = []
        begin = time.perf_counter()
        frames = run(args.steps, stamps)
        totals.append(time.perf_counter() - begin)
        per_step.append(float(np.median(np.diff([begin, *stamps]))))
    np.save(frames_out, frames)
    return {"impl": impl, "load_s": load_s, "total_s": min(totals), "step_s": min(per_step),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers folder (default: the embedded model or its architecture)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per process (the best counts)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per side, alternating (the median counts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_vs_diffusers.json")
    parser.add_argument("--worker", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--frames-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args, args.frames_out)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, label = (args.model, args.model) if args.model else default_model(tmp)
        # Rounds alternate the two sides so that a slow spell of the machine does not land on one of them.
        runs: dict[str, list[dict]] = {"diffusers": [], "ours": []}
        for _ in range(args.rounds):
            for impl in runs:
                command = [sys.executable, "-m", "benchmarks.cpu_vs_diffusers", "--worker", impl, "--model", model,
                           "--frames-out", str(tmp / f"{impl}.npy")]
                for name in ("steps", "width", "height", "frames", "guidance", "seed", "repeats", "threads"):
                    command += [f"--{name}", str(getattr(args, name))]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"{impl} run failed:\n{done.stderr[-3000:]}")
                runs[impl].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows = {impl: {key: float(np.median([r[key] for r in found])) if key != "impl" else impl
                       for key in found[0]} for impl, found in runs.items()}
        fidelity = psnr(np.load(tmp / "ours.npy"), np.load(tmp / "diffusers.npy"))

    ours, theirs = rows["ours"], rows["diffusers"]
    result = {
        "model": label, "settings": {k: getattr(args, k) for k in ("steps", "width", "height", "frames", "guidance",
                                                                      "seed", "repeats", "rounds", "threads")},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "diffusers": theirs, "ours": ours, "runs": runs,
        "ratio_total": ours["total_s"] / theirs["total_s"], "ratio_step": ours["step_s"] / theirs["step_s"],
        "psnr_ours_vs_diffusers_db": fidelity,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"model: {label}; {args.width}x{args.height}x{args.frames}, {args.steps} steps, guidance {args.guidance}, "
          f"{args.threads} threads")
    print("| pipeline | s/step | total s | peak RSS MB |")
    print("|---|---|---|---|")
    for name, row in (("diffusers WanPipeline", theirs), ("ours", ours)):
        print(f"| {name} | {row['step_s']:.3f} | {row['total_s']:.2f} | {row['peak_rss_mb']:.0f} |")
    print(f"| ours / diffusers | {result['ratio_step']:.2f} | {result['ratio_total']:.2f} | "
          f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f} |")
    print(f"decoded frames, ours vs diffusers: {fidelity:.1f} dB PSNR")


if __name__ == "__main__":
    main()
