"""Stable Video Diffusion components built in the tests (no downloads): tiny discriminating ones for parity, and
folders at the published configurations (REAL_CONFIGS) with random weights.

Tiny weights are made discriminating: with PyTorch's default initialisation the added time ids (fps - 1, motion
bucket, noise augmentation) and the image embedding barely move a UNet's output, so a parity test would pass
with an off-by-one in fps. Their projections are scaled up until each changes the sampled latents clearly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                       UNetSpatioTemporalConditionModel)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

# stabilityai/stable-video-diffusion-img2vid(-xt)/scheduler/scheduler_config.json
SCHEDULER_CONFIG = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, interpolation_type="linear",
                        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", trained_betas=None,
                        use_karras_sigmas=True)
# feature_extractor/preprocessor_config.json: OpenAI CLIP's normalisation at 224 px
PROCESSOR_CONFIG = dict(crop_size={"height": 224, "width": 224}, do_center_crop=True, do_normalize=True,
                        do_rescale=True, do_resize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                        image_std=[0.26862954, 0.26130258, 0.27577711], resample=3, rescale_factor=1 / 255,
                        size={"shortest_edge": 224})


def feature_extractor():
    """The CLIP image processor; transformers 5 without torchvision hands out CLIPImageProcessorPil for it."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(**PROCESSOR_CONFIG)


def _sharpen(module: torch.nn.Module, factor: float) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(factor)


def tiny_svd(num_frames: int = 6) -> dict:
    """SVD's shapes in miniature: an 8x VAE (four levels) with 4 latent channels, a two-level spatio-temporal
    UNet taking 8 channels (noise + still) and 3 added time ids, a CLIP vision tower at 224 px."""
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",) * 4)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, layers_per_block=1, cross_attention_dim=32,
        num_attention_heads=(2, 4), num_frames=num_frames, in_channels=8, out_channels=4)
    # Added time ids and the image embedding must each move the output (see the module's docstring).
    _sharpen(unet.add_embedding, 6.0)
    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            _sharpen(module, 4.0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, hidden_act="gelu"))
    _sharpen(image_encoder.visual_projection, 8.0)
    return {"vae": vae.eval(), "unet": unet.eval(), "image_encoder": image_encoder.eval(),
            "scheduler": EulerDiscreteScheduler(**SCHEDULER_CONFIG), "feature_extractor": feature_extractor()}


def save_svd_folder(components: dict, folder: Path, studio: dict | None = None) -> Path:
    """Save as StableVideoDiffusionPipeline.save_pretrained lays it out, naming the image processor
    CLIPImageProcessor as the published folders do (transformers 5 without torchvision saves its
    CLIPImageProcessorPil fallback under that class's own name; either loads)."""
    StableVideoDiffusionPipeline(**components).save_pretrained(folder)
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    processor = folder / "feature_extractor" / "preprocessor_config.json"
    config = json.loads(processor.read_text())
    config["image_processor_type"] = "CLIPImageProcessor"
    processor.write_text(json.dumps(config, indent=2))
    if studio:
        (folder / "studio.json").write_text(json.dumps(studio))
    return folder


def real_svd(num_frames: int) -> Callable[[Path], Path]:
    """A builder of a folder at SVD's published configuration (SVD: 14 frames, SVD-XT: 25), random weights.

    Published: UNet block_out_channels (320, 640, 1280, 1280), heads (5, 10, 20, 20), cross-attention 1024,
    added time embedding 256 x 3 ids, in 8 / out 4, layers_per_block 2; VAE (128, 256, 512, 512), 2 layers per
    block, 4 latent channels, scaling 0.18215; CLIP ViT-H/14 vision tower (width 1280, 16 heads, MLP 5120, 32
    layers, projection 1024). Shrunk for CPU memory only in depth: the UNet's layers_per_block 2 -> 1 (6 GB ->
    about 3 GB float32 is still the most of the folder), the CLIP tower's 32 layers -> 2."""

    def build(folder: Path) -> Path:
        torch.manual_seed(0)
        unet = UNetSpatioTemporalConditionModel(
            sample_size=96, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, layers_per_block=1,
            cross_attention_dim=1024, transformer_layers_per_block=1, num_attention_heads=(5, 10, 20, 20),
            num_frames=num_frames)
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
            scaling_factor=0.18215, force_upcast=True)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=2, num_attention_heads=16,
            image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5))
        parts = {"vae": vae.eval(), "unet": unet.eval(), "image_encoder": image_encoder.eval(),
                 "scheduler": EulerDiscreteScheduler(**SCHEDULER_CONFIG), "feature_extractor": feature_extractor()}
        return save_svd_folder(parts, folder)

    return build


REAL_CONFIGS: dict[str, Callable[[Path], Path]] = {"svd": real_svd(14), "svd-xt": real_svd(25)}
