"""What a model family brings to the one pipeline: the `Family` adapter every family implements.

`VideoPipeline` owns what all families share: validating a request, placing its conditioning items on the
latent timeline, candidates, the sampling loop, decoding, assembling the clip and its latent timeline. A
family's adapter owns what differs between checkpoints: which components it loads, its geometry, text and
image encoding, latent normalisation, the layout its noise is drawn in, its schedule (the forward process at a
step's noise level and the scheduler's update) and the denoiser call in the scheduler's parametrisation
(flow velocity, v-prediction, EDM), including the ways it holds known frames (per-token timesteps, latent
replacement, channel-concatenated image latents).

Class-level methods read only a folder's configs, so that the CLI and the studio can refuse a mode or a size
before any weights load; the instance holds the loaded components.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from pipelines import memory as memory_modes
from pipelines.loading import ModelDefaults
from pipelines.modes import SPECS
from pipelines.request import GenerationRequest
from pipelines.sampling import HeldLatents, Schedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (latents (B, C, F, H, W), timestep) -> output


@dataclass(frozen=True)
class Geometry:
    """What fixes valid sizes and lengths, read from the configs before any weights load."""

    spatial: int  # VAE pixels per latent, each side
    temporal: int  # VAE frames per latent after the first: windows have temporal*k+1 frames
    patch: tuple[int, int, int]  # denoiser patch (t, h, w), in latents
    channels: int  # latent channels
    fixed_size: tuple[int, int] | None = None  # (width, height) of a denoiser that takes one size only

    @property
    def grid(self) -> int:
        """Widths and heights are multiples of this many pixels."""
        return self.spatial * self.patch[1]

    def latent_shape(self, request: GenerationRequest) -> tuple[int, int, int, int, int]:
        """(B, C, F, H, W) of a request's window in latents."""
        return (1, self.channels, (request.num_frames - 1) // self.temporal + 1,
                request.height // self.spatial, request.width // self.spatial)

    def latent_tokens(self, width: int, height: int, num_frames: int) -> int:
        """Tokens the denoiser attends over for a window of this size: the work of one step grows with it."""
        pt, ph, pw = self.patch
        latent_frames = (num_frames - 1) // self.temporal + 1
        return -(-latent_frames // pt) * (height // (self.spatial * ph)) * (width // (self.spatial * pw))


@dataclass
class Conditions:
    """What one candidate samples with, prepared by its family: the starting noise (B, C, F, H, W), and
    anything its denoiser reads besides the latents (image latents concatenated on channels, image
    embeddings), keyed by the family."""

    noise: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Configs:
    """A checkpoint's configs without its weights: `model_index.json` and each component's config."""

    index: dict[str, Any]
    components: dict[str, dict[str, Any]]

    def __getitem__(self, component: str) -> dict[str, Any]:
        return self.components.get(component, {})

    @property
    def pipeline_class(self) -> str:
        return str(self.index.get("_class_name", ""))

    def has(self, component: str) -> bool:
        """Whether the checkpoint lists `component` (a null entry, as `[null, null]`, is absent)."""
        spec = self.index.get(component)
        return isinstance(spec, list) and bool(spec) and spec[0] is not None

    @classmethod
    def of_folder(cls, folder: Path) -> Configs:
        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        components = {}
        for name in index:
            for file in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
                path = folder / name / file
                if path.is_file():
                    components[name] = json.loads(path.read_text())
                    break
        return cls(index, components)

    @classmethod
    def of_parts(cls, parts: dict[str, Any], index: dict[str, Any] | None = None) -> Configs:
        """Configs of components built in memory (tests, benchmarks)."""
        components = {name: dict(part.config) for name, part in parts.items()
                      if part is not None and isinstance(getattr(part, "config", None), dict)}
        components.update({name: part.config.to_dict() for name, part in parts.items()
                           if hasattr(getattr(part, "config", None), "to_dict")})
        index = index if index is not None else {name: ["", type(part).__name__] for name, part in parts.items()
                                                 if part is not None}
        return cls(index, components)


class Family:
    """A model family's adapter. Subclasses set the class attributes and implement the methods that raise."""

    name: ClassVar[str]  # registry key: "wan", "cogvideox", ...
    label: ClassVar[str]  # shown to people: "Wan", "CogVideoX", ...
    pipelines: ClassVar[tuple[str, ...]]  # diffusers pipeline classes (model_index `_class_name`) it loads
    samplers: ClassVar[tuple[str, ...]] = ("default",)  # names in pipelines.samplers.SAMPLERS it can run
    strategies: ClassVar[tuple[str, ...]] = ("replace",)  # conditioning strategies its denoiser can take
    reads_text: ClassVar[bool] = True  # False: it reads no prompt (a request's prompt is ignored, with a note)
    knobs: ClassVar[tuple[str, ...]] = ()  # the optional request fields (request.KNOBS) it reads
    # Whether the denoiser reads its conditioning stills as pixels (channel-concatenated, as Wan's
    # image-to-video checkpoints): a still may then sit off the VAE's latent grid (at the last frame), where
    # `check` allows it, instead of only where latents can be held.
    holds_stills: bool = False

    # ---- from the configs alone -----------------------------------------------------------------------
    @classmethod
    def read_modes(cls, configs: Configs) -> dict[str, str | None]:
        """Every mode of the studio: None where this checkpoint offers it, else a sentence saying why not
        ("Stable Video Diffusion takes no prompt: it animates a still")."""
        return {mode: None for mode in SPECS}

    @classmethod
    def read_geometry(cls, configs: Configs) -> Geometry:
        raise NotImplementedError

    @classmethod
    def read_defaults(cls, configs: Configs) -> ModelDefaults:
        """The studio's defaults for a checkpoint of this family that names none (no registry entry, no
        studio.json): its pipeline's own call defaults."""
        return ModelDefaults()

    @classmethod
    def required(cls, configs: Configs) -> tuple[str, ...]:
        """Components the checkpoint must list for this family to run it."""
        return ("vae", "transformer", "text_encoder", "tokenizer", "scheduler")

    # ---- loaded -------------------------------------------------------------------------------------
    def __init__(self, parts: dict[str, Any], configs: Configs, defaults: ModelDefaults,
                 device: torch.device, memory: str = "full"):
        self.parts = parts
        self.configs = configs
        self.defaults = defaults
        self.device = torch.device(device)
        self.geometry = self.read_geometry(configs)
        self.modes = self.read_modes(configs)
        for part in parts.values():
            if isinstance(part, torch.nn.Module):
                part.eval()
        # Where the weights live while generating (pipelines/memory.py: full, low, minimal); sets self.memory.
        memory_modes.apply(self, memory)

    def hold_text_model(self, prompts: type) -> None:
        """Keep what a prompt-reading family's denoising needs: its transformer, its text encoder behind a
        `prompts` cache (pipelines.text.PromptEncoder or a subclass), and the checkpoint's scheduler (each
        pass takes a fresh copy)."""
        self.transformer = self.parts["transformer"].eval()
        self.text_encoder = self.parts["text_encoder"].eval()
        self.scheduler = self.parts["scheduler"]
        self.prompts = prompts(self.parts["tokenizer"], self.text_encoder, self.defaults.max_sequence_length)

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        """The modules sampling runs (one, or a family's experts): what accelerate() acts on."""
        raise NotImplementedError

    @property
    def vae(self) -> torch.nn.Module:
        return self.parts["vae"]

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError for what this checkpoint cannot take beyond the shared checks (grid, frames)."""

    def notes(self, request: GenerationRequest) -> list[str]:
        """Lines for the creator about how this family read the request (what it ignored, and why)."""
        return []

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (1, C, 1 + (F-1)//temporal, H/s, W/s) normalised latents."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(1, C, F', h, w) normalised latents -> (1 + (F'-1)*temporal, H, W, 3) uint8."""
        raise NotImplementedError

    def encode_init(self, frames: np.ndarray) -> Any:
        """The init video of a restyle (SDEdit), as `start` reads it: by default its normalised latents. A
        family whose reference pipeline samples the VAE posterior (CogVideoX) keeps the posterior instead."""
        return self.encode(frames)

    def start(self, schedule: Schedule, conditions: Conditions, init: Any) -> torch.Tensor:
        """The latents sampling starts from: the candidate's noise, or the init video (from `encode_init`)
        noised to the schedule's first step."""
        return schedule.start(conditions.noise, init)

    def window(self, latents: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The window's latents (`shape`, (1, C, F, H, W)) from what sampling returned: the same, unless the
        family samples latent frames besides the window's (CogVideoX 1.5 pads them to its temporal patch)."""
        return latents

    def encode_text(self, request: GenerationRequest) -> Any:
        """The prompt (and negative prompt, when guided) as the denoiser reads them."""
        raise NotImplementedError

    def schedule(self, request: GenerationRequest, shape: tuple[int, ...], generator: torch.Generator | None = None
                 ) -> Schedule:
        """A fresh schedule for one sampling pass (schedulers keep state between steps); `generator` is the
        candidate's, for schedulers whose steps draw noise (CogVideoX's DPM)."""
        raise NotImplementedError

    def prepare(self, request: GenerationRequest, shape: tuple[int, ...], placed: list, generator: torch.Generator
                ) -> Conditions:
        """Draw the candidate's noise and prepare what its denoiser reads besides the latents, drawing from
        `generator` in the order the family's reference pipeline does (parity depends on it)."""
        raise NotImplementedError

    def held(self, clean: torch.Tensor, hold: torch.Tensor, conditions: Conditions, strategy: str
             ) -> HeldLatents | None:
        """How the placed items' latents are held while sampling (None: the denoiser holds them itself)."""
        return HeldLatents(clean, hold, conditions.noise, strategy, self.geometry.patch)

    def denoiser(self, request: GenerationRequest, text: Any, conditions: Conditions, batched: bool) -> Denoiser:
        """The model call in the schedule's parametrisation, with guidance."""
        raise NotImplementedError
