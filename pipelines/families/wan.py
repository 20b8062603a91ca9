"""Wan (2.1 text-to-video and image-to-video, 2.2 TI2V and A14B) and the embedded model, which shares its
architecture (Wan team, "Wan: Open and Advanced Large-Scale Video Generative Models", arXiv 2503.20314).

Wan's causal VAE (`AutoencoderKLWan`, 8x4 or 16x4) with per-channel latent statistics, a DiT
(`WanTransformer3DModel`) predicting the flow velocity, UMT5 text embeddings with zeroed padding (any
transformers encoder for the embedded model), and a flow-matching scheduler (UniPC by default). Known frames
are held by latent replacement, or by per-token timesteps where the checkpoint was trained with them
(Wan 2.2's `expand_timesteps`).

Wan 2.2 A14B runs two experts of the same architecture (its mixture of experts): `transformer` while the
step's timestep is at or above `boundary_ratio` x the scheduler's training timesteps (the high-noise part,
where the clip's layout is decided), `transformer_2` below it, each with its own guidance scale.

The image-to-video checkpoints (`WanImageToVideoPipeline`: Wan 2.1 I2V 14B 480p/720p, FLF2V 14B, Wan 2.2 I2V
A14B) hold their stills themselves: the VAE encoding of [first still, zeros..., last still] and a 4-channel
mask of the known frames are concatenated to the latents on every step, and Wan 2.1's also read the stills'
CLIP ViT-H/14 hidden states through an image cross-attention (`encoder_hidden_states_image`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from pipelines.families.base import Conditions, Configs, Denoiser, Family, Geometry, Schedule
from pipelines.loading import ModelDefaults
from pipelines.modes import SPECS
from pipelines.request import GenerationRequest
from pipelines.samplers import make_scheduler
from pipelines.sampling import GuidedDenoiser, HeldLatents, call_wan
from pipelines.text import PromptEncoder
from pipelines.cpu_kernels import use_onednn_conv3d

# Wan 2.1 I2V's cross-attention splits its image tokens off the front of the context by counting back 512 text
# tokens (diffusers' WanAttnProcessor hard-codes it), so such a checkpoint must read exactly 512.
IMAGE_CONTEXT_TEXT_TOKENS = 512


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


class TwoExperts:
    """Wan 2.2 A14B's mixture of experts: the high-noise expert's guided output while the step's timestep is
    at or above `boundary` (on the scheduler's 0-1000 scale), the low-noise expert's below it, as diffusers'
    Wan pipelines switch. Under per-token timesteps the step's own timestep is the largest one (held tokens
    carry lower ones)."""

    def __init__(self, high: GuidedDenoiser, low: GuidedDenoiser, boundary: float):
        self.high, self.low, self.boundary = high, low, boundary
        self.cached = high.cached or low.cached

    def expert(self, timestep: torch.Tensor) -> GuidedDenoiser:
        return self.high if timestep.max() >= self.boundary else self.low

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.expert(timestep)(latents, timestep)


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

    @classmethod
    def required(cls, configs: Configs) -> tuple[str, ...]:
        experts = ("transformer_2",) if configs.index.get("boundary_ratio") is not None else ()
        return super().required(configs) + experts

    def __init__(self, parts, configs, defaults, device, memory="full"):
        super().__init__(parts, configs, defaults, device, memory)
        self.hold_text_model(PromptEncoder)
        # Wan 2.2 A14B: the low-noise expert and where it takes over (diffusers: boundary_ratio x the
        # scheduler's num_train_timesteps, compared with each step's timestep).
        ratio = configs.index.get("boundary_ratio")
        self.transformer_2 = parts.get("transformer_2") if ratio is not None else None
        if self.transformer_2 is not None:
            self.transformer_2.eval()
        self.boundary = (float(ratio) * self.scheduler.config.num_train_timesteps
                         if self.transformer_2 is not None else None)
        vae = self.vae.eval()
        z = self.geometry.channels
        self._latent_mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self._latent_inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        use_onednn_conv3d(vae)  # only takes effect while the VAE runs in float32 on the CPU

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [self.transformer] + ([self.transformer_2] if self.transformer_2 is not None else [])

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
        return self._encode_pixels(pixels.permute(3, 0, 1, 2).unsqueeze(0))  # (1, 3, F, H, W)

    @torch.no_grad()
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, 3, F, H, W) pixels in [-1, 1] -> (1, C, F', h, w) normalised latents (the posterior mode)."""
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        latents = posterior.mode().float()  # (1, C, F', h, w)
        return (latents - self._latent_mean.to(latents.device)) * self._latent_inv_std.to(latents.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        latents = latents.to(self.device, torch.float32)
        latents = latents / self._latent_inv_std.to(latents.device) + self._latent_mean.to(latents.device)
        video = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        video = (video[0].float() / 2 + 0.5).clamp(0, 1)
        return (video.permute(1, 2, 3, 0).cpu().numpy() * 255).round().astype(np.uint8)  # (F, H, W, 3)

    # ---- sampling --------------------------------------------------------------------------------------
    def encode_text(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        # UMT5-XXL alone is ~11 GB in bf16: under memory modes low and minimal it is offloaded like every model
        # (pipelines/memory.py), and it runs once per prompt (the embeddings are cached).
        dtype = self.transformer.dtype
        cond = self.prompts(request.prompt).to(self.device, dtype)  # (1, L, D)
        guided = request.guidance_scale > 1.0
        uncond = self.prompts(request.negative_prompt).to(self.device, dtype) if guided else None
        return cond, uncond

    def _low_noise_guidance(self, request: GenerationRequest) -> float:
        """The low-noise expert's guidance scale (diffusers: guidance_scale_2, else guidance_scale)."""
        if self.transformer_2 is None or request.guidance_scale_2 is None:
            return request.guidance_scale
        return request.guidance_scale_2

    def schedule(self, request: GenerationRequest, shape: tuple[int, ...], generator=None) -> Schedule:
        return scheduled(request, make_scheduler(request.sampler, self.scheduler, request.shift), self.device)

    def prepare(self, request, shape, placed, generator) -> Conditions:
        from diffusers.utils.torch_utils import randn_tensor  # here: the registry imports this module early

        # Drawn on the CPU from the seed, as diffusers' randn_tensor draws it.
        return Conditions(randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32))

    def _guided(self, request: GenerationRequest, transformer: torch.nn.Module, scale: float, text, batched: bool,
                call=call_wan) -> GuidedDenoiser:
        cond, uncond = text
        # Whether to guide follows guidance_scale alone, for both experts, as in diffusers: with guidance_scale
        # above 1 the low-noise expert is guided at guidance_scale_2 whatever its value.
        return GuidedDenoiser(transformer, cond, uncond, scale, batched=batched, call=call,
                              guided=request.guidance_scale > 1.0)

    def denoiser(self, request: GenerationRequest, text, conditions: Conditions, batched: bool) -> Denoiser:
        return self._experts(request, text, batched, call_wan)

    def _experts(self, request: GenerationRequest, text, batched: bool, call) -> Denoiser:
        high = self._guided(request, self.transformer, request.guidance_scale, text, batched, call)
        if self.transformer_2 is None:
            return high
        low = self._guided(request, self.transformer_2, self._low_noise_guidance(request), text, batched, call)
        return TwoExperts(high, low, self.boundary)


class WanImageToVideo(Wan):
    """Wan's image-to-video checkpoints (`WanImageToVideoPipeline`), which hold their stills themselves.

    The still (and, on a checkpoint trained for it, a last still) enters the denoiser two ways on every step,
    as diffusers' pipeline builds them: channel-concatenated to the latents, a 4-channel mask of the known
    frames (one channel per frame a latent covers; the first latent covers frame 0 alone, so its four are
    that frame repeated) and the VAE encoding of [first still, zeros..., last still] (posterior mode); and on
    Wan 2.1, the stills' CLIP ViT-H/14 penultimate hidden states (257 tokens each) through the image
    cross-attention. A folder of this pipeline class without channel concatenation (Wan 2.2 TI2V saved with
    `expand_timesteps`) runs as plain Wan, holding its first frame by per-token timesteps.
    """

    name = "wan-i2v"
    label = "Wan image-to-video"
    pipelines = ("WanImageToVideoPipeline",)

    @classmethod
    def concatenates(cls, configs: Configs) -> bool:
        """Whether the denoiser reads the stills concatenated on channels (its input is wider than a latent)."""
        transformer, vae = configs["transformer"], configs["vae"]
        return int(transformer.get("in_channels", 16)) != int(vae.get("z_dim", 16))

    @classmethod
    def reads_images(cls, configs: Configs) -> bool:
        """Whether the denoiser reads CLIP image states (Wan 2.1 I2V and FLF2V; Wan 2.2 I2V A14B does not)."""
        return configs["transformer"].get("image_dim") is not None

    @classmethod
    def takes_last_frame(cls, configs: Configs) -> bool:
        """Whether the checkpoint was made to hold a last still too: Wan 2.1 FLF2V, whose image embedder has
        positions for two images' tokens (`pos_embed_seq_len`), or Wan 2.2 I2V A14B, which reads no image
        states, only the frame mask (diffusers' pipeline and ComfyUI's first-last-frame workflow use it so).
        Wan 2.1 I2V 480p/720p cannot: two images' states do not fit its image embedder."""
        if not cls.reads_images(configs):
            return True
        return configs["transformer"].get("pos_embed_seq_len") is not None

    @classmethod
    def needs_last_frame(cls, configs: Configs) -> bool:
        """Whether the checkpoint reads two images' states (Wan 2.1 FLF2V): it takes a first and a last still,
        never one alone (diffusers' pipeline fails on a single image for it, as Wan's own flf2v task needs both)."""
        return cls.reads_images(configs) and configs["transformer"].get("pos_embed_seq_len") is not None

    @classmethod
    def read_modes(cls, configs: Configs) -> dict[str, str | None]:
        if not cls.concatenates(configs):
            return super().read_modes(configs)
        modes: dict[str, str | None] = {mode: None for mode in SPECS}
        use = "connect two stills" if cls.needs_last_frame(configs) else "use animate"
        modes["t2v"] = ("this image-to-video checkpoint needs a still to start from (its denoiser reads the "
                        f"image at frame 0 on every step): {use}")
        modes["image"] = "this image-to-video checkpoint makes clips from a still, not images from a prompt"
        modes["restyle"] = ("this image-to-video checkpoint starts from a still, not from footage to repaint: "
                            "restyle needs a text-to-video checkpoint")
        # Extend and loop would hold one frame of the clip: its motion would not carry over the join.
        one_frame = "it holds one still, not a clip's last frames, so the clip's motion would not carry on"
        modes["extend"] = f"{one_frame}: animate the clip's last frame, or use a text-to-video checkpoint"
        modes["loop"] = f"{one_frame} across the joins: use a text-to-video checkpoint"
        if cls.needs_last_frame(configs):
            modes["animate"] = ("this first-last-frame checkpoint reads two stills' image states, a first and a last: "
                                "connect two stills (an image-to-video checkpoint animates one)")
        if not cls.takes_last_frame(configs):
            modes["connect"] = ("this checkpoint was trained on a first frame only; a first-last-frame checkpoint "
                                "(wan2.1-flf2v-14b-720p, wan2.2-i2v-a14b) connects two stills")
        return modes

    @classmethod
    def read_defaults(cls, configs: Configs) -> ModelDefaults:
        # WanImageToVideoPipeline's call defaults; connect holds each clip's facing frame, a still.
        if not cls.concatenates(configs):
            return super().read_defaults(configs)
        return ModelDefaults(context_frames=1)

    @classmethod
    def required(cls, configs: Configs) -> tuple[str, ...]:
        images = ("image_encoder", "image_processor") if cls.reads_images(configs) else ()
        return super().required(configs) + images

    def __init__(self, parts, configs, defaults, device, memory="full"):
        super().__init__(parts, configs, defaults, device, memory)
        self.concat = self.concatenates(configs)
        self.holds_stills = self.concat
        self.image_encoder = parts.get("image_encoder") if self.reads_images(configs) else None
        if self.image_encoder is not None:
            self.image_encoder.eval()
        self.image_processor = parts.get("image_processor")
        self._prepared: tuple[Any, dict[str, Any]] | None = None  # the last stills' condition, by content

    def check(self, request: GenerationRequest) -> None:
        super().check(request)
        if not self.concat:
            return
        if self.image_encoder is not None and self.defaults.max_sequence_length != IMAGE_CONTEXT_TEXT_TOKENS:
            raise ValueError(f"max_sequence_length = {self.defaults.max_sequence_length} is not valid for this "
                             f"model: {IMAGE_CONTEXT_TEXT_TOKENS} (its image cross-attention finds the image tokens "
                             f"by counting back {IMAGE_CONTEXT_TEXT_TOKENS} text tokens)")
        self._check_stills(request, [(item, item.source_count) for item in request.conditioning])

    def _check_stills(self, request: GenerationRequest, items: list) -> None:
        """Items must be single stills: one at frame 0 and, where the checkpoint takes one, one at the last frame.
        `items`: (ConditioningItem, frames it selects or None when not yet known)."""
        last = request.num_frames - 1
        ends = "a still at frame 0" + (f" and one at the last frame ({last})" if self.needs_last_frame(self.configs)
                                       else f" and perhaps one at the last frame ({last})"
                                       if self.takes_last_frame(self.configs) else "")
        for item, count in items:
            if count is not None and count != 1:
                raise ValueError(f"conditioning {item.source!r}: {count} frames is not valid for this image-to-video "
                                 f"checkpoint: 1 (it holds single stills: {ends}; for connect, context_frames = 1)")
            if item.strength != 1.0:
                raise ValueError(f"conditioning.strength = {item.strength:g} is not valid for this model: 1 (it "
                                 "holds its stills fully, through the frame mask it was trained with)")
            if item.frame_index not in (0, last) or (item.frame_index == last and last > 0 and
                                                     not self.takes_last_frame(self.configs)):
                raise ValueError(f"conditioning {item.source!r} at frame {item.frame_index} is not valid for this "
                                 f"checkpoint: it holds {ends}")
        at = [item.frame_index for item, _ in items]
        needs_last = self.needs_last_frame(self.configs)
        if 0 not in at or len(at) != len(set(at)) or (needs_last and (last == 0 or last not in at)):
            raise ValueError(f"conditioning is not valid for this image-to-video checkpoint: it needs {ends}, one "
                             f"still each (got items at frames {sorted(at) or 'none'})")

    def held(self, clean, hold, conditions, strategy) -> HeldLatents | None:
        # The denoiser reads the stills through the concatenated condition: nothing is replaced while sampling.
        return None if self.concat else super().held(clean, hold, conditions, strategy)

    def prepare(self, request, shape, placed, generator) -> Conditions:
        conditions = super().prepare(request, shape, placed, generator)  # the noise first, as diffusers draws it
        if not self.concat:
            return conditions
        self._check_stills(request, [(p.item, p.count) for p in placed])
        first = next(p for p in placed if p.item.frame_index == 0)
        last = next((p for p in placed if p.item.frame_index > 0), None)
        stills = [first.source_frames[first.start]] + ([last.source_frames[last.start]] if last else [])  # (H, W, 3)
        key = (tuple(shape), request.num_frames, bool(last), hashlib.sha1(b"".join(s.tobytes() for s in stills)).digest())
        if self._prepared is None or self._prepared[0] != key:  # once per request, not per candidate
            self._prepared = (key, self._condition(request, shape, stills))
        conditions.extras.update(self._prepared[1])
        return conditions

    @torch.no_grad()
    def _condition(self, request: GenerationRequest, shape: tuple[int, ...], stills: list[np.ndarray]
                   ) -> dict[str, Any]:
        """The channel-concatenated condition (1, 4 + C, F', h, w) and the CLIP image states (n, 257, 1280), as
        diffusers' WanImageToVideoPipeline builds them."""
        t = self.geometry.temporal
        _, _, latent_frames, h, w = shape
        frames = request.num_frames
        pixels = torch.zeros(1, 3, frames, request.height, request.width)  # (1, 3, F, H, W): zeros are unknown
        for index, still in zip((0, frames - 1), stills):
            pixels[:, :, index] = torch.tensor(still).float().permute(2, 0, 1) / 255.0 * 2.0 - 1.0
        latents = self._encode_pixels(pixels)  # (1, C, F', h, w)
        mask = torch.zeros(1, 1, frames, h, w)
        mask[:, :, 0] = 1
        if len(stills) > 1:
            mask[:, :, -1] = 1
        # The first latent covers frame 0 alone: its t mask channels all repeat frame 0.
        mask = torch.cat([mask[:, :, :1].repeat_interleave(t, dim=2), mask[:, :, 1:]], dim=2)  # (1, 1, F + t - 1, h, w)
        mask = mask.view(1, latent_frames, t, h, w).transpose(1, 2)  # (1, t, F', h, w)
        extras: dict[str, Any] = {"condition": torch.cat([mask.to(latents), latents], dim=1)}  # (1, t + C, F', h, w)
        if self.image_encoder is not None:
            from PIL import Image

            inputs = self.image_processor(images=[Image.fromarray(s) for s in stills], return_tensors="pt")
            states = self.image_encoder(pixel_values=inputs.pixel_values.to(self.device, self.image_encoder.dtype),
                                        output_hidden_states=True).hidden_states[-2]  # (n, 257, 1280)
            extras["image_embeds"] = states.to(self.device, self.transformer.dtype)
        return extras

    def denoiser(self, request: GenerationRequest, text, conditions: Conditions, batched: bool) -> Denoiser:
        if not self.concat:
            return super().denoiser(request, text, conditions, batched)
        condition = conditions.extras["condition"]  # (1, t + C, F', h, w)
        images = conditions.extras.get("image_embeds")  # (n, 257, 1280) or None

        def call(transformer, latents, timestep, embeds):
            batch = latents.shape[0]
            model_input = torch.cat([latents, condition.to(latents).expand(batch, -1, -1, -1, -1)], dim=1)
            # Each batch entry reads its n images' states in turn ((B * n, 257, D): FLF2V's embedder pairs them).
            image = images.repeat(batch, 1, 1) if images is not None else None
            return transformer(hidden_states=model_input.to(transformer.dtype), timestep=timestep,
                               encoder_hidden_states=embeds, encoder_hidden_states_image=image, return_dict=False)[0]

        return self._experts(request, text, batched, call)
