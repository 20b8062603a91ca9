"""Tiny random CogVideoX components built in the tests (no downloads), and folders of the real configurations.

`tiny_cogvideox(kind)` gives each checkpoint's structure in miniature: "2b" (sinusoidal positions, DDIM with
snr_shift_scale 3), "5b" (rotary positions, DPM, snr_shift_scale 1), "i2v" (5B-I2V: learned positional table,
the still's latents on the channels), "1.5" (temporal patch 2) and "1.5-i2v" (with the offset embedding and
the VAE's inverted latent scale). Their weights are made discriminating: random DiT weights barely attend to
the text, so the text projection and the attention's queries are scaled up until a changed prompt moves the
latents clearly (the tests assert it), or parity with diffusers would hold trivially.

`REAL_CONFIGS` writes, for each registry name this family adds, a diffusers folder with the checkpoint's
published configurations and random weights, shrunk only in depth (1 transformer block, 1 T5 block) and in
T5's vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)

from tiny_models import tiny_text_encoder, tiny_tokenizer

# The schedulers of the published checkpoints: v-prediction, zero terminal SNR, trailing spacing.
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                 set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=0)
TINY_TEXT_TOKENS = 16  # max_text_seq_length of the tiny transformers: the prompts' padded length


def scheduler(kind: str):
    """2B: DDIM with snr_shift_scale 3; the 5B family: DPM with snr_shift_scale 1."""
    if kind == "2b":
        return CogVideoXDDIMScheduler(snr_shift_scale=3.0, **SCHEDULER)
    return CogVideoXDPMScheduler(snr_shift_scale=1.0, **SCHEDULER)


def _sharpen(transformer: CogVideoXTransformer3DModel, factor: float = 4.0) -> CogVideoXTransformer3DModel:
    """Make random weights discriminating: the text and the positions must steer the output."""
    with torch.no_grad():
        transformer.patch_embed.text_proj.weight.mul_(factor)
        for block in transformer.transformer_blocks:
            block.attn1.to_q.weight.mul_(factor)
            block.attn1.to_k.weight.mul_(factor)
    return transformer


def tiny_cogvideox(kind: str = "2b") -> dict:
    """Components of a CogVideoX checkpoint in miniature (64x64 pixels = 8x8 latents at its sample size)."""
    i2v, v15 = kind in ("i2v", "1.5-i2v"), kind.startswith("1.5")
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4, scaling_factor=1.15258426 if kind == "2b" else 0.7,
        invert_scale_latents=kind == "1.5-i2v")
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8 if i2v else 4, out_channels=4,
        time_embed_dim=8, ofs_embed_dim=8 if kind == "1.5-i2v" else None, text_embed_dim=32, num_layers=2,
        sample_width=8, sample_height=8, sample_frames=9, patch_size=2, patch_size_t=2 if v15 else None,
        patch_bias=not v15, temporal_compression_ratio=4, max_text_seq_length=TINY_TEXT_TOKENS,
        use_rotary_positional_embeddings=kind != "2b", use_learned_positional_embeddings=kind == "i2v")
    return {"vae": vae.eval(), "transformer": _sharpen(transformer).eval(), "scheduler": scheduler(kind),
            "text_encoder": tiny_text_encoder(), "tokenizer": tiny_tokenizer()}


def pipeline_class(kind: str) -> type:
    return CogVideoXImageToVideoPipeline if kind in ("i2v", "1.5-i2v") else CogVideoXPipeline


# ---- the published configurations ----------------------------------------------------------------------
# T5-XXL v1.1's encoder (CogVideoX's text encoder) at its real width; depth and vocabulary shrunk for memory.
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dropout_rate=0.0,
              layer_norm_epsilon=1e-6, num_layers=1, vocab_size=512)
# CogVideoXTransformer3DModel as published (depth shrunk from 30 / 42 blocks to 1).
TRANSFORMER_2B = dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16,
                      flip_sin_to_cos=True, freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=1,
                      dropout=0.0, attention_bias=True, sample_width=90, sample_height=60, sample_frames=49,
                      patch_size=2, patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=226,
                      activation_fn="gelu-approximate", timestep_activation_fn="silu", norm_elementwise_affine=True,
                      norm_eps=1e-5, spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
                      use_rotary_positional_embeddings=False, use_learned_positional_embeddings=False,
                      patch_bias=True)
TRANSFORMER_5B = {**TRANSFORMER_2B, "num_attention_heads": 48, "use_rotary_positional_embeddings": True}
TRANSFORMER_5B_I2V = {**TRANSFORMER_5B, "in_channels": 32, "use_learned_positional_embeddings": True}
TRANSFORMER_15_5B = {**TRANSFORMER_5B, "patch_size_t": 2, "patch_bias": False, "sample_width": 300,
                     "sample_height": 300, "sample_frames": 81}
TRANSFORMER_15_5B_I2V = {**TRANSFORMER_15_5B, "in_channels": 32, "ofs_embed_dim": 512}
REAL = {
    # name: (pipeline, transformer config, VAE scaling factor, scheduler kind, inverted latent scale)
    "cogvideox-2b": (CogVideoXPipeline, TRANSFORMER_2B, 1.15258426, "2b", False),
    "cogvideox-5b": (CogVideoXPipeline, TRANSFORMER_5B, 0.7, "5b", False),
    "cogvideox-5b-i2v": (CogVideoXImageToVideoPipeline, TRANSFORMER_5B_I2V, 0.7, "5b", False),
    "cogvideox1.5-5b": (CogVideoXPipeline, TRANSFORMER_15_5B, 0.7, "5b", True),
    "cogvideox1.5-5b-i2v": (CogVideoXImageToVideoPipeline, TRANSFORMER_15_5B_I2V, 0.7, "5b", True),
}


def real_tokenizer():
    """A word-level tokenizer with T5's pad and end tokens and CogVideoX's 226-token limit."""
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 226
    return tokenizer


def build_real(name: str, folder: Path) -> Path:
    """A diffusers folder of `name` with its published configurations and random weights."""
    from transformers import T5Config, T5EncoderModel

    pipeline, transformer_config, scaling, kind, inverted = REAL[name]
    torch.manual_seed(0)
    parts = dict(
        vae=AutoencoderKLCogVideoX(scaling_factor=scaling, invert_scale_latents=inverted),  # the published VAE
        transformer=CogVideoXTransformer3DModel(**transformer_config),
        scheduler=scheduler(kind),
        text_encoder=T5EncoderModel(T5Config(**T5_XXL)),
        tokenizer=real_tokenizer(),
    )
    pipeline(**parts).save_pretrained(folder)
    return Path(folder)


REAL_CONFIGS: dict[str, Callable[[Path], Path]] = {
    name: (lambda folder, name=name: build_real(name, folder)) for name in REAL
}


def save_folder(components: dict, folder: Path, kind: str = "2b", studio: dict | None = None) -> Path:
    """Tiny components written the way diffusers' save_pretrained lays out their pipeline."""
    pipeline_class(kind)(**components).save_pretrained(folder)
    if studio:
        (Path(folder) / "studio.json").write_text(json.dumps(studio))
    return Path(folder)
