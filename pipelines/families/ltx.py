"""LTX-Video 0.9.x (HaCohen et al., "LTX-Video: Realtime Video Latent Diffusion", arXiv 2501.00103).

A DiT with patch 1 over a 32x spatial, 8x temporal VAE of 128 channels (`AutoencoderKLLTXVideo`, per-channel
latent mean/std), T5 text embeddings of 128 tokens whose attention mask the transformer reads, rotary positions
in real units (frames over fps, pixels), and rectified flow (`FlowMatchEulerDiscreteScheduler`). From 0.9.1 the
VAE decoder takes a timestep and performs the last denoising step itself.

Two diffusers pipelines run these checkpoints, and this adapter reproduces each where it applies:
- no held frames (t2v, image, restyle): `LTXPipeline`. Sigmas linspace(1, 1/steps) shifted by `mu` computed
  from the token count (0.9.0/0.9.1 schedulers use dynamic shifting and stretch to `shift_terminal`), rotary
  positions from `rope_interpolation_scale` (temporal/fps, spatial, spatial). Restyle (SDEdit, Meng et al.,
  arXiv 2108.01073) keeps the last init_strength of those steps, as LTXConditionPipeline's `denoise_strength`.
- held frames (animate, extend, loop, connect): `LTXConditionPipeline`. Its linear-quadratic timesteps,
  `video_coords` positions, T5 states encoded under the attention mask, a per-token conditioning mask (held
  tokens start from lerp(noise, clean, strength); hard-held ones are re-noised by `image_cond_noise_scale *
  t^2` every step), per-token timesteps min(t, (1 - mask) * 1000) and the scheduler's per-token step. A clip
  after frame 0 is placed as LTXConditionPipeline places it: its first two latents (its first frame alone,
  then the next `temporal`) become extra tokens at those frames, put before the window's tokens and dropped
  at the end, its later latents are held in the window. Checkpoints whose scheduler shifts dynamically (0.9.0,
  0.9.1) are refused by LTXConditionPipeline (`set_timesteps` needs `mu`); for them we keep the schedule they
  were released with, LTXPipeline's shifted linspace (what LTXImageToVideoPipeline runs them with), under the
  same per-token conditioning.
Where this differs from diffusers: conditioning latents are the posterior mode (encoded once for every
candidate) where LTXConditionPipeline draws a posterior sample (its draws are still taken from the generator,
so the noise that follows matches); the decode's noise (decode_noise_scale, the 0.9.1 decoder's injected
noise) comes from a fixed seed so decodes repeat. The "replace" strategy (RePaint) holds items in the window
only, on the same schedules.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines.families.base import Conditions, Configs, Denoiser, Family, Geometry, Schedule
from pipelines.loading import ModelDefaults
from pipelines.request import GenerationRequest
from pipelines.text import PromptEncoder
from pipelines.samplers import make_scheduler
from pipelines.sampling import GuidedDenoiser, HeldLatents

# diffusers is imported where it is used: the registry imports every family to read a model's configs
# (the CLI's argument checks, the studio's page), which must not wait seconds for diffusers to import.

# LTXConditionPipeline's call default. Diffusers' LTX notes suggest 0.025 for 0.9.1+ (and the 0.9.7 examples
# use 0); set `family.image_cond_noise_scale` to change it.
IMAGE_COND_NOISE_SCALE = 0.15
# Timestep-aware VAEs (0.9.1+): diffusers' LTX-Video notes say decode_timestep 0.05, and their examples pair it
# with decode_noise_scale 0.025. The pipelines' call defaults are 0 (a decode without the decoder's denoising).
DECODE_TIMESTEP = 0.05
DECODE_NOISE_SCALE = 0.025
DECODE_SEED = 0  # the decode's noise (decode_noise_scale, the decoder's injected noise) is fixed: decodes repeat


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def pack(latents: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, tokens, C * pt * ph * pw), LTX's token order (frame, row, column)."""
    from diffusers.pipelines.ltx.pipeline_ltx import LTXPipeline

    return LTXPipeline._pack_latents(latents, patch[1], patch[0])


def unpack(tokens: torch.Tensor, shape: tuple[int, ...], patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, tokens, D) -> (B, C, F, H, W) for a latent `shape` (.., F, H, W)."""
    from diffusers.pipelines.ltx.pipeline_ltx import LTXPipeline

    pt, ph, pw = patch
    f, h, w = shape[-3:]
    return LTXPipeline._unpack_latents(tokens, f // pt, h // ph, w // pw, ph, pt)


def token_values(values: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(1, 1, F, H, W) per-position values -> (1, tokens), one per patch."""
    pt, ph, pw = patch
    return values[:, 0, ::pt, ::ph, ::pw].flatten(1)


class LTXSchedule(Schedule):
    """A flow-matching pass that also takes LTXConditionPipeline's per-token step: when `LTXHeld` has set
    `token_timesteps` for the step, each token moves from its own noise level to the next lower level of the
    schedule (the scheduler's `per_token_timesteps`), and tokens whose cap (1 - mask) the step has not yet
    reached stay where they are."""

    def __init__(self, scheduler: Any, timesteps: torch.Tensor, sigmas: torch.Tensor, patch: tuple[int, int, int]):
        super().__init__(scheduler, timesteps, sigmas)
        self.patch = patch
        self.token_timesteps: torch.Tensor | None = None  # (B, tokens), for the coming step only
        self.token_mask: torch.Tensor | None = None  # (1, tokens) conditioning strengths

    def step(self, output: torch.Tensor, i: int, latents: torch.Tensor) -> torch.Tensor:
        t = self.timesteps[i]
        if self.token_timesteps is None:
            return self.scheduler.step(output, t, latents, return_dict=False)[0]
        x = pack(latents, self.patch)  # (B, N, C)
        # The per-token step's dt is (current - next) > 0, hence the velocity's sign, as in diffusers.
        stepped = self.scheduler.step(-pack(output, self.patch), t, x, per_token_timesteps=self.token_timesteps,
                                      return_dict=False)[0]
        moving = (t / 1000 - 1e-6 < (1.0 - self.token_mask)).unsqueeze(-1)  # (1, N, 1)
        self.token_timesteps = None
        return unpack(torch.where(moving, stepped, x), latents.shape, self.patch)


@dataclass
class LTXHeld(HeldLatents):
    """LTXConditionPipeline's conditioning: `hold` is its conditioning mask. At the first step held positions
    become lerp(latents, clean, strength) and the extra latents (a later clip's first two, see LTX.prepare) are
    put before the window's; every step hard-held tokens (strength 1) are reset to their first-step latents plus
    `noise_scale * t^2` of fresh noise drawn from the candidate's generator (motion continuity, LTX-Video's
    `image_cond_noise_scale`), and the model sees per-token timesteps min(t, (1 - mask) * 1000).
    While sampling the latents carry the extra latent frames first, (B, C, E + F, H, W); `finalize` drops them
    and leaves the rest as sampled, as diffusers does (held frames keep the last step's small noise, which the
    timestep-aware decoder removes)."""

    generator: torch.Generator | None = None
    noise_scale: float = IMAGE_COND_NOISE_SCALE
    extra: torch.Tensor | None = None  # (1, C, E, H, W) extra latents, already lerped from noise by strength
    extra_strength: torch.Tensor | None = None  # (E,) their conditioning strengths
    _init: torch.Tensor | None = field(default=None, repr=False)

    @property
    def extra_frames(self) -> int:
        return 0 if self.extra is None else self.extra.shape[2]

    @property
    def mask(self) -> torch.Tensor:
        """(1, 1, E + F, H, W) conditioning strengths over the extra and the window latents."""
        if self.extra is None:
            return self.hold
        extra = self.extra_strength.to(self.hold).view(1, 1, -1, 1, 1).expand(1, 1, -1, *self.hold.shape[3:])
        return torch.cat([extra, self.hold], dim=2)

    def model_input(self, latents: torch.Tensor, schedule: Schedule, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.utils.torch_utils import randn_tensor

        batch, t, patch, volume = latents.shape[0], schedule.timesteps[i], self.patch_size, self.mask
        if self._init is None:  # the first step: LTXConditionPipeline.prepare_latents' lerp towards the items
            latents = torch.where(self.known, torch.lerp(latents, self.clean, self.hold), latents)
            if self.extra is not None:
                latents = torch.cat([self.extra.to(latents).expand(batch, -1, -1, -1, -1), latents], dim=2)
            self._init = latents.clone()  # (B, C, E + F, H, W)
        if self.noise_scale > 0:
            tokens = pack(latents, patch)  # (B, N, C): the noise is drawn in the packed layout, as diffusers draws it
            noise = randn_tensor(tokens.shape, generator=self.generator, device=latents.device, dtype=latents.dtype)
            noise = unpack(noise, latents.shape, patch)  # (B, C, E + F, H, W)
            hard = volume > 1.0 - 1e-6
            latents = torch.where(hard, self._init + self.noise_scale * noise * (t / 1000.0) ** 2, latents)
        mask = token_values(volume, patch)  # (1, N)
        timestep = torch.min(t.expand(batch).unsqueeze(-1).float(), (1 - mask) * 1000.0)  # (B, N)
        if isinstance(schedule, LTXSchedule):
            schedule.token_timesteps, schedule.token_mask = timestep, mask
        return latents, timestep

    def finalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[:, :, self.extra_frames:]


class T5Prompts(PromptEncoder):
    """LTX's prompt encoding (diffusers' `_get_t5_prompt_embeds`): the prompt padded to `max_sequence_length`
    tokens, padding states kept; LTXPipeline encodes without the attention mask, LTXConditionPipeline with it
    (`masked`). The mask travels with the states for the transformer's cross-attention."""

    @torch.no_grad()
    def _encode(self, text: str, masked: bool = False) -> torch.Tensor:
        tokens = self.tokenizer([text], padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(device)  # (1, L)
        hidden = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask if masked else None)[0]  # (1, L, D)
        return torch.cat([hidden, mask.to(hidden.dtype).unsqueeze(-1)], dim=-1)  # (1, L, D + 1): mask last

    def __call__(self, text: str, masked: bool = False) -> torch.Tensor:
        """(1, L, D + 1): the states with the attention mask appended as their last channel, so guidance can
        batch them as one tensor."""
        return super().__call__(text, masked)


class LTX(Family):
    name = "ltx"
    label = "LTX-Video"
    pipelines = ("LTXPipeline", "LTXConditionPipeline", "LTXImageToVideoPipeline")
    samplers = ("default", "euler")
    strategies = ("per_token", "replace")

    @classmethod
    def read_geometry(cls, configs: Configs) -> Geometry:
        vae, transformer = configs["vae"], configs["transformer"]
        # 0.9.5+ state the ratios (their encoder mixes spatial-only and temporal-only stages); earlier VAEs
        # imply them from the patch and the stages, as AutoencoderKLLTXVideo does.
        stages = sum(bool(s) for s in vae.get("spatio_temporal_scaling", (True, True, True, False)))
        spatial = vae.get("spatial_compression_ratio") or vae.get("patch_size", 4) * 2 ** stages
        temporal = vae.get("temporal_compression_ratio") or vae.get("patch_size_t", 1) * 2 ** stages
        p, pt = int(transformer.get("patch_size", 1)), int(transformer.get("patch_size_t", 1))
        return Geometry(int(spatial), int(temporal), (pt, p, p), int(vae.get("latent_channels", 128)))

    @classmethod
    def read_defaults(cls, configs: Configs) -> ModelDefaults:
        # LTXPipeline's and LTXConditionPipeline's call defaults (width 704, height 512, 161 frames at 25 fps,
        # guidance 3, 50 steps, 128 tokens); frames are held per token, as LTX-Video was trained.
        return ModelDefaults(width=704, height=512, num_frames=161, fps=25.0, steps=50, guidance_scale=3.0,
                             conditioning_strategy="per_token", max_sequence_length=128)

    def __init__(self, parts, configs, defaults, device, memory="full"):
        super().__init__(parts, configs, defaults, device, memory)
        self.hold_text_model(T5Prompts)
        vae = self.vae.eval()
        z = self.geometry.channels
        self._latent_mean = vae.latents_mean.float().view(1, z, 1, 1, 1).cpu()
        self._latent_std = vae.latents_std.float().view(1, z, 1, 1, 1).cpu()
        self._scaling = float(vae.config.scaling_factor)
        self.image_cond_noise_scale = IMAGE_COND_NOISE_SCALE
        self._items: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # placed clips' own latents (see _item_latents)
        self.decode_timestep, self.decode_noise_scale = DECODE_TIMESTEP, DECODE_NOISE_SCALE

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [self.transformer]

    # ---- latents <-> pixels ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        pixels = torch.tensor(frames).float() / 255.0 * 2.0 - 1.0  # (F, H, W, 3)
        pixels = pixels.permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, F, H, W)
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        latents = posterior.mode().float()  # (1, C, F', h, w)
        mean, std = self._latent_mean.to(latents.device), self._latent_std.to(latents.device)
        # The diffusers pipelines normalise conditions without scaling_factor but denormalise with it; every
        # published LTX VAE has 1.0, and this keeps decode(encode(x)) a round trip for any.
        return (latents - mean) * self._scaling / std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        from diffusers.utils.torch_utils import randn_tensor

        latents = latents.to(self.device, torch.float32)
        mean, std = self._latent_mean.to(latents.device), self._latent_std.to(latents.device)
        latents = latents * std / self._scaling + mean  # (1, C, F', h, w)
        timestep = None
        if self.vae.config.timestep_conditioning:
            # LTXPipeline's decode: the latents moved decode_noise_scale towards noise, decoded at decode_timestep.
            noise = randn_tensor(latents.shape, generator=torch.Generator("cpu").manual_seed(DECODE_SEED),
                                 device=latents.device, dtype=latents.dtype)
            latents = (1 - self.decode_noise_scale) * latents + self.decode_noise_scale * noise
            timestep = torch.full((latents.shape[0],), self.decode_timestep, device=latents.device)
        devices = [latents.device] if latents.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(DECODE_SEED)  # 0.9.1's decoder injects noise from the global generator
            video = self.vae.decode(latents.to(self.vae.dtype), timestep.to(self.vae.dtype) if timestep is not None
                                    else None, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        video = (video[0].float() / 2 + 0.5).clamp(0, 1)
        return (video.permute(1, 2, 3, 0).cpu().numpy() * 255).round().astype(np.uint8)  # (F, H, W, 3)

    # ---- sampling --------------------------------------------------------------------------------------
    def encode_text(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype, masked = self.transformer.dtype, self._holds(request)
        cond = self.prompts(request.prompt, masked).to(self.device, dtype)  # (1, L, D + 1)
        guided = request.guidance_scale > 1.0
        uncond = self.prompts(request.negative_prompt or "", masked).to(self.device, dtype) if guided else None
        return cond, uncond

    @staticmethod
    def _holds(request: GenerationRequest) -> bool:
        """Whether the request holds frames: LTXConditionPipeline's algorithm, else LTXPipeline's."""
        return bool(request.conditioning)

    def _scheduler(self, request: GenerationRequest) -> Any:
        if request.sampler == "default" and request.shift is not None:
            # A shift asked for replaces the resolution-dependent one.
            return type(self.scheduler).from_config(self.scheduler.config, shift=request.shift,
                                                    use_dynamic_shifting=False)
        return make_scheduler(request.sampler, self.scheduler, request.shift)

    def schedule(self, request: GenerationRequest, shape: tuple[int, ...], generator=None) -> Schedule:
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift
        from diffusers.pipelines.ltx.pipeline_ltx_condition import linear_quadratic_schedule

        scheduler, steps = self._scheduler(request), request.steps
        if self._holds(request) and not scheduler.config.use_dynamic_shifting:
            # LTXConditionPipeline: linear-quadratic timesteps; the scheduler derives (and shifts) the sigmas, and
            # warns that it does, every time.
            with _quiet(logging.getLogger(type(scheduler).__module__)):
                scheduler.set_timesteps(timesteps=linear_quadratic_schedule(steps) * 1000, device=self.device)
        else:
            # LTXPipeline: sigmas linspace(1, 1/steps), shifted by mu from the token count where dynamic.
            config = scheduler.config
            mu = calculate_shift(shape[2] * shape[3] * shape[4], config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.15))
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=self.device, mu=mu)
        start = 0
        if request.init_strength is not None:  # SDEdit: the last init_strength of the steps
            start = steps - min(int(steps * request.init_strength), steps)
        scheduler.set_begin_index(start)
        timesteps = scheduler.timesteps[start:]
        return LTXSchedule(scheduler, timesteps, scheduler.sigmas[start:start + len(timesteps)].to(self.device),
                           self.geometry.patch)

    def _item_latents(self, p) -> torch.Tensor:
        """(1, C, k + 1, H, W) latents of a placed clip from its first frame (the pipeline keeps those after it
        only), encoded once for all of a request's candidates. Entries hold their item weakly (not its frames)
        and check it, so a recycled id never returns another clip's latents."""
        self._items = {key: entry for key, entry in self._items.items() if entry[0]() is not None}
        entry = self._items.get(id(p))
        if entry is None or entry[0]() is not p:
            entry = self._items[id(p)] = (weakref.ref(p), self.encode(p.source_frames[p.start:p.start + p.count]))
        return entry[1]

    def prepare(self, request, shape, placed, generator) -> Conditions:
        from diffusers.utils.torch_utils import randn_tensor

        # Drawn on the CPU from the seed, as diffusers' randn_tensor draws it.
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)  # (1, C, F, H, W)
        t = self.geometry.temporal
        per_token = (request.conditioning_strategy or self.defaults.conditioning_strategy) == "per_token"
        extra, strengths, items, freed = [], [], [], []
        for p in placed:
            # LTXConditionPipeline encodes each item as a posterior sample drawn here; we hold the posterior
            # mode (encoded once for all candidates) but take the same draws, so the noise that follows matches.
            randn_tensor((1, shape[1], (p.count - 1) // t + 1, *shape[3:]), generator=generator,
                         device=self.device, dtype=torch.float32)
            f, strength = p.item.frame_index, p.item.strength
            if f > 0 and per_token:
                # A clip after frame 0: its first two latents (frame f alone, then f+1..f+t) become extra tokens
                # at those frames, from lerp(noise, latents, strength); its later latents stay in the window.
                # The window latent the pipeline held with the clip's second latent is left to the model.
                prefix = self._item_latents(p)[:, :, :2].to(self.device)  # (1, C, 2, H, W)
                drawn = randn_tensor(prefix.shape, generator=generator, device=self.device, dtype=torch.float32)
                extra.append(torch.lerp(drawn, prefix, strength))
                strengths += [strength] * prefix.shape[2]
                items.append((f, prefix.shape[2]))
                freed.append(f // t + 1)
        extras = {"generator": generator, "extra_items": items, "freed": freed}
        if extra:
            extras.update(extra=torch.cat(extra, dim=2), extra_strength=torch.tensor(strengths))  # (1, C, E, H, W)
        return Conditions(noise, extras)

    def held(self, clean, hold, conditions: Conditions, strategy: str) -> HeldLatents | None:
        if strategy == "per_token":
            extras = conditions.extras
            if extras.get("freed"):
                hold = hold.clone()
                hold[:, :, extras["freed"]] = 0.0
            return LTXHeld(clean, hold, conditions.noise, strategy, self.geometry.patch,
                           generator=extras.get("generator"), noise_scale=self.image_cond_noise_scale,
                           extra=extras.get("extra"), extra_strength=extras.get("extra_strength"))
        return super().held(clean, hold, conditions, strategy)

    def denoiser(self, request: GenerationRequest, text, conditions: Conditions, batched: bool) -> Denoiser:
        cond, uncond = text
        g, fps, coords = self.geometry, float(request.fps), self._holds(request)
        patch, items = g.patch, conditions.extras.get("extra_items", [])
        pt, ph, pw = patch

        def positions(b: int, frames: int, h: int, w: int, frame_index: int, device) -> torch.Tensor:
            from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXConditionPipeline

            ids = LTXConditionPipeline._prepare_video_ids(b, frames // pt, h // ph, w // pw, ph, pt, device=device)
            return LTXConditionPipeline._scale_video_ids(ids, g.spatial, g.temporal, frame_index, device)  # (B, 3, N)

        def call(transformer, latents, timestep, embeds):
            b, _, f, h, w = latents.shape  # (B, C, E + F, H, W): extra latent frames first, while held
            states, mask = embeds[..., :-1], embeds[..., -1]  # (B, L, D), (B, L)
            if coords:  # LTXConditionPipeline's video_coords: frames over fps, pixels
                extra = sum(n for _, n in items)  # held per token: the extra frames come first
                ids = [positions(b, n, h, w, index, latents.device) for index, n in items] if extra else []
                ids = torch.cat([*ids, positions(b, f - extra, h, w, 0, latents.device)], dim=2).float()
                ids[:, 0] = ids[:, 0] * (1.0 / fps)
                rope = {"video_coords": ids}  # (B, 3, N)
            else:  # LTXPipeline's rope_interpolation_scale
                rope = {"num_frames": f // pt, "height": h // ph, "width": w // pw,
                        "rope_interpolation_scale": (g.temporal / fps, g.spatial, g.spatial)}
            tokens = pack(latents.to(transformer.dtype), patch)  # (B, N, C)
            out = transformer(hidden_states=tokens, encoder_hidden_states=states, timestep=timestep,
                              encoder_attention_mask=mask, return_dict=False, **rope)[0]  # (B, N, C)
            return unpack(out, latents.shape, patch)  # (B, C, E + F, H, W)

        return GuidedDenoiser(self.transformer, cond, uncond, request.guidance_scale, batched=batched, call=call)
