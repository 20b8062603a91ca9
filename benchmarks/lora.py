"""What LoRAs cost (pipelines/lora.py): loading a file (read, diffusers' layout conversion, the fit check, peft's
injection) against switching between loaded ones (set_adapters), and a denoiser step with one or two LoRAs
active against the step without, interleaved in the same run.

The transformer has Wan2.1-1.3B's widths (1536, ffn 8960, text 4096) with `--blocks` of its 30 blocks (load
time and per-step cost grow with the blocks), random weights; the LoRAs are rank `--rank` on every linear layer
of every block, saved in musubi-tuner's layout (what most Wan LoRAs are shared in), so loading converts them.

    python -m benchmarks.lora --blocks 2 --rank 32 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.random_wan import SHAPES, components

LAYERS = {"attn1.to_q": "self_attn_q", "attn1.to_k": "self_attn_k", "attn1.to_v": "self_attn_v",
          "attn1.to_out.0": "self_attn_o", "attn2.to_q": "cross_attn_q", "attn2.to_k": "cross_attn_k",
          "attn2.to_v": "cross_attn_v", "attn2.to_out.0": "cross_attn_o", "ffn.net.0.proj": "ffn_0",
          "ffn.net.2": "ffn_2"}


def musubi_file(path: Path, transformer: torch.nn.Module, rank: int, seed: int) -> Path:
    """A random rank-`rank` LoRA on every block layer, in musubi-tuner's key layout, alpha = rank."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for i, block in enumerate(transformer.blocks):
        for ours, theirs in LAYERS.items():
            layer = block.get_submodule(ours)
            name = f"lora_unet_blocks_{i}_{theirs}"
            state[f"{name}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) / 50
            state[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) / 50
            state[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(state, path)
    return path


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from pipelines import ModelDefaults, VideoPipeline
    from pipelines.lora import Lora

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=2, help="of Wan2.1-1.3B's 30 blocks")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--tokens", type=int, default=1560, help="latent tokens of the timed step (1560: 480x832, 5 frames)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="write the figures as JSON here too")
    args = p.parse_args(argv)

    torch.set_grad_enabled(False)
    parts = components("tiny", "cpu", torch.float32)
    shape = dict(SHAPES["wan2.1-t2v-1.3b"].transformer, num_layers=args.blocks)
    torch.manual_seed(0)
    parts["transformer"] = type(parts["transformer"])(**shape).eval()
    pipe = VideoPipeline.from_parts(parts, "wan2.1-1.3b-widths", ModelDefaults())
    folder = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    a, b = (Lora.of_file(musubi_file(folder / f"{n}.safetensors", pipe.transformer, args.rank, seed), 1.0)
            for seed, n in enumerate("ab"))
    frames, height = 2, 30  # latent frames x rows x columns at patch 2: tokens = frames * 15 * 52 for 480x832
    width = max(2, args.tokens // (frames * (height // 2))) * 2
    latents = torch.randn(1, 16, frames, height, width)
    text = torch.randn(1, 512, 4096)
    step = lambda: pipe.transformer(latents, torch.tensor([500.0]), text, return_dict=False)  # noqa: E731

    times: dict[str, list[float]] = {k: [] for k in ("load_first", "load_second", "switch", "switch_both", "none",
                                                     "step_none", "step_one", "step_two")}
    for _ in range(args.rounds):
        pipe.adapters.clear()
        times["load_first"].append(timed(lambda: pipe.adapters.apply((a,))))
        times["load_second"].append(timed(lambda: pipe.adapters.apply((b,))))
        times["switch"].append(timed(lambda: pipe.adapters.apply((a,))))
        times["switch_both"].append(timed(lambda: pipe.adapters.apply((a, b))))
        times["none"].append(timed(lambda: pipe.adapters.apply(())))
        for name, loras in (("step_none", ()), ("step_one", (a,)), ("step_two", (a, b))):  # interleaved
            pipe.adapters.apply(loras)
            times[name].append(timed(step))
    summary = {k: {"min": min(v), "median": statistics.median(v)} for k, v in times.items()}
    ratios = {f"{k}/step_none": {s: summary[k][s] / summary["step_none"][s] for s in ("min", "median")}
              for k in ("step_one", "step_two")}
    ratios["load_first/switch"] = {s: summary["load_first"][s] / summary["switch"][s] for s in ("min", "median")}
    size_mb = Path(a.path).stat().st_size / 1e6
    print(f"Wan2.1-1.3B widths, {args.blocks} blocks, rank {args.rank} ({size_mb:.1f} MB a file), "
          f"{latents.shape[2] * (height // 2) * (width // 2)} tokens, {args.rounds} rounds (seconds min / median)")
    print("| what | min | median |\n| --- | --- | --- |")
    for k, row in summary.items():
        print(f"| {k} | {row['min']:.4f} | {row['median']:.4f} |")
    for k, row in ratios.items():
        print(f"| {k} | {row['min']:.3f}x | {row['median']:.3f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"seconds": summary, "ratios": ratios, "blocks": args.blocks,
                                              "rank": args.rank, "file_mb": size_mb}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
