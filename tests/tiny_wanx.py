"""The rest of the Wan family in miniature (Wan 2.1 image-to-video and first-last-frame, Wan 2.2 A14B's two
experts), and REAL_CONFIGS: their registry entries' published configurations with random weights.

Tiny weights are made discriminating: random DiT weights at diffusers' initialisation barely react to the
prompt, the still or the expert (a changed input moves the latents by ~1e-3), so a parity test would pass
for wrong wiring. `sharpen` scales the attention and output projections so that every input the tests
change moves the final latents by a clear margin, and the VAE gets non-trivial latent statistics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from tiny_models import tiny_text_encoder, tiny_tokenizer

# Tiny CLIP vision tower: 32 px images in 8 px patches, 16 + 1 tokens of width 32.
CLIP_TOKENS = 17


def sharpen(transformer: WanTransformer3DModel, factor: float = 4.0) -> WanTransformer3DModel:
    """Scale the attention projections and the output projection, so that the text, the image states, the
    condition and the expert each move the output by a clear margin."""
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if (".attn1." in name or ".attn2." in name) and name.endswith("weight") and parameter.ndim == 2:
                parameter.mul_(factor)
            if name.startswith(("proj_out", "patch_embedding", "condition_embedder.image_embedder")) and \
                    parameter.ndim >= 2:
                parameter.mul_(factor / 2)
            if name.startswith("condition_embedder.text_embedder") and parameter.ndim == 2:
                parameter.mul_(2 * factor)  # most of 512 text tokens are padding: make the real ones tell
    return transformer


def tiny_vae() -> AutoencoderKLWan:
    """Wan 2.1's VAE shape in miniature (8x spatial, 4x temporal, z 16) with non-trivial latent statistics."""
    torch.manual_seed(0)
    mean = [0.3 * ((i % 5) - 2) for i in range(16)]
    std = [0.5 + 0.1 * (i % 7) for i in range(16)]
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std).eval()


def tiny_transformer(seed: int, in_channels: int = 16, image_dim: int | None = None,
                     pos_embed_seq_len: int | None = None) -> WanTransformer3DModel:
    """diffusers' own Wan test sizes (2 heads x 12, 2 layers, ffn 32, text_dim 32); with image_dim, the image
    cross-attention (added_kv_proj_dim = the inner width, as the 14B's 5120)."""
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=image_dim, added_kv_proj_dim=24 if image_dim else None,
        pos_embed_seq_len=pos_embed_seq_len)
    if pos_embed_seq_len:  # diffusers initialises the two images' positions to zero: make them matter
        with torch.no_grad():
            transformer.condition_embedder.image_embedder.pos_embed.normal_(0, 1)
    return sharpen(transformer).eval()


def tiny_clip() -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32, hidden_act="gelu")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModel(config).eval(), processor


def scheduler(flow_shift: float = 3.0) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)


def _text() -> dict:
    return {"text_encoder": tiny_text_encoder(), "tokenizer": tiny_tokenizer()}


def tiny_wan21_i2v(last_frame: bool = False) -> dict:
    """Wan 2.1 I2V 14B (`last_frame=False`) or FLF2V 14B (True) in miniature: in 36 = 16 latents + 4 mask + 16
    condition, CLIP states through the image cross-attention; FLF2V's embedder has positions for two images."""
    encoder, processor = tiny_clip()
    transformer = tiny_transformer(1, in_channels=36, image_dim=32,
                                   pos_embed_seq_len=2 * CLIP_TOKENS if last_frame else None)
    return {"vae": tiny_vae(), "transformer": transformer, "scheduler": scheduler(), "image_encoder": encoder,
            "image_processor": processor, **_text()}


def tiny_wan22_a14b(i2v: bool = False) -> dict:
    """Wan 2.2 A14B in miniature: two experts of the same shape with different weights (T2V in 16, I2V in 36)."""
    channels = 36 if i2v else 16
    return {"vae": tiny_vae(), "transformer": tiny_transformer(2, channels), "transformer_2": tiny_transformer(3, channels),
            "scheduler": scheduler(), **_text()}


A14B_INDEX = {"t2v": {"_class_name": "WanPipeline", "boundary_ratio": 0.875},
              "i2v": {"_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9}}
I2V_INDEX = {"_class_name": "WanImageToVideoPipeline"}


def with_swapped_experts(components: dict) -> dict:
    swapped = dict(components)
    swapped["transformer"], swapped["transformer_2"] = components["transformer_2"], components["transformer"]
    return swapped


def with_expert(components: dict, name: str, module) -> dict:
    return {**components, name: module}


# ---- published configurations with random weights ------------------------------------------------------
# Wan 2.1 I2V / FLF2V 14B and Wan 2.2 A14B: diffusers' scripts/convert_wan_to_diffusers.py and the hub's
# configs (40 heads x 128 = 5120 wide, ffn 13824, text_dim 4096 (UMT5-XXL), freq_dim 256, patch (1, 2, 2),
# rope_max_seq_len 1024; I2V in 36 / out 16, image_dim 1280 (CLIP ViT-H/14), added_kv_proj_dim 5120; FLF2V's
# image embedder has 2 x 257 positions), schedulers UniPC flow prediction with flow_shift 3.0 (16.0 for
# FLF2V), boundary_ratio 0.875 (T2V A14B) / 0.9 (I2V A14B). Only depth is shrunk (1 layer per expert, 1 CLIP
# layer, 1 UMT5 layer) and the text encoder's vocabulary; the weights are saved in bfloat16 so that a folder
# stays at 2-3 GB (the studio loads them in float32 on a CPU: about 4.5 GB resident for Wan 2.1 I2V and FLF2V,
# 6.5 GB for an A14B with its two 5120-wide experts).
WAN14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, text_dim=4096, freq_dim=256,
              ffn_dim=13824, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
              rope_max_seq_len=1024, out_channels=16)
CLIP_VIT_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=1, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
UMT5_XXL_1_LAYER = dict(vocab_size=64, d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, dropout_rate=0.0)


def _real_folder(folder: Path, pipeline_class: str, transformers: dict, flow_shift: float, index: dict,
                 with_clip: bool) -> Path:
    from transformers import CLIPVisionModelWithProjection, UMT5Config, UMT5EncoderModel

    from benchmarks.random_wan import word_tokenizer

    folder = Path(folder)
    torch.manual_seed(0)
    parts = {"vae": AutoencoderKLWan().to(torch.bfloat16), "scheduler": scheduler(flow_shift)}  # loads in float32
    tokenizer = word_tokenizer()
    tokenizer.model_max_length = 512
    parts["tokenizer"] = tokenizer
    for name, config in transformers.items():
        parts[name] = WanTransformer3DModel(**config).to(torch.bfloat16)
    parts["text_encoder"] = UMT5EncoderModel(UMT5Config(**UMT5_XXL_1_LAYER)).to(torch.bfloat16)
    if with_clip:
        parts["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H14)).to(torch.bfloat16)
        # CLIP ViT-H/14's processor: 224 px, bicubic, OpenAI's mean and std.
        parts["image_processor"] = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    classes = {"vae": ["diffusers", "AutoencoderKLWan"], "scheduler": ["diffusers", "UniPCMultistepScheduler"],
               "tokenizer": ["transformers", type(tokenizer).__name__], "text_encoder": ["transformers", "UMT5EncoderModel"],
               "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
               "image_processor": ["transformers", "CLIPImageProcessor"]}
    model_index = {"_class_name": pipeline_class, "_diffusers_version": "0.35.0.dev0", **index}
    for name in parts:
        model_index[name] = classes.get(name, ["diffusers", "WanTransformer3DModel"])
    if pipeline_class == "WanImageToVideoPipeline":
        model_index.setdefault("image_encoder", [None, None])
        model_index.setdefault("image_processor", [None, None])
        model_index.setdefault("transformer_2", [None, None])
        model_index.setdefault("boundary_ratio", None)
        model_index.setdefault("expand_timesteps", False)
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    processor = folder / "image_processor" / "preprocessor_config.json"
    if processor.is_file():  # transformers 5 without torchvision names its PIL fallback; the hub's name is this
        config = json.loads(processor.read_text())
        config["image_processor_type"] = "CLIPImageProcessor"
        processor.write_text(json.dumps(config, indent=2))
    return folder


def _i2v_14b(last_frame: bool) -> dict:
    return dict(WAN14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120,
                pos_embed_seq_len=2 * 257 if last_frame else None)


def real_wan21_i2v_480p(folder: Path) -> Path:
    return _real_folder(folder, "WanImageToVideoPipeline", {"transformer": _i2v_14b(False)}, 3.0, {}, True)


def real_wan21_i2v_720p(folder: Path) -> Path:
    return _real_folder(folder, "WanImageToVideoPipeline", {"transformer": _i2v_14b(False)}, 3.0, {}, True)


def real_wan21_flf2v_720p(folder: Path) -> Path:
    return _real_folder(folder, "WanImageToVideoPipeline", {"transformer": _i2v_14b(True)}, 16.0, {}, True)


def real_wan22_t2v_a14b(folder: Path) -> Path:
    expert = dict(WAN14B, in_channels=16)
    return _real_folder(folder, "WanPipeline", {"transformer": expert, "transformer_2": expert}, 3.0,
                        {"boundary_ratio": 0.875, "expand_timesteps": False}, False)


def real_wan22_i2v_a14b(folder: Path) -> Path:
    expert = dict(WAN14B, in_channels=36)
    return _real_folder(folder, "WanImageToVideoPipeline", {"transformer": expert, "transformer_2": expert}, 3.0,
                        {"boundary_ratio": 0.9}, False)


REAL_CONFIGS: dict[str, Callable[[Path], Path]] = {
    "wan2.1-i2v-14b-480p": real_wan21_i2v_480p,
    "wan2.1-i2v-14b-720p": real_wan21_i2v_720p,
    "wan2.1-flf2v-14b-720p": real_wan21_flf2v_720p,
    "wan2.2-t2v-a14b": real_wan22_t2v_a14b,
    "wan2.2-i2v-a14b": real_wan22_i2v_a14b,
}
