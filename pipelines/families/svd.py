"""Stable Video Diffusion and SVD-XT (Blattmann et al., arXiv 2311.15127): a still becomes a short clip.

What differs from the text-to-video families, as diffusers' `StableVideoDiffusionPipeline` runs it:
- no text: the still's CLIP ViT-H image embedding (`image_encoder`, preprocessed as diffusers does: an
  antialiased resize to 224 px, then the feature extractor's normalisation) is the UNet's one cross-attention
  token, zeros for the unguided branch;
- the still's VAE latent, noise-augmented first (`noise_aug_strength` times noise drawn from the candidate's
  generator, before the starting noise), is concatenated on channels to every frame (zeros unguided): the
  denoiser holds the still itself, so nothing is held by latent replacement;
- micro-conditioning through added time ids: fps - 1 (the model was trained on fps - 1), the motion bucket and
  the noise augmentation strength;
- a `UNetSpatioTemporalConditionModel` (patch 1: the grid is the VAE's 8 px), `AutoencoderKLTemporalDecoder`
  (8x spatial, no temporal compression, so every frame count is valid; scaling 0.18215; its decoder mixes the
  frames it decodes together, so it decodes a whole window at once, as diffusers does by default);
- EDM sampling (Karras et al., arXiv 2206.00364) with diffusers' `EulerDiscreteScheduler`: Karras sigmas from
  0.002 to 700, v-prediction, continuous timesteps (0.25 log sigma), the model input scaled by
  1 / sqrt(sigma^2 + 1), and classifier-free guidance that rises linearly over the frames from
  `min_guidance_scale` at the first to `guidance_scale` at the last.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.families.base import Conditions, Configs, Denoiser, Family, Geometry, Schedule
from pipelines.loading import ModelDefaults
from pipelines.modes import SPECS
from pipelines.request import GenerationRequest
from pipelines.sampling import GuidedDenoiser

# diffusers is imported where it is used: the registry imports every family to read a model's configs
# (the CLI's argument checks, the studio's page), which must not wait seconds for diffusers to import.

LABEL = "Stable Video Diffusion"
# StableVideoDiffusionPipeline's call defaults, for a folder that names none (no registry entry, no studio.json).
PIPELINE_DEFAULTS = dict(width=1024, height=576, fps=7.0, steps=25, guidance_scale=3.0, motion_bucket_id=127,
                         noise_aug_strength=0.02, min_guidance_scale=1.0)
CLIP_SIZE = 224  # the image encoder's input, each side (the pipeline resizes to it whatever the checkpoint)
WHY_NOT = {
    "t2v": f"{LABEL} takes no prompt: it animates a still",
    "image": f"{LABEL} takes no prompt: it animates a still, it does not draw one",
    "extend": f"{LABEL} starts a clip from one still: it cannot continue a clip",
    "loop": f"{LABEL} starts a clip from one still: it cannot hold a clip's frames to loop it",
    "restyle": f"{LABEL} takes no prompt: it animates a still, it cannot restyle footage",
    "connect": f"{LABEL} starts a clip from one still: it cannot hold a second clip to connect to",
}


class EDMSchedule(Schedule):
    """EDM's forward process (Karras et al., arXiv 2206.00364): x_sigma = x0 + sigma eps, with sigma the step's
    noise level in the scheduler's own units (0.002 to 700 for Stable Video Diffusion, not [0, 1]); sampling
    starts from the noise times the scheduler's `init_noise_sigma`, as diffusers' `prepare_latents` does. The
    scheduler's `step` is Euler's on the v-prediction; the denoiser scales its input (see `SVD.denoiser`)."""

    def __init__(self, scheduler: Any, timesteps: torch.Tensor, sigmas: torch.Tensor):
        super().__init__(scheduler, timesteps, sigmas)
        # The denoiser scales the model input itself (the scheduler's own scaling needs its step index), so the
        # scheduler's warning that scale_model_input was not called does not apply.
        scheduler.is_scale_input_called = True

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return clean + sigma * noise

    def start(self, noise: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
        if init is None:
            return noise * self.scheduler.init_noise_sigma
        return self.noise_to(init, noise, self.sigmas[0])


class SVD(Family):
    name = "svd"
    label = LABEL
    pipelines = ("StableVideoDiffusionPipeline",)
    samplers = ("default",)
    strategies = ()  # the still is concatenated on channels to every frame; nothing is held by replacement
    reads_text = False
    knobs = ("motion_bucket_id", "noise_aug_strength", "min_guidance_scale")

    # ---- from the configs alone -----------------------------------------------------------------------
    @classmethod
    def read_modes(cls, configs: Configs) -> dict[str, str | None]:
        return {mode: WHY_NOT.get(mode) for mode in SPECS}

    @classmethod
    def read_geometry(cls, configs: Configs) -> Geometry:
        vae = configs["vae"]
        spatial = 2 ** (len(vae.get("block_out_channels", (128, 256, 512, 512))) - 1)  # as diffusers computes it
        return Geometry(spatial, 1, (1, 1, 1), int(vae.get("latent_channels", 4)))

    @classmethod
    def read_defaults(cls, configs: Configs) -> ModelDefaults:
        # The frame count is the UNet's num_frames (14 for SVD, 25 for SVD-XT), as the pipeline takes it.
        return ModelDefaults(num_frames=int(configs["unet"].get("num_frames", 14)), **PIPELINE_DEFAULTS)

    @classmethod
    def required(cls, configs: Configs) -> tuple[str, ...]:
        return ("vae", "unet", "image_encoder", "feature_extractor", "scheduler")

    # ---- loaded -------------------------------------------------------------------------------------
    def __init__(self, parts, configs, defaults, device, memory="full"):
        super().__init__(parts, configs, defaults, device, memory)
        self.unet = parts["unet"].eval()
        self.image_encoder = parts["image_encoder"].eval()
        self.feature_extractor = parts["feature_extractor"]
        self.scheduler = parts["scheduler"]  # the checkpoint's; each pass gets a fresh copy
        self.vae.eval()
        self.scaling = float(self.vae.config.scaling_factor)

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [self.unet]

    def knob(self, request: GenerationRequest, name: str) -> Any:
        """A micro-conditioning value: the request's, else the model's default, else the pipeline's."""
        value = getattr(request, name)
        if value is None:
            value = getattr(self.defaults, name)
        return PIPELINE_DEFAULTS[name] if value is None else value

    def check(self, request: GenerationRequest) -> None:
        if len(request.conditioning) != 1 or request.conditioning[0].frame_index != 0:
            raise ValueError(f"conditioning = {len(request.conditioning)} items is not valid for this model: one still "
                             f"at frame 0 ({LABEL} animates a single image)")
        item = request.conditioning[0]
        if item.source_count != 1:
            raise ValueError(f"conditioning.source_count = {item.source_count!r} is not valid for this model: 1 (one "
                             f"still; {LABEL} animates a single image)")
        if item.strength != 1.0:
            raise ValueError(f"conditioning.strength = {item.strength:g} is not valid for this model: 1 ({LABEL} "
                             f"conditions every frame on the still; noise_aug_strength sets how loosely it follows it)")
        if request.shift is not None:
            raise ValueError(f"shift = {request.shift:g} is not valid for this model: None ({LABEL} samples on EDM "
                             "noise levels, which have no flow shift)")
        # A request's own min_guidance_scale was checked against its guidance_scale; the model's default is
        # checked here, where guidance is on (at guidance_scale <= 1 the ramp is not used).
        minimum = self.knob(request, "min_guidance_scale")
        if request.min_guidance_scale is None and request.guidance_scale > 1.0 and minimum > request.guidance_scale:
            raise ValueError(f"min_guidance_scale = {minimum:g} (the model's default) is more than guidance_scale = "
                             f"{request.guidance_scale:g}: the guidance rises from the first frame to the last, so set "
                             f"min_guidance_scale at most {request.guidance_scale:g}")

    def notes(self, request: GenerationRequest) -> list[str]:
        if request.prompt.strip() or request.negative_prompt.strip():
            return [f"{LABEL} reads no prompt: the prompt was ignored (the still and the motion settings steer it)"]
        return []

    # ---- latents <-> pixels ----------------------------------------------------------------------------
    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (F, 3, H, W) in [-1, 1], as diffusers' video processor prepares an image."""
        pixels = torch.from_numpy(np.array(frames)).float() / 255.0  # (F, H, W, 3): a writable copy
        return (pixels * 2.0 - 1.0).permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        posterior = self.vae.encode(self._pixels(frames).to(self.device, self.vae.dtype)).latent_dist
        latents = posterior.mode().float() * self.scaling  # (F, C, h, w)
        return latents.permute(1, 0, 2, 3).unsqueeze(0)  # (1, C, F, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        # Frames are decoded together: the temporal decoder mixes the frames of one call (diffusers' default
        # decode_chunk_size is the whole clip); the memory modes that save
        # the VAE's memory (pipelines/memory.py) decode in chunks of 8, as diffusers' docs suggest.
        latents = latents[0].permute(1, 0, 2, 3).to(self.device, torch.float32) / self.scaling  # (F, C, h, w)
        chunk = 8 if self.memory.tile_vae else latents.shape[0]
        video = torch.cat([self.vae.decode(part.to(self.vae.dtype), num_frames=part.shape[0]).sample
                           for part in latents.split(chunk)])  # (F, 3, H, W) in [-1, 1]
        video = (video.float() / 2 + 0.5).clamp(0, 1)
        return (video.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)  # (F, H, W, 3)

    # ---- sampling --------------------------------------------------------------------------------------
    def encode_text(self, request: GenerationRequest) -> None:
        return None  # no text: the still's image embedding is prepared with its latent (see prepare)

    @torch.no_grad()
    def _image_embedding(self, still: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] -> (1, 1, D) CLIP image embedding, preprocessed as diffusers' `_encode_image`:
        normalised to [-1, 1] for the antialiased resize to 224 px (as the original implementation), then back,
        and the feature extractor's mean and standard deviation."""
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        image = _resize_with_antialiasing(still * 2.0 - 1.0, (CLIP_SIZE, CLIP_SIZE))
        image = (image + 1.0) / 2.0  # (1, 3, 224, 224)
        pixels = self.feature_extractor(images=image, do_normalize=True, do_center_crop=False, do_resize=False,
                                        do_rescale=False, return_tensors="pt").pixel_values
        dtype = next(self.image_encoder.parameters()).dtype
        embeds = self.image_encoder(pixels.to(self.device, dtype)).image_embeds  # (1, D)
        return embeds.unsqueeze(1)  # (1, 1, D)

    def _scheduler(self, request: GenerationRequest) -> Any:
        """A fresh copy of the checkpoint's scheduler, set to the request's steps."""
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(request.steps, device=self.device)
        return scheduler

    def schedule(self, request: GenerationRequest, shape: tuple[int, ...], generator=None) -> Schedule:
        scheduler = self._scheduler(request)
        timesteps = scheduler.timesteps  # (S,) 0.25 log sigma
        return EDMSchedule(scheduler, timesteps, scheduler.sigmas[:len(timesteps)].to(self.device))

    @torch.no_grad()
    def prepare(self, request, shape, placed, generator) -> Conditions:
        """The still's embedding and noise-augmented latent, then the starting noise, drawn from `generator` in
        diffusers' order: the augmentation noise (in pixels) first, then the latents' noise."""
        from diffusers.utils.torch_utils import randn_tensor

        p = placed[0]
        still = p.source_frames[p.start:p.start + 1]  # (1, H, W, 3) uint8
        embeds = self._image_embedding(torch.from_numpy(np.array(still)).float().permute(0, 3, 1, 2)
                                       .div(255.0).to(self.device))  # (1, 1, D)
        pixels = self._pixels(still).to(self.device)  # (1, 3, H, W)
        noise_aug = float(self.knob(request, "noise_aug_strength"))
        pixels = pixels + noise_aug * randn_tensor(pixels.shape, generator=generator, device=self.device,
                                                   dtype=pixels.dtype)
        # Not scaled by the VAE's scaling factor: the UNet was trained on the raw posterior mode.
        image_latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()  # (1, C, h, w)
        _, channels, frames, height, width = shape
        # diffusers draws the noise as (B, F, C, H, W); drawn in that layout, then moved to (B, C, F, H, W). It
        # draws in the image embedding's dtype; the loop here runs in float32.
        noise = randn_tensor((1, frames, channels, height, width), generator=generator, device=self.device,
                             dtype=torch.float32).permute(0, 2, 1, 3, 4)  # (1, C, F, H, W)
        dtype = self.unet.dtype
        image_latents = image_latents.unsqueeze(1).repeat(1, frames, 1, 1, 1).to(dtype)  # (1, F, C, h, w)
        time_ids = torch.tensor([[request.fps - 1, self.knob(request, "motion_bucket_id"), noise_aug]],
                                dtype=dtype, device=self.device)  # (1, 3): trained on fps - 1
        return Conditions(noise, {"embeds": embeds.to(dtype), "image_latents": image_latents, "time_ids": time_ids})

    def held(self, clean, hold, conditions, strategy):
        return None  # the denoiser holds the still itself, on channels

    def denoiser(self, request: GenerationRequest, text, conditions: Conditions, batched: bool) -> Denoiser:
        extras = conditions.extras
        cond = (extras["embeds"], extras["image_latents"], extras["time_ids"])
        # The unguided branch sees neither the still's embedding nor its latent (zeros), with the same time ids.
        uncond = (torch.zeros_like(cond[0]), torch.zeros_like(cond[1]), cond[2])
        frames = extras["image_latents"].shape[1]
        minimum = float(self.knob(request, "min_guidance_scale"))
        ramp = torch.linspace(minimum, request.guidance_scale, frames, device=self.device)
        ramp = ramp.view(1, 1, frames, 1, 1)  # (1, 1, F, 1, 1): per frame, over (B, C, F, H, W)
        # Each timestep's sigma, to scale the model input as the scheduler's scale_model_input does.
        scheduler = self._scheduler(request)
        timesteps, sigmas = scheduler.timesteps.cpu(), scheduler.sigmas

        def call(unet: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, state: tuple) -> torch.Tensor:
            embeds, image_latents, time_ids = state
            sigma = sigmas[int((timesteps == timestep[0].cpu()).nonzero()[0, 0])].to(latents.device)
            scaled = latents / ((sigma**2 + 1) ** 0.5)  # (B, C, F, H, W)
            frames_first = scaled.permute(0, 2, 1, 3, 4).to(unet.dtype)  # (B, F, C, H, W), the UNet's layout
            model_input = torch.cat([frames_first, image_latents], dim=2)  # (B, F, 2C, H, W)
            output = unet(model_input, timestep, encoder_hidden_states=embeds, added_time_ids=time_ids,
                          return_dict=False)[0]  # (B, F, C, H, W)
            return output.permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)

        return GuidedDenoiser(self.unet, cond, uncond, lambda timestep: ramp, batched=batched, call=call,
                              guided=request.guidance_scale > 1.0)
