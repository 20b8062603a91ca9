"""The one sampling loop every mode and every family runs, with held conditioning latents.

The integration itself is a diffusers scheduler wrapped in a `Schedule` (rectified flow for Wan and LTX,
v-prediction DDIM/DPM for CogVideoX, EDM for Stable Video Diffusion); this module decides what the model sees
at each step: the latents, with known content held (`HeldLatents`), and guidance (`GuidedDenoiser`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pipelines.acceleration import caching

StepCallback = Callable[[int, int, torch.Tensor], None]


class GenerationCancelled(Exception):
    """Raised from a step callback to stop sampling cooperatively; the pipeline frees the job's tensors."""


class Schedule:
    """One sampling pass: the scheduler, its timesteps from the pass's first step (SDEdit starts part-way),
    and each step's noise level in [0, 1] (1 is pure noise), which partial holds and per-token timesteps read.

    The base is rectified flow (Liu et al., arXiv 2209.03003): x_sigma = (1 - sigma) x0 + sigma eps, and the
    scheduler's `step` takes the model's velocity. Families on other processes override `noise_to` and `step`.
    """

    def __init__(self, scheduler: Any, timesteps: torch.Tensor, sigmas: torch.Tensor):
        self.scheduler = scheduler
        self.timesteps = timesteps  # (S,)
        self.sigmas = sigmas  # (S,) noise level of each step

    def __len__(self) -> int:
        return len(self.timesteps)

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The forward process at noise level `sigma` (a number, or a tensor broadcast over the latents)."""
        return (1 - sigma) * clean + sigma * noise

    def start(self, noise: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
        """The latents sampling starts from: the noise, or the init video's latents noised to the first step."""
        return noise if init is None else self.noise_to(init, noise, self.sigmas[0])

    def step(self, output: torch.Tensor, i: int, latents: torch.Tensor) -> torch.Tensor:
        """The scheduler's update from step i's model output."""
        return self.scheduler.step(output, self.timesteps[i], latents, return_dict=False)[0]


@dataclass
class HeldLatents:
    """Latents known before sampling, where they sit, and how strongly they are held.

    clean: (B, C, F, H, W) normalised latents, zero where nothing is known.
    hold:  (1, 1, F, H, W) in [0, 1]; 1 holds a position exactly, 0 leaves it to the model.
    noise: (B, C, F, H, W) the starting noise, reused to re-noise held positions (no extra draws).

    Two ways to hold, by `strategy`:
    - per_token: held tokens carry their clean latents at a lower timestep (0 when fully held) while the rest
      carry the current one (Wan 2.2 TI2V, LTX-Video); for models trained with such masks.
    - replace (RePaint, Lugmayr et al., arXiv 2201.09865): every step held latents are overwritten with the
      clean latents noised to the current level; works on any text-to-video checkpoint.
    """

    clean: torch.Tensor
    hold: torch.Tensor
    noise: torch.Tensor
    strategy: str  # "per_token" | "replace"
    patch_size: tuple[int, int, int]

    @property
    def known(self) -> torch.Tensor:
        return self.hold > 0  # (1, 1, F, H, W)

    def model_input(self, latents: torch.Tensor, schedule: Schedule, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The latents the model sees at step i and its timestep: (B,) or per token (B, tokens)."""
        batch, sigma, t = latents.shape[0], schedule.sigmas[i], schedule.timesteps[i]
        if self.strategy == "per_token":
            token_level = 1 - self.hold  # (1, 1, F, H, W): 0 on fully held tokens
            held = schedule.noise_to(self.clean, self.noise, sigma * token_level)
            latents = torch.where(self.known, held, latents)
            _, ph, pw = self.patch_size
            per_token = (token_level[0, 0, :, ::ph, ::pw] * t).flatten()  # (F * H/ph * W/pw,)
            return latents, per_token.unsqueeze(0).expand(batch, -1)
        # Replacement: a held position is overwritten while sigma is above 1 - hold, i.e. for the whole
        # trajectory at hold 1 and only for its noisier part at lower holds.
        active = self.known & (sigma >= 1 - self.hold)
        latents = torch.where(active, schedule.noise_to(self.clean, self.noise, sigma), latents)
        return latents, t.expand(batch)

    def finalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Fully held positions end exactly on their clean latents; partly held ones keep what was sampled."""
        return torch.where(self.hold >= 1, self.clean, latents)


def call_wan(transformer: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, embeds: Any) -> torch.Tensor:
    """A Wan-style denoiser call: (latents, timestep, text embeddings) -> the model's output."""
    return transformer(hidden_states=latents.to(transformer.dtype), timestep=timestep, encoder_hidden_states=embeds,
                       return_dict=False)[0]


def _batch(cond: Any, uncond: Any) -> Any:
    """Both branches' conditioning as one batch: a tensor, or a tuple of them (image embeddings, image latents
    and added time ids for Stable Video Diffusion) batched element by element."""
    if isinstance(cond, torch.Tensor):
        return torch.cat([cond, uncond])
    return tuple(_batch(c, u) for c, u in zip(cond, uncond, strict=True))


class GuidedDenoiser:
    """The model's output with classifier-free guidance (Ho & Salimans, arXiv 2207.12598).

    Conditional and unconditional branches run as one batched forward when guidance is on (or one after the
    other with `batched=False`, which halves activation memory). `call` is the family's model call on a batch
    (`call_wan` by default); `scale` is a number, or a function of the timestep for schedules that vary it
    (CogVideoX's dynamic guidance, Stable Video Diffusion's per-frame ramp). `cond` and `uncond` are what
    `call` reads besides the latents: a tensor, or a tuple of tensors.
    """

    # Set by pipelines/parallel.py for `--parallel cfg`: split(cond_fn, uncond_fn) runs this rank's branch and
    # returns both branches' outputs.
    split: Callable[[Callable[[], torch.Tensor], Callable[[], torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] \
        | None = None

    def __init__(self, transformer: torch.nn.Module, cond: Any, uncond: Any | None,
                 scale: float | Callable[[torch.Tensor], torch.Tensor | float], batched: bool = True,
                 call: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor] = call_wan,
                 guided: bool | None = None):
        self.transformer = transformer
        self.scale = scale
        self.guided = (scale > 1.0 if guided is None else guided) and uncond is not None
        self.cond, self.uncond = cond, uncond
        self.batched = batched
        self.call = call
        self.embeds = _batch(cond, uncond) if self.guided and batched else cond  # (2B or B, L, D)
        self.cached = caching(transformer)

    def _forward(self, latents: torch.Tensor, timestep: torch.Tensor, embeds: Any,
                 branch: str = "guided") -> torch.Tensor:
        # A step cache keeps one state per branch; diffusers' cache hooks read the branch from this context.
        context = self.transformer.cache_context(branch) if self.cached else contextlib.nullcontext()
        with context:
            # Guidance and the scheduler step run in float32, whatever the transformer's precision.
            return self.call(self.transformer, latents, timestep, embeds).float()

    def _combine(self, cond: torch.Tensor, uncond: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        scale = self.scale(timestep) if callable(self.scale) else self.scale
        return uncond + scale * (cond - uncond)

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.guided and self.split is not None:  # one branch on each of two ranks (--parallel cfg)
            cond, uncond = self.split(lambda: self._forward(latents, timestep, self.cond, "cond"),
                                      lambda: self._forward(latents, timestep, self.uncond, "uncond"))
            return self._combine(cond, uncond, timestep)
        if self.guided and not self.batched:  # half the activation memory (memory mode minimal)
            cond = self._forward(latents, timestep, self.cond, "cond")
            uncond = self._forward(latents, timestep, self.uncond, "uncond")
            return self._combine(cond, uncond, timestep)
        if not self.guided:
            return self._forward(latents, timestep, self.embeds)
        both = self._forward(torch.cat([latents, latents]), torch.cat([timestep, timestep]), self.embeds)  # (2B, ...)
        cond, uncond = both.chunk(2)
        return self._combine(cond, uncond, timestep)


def sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    schedule: Schedule,
    held: HeldLatents | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from `latents` at the schedule's first noise level down to 0; returns the final latents
    (B, C, F, H, W). The callback sees (step, total, latents) after every step and may raise
    `GenerationCancelled`.
    """
    total = len(schedule)
    for i, t in enumerate(schedule.timesteps):
        timestep = t.expand(latents.shape[0])
        if held is not None:
            latents, timestep = held.model_input(latents, schedule, i)
        output = denoiser(latents, timestep)  # (B, C, F, H, W) in the schedule's parametrisation
        latents = schedule.step(output, i, latents)
        if callback is not None:
            callback(i + 1, total, latents)
    return held.finalize(latents) if held is not None else latents
