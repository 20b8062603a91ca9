"""Real Wan checkpoint shapes with random weights: the same shapes run at the same speed, and nothing is
downloaded. The text encoder is UMT5-XXL's encoder with random weights (it runs once per clip, so it does
not matter for step timings, but its 5.7B parameters do for memory).

Shapes are from the published configs (../shared/guide/anchors.md has the list):
- wan2.1-t2v-1.3b: 12 heads x 128, 30 layers, ffn 8960, latent 16; VAE defaults; 832x480x81 at 16 fps
- wan2.2-ti2v-5b: 24 heads x 128, 30 layers, ffn 14336, latent 48; residual 16x VAE; 1280x704x121 at 24 fps
- tiny: diffusers' own test sizes, for checking the benchmarks on a CPU
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

WORDS = ("a red ball moves left right up down blue green square star sky night over the bounces spins "
         "slowly fast big small sunset floor yellow purple cat dog negative blurry kite beach waves").split()

_WAN_BLOCKS = dict(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, num_layers=30,
                   cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


@dataclass(frozen=True)
class Shape:
    transformer: dict
    vae: dict
    width: int
    height: int
    frames: int
    fps: float
    flow_shift: float
    per_token: bool  # Wan 2.2 TI2V's expand_timesteps
    text_width: int = 4096
    text_tokens: int = 512
    notes: dict = field(default_factory=dict)


SHAPES = {
    "wan2.1-t2v-1.3b": Shape(
        transformer=dict(_WAN_BLOCKS, num_attention_heads=12, ffn_dim=8960, in_channels=16, out_channels=16),
        vae=dict(), width=832, height=480, frames=81, fps=16.0, flow_shift=3.0, per_token=False),
    "wan2.2-ti2v-5b": Shape(
        transformer=dict(_WAN_BLOCKS, num_attention_heads=24, ffn_dim=14336, in_channels=48, out_channels=48),
        vae=dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                 latents_mean=[0.0] * 48, latents_std=[1.0] * 48),
        width=1280, height=704, frames=121, fps=24.0, flow_shift=5.0, per_token=True),
    "tiny": Shape(
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                         out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                         qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        vae=dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
        width=32, height=32, frames=9, fps=8.0, flow_shift=3.0, per_token=False, text_width=32, text_tokens=16),
}


def word_tokenizer():
    """A word-level tokenizer over a fixed vocabulary: enough to feed prompts to a random text encoder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# UMT5-XXL's encoder, the text encoder of every Wan checkpoint: its size matters for memory, not for steps.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, dropout_rate=0.0)


def text_encoder(width: int):
    """UMT5-XXL's encoder at the real width; a 2-layer miniature for the tiny shape."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5_XXL if width == 4096 else dict(vocab_size=64, d_model=width, d_kv=8, d_ff=37, num_layers=2,
                                                  num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0)
    return UMT5EncoderModel(UMT5Config(**config)).eval()


def components(name: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> dict:
    """The shape's transformer, VAE, scheduler, text encoder and tokenizer with random weights, built on
    `device` (so a 5B model initialises on the GPU in seconds); the same seed gives the same weights."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    shape = SHAPES[name]
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = WanTransformer3DModel(**shape.transformer).to(dtype).eval()
        vae = AutoencoderKLWan(**shape.vae).to(torch.float32).eval()  # Wan decodes in float32
        encoder = text_encoder(shape.text_width).to(dtype)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=shape.flow_shift)
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler, "text_encoder": encoder,
            "tokenizer": word_tokenizer()}
