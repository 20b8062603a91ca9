"""GPU: our pipeline and its fast path against diffusers' `WanPipeline` on real Wan shapes (random weights).

    python -m benchmarks.cuda_wan --shape wan2.1-t2v-1.3b                 # 832x480x81, 50 steps, bf16
    python -m benchmarks.cuda_wan --shape wan2.2-ti2v-5b                  # 1280x704x121
    python -m benchmarks.cuda_wan --shape tiny --device cpu --steps 3     # the same script, checked on a CPU

Each variant runs in its own process on identical weights (same seed), warms up (reported separately:
that is where torch.compile compiles), then times one full generation. The step timer is CUDA events
recorded from the step callback, so it adds no host-device sync to the loop. Reported per variant: seconds
per step, end-to-end seconds, warm-up seconds, peak GPU memory, the DiT's achieved TFLOP/s (its FLOPs per
step, counted once with torch's FlopCounterMode, over the step time) against a bf16 matmul peak measured
on the same card, and the PSNR of the decoded frames against diffusers'.

Variants (`--variants` picks some; each changes one thing so its effect is its own):
  diffusers     WanPipeline: two forwards per step for guidance, default attention
  ours          one batched forward for both guidance branches
  attention     + the fastest attention backend that loads (flash 3 / flash / cuDNN / SDPA)
  compile       + torch.compile of the repeated blocks (no attention change)
  fast          attention + compile
  fast+cache    fast + First Block Cache (`--cache-threshold`), an opt-in quality trade
  low-vram      memory mode low (pipelines/memory.py): accelerate's model offload, VAE tiling
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cpu_vs_diffusers import psnr

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("diffusers", "ours", "attention", "compile", "fast", "fast+cache", "low-vram")
PROMPT = "a red kite over a beach with waves"


class StepClock:
    """Timestamps from a step callback: CUDA events (no sync) on a GPU, perf_counter on a CPU."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.marks = []
        self._torch = torch

    def mark(self) -> None:
        if self.cuda:
            event = self._torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if self.cuda:
            self._torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return list(np.diff(self.marks))


def matmul_peak_tflops(device, dtype, size: int) -> float:
    """Achieved TFLOP/s of a square matmul: the card's practical peak for this dtype."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 20 if device.type == "cuda" else 3
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def dit_flops_per_step(transformer, latents_shape, text_shape, device, dtype, per_token: bool) -> float:
    """FLOPs of the transformer for one guided step (both branches), counted on one batch-2 forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch, channels, frames, height, width = latents_shape
    latents = torch.zeros((2, channels, frames, height, width), device=device, dtype=dtype)
    tokens = frames * (height // 2) * (width // 2)
    timestep = torch.full((2, tokens) if per_token else (2,), 500.0, device=device)
    text = torch.zeros((2, *text_shape), device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)
    return float(counter.get_total_flops())


def worker(args: argparse.Namespace) -> dict:
    import torch

    from benchmarks.random_wan import SHAPES, components
    from pipelines import ModelDefaults, VideoPipeline, text_to_video

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = SHAPES[args.shape]
    width, height, frames = args.width or shape.width, args.height or shape.height, args.frames or shape.frames
    parts = components(args.shape, "cpu" if args.variant == "low-vram" else device, dtype, seed=args.seed)
    clock = StepClock(device)
    info: dict = {"variant": args.variant}
    if args.variant == "diffusers":
        from diffusers import WanPipeline

        pipe = WanPipeline(expand_timesteps=shape.per_token, **parts)
        pipe.set_progress_bar_config(disable=True)

        def run(steps: int) -> np.ndarray:
            def on_step(_pipe, i, t, kwargs):
                clock.mark()
                return kwargs

            clock.mark()
            video = pipe(prompt=PROMPT, negative_prompt="", width=width, height=height, num_frames=frames,
                         num_inference_steps=steps, guidance_scale=args.guidance,
                         generator=torch.Generator().manual_seed(args.seed), max_sequence_length=shape.text_tokens,
                         output_type="np", callback_on_step_end=on_step).frames[0]
            return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    else:
        defaults = ModelDefaults(width=width, height=height, num_frames=frames, fps=shape.fps, steps=args.steps,
                                 guidance_scale=args.guidance,
                                 conditioning_strategy="per_token" if shape.per_token else "replace",
                                 max_sequence_length=shape.text_tokens)
        pipe = VideoPipeline.from_parts(parts, model_id=f"random {args.shape}", defaults=defaults, device=device,
                                        low_vram=args.variant == "low-vram")
        knobs = {"attention": "auto" if args.variant in ("attention", "fast", "fast+cache") else None,
                 "compile": args.variant in ("compile", "fast", "fast+cache"),
                 "step_cache": args.cache_threshold if args.variant == "fast+cache" else None}
        info["knobs"] = pipe.accelerate(**knobs)

        def run(steps: int) -> np.ndarray:
            clock.mark()
            request = text_to_video(PROMPT, width=width, height=height, num_frames=frames, fps=shape.fps,
                                    steps=steps, guidance_scale=args.guidance, seed=args.seed)
            return pipe.generate(request, callback=lambda *_: clock.mark()).frames

    def synced() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    started = synced()
    run(args.warmup_steps)
    info["warmup_s"] = synced() - started
    clock.marks.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = synced()
    video = run(args.steps)
    info["total_s"] = synced() - started
    steps = clock.intervals()[1:]  # the first interval is text encoding and set-up, not a step
    info["step_s"] = float(np.median(steps))
    info["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if args.variant in ("diffusers", "ours"):  # the same transformer: count its FLOPs once per side is enough
        transformer = parts["transformer"]
        spatial = 16 if shape.per_token else 8
        latent = (1, transformer.config.in_channels, (frames - 1) // 4 + 1, height // spatial, width // spatial)
        info["dit_flops_per_step"] = dit_flops_per_step(transformer, latent, (shape.text_tokens, shape.text_width),
                                                        device, dtype, shape.per_token)
    np.save(args.frames_out, video)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="wan2.1-t2v-1.3b", help="wan2.1-t2v-1.3b, wan2.2-ti2v-5b or tiny")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--cache-threshold", type=float, default=0.08)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--frames-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from benchmarks.random_wan import SHAPES

    if args.shape not in SHAPES:
        parser.error(f"--shape {args.shape!r} is not known; valid: {', '.join(SHAPES)}")
    if args.variant:
        print(json.dumps(worker(args)))
        return 0
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: {', '.join(unknown)} not known; valid: {', '.join(VARIANTS)}")
    if "diffusers" not in chosen:
        chosen.insert(0, "diffusers")  # the reference every ratio and PSNR is against

    import torch

    device = torch.device(args.device)
    peak = matmul_peak_tflops(device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                              8192 if device.type == "cuda" else 1024)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in chosen:
            command = [sys.executable, "-m", "benchmarks.cuda_wan", "--variant", variant,
                       "--frames-out", str(Path(scratch) / f"{variant}.npy")]
            for name in ("shape", "device", "steps", "warmup_steps", "guidance", "cache_threshold", "width", "height",
                         "frames", "seed"):
                if getattr(args, name) is not None:
                    command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                rows[variant] = {"variant": variant, "error": done.stderr.strip().splitlines()[-1][:300]}
                print(f"{variant}: failed: {rows[variant]['error']}", file=sys.stderr)
                continue
            rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        reference = np.load(Path(scratch) / "diffusers.npy") if "error" not in rows["diffusers"] else None
        for variant, row in rows.items():
            if "error" not in row and reference is not None:
                row["psnr_db"] = psnr(np.load(Path(scratch) / f"{variant}.npy"), reference)

    flops = next((r["dit_flops_per_step"] for r in rows.values() if "dit_flops_per_step" in r), None)
    base = rows["diffusers"]
    for row in rows.values():
        if "error" in row:
            continue
        row["speedup_step"] = base["step_s"] / row["step_s"] if "step_s" in base else None
        row["speedup_total"] = base["total_s"] / row["total_s"] if "total_s" in base else None
        row["dit_tflops"] = flops / row["step_s"] / 1e12 if flops else None
        row["fraction_of_peak"] = row["dit_tflops"] / peak if flops else None
    shape = SHAPES[args.shape]
    size = f"{args.width or shape.width}x{args.height or shape.height}x{args.frames or shape.frames}"
    result = {"shape": args.shape, "size": size, "steps": args.steps, "guidance": args.guidance,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "matmul_peak_tflops": peak, "dit_flops_per_step": flops, "rows": rows}
    out = args.out or RESULTS / f"cuda_wan_{args.shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"{args.shape} {size}, {args.steps} steps, guidance {args.guidance}, {result['device']}; "
          f"matmul peak {peak:.1f} TFLOP/s; DiT {flops / 1e12 if flops else float('nan'):.3g} TFLOP per step")
    print("| variant | s/step | total s | warm-up s | peak GPU GB | DiT TFLOP/s (of peak) | x diffusers (step / total) | PSNR dB |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, row in rows.items():
        if "error" in row:
            print(f"| {variant} | failed: {row['error']} |")
            continue
        gb = f"{row['peak_gpu_gb']:.1f}" if row["peak_gpu_gb"] is not None else "-"
        tf = f"{row['dit_tflops']:.3g} ({row['fraction_of_peak']:.1%})" if row["dit_tflops"] else "-"
        print(f"| {variant} | {row['step_s']:.3f} | {row['total_s']:.1f} | {row['warmup_s']:.1f} | {gb} | {tf} | "
              f"{row['speedup_step']:.2f} / {row['speedup_total']:.2f} | {row['psnr_db']:.1f} |")
    return 0 if all("error" not in r for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
