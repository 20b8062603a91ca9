"""Tiny random Wan components built in the tests (no downloads), and saving them in diffusers layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from benchmarks.random_wan import word_tokenizer


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


def tiny_text_encoder() -> T5EncoderModel:
    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, dropout_rate=0.0)
    return T5EncoderModel(config).eval()


def _with_transformer(vae: AutoencoderKLWan, channels: int, rope_max_seq_len: int = 32) -> dict:
    """diffusers' own Wan test sizes: 2 heads x 12, 2 layers, ffn 32, text_dim 32 (and their short rope table,
    which limits the size: the real checkpoints' 1024 for their own sizes)."""
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=channels, out_channels=channels, text_dim=32, freq_dim=256,
                                        ffn_dim=32, num_layers=2, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", rope_max_seq_len=rope_max_seq_len)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {"vae": vae.eval(), "transformer": transformer.eval(), "scheduler": scheduler,
            "text_encoder": tiny_text_encoder(), "tokenizer": tiny_tokenizer()}


def tiny_wan21(rope_max_seq_len: int = 32) -> dict:
    """Wan 2.1 text-to-video shapes in miniature: 8x spatial VAE, z 16, patch (1, 2, 2)."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return _with_transformer(vae, channels=16, rope_max_seq_len=rope_max_seq_len)


def tiny_wan22_ti2v() -> dict:
    """Wan 2.2 TI2V shapes in miniature: residual VAE with 16x spatial compression, z 48."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True])
    return _with_transformer(vae, channels=48)


def save_diffusers_folder(components: dict, folder: Path, studio: dict | None = None,
                          expand_timesteps: bool = False) -> Path:
    """Write the components the way diffusers' save_pretrained lays out a WanPipeline."""
    from diffusers import WanPipeline

    pipe = WanPipeline(expand_timesteps=expand_timesteps, **components)
    pipe.save_pretrained(folder)
    if studio:
        (Path(folder) / "studio.json").write_text(json.dumps(studio))
    return Path(folder)
