"""Wan (2.1 text-to-video, 2.2 TI2V) and the embedded model, which shares its architecture.

Wan's causal VAE (`AutoencoderKLWan`, 8x4 or 16x4) with per-channel latent statistics, a DiT
(`WanTransformer3DModel`) predicting the flow velocity, UMT5 text embeddings with zeroed padding (any
transformers encoder for the embedded model), and a flow-matching scheduler (UniPC by default). Known frames
are held by latent replacement, or by per-token timesteps where the checkpoint was trained with them
(Wan 2.2's `expand_timesteps`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from pipelines.families.base import Conditions, Configs, Denoiser, Family, Geometry, Schedule
from pipelines.loading import ModelDefaults
from pipelines.request import GenerationRequest
from pipelines.samplers import make_scheduler
from pipelines.sampling import GuidedDenoiser
from pipelines.text import PromptEncoder
from pipelines.cpu_kernels import use_onednn_conv3d


def scheduled(request: GenerationRequest, scheduler: Any, device: torch.device) -> Schedule:
    """`scheduler` set to the request's steps; SDEdit (Meng et al., arXiv 2108.01073) keeps the last
    init_strength of them, as diffusers' `get_timesteps` does."""
    scheduler.set_timesteps(request.steps, device=device)
    start = 0
    if request.init_strength is not None:
        kept = min(int(request.steps * request.init_strength), request.steps)
        start = (request.steps - kept) * scheduler.order
    scheduler.set_begin_index(start)
    timesteps = scheduler.timesteps[start:]
    return Schedule(scheduler, timesteps, scheduler.sigmas[start:start + len(timesteps)].to(device))


class Wan(Family):
    name = "wan"
    label = "Wan"
    pipelines = ("WanPipeline", "WanVideoToVideoPipeline")
    samplers = ("default", "unipc", "euler")
    strategies = ("replace", "per_token")

    @classmethod
    def read_geometry(cls, configs: Configs) -> Geometry:
        vae, transformer = configs["vae"], configs["transformer"]
        return Geometry(int(vae.get("scale_factor_spatial", 8)), int(vae.get("scale_factor_temporal", 4)),
                        tuple(transformer.get("patch_size", (1, 2, 2))), int(vae.get("z_dim", 16)))

    @classmethod
    def read_defaults(cls, configs: Configs) -> ModelDefaults:
        # Wan 2.1's call defaults; a checkpoint trained with per-token timesteps holds frames that way.
        per_token = bool(configs.index.get("expand_timesteps"))
        return ModelDefaults(conditioning_strategy="per_token" if per_token else "replace")

    def __init__(self, parts, configs, defaults, device, low_vram=False):
        super().__init__(parts, configs, defaults, device, low_vram)
        self.transformer = parts["transformer"].eval()
        self.text_encoder = parts["text_encoder"].eval()
        self.scheduler = parts["scheduler"]  # the checkpoint's; each pass gets a fresh copy
        self.prompts = PromptEncoder(parts["tokenizer"], self.text_encoder, defaults.max_sequence_length)
        vae = self.vae.eval()
        z = self.geometry.channels
        self._latent_mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self._latent_inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        use_onednn_conv3d(vae)  # only takes effect while the VAE runs in float32 on the CPU
        if self.low_vram:
            vae.enable_tiling()

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [self.transformer]

    def check(self, request: GenerationRequest) -> None:
        # Wan's rotary embedding has `rope_max_seq_len` positions per axis (1024 in Wan's checkpoints); past
        # them diffusers fails with a reshape error that names no setting.
        positions = getattr(self.transformer.config, "rope_max_seq_len", None)
        if not positions:
            return
        g = self.geometry
        pt, ph, pw = g.patch
        latent_frames = (request.num_frames - 1) // g.temporal + 1
        most_frames = (positions * pt - 1) * g.temporal + 1
        if latent_frames > positions * pt:
            raise ValueError(f"num_frames = {request.num_frames} is more than this model can place in time: "
                             f"at most {most_frames} frames ({most_frames / request.fps:.4g} s at {request.fps:g} fps)")
        for name, value, patch in (("height", request.height, ph), ("width", request.width, pw)):
            if value // (g.spatial * patch) > positions:
                raise ValueError(f"{name} = {value} is more than this model can place: at most "
                                 f"{positions * g.spatial * patch} pixels")

    # ---- latents <-> pixels ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        pixels = torch.tensor(frames).float() / 255.0 * 2.0 - 1.0  # (F, H, W, 3)
        pixels = pixels.permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, F, H, W)
        with self.resident(self.vae):
            posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        latents = posterior.mode().float()  # (1, C, F', h, w)
        return (latents - self._latent_mean.to(latents.device)) * self._latent_inv_std.to(latents.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        latents = latents.to(self.device, torch.float32)
        latents = latents / self._latent_inv_std.to(latents.device) + self._latent_mean.to(latents.device)
        with self.resident(self.vae):
            video = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        video = (video[0].float() / 2 + 0.5).clamp(0, 1)
        return (video.permute(1, 2, 3, 0).cpu().numpy() * 255).round().astype(np.uint8)  # (F, H, W, 3)

    # ---- sampling --------------------------------------------------------------------------------------
    def encode_text(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Low-VRAM encodes text on the CPU, as Wan's own --t5_cpu does: UMT5-XXL alone is ~11 GB in bf16,
        # more than the whole budget, and it runs once per prompt (the embeddings are cached).
        dtype = self.transformer.dtype
        cond = self.prompts(request.prompt).to(self.device, dtype)  # (1, L, D)
        guided = request.guidance_scale > 1.0
        uncond = self.prompts(request.negative_prompt).to(self.device, dtype) if guided else None
        return cond, uncond

    def schedule(self, request: GenerationRequest, shape: tuple[int, ...], generator=None) -> Schedule:
        return scheduled(request, make_scheduler(request.sampler, self.scheduler, request.shift), self.device)

    def prepare(self, request, shape, placed, generator) -> Conditions:
        # Drawn on the CPU from the seed, as diffusers' randn_tensor draws it.
        return Conditions(randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32))

    def denoiser(self, request: GenerationRequest, text, conditions: Conditions, batched: bool) -> Denoiser:
        cond, uncond = text
        return GuidedDenoiser(self.transformer, cond, uncond, request.guidance_scale, batched=batched)
