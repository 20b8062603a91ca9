"""Tiny random LTX-Video components built in the tests (no downloads), and the published configurations with
random weights (REAL_CONFIGS) for the real-configuration harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

from tiny_models import tiny_text_encoder, tiny_tokenizer

# The schedulers diffusers' conversion script (scripts/convert_ltx_to_diffusers.py) publishes: 0.9.0 and 0.9.1
# shift dynamically with the token count and stretch to a terminal sigma; 0.9.5 and later do not shift.
SCHEDULER_091 = dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                     max_image_seq_len=4096, shift_terminal=0.1)
SCHEDULER_095 = dict(use_dynamic_shifting=False)


def discriminating(transformer: LTXVideoTransformer3DModel, vae: AutoencoderKLLTXVideo, seed: int = 0) -> None:
    """Make random weights react to what parity must check: sharper attention (qk-norm gains, so rotary
    positions and the text matter), a stronger timestep modulation (per-token timesteps matter), non-trivial
    latent statistics (normalisation matters) and a near-deterministic posterior (std e^-15, so diffusers'
    posterior sample equals the mode we hold; its draws are still taken)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "norm_q" in name or "norm_k" in name:
                p.mul_(6.0)
            elif "scale_shift_table" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
            elif "time_embed" in name and p.ndim == 2:
                p.mul_(3.0)
        channels = vae.config.latent_channels
        vae.latents_mean.copy_(torch.randn(channels, generator=g) * 0.5)
        vae.latents_std.copy_(torch.rand(channels, generator=g) + 0.5)
        conv = vae.encoder.conv_out.conv
        conv.weight[-1].zero_()
        conv.bias[-1] = -60.0  # the log-variance channel: clamped to -30 by diffusers


def tiny_vae(timestep_conditioning: bool = False) -> AutoencoderKLLTXVideo:
    """The real VAE's factors (patch 4, three spatio-temporal stages: 32x spatial, 8x temporal) at 8 channels."""
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=timestep_conditioning,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    return vae.eval()


def tiny_ltx(scheduler: dict | None = None, timestep_conditioning: bool = False) -> dict:
    """LTX-Video's shapes in miniature: patch 1 over the 32x8 VAE, 4 heads x 8, 2 layers, T5 width 32."""
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                             num_layers=2, caption_channels=32).eval()
    vae = tiny_vae(timestep_conditioning)
    discriminating(transformer, vae)
    return {"vae": vae, "transformer": transformer,
            "scheduler": FlowMatchEulerDiscreteScheduler(**(SCHEDULER_091 if scheduler is None else scheduler)),
            "text_encoder": tiny_text_encoder(), "tokenizer": tiny_tokenizer()}


# ---- published configurations with random weights ---------------------------------------------------------
# LTX-Video 2B (0.9.x): diffusers' conversion script's transformer config; depth shrunk from 28 to 1 layer.
TRANSFORMER_2B = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                      attention_head_dim=64, cross_attention_dim=2048, num_layers=1,
                      activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads", norm_elementwise_affine=False,
                      norm_eps=1e-6, caption_channels=4096, attention_bias=True, attention_out_bias=True)
VAE_091 = dict(in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(128, 256, 512, 512),
               down_block_types=("LTXVideoDownBlock3D",) * 4, decoder_block_out_channels=(256, 512, 1024),
               layers_per_block=(4, 3, 3, 3, 4), decoder_layers_per_block=(5, 6, 7, 8),
               spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True),
               decoder_inject_noise=(True, True, True, False), downsample_type=("conv",) * 4,
               upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
               patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, scaling_factor=1.0, encoder_causal=True,
               decoder_causal=False)
VAE_095 = dict(in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(128, 256, 512, 1024, 2048),
               down_block_types=("LTXVideo095DownBlock3D",) * 4, decoder_block_out_channels=(256, 512, 1024),
               layers_per_block=(4, 6, 6, 2, 2), decoder_layers_per_block=(5, 5, 5, 5),
               spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
               decoder_inject_noise=(False, False, False, False),
               downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
               upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
               patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, scaling_factor=1.0, encoder_causal=True,
               decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8)
# T5 v1.1 XXL's encoder (google/t5-v1_1-xxl, LTX's text encoder) at its width; 1 layer, a small vocabulary.
T5_XXL_1_LAYER = dict(vocab_size=128, d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, dropout_rate=0.0)
TOKENIZER_MAX_LENGTH = 128


# The published VAEs alone hold 3.7 GB (0.9.1) and 5.0 GB (0.9.5) of float32 weights, so their depth is shrunk
# too: one resnet per stage and none in the mid blocks (widths, factors, channels, noise injection and timestep
# conditioning as published). With the 1-layer transformer (0.44 GB) and T5 (0.77 GB): 2.2 GB and 2.4 GB.
SHRUNK_VAE_DEPTH = dict(layers_per_block=(1, 1, 1, 1, 0), decoder_layers_per_block=(1, 1, 1, 0))


def _write_real(folder: Path, vae_config: dict, scheduler: dict, pipeline: str) -> Path:
    from transformers import T5Config, T5EncoderModel

    from benchmarks.random_wan import word_tokenizer

    folder = Path(folder)
    torch.manual_seed(0)
    parts = {"transformer": LTXVideoTransformer3DModel(**TRANSFORMER_2B),
             "vae": AutoencoderKLLTXVideo(**{**vae_config, **SHRUNK_VAE_DEPTH}),
             "scheduler": FlowMatchEulerDiscreteScheduler(**scheduler),
             "text_encoder": T5EncoderModel(T5Config(**T5_XXL_1_LAYER))}
    tokenizer = word_tokenizer()
    tokenizer.model_max_length = TOKENIZER_MAX_LENGTH
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    tokenizer.save_pretrained(folder / "tokenizer")
    index = {"_class_name": pipeline, "_diffusers_version": "0.32.0",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", type(tokenizer).__name__],
             "transformer": ["diffusers", "LTXVideoTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLLTXVideo"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def real_ltx_091(folder: Path) -> Path:
    """Lightricks/LTX-Video (0.9.1): LTXPipeline, the timestep-aware VAE with noise injection, dynamic shift."""
    return _write_real(folder, VAE_091, SCHEDULER_091, "LTXPipeline")


def real_ltx_095(folder: Path) -> Path:
    """Lightricks/LTX-Video-0.9.5: the 0.9.5 VAE (stated 32x8 ratios), no shift."""
    return _write_real(folder, VAE_095, SCHEDULER_095, "LTXPipeline")


REAL_CONFIGS: dict[str, Callable[[Path], Path]] = {"ltx-video-0.9.1": real_ltx_091, "ltx-video-0.9.5": real_ltx_095}
