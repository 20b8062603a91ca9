"""Wan checkpoints at their published configurations with random weights, for the real-configuration harness
(tests/test_real_configs.py).

Everything that fixes sizes, lengths and the sampling maths is the published checkpoint's: transformer widths,
heads, patch, text width and rope table (../shared/guide/anchors.md), the VAE's config (Wan 2.1's is
`AutoencoderKLWan()`'s defaults; Wan 2.2 TI2V's is its residual 16x VAE with its 48 latent statistics), the
UniPC flow scheduler with the published shift, UMT5-XXL's width and 512-token limit. Only depths shrink (one
transformer block, one text encoder layer) and the text encoder's vocabulary (a word-level tokenizer), so the
folders fit a CPU. No studio.json is written: the registry's (or the family's) defaults apply, as for a folder a
user downloads, which is how Wan 2.1's 832x480 once crashed the studio (issue 26).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from benchmarks.random_wan import UMT5_XXL, word_tokenizer

# Wan 2.2 TI2V 5B's vae/config.json: the per-channel statistics of its 48 latent channels.
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]

# The transformer blocks of every Wan checkpoint (scripts/convert_wan_to_diffusers.py), at one layer.
WAN_BLOCKS = dict(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, num_layers=1)
TEXT_TOKENS = 512  # UMT5's model_max_length in every Wan checkpoint's tokenizer


@contextlib.contextmanager
def random_init(seed: int = 0) -> Iterator[None]:
    """Build modules without torch's own random initialisers, whose CPU generator takes half a minute over the
    700M parameters of Wan 2.2's VAE (`randomise` fills them afterwards): what stays is what a module sets
    without a random initialiser (norm scales, rope tables, buffers)."""
    names = ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_", "xavier_uniform_", "xavier_normal_",
             "trunc_normal_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight of two or more dimensions drawn at torch's default scale (uniform init's std,
    1/sqrt(3 fan_in)), every bias zero; one-dimensional scales stay as built. The draws are windows of one
    pool of normal values at random offsets, so a billion weights cost a copy, not a billion draws."""
    pool_size = 1 << 23
    rng = np.random.default_rng(seed)
    pool = torch.from_numpy(np.tile(rng.standard_normal(pool_size, dtype=np.float32), 2))  # (2P,) to wrap around
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                flat = param.view(-1)
                for start in range(0, flat.numel(), pool_size):
                    count = min(pool_size, flat.numel() - start)
                    offset = int(rng.integers(pool_size))
                    flat[start:start + count].copy_(pool[offset:offset + count])
                flat.mul_((3 * param[0].numel()) ** -0.5)
            elif name.endswith("bias"):
                param.zero_()
    return module


def _text_encoder():
    """UMT5-XXL's encoder at its real width and heads, one layer deep, over the word tokenizer's vocabulary."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**{**UMT5_XXL, "num_layers": 1, "vocab_size": 64})).eval()


def _tokenizer():
    tokenizer = word_tokenizer()
    tokenizer.model_max_length = TEXT_TOKENS
    return tokenizer


def _write(folder: Path, transformer: dict, vae: dict, flow_shift: float, expand_timesteps: bool) -> Path:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    with random_init():
        models = dict(transformer=WanTransformer3DModel(**WAN_BLOCKS, **transformer), vae=AutoencoderKLWan(**vae),
                      text_encoder=_text_encoder())
    # Saved in bfloat16, half the bytes to write and read (the studio loads them in its own precision).
    models = {name: randomise(model, seed).to(torch.bfloat16).eval() for seed, (name, model) in enumerate(models.items())}
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)
    WanPipeline(expand_timesteps=expand_timesteps, tokenizer=_tokenizer(), scheduler=scheduler,
                **models).save_pretrained(folder)
    return Path(folder)


def wan21_t2v_1_3b(folder: Path) -> Path:
    """Wan-AI/Wan2.1-T2V-1.3B-Diffusers: 12 heads x 128, ffn 8960, latent 16, the 8x4 VAE, flow shift 3."""
    return _write(folder, dict(num_attention_heads=12, ffn_dim=8960, in_channels=16, out_channels=16),
                  dict(), flow_shift=3.0, expand_timesteps=False)


def wan22_ti2v_5b(folder: Path) -> Path:
    """Wan-AI/Wan2.2-TI2V-5B-Diffusers: 24 heads x 128, ffn 14336, latent 48, the residual 16x4 VAE,
    flow shift 5, per-token timesteps (`expand_timesteps`)."""
    vae = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
               temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
               patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
               latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)
    return _write(folder, dict(num_attention_heads=24, ffn_dim=14336, in_channels=48, out_channels=48),
                  vae, flow_shift=5.0, expand_timesteps=True)


REAL_CONFIGS: dict[str, Callable[[Path], Path]] = {
    "wan2.1-t2v-1.3b": wan21_t2v_1_3b,
    "wan2.2-ti2v-5b": wan22_ti2v_5b,
}
