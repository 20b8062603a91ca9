"""The one sampling loop every mode runs: flow matching with held conditioning tokens.

Rectified flow (Liu et al., arXiv 2209.03003; Esser et al., arXiv 2403.03206) interpolates
x_sigma = (1 - sigma) * x0 + sigma * eps and the model predicts the velocity eps - x0. The integration
itself is a diffusers scheduler (UniPC with flow sigmas, or flow-matching Euler); this module decides what
the model sees at each step.

Known content (an image, the frames of a clip) is held in one of two ways:
- per-token timesteps: its tokens carry their clean latents and timestep 0 while the rest carry the
  current timestep (Wan 2.2 TI2V, LTX-Video); for models trained with such masks.
- latent replacement (RePaint, Lugmayr et al., arXiv 2201.09865): every step its latents are overwritten
  with the clean latents noised to the current level; works on any text-to-video checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from pipelines.acceleration import caching

StepCallback = Callable[[int, int, torch.Tensor], None]


class GenerationCancelled(Exception):
    """Raised from a step callback to stop sampling cooperatively; the pipeline frees the job's tensors."""


def noise_to(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The rectified-flow interpolant x_sigma = (1 - sigma) x0 + sigma eps."""
    return (1 - sigma) * clean + sigma * noise


@dataclass
class HeldLatents:
    """Latents known before sampling, where they sit, and how strongly they are held.

    clean: (B, C, F, H, W) normalised latents, zero where nothing is known.
    hold:  (1, 1, F, H, W) in [0, 1]; 1 holds a position exactly, 0 leaves it to the model.
    noise: (B, C, F, H, W) the starting noise, reused to re-noise held positions (no extra draws).
    """

    clean: torch.Tensor
    hold: torch.Tensor
    noise: torch.Tensor
    strategy: str  # "per_token" | "replace"
    patch_size: tuple[int, int, int]

    @property
    def known(self) -> torch.Tensor:
        return self.hold > 0  # (1, 1, F, H, W)

    def model_input(self, latents: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latents the model sees at this step and its timestep: (B,) or per token (B, tokens)."""
        batch = latents.shape[0]
        if self.strategy == "per_token":
            token_level = 1 - self.hold  # (1, 1, F, H, W): 0 on fully held tokens
            held = noise_to(self.clean, self.noise, sigma * token_level)
            latents = torch.where(self.known, held, latents)
            _, ph, pw = self.patch_size
            per_token = (token_level[0, 0, :, ::ph, ::pw] * t).flatten()  # (F * H/ph * W/pw,)
            return latents, per_token.unsqueeze(0).expand(batch, -1)
        # Replacement: a held position is overwritten while sigma is above 1 - hold, i.e. for the whole
        # trajectory at hold 1 and only for its noisier part at lower holds.
        active = self.known & (sigma >= 1 - self.hold)
        latents = torch.where(active, noise_to(self.clean, self.noise, sigma), latents)
        return latents, t.expand(batch)

    def finalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Fully held positions end exactly on their clean latents; partly held ones keep what was sampled."""
        return torch.where(self.hold >= 1, self.clean, latents)


class GuidedDenoiser:
    """Velocity with classifier-free guidance (Ho & Salimans, arXiv 2207.12598).

    Conditional and unconditional branches run as one batched forward when guidance is on (or one after the
    other with `batched=False`, which halves activation memory).
    """

    def __init__(self, transformer: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None, scale: float,
                 batched: bool = True):
        self.transformer = transformer
        self.scale = scale
        self.guided = scale > 1.0 and uncond is not None
        self.cond, self.uncond = cond, uncond
        self.batched = batched
        self.embeds = torch.cat([cond, uncond]) if self.guided and batched else cond  # (2B or B, L, D)
        self.cached = caching(transformer)

    def _forward(self, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
                 branch: str = "guided") -> torch.Tensor:
        # A step cache keeps one state per branch; diffusers' cache hooks read the branch from this context.
        context = self.transformer.cache_context(branch) if self.cached else contextlib.nullcontext()
        with context:
            return self.transformer(
                hidden_states=latents.to(self.transformer.dtype), timestep=timestep, encoder_hidden_states=embeds,
                return_dict=False,
            )[0].float()  # guidance and the scheduler step in float32, whatever the transformer's precision

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.guided and not self.batched:  # half the activation memory, for low-VRAM runs
            cond = self._forward(latents, timestep, self.cond, "cond")
            uncond = self._forward(latents, timestep, self.uncond, "uncond")
            return uncond + self.scale * (cond - uncond)
        if self.guided:
            latents = torch.cat([latents, latents])  # (2B, C, F, H, W)
            timestep = torch.cat([timestep, timestep])
        velocity = self._forward(latents, timestep, self.embeds)
        if not self.guided:
            return velocity
        cond, uncond = velocity.chunk(2)
        return uncond + self.scale * (cond - uncond)


def sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    scheduler,
    timesteps: torch.Tensor,
    sigmas: torch.Tensor,
    held: HeldLatents | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from `latents` at sigmas[0] down to 0; returns the final latents (B, C, F, H, W).

    `sigmas[i]` is the noise level at `timesteps[i]`. The callback sees (step, total, latents) after every
    step and may raise `GenerationCancelled`.
    """
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        timestep = t.expand(latents.shape[0])
        if held is not None:
            latents, timestep = held.model_input(latents, sigmas[i], t)
        velocity = denoiser(latents, timestep)  # (B, C, F, H, W)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        if callback is not None:
            callback(i + 1, total, latents)
    return held.finalize(latents) if held is not None else latents
