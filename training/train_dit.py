"""Train the embedded model's DiT with flow matching and per-token timesteps under random conditioning masks.

Rectified flow (arXiv 2209.03003): x_sigma = (1 - sigma) x0 + sigma eps, the model predicts eps - x0. Held
latent frames (the conditioning) carry timestep 0 and their clean latents and take no loss, as in Wan 2.2
TI2V and LTX-Video; the masks cover every mode: none, the first frame, the first or last k frames, both
ends, a random subset. Windows are also cut from the middle of clips, where the first latent stands for 4
frames, as when a chain conditions on a clip's saved latents; such windows hold that latent, since a window
the model starts from noise always starts on a first frame. Noise levels are shifted like the sampler's
schedule. Captions are dropped 10 % of the time for classifier-free guidance.

The objects cover a few percent of the latent grid, yet they carry what the prompt asks for (colour, shape,
motion), so latent tokens an object touches weigh FOREGROUND_WEIGHT times more in the loss. A fixed weight per
token leaves each token's optimum, the conditional mean of eps - x0, where it was; it only spends more of the
model's capacity and gradient on the objects. Forward and backward run under bf16 autocast (fp32 weights and
optimiser), 1.25x faster per step on a 2-core Zen 4 CPU with AVX512-BF16 (`--fp32` turns it off).

Left and right are the words the text encoder tells apart least: their token states keep a cosine of 0.78
(up and down 0.64, red and blue 0.29). Trained on independent clips the model learned where sideways movers
start (at an edge) but not which edge: from pure noise its expected first frame for "moves to the right" put
the object at both edges, while "moves up" put it at the bottom. With `--pairs`, a share of the steps trains
on contrast pairs: clips and their mirror twins (`cache --mirror`), whose captions differ in that one word,
from their first frame, with no held frames (one would show where the object starts, and so its direction),
under the same noise and a noise level from PAIR_SIGMA_MIN to 1, where the caption decides the layout. There
the two inputs are alike but for the word and the targets are mirror images, so only reading the word lowers
the loss. `--only text` trains just the text path (the text embedder and the cross-attention), at
the run's learning rate, leaving the rest of the model as it is.

Connect and loop ask for a bridge between two held ends that no training clip shows: a moving object's
last frames and another scene's (or the same clip's) first. With `--transitions`, a share of the steps
trains on such bridges (`cache --transitions`, world.transition_clip: a clip, a crossfade that eases into
the next clip's first frame, that clip) under connect's own mask: the first TRANSITION_CONTEXT frames held, the
latent ending on the join's frame and those before it generated, the latents after it held.

Stages (each resumable; `--run DIR` holds the files):
    python -m training.train_dit --run training/runs/embedded cache --clips 2400     # latents + text states
    python -m training.train_dit --run training/runs/embedded cache --clips 2400 --mirror  # contrast twins
    python -m training.train_dit --run training/runs/embedded cache --clips 960 --transitions  # bridges
    python -m training.train_dit --run training/runs/embedded train --steps 3000 --pairs 0.25 --transitions 0.2
    python -m training.train_dit --run training/runs/embedded export --out assets/embedded-model
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.cpu_kernels import use_onednn_conv3d
from training.components import (LATENT_CHANNELS, SCHEDULER_CONFIG, TEXT_MAX_TOKENS, exported_weights,
                                 load_text_encoder, new_transformer, new_vae, save_model)
from training.components import TRAIN_SIZES as SIZES
from training.history import checkpoint_history, run_segment, total_steps
from training.world import TRANSITION_CONTEXT, clip, foreground, mirrored_clip, transition_clip

CLIP_FRAMES = 25  # 7 latent frames: windows of 1, 3, 5 or 7 latents are cut from them
# Single-latent windows are stills: they train text-to-image, the first stage of image-first text-to-video.
WINDOW_LATENTS, WINDOW_P = [1, 3, 5, 7], [0.2, 0.2, 0.4, 0.2]
FOREGROUND_WEIGHT = 4.0
PAIR_SIGMA_MIN = 0.7  # contrast pairs train at the high noise levels where the caption sets the layout
TEXT_PATH = ("condition_embedder.text_embedder.", ".attn2.")  # what --only text trains
SHIFT = SCHEDULER_CONFIG["flow_shift"]


def load_vae(run: Path):
    vae = new_vae()
    vae.load_state_dict(torch.load(run / "vae.pt", weights_only=False)["model"])
    use_onednn_conv3d(vae)
    return vae.eval()


@torch.no_grad()
def encode_text(tokenizer, encoder, captions: list[str]) -> torch.Tensor:
    """(N, TEXT_MAX_TOKENS, 384) with zeroed padding, as the pipeline's PromptEncoder builds them."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tokens = tokenizer([prompt_clean(c) for c in captions], padding="max_length", max_length=TEXT_MAX_TOKENS,
                       truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    hidden = encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    return hidden * tokens.attention_mask[..., None]


def latent_mask(mask: np.ndarray) -> torch.Tensor:
    """(F, H, W) pixel mask -> (1 + (F - 1) // 4, H // 8, W // 8) bool: the latent cells the causal VAE's
    4x temporal, 8x spatial compression maps any masked pixel into (frame 0 alone, then groups of four)."""
    frames, height, width = mask.shape
    m = torch.from_numpy(mask).float()  # (F, H, W)
    groups = torch.cat([m[:1], m[1:].view((frames - 1) // 4, 4, height, width).amax(1)])  # (f, H, W)
    return torch.nn.functional.max_pool2d(groups[:, None], 8)[:, 0].bool()  # (f, h, w)


@torch.no_grad()
def build_cache(run: Path, clips: int, seed: int, mirror: bool = False, transitions: bool = False) -> None:
    """Encode `clips` rendered clips (grouped by size) and their captions; set the VAE's latent statistics.
    With `mirror`, write mirror.pt instead: the same seeds' clips flipped left to right where that changes
    their caption (world.mirrored_clip), each group's `source` naming its twin's index in cache.pt's group.
    With `transitions`, write transitions.pt: bridges as connect and loop ask for (world.transition_clip),
    each group's `join` the frame where the clip after the bridge starts."""
    vae = load_vae(run)
    tokenizer, text_encoder = load_text_encoder()
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[str, list]] = {}
    seen: dict[str, int] = {}  # clips of each size drawn so far: the index of the next in cache.pt's group
    started = time.time()
    per_batch = 8
    for index in range(0, clips, per_batch):
        width, height = SIZES[(index // per_batch) % len(SIZES)]
        size = f"{width}x{height}"
        videos, captions, masks, extras = [], [], [], []  # extras: a twin's index or a bridge's join
        for _ in range(per_batch):
            clip_seed = int(rng.integers(2**31))
            seen[size] = seen.get(size, 0) + 1
            if transitions:
                video, caption, objects, join = transition_clip(clip_seed, width, height, frames=CLIP_FRAMES)
                extras.append(join)
            else:
                made = (mirrored_clip if mirror else clip)(clip_seed, width, height, frames=CLIP_FRAMES, fps=8.0)
                if made is None:
                    continue
                video, caption, scene = made
                objects = foreground(video, scene)
                extras.append(seen[size] - 1)
            videos.append(video)
            captions.append(caption)
            masks.append(latent_mask(objects))
        if not videos:
            continue
        pixels = torch.from_numpy(np.stack(videos)).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
        latents = vae.encode(pixels).latent_dist.mode()  # (B, C, 7, h, w), before normalisation
        group = groups.setdefault(size, {"latents": [], "text": [], "captions": [], "objects": [], "extras": []})
        group["latents"].append(latents.half())
        group["objects"].append(torch.stack(masks))  # (B, 7, h, w)
        group["text"].append(encode_text(tokenizer, text_encoder, captions).half())
        group["captions"].extend(captions)
        group["extras"].extend(extras)
        if index % 200 == 0:
            print(f"cached {index + per_batch}/{clips} clips in {time.time() - started:.0f} s", flush=True)
    extra = "source" if mirror else "join" if transitions else None  # what the extras are saved as
    cache = {k: {"latents": torch.cat(v["latents"]), "text": torch.cat(v["text"]), "captions": v["captions"],
                 "objects": torch.cat(v["objects"]), **({extra: torch.tensor(v["extras"])} if extra else {})}
             for k, v in groups.items()}
    if mirror:
        torch.save({"groups": cache}, run / "mirror.pt")
        print(f"mirror: {sum(len(g['captions']) for g in cache.values())} of {clips} clips", flush=True)
        return
    if transitions:
        torch.save({"groups": cache}, run / "transitions.pt")
        print(f"transitions: {clips} clips", flush=True)
        return
    every = torch.cat([g["latents"].float().transpose(0, 1).flatten(1) for g in cache.values()], dim=1)  # (C, N)
    stats = {"latents_mean": every.mean(1).tolist(), "latents_std": every.std(1).tolist()}
    empty = encode_text(tokenizer, text_encoder, [""]).half()
    torch.save({"groups": cache, "stats": stats, "empty_text": empty}, run / "cache.pt")
    print(f"cache: {clips} clips, latent std {np.mean(stats['latents_std']):.3f}", flush=True)


def sample_mask(rng: np.random.Generator, frames: int, starts_held: bool = False) -> np.ndarray:
    """Which latent frames of a window are held (the conditioning of some mode); `starts_held` holds the first."""
    held = np.zeros(frames, bool)
    if frames == 1:
        return held
    kind = rng.choice(["none", "first", "first_k", "last_k", "both", "subset"], p=[0.3, 0.25, 0.1, 0.1, 0.15, 0.1])
    k = int(rng.integers(1, max(2, frames // 2 + 1)))
    if kind == "first":
        held[0] = True
    elif kind == "first_k":
        held[:k] = True
    elif kind == "last_k":
        held[-k:] = True
    elif kind == "both":
        held[:k] = True
        held[-max(1, k - 1):] = True
    elif kind == "subset":
        held = rng.random(frames) < 0.3
    held[0] |= starts_held
    if held.all():
        held[-1] = False
    return held


def sample_sigmas(rng: np.random.Generator, batch: int) -> torch.Tensor:
    """Training noise levels: half logit-normal, half uniform, then shifted as the sampler shifts its schedule
    (SD3, arXiv 2403.03206, section 5.3.2). Training then sees the high noise levels where sampling spends
    half its steps and where the prompt decides layout, colours and motion."""
    normal = torch.sigmoid(torch.from_numpy(rng.standard_normal(batch)).float())
    uniform = torch.from_numpy(rng.random(batch)).float()
    u = torch.where(torch.from_numpy(rng.random(batch) < 0.5), normal, uniform)
    return (SHIFT * u / (1 + (SHIFT - 1) * u)).clamp(1e-3, 1.0)


def merge_groups(caches: list[dict[str, dict]]) -> dict[str, dict]:
    """The clip groups of several caches (built with the same VAE), concatenated per size."""
    merged: dict[str, dict] = {}
    for groups in caches:
        for size, group in groups.items():
            if size not in merged:
                merged[size] = dict(group)
                continue
            for key in ("latents", "text", "objects"):
                merged[size][key] = torch.cat([merged[size][key], group[key]])
            merged[size]["captions"] = merged[size]["captions"] + group["captions"]
    return merged


def dit_history(state: dict, run: Path) -> list[dict]:
    """Every DiT training segment up to and including `state`, the dit.pt of `run`, with its recipe (contrast
    pairs, bridges, a part trained alone)."""
    segment = run_segment("transformer", state["step"], run / "dit_log.jsonl")
    segment.update({k: v for k, v in state.get("recipe", {}).items() if v})
    return checkpoint_history(state, "transformer") + [segment]


def train(run: Path, steps: int, batch: int, lr: float, seed: int, init: Path | None = None,
          bf16: bool = True, extra_caches: tuple[Path, ...] = (), pairs: float = 0.0, only: str | None = None,
          transitions: float = 0.0) -> None:
    # Checked before the caches load (they take minutes): a bad --pairs or --transitions fails at once.
    for flag, share in (("--pairs", pairs), ("--transitions", transitions)):
        if not 0.0 <= share <= 1.0:
            raise SystemExit(f"{flag} is a share of the steps, from 0 to 1; got {share}")
    if pairs + transitions > 1.0:
        raise SystemExit(f"--pairs and --transitions share the steps: together at most 1, got {pairs + transitions:g}")
    if transitions > 0 and not (run / "transitions.pt").is_file():
        raise SystemExit(f"--transitions needs {run / 'transitions.pt'}: make it with `cache --transitions`")
    if pairs > 0 and batch % 2:
        raise SystemExit(f"--pairs needs an even --batch (a clip and its twin), got {batch}")
    if pairs > 0 and not (run / "mirror.pt").is_file():
        raise SystemExit(f"--pairs needs {run / 'mirror.pt'}: make it with `cache --mirror` (same --seed and "
                         "--clips as cache.pt)")
    data = torch.load(run / "cache.pt", weights_only=False)
    # This run's cache sets the latent statistics (export writes them into the VAE's config).
    mean = torch.tensor(data["stats"]["latents_mean"]).view(1, LATENT_CHANNELS, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(data["stats"]["latents_std"]).view(1, LATENT_CHANNELS, 1, 1, 1)
    extra = [torch.load(path, weights_only=False)["groups"] for path in extra_caches]
    groups = list(merge_groups([data["groups"], *extra]).values())
    clips = sum(len(g["captions"]) for g in groups)
    print(f"{clips} clips from {1 + len(extra_caches)} cache(s)")
    empty = data["empty_text"].float()
    mirrors = None
    if pairs > 0:
        mirrors = torch.load(run / "mirror.pt", weights_only=False)["groups"]
        sizes = sorted(mirrors)
        print(f"{sum(len(g['captions']) for g in mirrors.values())} contrast pairs, in {pairs:.0%} of the steps")
    bridges = None
    if transitions > 0:
        bridges = torch.load(run / "transitions.pt", weights_only=False)["groups"]
        print(f"{sum(len(g['captions']) for g in bridges.values())} transitions, in {transitions:.0%} of the steps")
    checkpoint = run / "dit.pt"
    torch.manual_seed(seed)
    model = new_transformer().train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if only == "text":
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(any(part in name for part in TEXT_PATH))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    step, history = 0, []  # history: the segments the runs this one was initialised from trained
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        step, history = state["step"], checkpoint_history(state, "transformer")
        print(f"resumed at step {step}")
    elif init is not None:  # warm start, e.g. after the VAE was fine-tuned: weights only, a fresh schedule
        if init.is_dir():  # a saved model, e.g. the shipped one
            weights, history = exported_weights(init, "transformer")
        else:  # another run's dit.pt
            state = torch.load(init, weights_only=False)
            weights = state["ema"]
            history = dit_history(state, init.parent)
        model.load_state_dict(weights)
        ema.load_state_dict(weights)
        print(f"initialised from {init} (trained {total_steps(history)} steps)")
    rng = np.random.default_rng(seed + step)
    log = open(run / "dit_log.jsonl", "a")
    started, recent = time.time(), []
    while step < steps:
        progress = step / steps
        current_lr = lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimiser.param_groups:
            group["lr"] = current_lr
        length = int(rng.choice(WINDOW_LATENTS, p=WINDOW_P))
        # Most windows start at the clip's first frame; some are cut later, as a chain starts on a clip's
        # saved latents. A later latent stands for 4 frames, unlike a first frame, so such a window always
        # holds it: a window the model generates from scratch starts on a first frame, stills included.
        draw = rng.random() if mirrors is not None or bridges is not None else 1.0
        paired, bridged = draw < pairs, pairs <= draw < pairs + transitions
        length = WINDOW_LATENTS[-1] if bridged else length  # a bridge's window holds both its ends
        later = length not in (1, 7) and rng.random() >= 0.8 and not paired
        offset = int(rng.integers(1, 7 - length + 1)) if later else 0
        window = slice(offset, offset + length)
        if paired:  # contrast pairs: clips of this run's cache and their mirror twins
            size = sizes[rng.integers(len(sizes))]
            twins = torch.from_numpy(rng.choice(len(mirrors[size]["captions"]), size=batch // 2, replace=False))
            sources = mirrors[size]["source"][twins]
            parts = [(data["groups"][size], sources), (mirrors[size], twins)]
        elif bridged:
            size = sorted(bridges)[rng.integers(len(bridges))]
            picks = torch.from_numpy(rng.choice(len(bridges[size]["captions"]), size=batch, replace=False))
            parts = [(bridges[size], picks)]
        else:
            group = groups[rng.integers(len(groups))]
            parts = [(group, torch.from_numpy(rng.choice(len(group["captions"]), size=batch, replace=False)))]
        x0 = (torch.cat([g["latents"][i, :, window] for g, i in parts]).float() - mean) * inv_std  # (B, C, F, h, w)
        objects = torch.cat([g["objects"][i, window] for g, i in parts]).float()  # (B, F, h, w)
        text = torch.cat([g["text"][i] for g, i in parts]).float()  # (B, L, 384)
        if not paired:  # a pair without its captions would teach nothing
            dropped = torch.from_numpy(rng.random(batch) < 0.1)
            text = torch.where(dropped[:, None, None], empty.expand_as(text), text)
        draws = batch // 2 if paired else batch
        if paired:  # text to video near pure noise: a held frame would show where the object starts
            held = torch.zeros(draws, length, dtype=torch.bool)  # (B/2, F)
            sigma = torch.from_numpy(rng.uniform(PAIR_SIGMA_MIN, 1.0, draws)).float()  # (B/2,)
        elif bridged:  # connect's and loop's mask: A's context opens the window, the clip after the join closes it
            held = torch.zeros(batch, length, dtype=torch.bool)  # (B, F)
            held[:, :1 + (TRANSITION_CONTEXT - 1) // 4] = True
            for row, join in enumerate(bridges[size]["join"][picks].tolist()):
                held[row, join // 4 + 1:] = True  # the latent ending on the join's frame is generated
            sigma = sample_sigmas(rng, draws)  # (B,)
        else:
            held = torch.from_numpy(np.stack([sample_mask(rng, length, starts_held=later) for _ in range(draws)]))  # (B, F)
            sigma = sample_sigmas(rng, draws)  # (B,)
        noise = torch.from_numpy(rng.standard_normal((draws, *x0.shape[1:]))).float()
        if paired:  # each twin under its clip's noise, level and mask
            held, sigma, noise = held.repeat(2, 1), sigma.repeat(2), noise.repeat(2, 1, 1, 1, 1)
        token_sigma = sigma[:, None] * (~held).float()  # (B, F): 0 on held frames
        s = token_sigma[:, None, :, None, None]
        xt = (1 - s) * x0 + s * noise
        h, w = x0.shape[-2:]
        timestep = (token_sigma * 1000)[:, :, None].expand(-1, -1, (h // 2) * (w // 2)).reshape(batch, -1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prediction = model(hidden_states=xt, timestep=timestep, encoder_hidden_states=text,
                               return_dict=False)[0]
        # No loss on held frames; the objects' tokens weigh more.
        weight = ((~held).float()[:, :, None, None] * (1 + FOREGROUND_WEIGHT * objects))[:, None]  # (B, 1, F, h, w)
        loss = ((prediction.float() - (noise - x0)).pow(2) * weight).sum() / (weight.sum() * LATENT_CHANNELS)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        recent.append(loss.item())
        if step % 25 == 0 or step == steps:
            record = {"step": step, "loss": round(float(np.mean(recent)), 5), "lr": current_lr,
                      "elapsed_s": round(time.time() - started, 1)}
            recent = []
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
        if step % 250 == 0 or step == steps:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimiser": optimiser.state_dict(),
                        "step": step, "history": history, "clips": clips,
                        "recipe": {"pairs": pairs, "only": only, "transitions": transitions}}, checkpoint)


def export(run: Path, out: Path, soup: Path | None = None, vae_run: Path | None = None,
           soup_weight: float = 0.5) -> None:
    """Save the run's VAE and EMA DiT as a model folder. With `soup`, the DiT is the mean of this run's
    weights and that model's (a model soup, Wortsman et al., arXiv 2203.05482), this run's share being
    `soup_weight`: a run continued from a saved model can trade one skill for another, and a mean of the two
    may keep both. With `vae_run`, the VAE is that run's (a decoder fine-tune of the VAE this run's cache was
    encoded with)."""
    if not 0.0 < soup_weight < 1.0:
        raise SystemExit(f"--soup-weight must lie strictly between 0 and 1 (this run's share), got {soup_weight}")
    data = torch.load(run / "cache.pt", weights_only=False)
    vae_run = vae_run or run
    vae = load_vae(vae_run)
    vae.register_to_config(**data["stats"])
    transformer = new_transformer()
    dit = torch.load(run / "dit.pt", weights_only=False)
    weights = dit["ema"]
    if soup is not None:
        other, other_history = exported_weights(soup, "transformer")
        weights = {k: soup_weight * v.float() + (1 - soup_weight) * other[k] for k, v in weights.items()}
    transformer.load_state_dict(weights)
    vae_state = torch.load(vae_run / "vae.pt", weights_only=False)
    vae_history = checkpoint_history(vae_state, "vae")
    if vae_state["step"] > 0:  # this run trained the VAE (else it was taken as it is from a saved model)
        segment = run_segment("vae", vae_state["step"], vae_run / "vae_log.jsonl")
        if vae_state.get("decoder_only"):
            segment["decoder_only"] = True
            segment["temporal_weight"] = vae_state.get("temporal_weight", 1.0)  # runs before the flag used 1
            segment["temporal_on"] = vae_state.get("temporal_on") or "objects"  # as runs before the flag did
            if vae_state.get("transitions"):
                segment["transitions"] = vae_state["transitions"]
            if (vae_state.get("boundary_weight") or 1.0) != 1.0:
                segment["boundary_weight"] = vae_state["boundary_weight"]
        vae_history.append(segment)
    dit_segments = dit_history(dit, run)
    training = {"vae_steps": total_steps(vae_history), "transformer_steps": total_steps(dit_segments),
                "history": vae_history + dit_segments}
    if soup is not None:
        mean = "the mean" if soup_weight == 0.5 else f"the weighted mean ({1 - soup_weight:g} and {soup_weight:g})"
        training["transformer_weights"] = (f"{mean} of the DiT's weights after {total_steps(other_history)} steps "
                                           f"and after {training['transformer_steps']} (a model soup, arXiv 2203.05482)")
    save_model(out, vae, transformer, training)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    sub = parser.add_subparsers(dest="stage", required=True)
    cache = sub.add_parser("cache")
    cache.add_argument("--clips", type=int, default=2400)
    written = cache.add_mutually_exclusive_group()
    written.add_argument("--mirror", action="store_true", help="write mirror.pt: left-right twins of the clips "
                                                               "cache.pt holds (same --seed and --clips)")
    written.add_argument("--transitions", action="store_true", help="write transitions.pt: bridges from one clip "
                                                                  "to another or to its own start (connect, loop)")
    fit = sub.add_parser("train")
    fit.add_argument("--steps", type=int, default=3000)
    fit.add_argument("--batch", type=int, default=8)
    fit.add_argument("--lr", type=float, default=4e-4)
    fit.add_argument("--init", type=Path, help="a new run (not a resume) from this dit.pt's EMA weights or this "
                                              "model folder's transformer, e.g. the shipped model's")
    fit.add_argument("--pairs", type=float, default=0.0, metavar="SHARE",
                     help="the share of steps (0 to 1) that train on contrast pairs from mirror.pt (cache --mirror)")
    fit.add_argument("--transitions", type=float, default=0.0, metavar="SHARE",
                     help="the share of steps (0 to 1) that train on bridges from transitions.pt (cache --transitions)")
    fit.add_argument("--only", choices=["text"], help="train only the text path (text embedder, cross-attention)")
    fit.add_argument("--fp32", action="store_true", help="train in fp32 instead of under bf16 autocast")
    fit.add_argument("--also", type=Path, nargs="*", default=[], help="more cache.pt files (same VAE) whose clips "
                                                                      "join this run's, e.g. an earlier run's")
    ex = sub.add_parser("export")
    ex.add_argument("--out", type=Path, default=Path("assets/embedded-model"))
    ex.add_argument("--soup", type=Path, help="average the DiT with this model folder's, e.g. the one the run "
                                              "was initialised from")
    ex.add_argument("--soup-weight", type=float, default=0.5, help="this run's share of the soup (0 to 1)")
    ex.add_argument("--vae-run", type=Path, help="take the VAE from this run instead, e.g. a decoder-only "
                                                 "fine-tune (train_vae --decoder-only) of this run's VAE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stage == "cache":
        build_cache(args.run, args.clips, args.seed, args.mirror, args.transitions)
    elif args.stage == "train":
        train(args.run, args.steps, args.batch, args.lr, args.seed, args.init, bf16=not args.fp32,
              extra_caches=tuple(args.also), pairs=args.pairs, only=args.only,
              transitions=args.transitions)
    else:
        export(args.run, args.out, args.soup, args.vae_run, args.soup_weight)


if __name__ == "__main__":
    main()
