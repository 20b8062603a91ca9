"""CogVideoX (2B, 5B, 5B image-to-video, 1.5) under the one pipeline, as diffusers' CogVideoX pipelines run it.

CogVideoX (Yang et al., arXiv 2408.06072): a 3D causal VAE (`AutoencoderKLCogVideoX`, 8x spatial, 4x temporal,
16 channels, one scaling factor), an expert transformer (`CogVideoXTransformer3DModel`) over T5-XXL text
tokens (226, unmasked) and video patches read in (B, F, C, H, W), and a v-prediction diffusion process with
zero terminal SNR (Lin et al., arXiv 2305.08891) sampled by `CogVideoXDDIMScheduler` or `CogVideoXDPMScheduler`
(a stochastic DPM-Solver++(2M), Lu et al., arXiv 2211.01095, that draws noise every step). What differs by
checkpoint is read from its configs:
- 2B: sinusoidal positions; 5B: rotary embeddings; 5B-I2V: a learned positional table trained at one size,
  and the still's latents concatenated on channels (in_channels 32);
- 1.5: temporal patch 2 (odd latent frame counts are padded by one latent frame in front, which is dropped
  after sampling), rotary positions sliced from a fixed table; 1.5 I2V adds an offset embedding (`ofs`).

Text-to-video checkpoints hold known frames by latent replacement (RePaint), so they animate, extend, loop
and connect; restyle is SDEdit exactly as `CogVideoXVideoToVideoPipeline` does it (the VAE posterior sampled,
noised with the scheduler's `add_noise` at the first kept step). Dynamic guidance (`use_dynamic_cfg`, which
CogVideo recommends with the DPM scheduler) is the model default `dynamic_guidance` (a studio.json can set it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.cpu_kernels import use_onednn_conv3d
from pipelines.families.base import Conditions, Configs, Denoiser, Family, Geometry
from pipelines.loading import ModelDefaults
from pipelines.modes import SPECS
from pipelines.request import GenerationRequest
from pipelines.sampling import GuidedDenoiser, HeldLatents, Schedule
from pipelines.text import PromptEncoder

# diffusers is imported where it is used: the registry imports every family to read a model's configs
# (the CLI's argument checks, the studio's page), which must not wait seconds for diffusers to import.

I2V_PIPELINE = "CogVideoXImageToVideoPipeline"


def _frames_first(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) <-> (B, F, C, H, W): the loop's layout and CogVideoX's swap the same two axes."""
    return latents.permute(0, 2, 1, 3, 4)


def temporal_padding(latent_frames: int, patch_t: int) -> int:
    """Latent frames CogVideoX 1.5 samples in front of the window so that its temporal patch tiles them
    (diffusers' `additional_frames`); 0 for CogVideoX 1.0 (no temporal patch)."""
    return (patch_t - latent_frames % patch_t) % patch_t


def _pad_front(latents: torch.Tensor, frames: int, value: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, F, H, W) with `frames` latent frames put in front: copies of `value` (B, C, 1, H, W), or zeros."""
    if frames == 0:
        return latents
    lead = value if value is not None else torch.zeros_like(latents[:, :, :1])
    return torch.cat([lead.expand(-1, -1, frames, -1, -1), latents], dim=2)


def dynamic_guidance(scale: float, steps: int, timestep: float) -> float:
    """CogVideoX's dynamic guidance at `timestep` (diffusers' `use_dynamic_cfg`, written as it is there): 1 +
    scale * (1 - cos(pi * ((steps - t) / steps) ** 5)) / 2, which is near 1 for most of the trajectory and rises
    as t falls toward 0; `steps` is the pass's number of steps."""
    return 1 + scale * ((1 - math.cos(math.pi * ((steps - timestep) / steps) ** 5.0)) / 2)


class VPSchedule(Schedule):
    """The variance-preserving process of CogVideoX's schedulers: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, with
    a_t the scheduler's `alphas_cumprod` (SNR-shifted, zero terminal SNR), and its v-prediction update.

    Each step's noise level in [0, 1] (what partial holds compare strengths with) is the rectified-flow time of
    the same signal-to-noise ratio, sigma = s / (a + s) with a = sqrt(a_t), s = sqrt(1 - a_t): x_t is then
    ((1 - sigma) x0 + sigma eps) / r, r = sqrt((1 - sigma)^2 + sigma^2), so a hold strength means the same
    fraction of the way to noise as it does for flow-matching families. The DPM scheduler's step reads the
    previous step's predicted x0 and timestep and draws noise from the candidate's generator, in diffusers'
    (B, F, C, H, W) layout, so that draws match `CogVideoXPipeline`'s.
    """

    def __init__(self, scheduler: Any, timesteps: torch.Tensor, generator: torch.Generator | None):
        alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].to(torch.float64)  # (S,)
        a, s = alphas.sqrt(), (1 - alphas).sqrt()
        super().__init__(scheduler, timesteps, (s / (a + s)).to(torch.float32))
        self.generator = generator
        self.multistep = type(scheduler).__name__ == "CogVideoXDPMScheduler"
        self.previous_x0: torch.Tensor | None = None  # (B, F, C, H, W) the DPM step's last predicted x0

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The forward process at noise level `sigma` (at a step's own level: its `add_noise`, to rounding)."""
        sigma = torch.as_tensor(sigma, dtype=clean.dtype, device=clean.device)
        norm = ((1 - sigma) ** 2 + sigma ** 2).sqrt()
        return ((1 - sigma) * clean + sigma * noise) / norm

    def start(self, noise: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
        """The noise, or `init` noised to the first step with the scheduler's `add_noise`, as diffusers' SDEdit."""
        if init is None:
            return noise * self.scheduler.init_noise_sigma
        return self.scheduler.add_noise(init, noise, self.timesteps[:1])

    def step(self, output: torch.Tensor, i: int, latents: torch.Tensor) -> torch.Tensor:
        output, latents = _frames_first(output), _frames_first(latents)  # (B, F, C, H, W)
        t = self.timesteps[i]
        if self.multistep:
            previous_t = self.timesteps[i - 1] if i > 0 else None
            latents, self.previous_x0 = self.scheduler.step(output, self.previous_x0, t, previous_t, latents,
                                                            eta=0.0, generator=self.generator, return_dict=False)
        else:
            latents = self.scheduler.step(output, t, latents, eta=0.0, generator=self.generator,
                                          return_dict=False)[0]
        return _frames_first(latents)  # (B, C, F, H, W)


@dataclass
class Posterior:
    """The VAE's posterior of an init video, unscaled (B, C, F, H, W): SDEdit samples it per candidate."""

    mean: torch.Tensor
    std: torch.Tensor


class T5Prompts(PromptEncoder):
    """T5 embeddings as diffusers' CogVideoX pipelines make them: padded to the maximum length, encoded
    without an attention mask, padding kept (the transformer was trained on it)."""

    @torch.no_grad()
    def _encode(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer([text], padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokens.input_ids.to(device))[0]  # (1, L, D)


class _TransformerCall:
    """The model call GuidedDenoiser makes on a batch: the loop's (B, C, F, H, W) latents read in CogVideoX's
    (B, F, C, H, W), with the still's latents concatenated on channels (image-to-video), rotary embeddings
    (5B, 1.5) and the offset embedding (1.5 I2V)."""

    def __init__(self, family: CogVideoX, image_latents: torch.Tensor | None):
        self.family = family
        self.image_latents = image_latents  # (1, F, C, H, W) or None
        self._rope: dict[tuple[int, ...], Any] = {}

    def rope(self, frames: int, height: int, width: int, device: torch.device):
        key = (frames, height, width)
        if key not in self._rope:
            self._rope[key] = self.family.rotary_embeddings(frames, height, width, device)
        return self._rope[key]

    def __call__(self, transformer: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 embeds: torch.Tensor) -> torch.Tensor:
        x = _frames_first(latents).to(transformer.dtype)  # (B, F, C, H, W)
        if self.image_latents is not None:
            image = self.image_latents.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1, -1)
            x = torch.cat([x, image], dim=2)  # (B, F, 2C, H, W)
        config = transformer.config
        rope = self.rope(x.shape[1], x.shape[3], x.shape[4], x.device) \
            if config.use_rotary_positional_embeddings else None
        ofs = x.new_full((1,), 2.0) if config.ofs_embed_dim else None
        output = transformer(hidden_states=x, encoder_hidden_states=embeds, timestep=timestep, ofs=ofs,
                             image_rotary_emb=rope, return_dict=False)[0]  # (B, F, C, H, W)
        return _frames_first(output)  # (B, C, F, H, W)


def _is_i2v(configs: Configs) -> bool:
    """Image-to-video checkpoints read the still's latents on their input channels."""
    latent = int(configs["vae"].get("latent_channels", 16))
    return configs.pipeline_class == I2V_PIPELINE or int(configs["transformer"].get("in_channels", latent)) > latent


class CogVideoX(Family):
    name = "cogvideox"
    label = "CogVideoX"
    pipelines = ("CogVideoXPipeline", I2V_PIPELINE, "CogVideoXVideoToVideoPipeline")
    samplers = ("default",)
    strategies = ("replace",)

    # ---- from the configs alone -----------------------------------------------------------------------
    @classmethod
    def read_modes(cls, configs: Configs) -> dict[str, str | None]:
        if not _is_i2v(configs):
            return {mode: None for mode in SPECS}
        needs_still = ("CogVideoX image-to-video needs a still at frame 0 (its transformer reads the still's "
                       "latents on its channels)")
        clips = ("CogVideoX image-to-video holds only a still at frame 0, not clips; a CogVideoX text-to-video "
                 "model does this by latent replacement")
        return {"t2v": needs_still, "image": needs_still, "animate": None, "extend": clips, "loop": clips,
                "connect": clips, "restyle": "CogVideoX image-to-video needs a still at frame 0, not footage to "
                                             "restyle; a CogVideoX text-to-video model restyles"}

    @classmethod
    def read_geometry(cls, configs: Configs) -> Geometry:
        vae, transformer = configs["vae"], configs["transformer"]
        p = int(transformer.get("patch_size", 2))
        spatial = 2 ** (len(vae.get("block_out_channels", (128, 256, 256, 512))) - 1)
        sample = (int(transformer.get("sample_width", 90)) * spatial,
                  int(transformer.get("sample_height", 60)) * spatial)
        fixed = sample if transformer.get("use_learned_positional_embeddings") else None  # trained at that size only
        return Geometry(spatial, int(vae.get("temporal_compression_ratio", 4)),
                        (int(transformer.get("patch_size_t") or 1), p, p), int(vae.get("latent_channels", 16)), fixed)

    @classmethod
    def read_defaults(cls, configs: Configs) -> ModelDefaults:
        # diffusers' call defaults: the transformer's sample size, 49 frames, guidance 6, 50 steps, 226 tokens,
        # saved at 8 fps. CogVideoX 1.5's sample size (300 latents a side) is the bound of its rotary table,
        # not a size to render at: its model card's 1360x768, 81 frames at 16 fps.
        transformer = configs["transformer"]
        if transformer.get("patch_size_t"):
            return ModelDefaults(width=1360, height=768, num_frames=81, fps=16.0, steps=50, guidance_scale=6.0,
                                 max_sequence_length=226)
        spatial = cls.read_geometry(configs).spatial
        return ModelDefaults(width=int(transformer.get("sample_width", 90)) * spatial,
                             height=int(transformer.get("sample_height", 60)) * spatial,
                             num_frames=int(transformer.get("sample_frames", 49)), fps=8.0, steps=50,
                             guidance_scale=6.0, max_sequence_length=226)

    # ---- loaded -------------------------------------------------------------------------------------
    def __init__(self, parts, configs, defaults, device, memory="full"):
        super().__init__(parts, configs, defaults, device, memory)
        self.hold_text_model(T5Prompts)
        self.i2v = _is_i2v(configs)
        self._still: tuple[np.ndarray, Any] | None = None  # the last still encoded and its posterior
        vae = self.vae.eval()
        self.scaling = float(vae.config.scaling_factor)
        use_onednn_conv3d(vae)  # only takes effect while the VAE runs in float32 on the CPU

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [self.transformer]

    @property
    def patch_t(self) -> int:
        return self.geometry.patch[0]

    def check(self, request: GenerationRequest) -> None:
        config, g = self.transformer.config, self.geometry
        if request.shift is not None:
            raise ValueError(f"shift = {request.shift:g} is not valid for CogVideoX: its schedulers sample a "
                             "v-prediction diffusion, which has no flow shift (leave it unset)")
        if g.fixed_size:
            width, height = g.fixed_size
            if (request.width, request.height) != (width, height):
                raise ValueError(f"{request.width}x{request.height} is not valid for this model: its learned "
                                 f"positional table was trained at {width}x{height} only, so it takes no other "
                                 f"size (use width = {width}, height = {height})")
        if config.patch_size_t:  # 1.5: rotary positions are sliced from a table of sample_height x sample_width
            most_h, most_w = config.sample_height * g.spatial, config.sample_width * g.spatial
            if request.height > most_h or request.width > most_w:
                raise ValueError(f"{request.width}x{request.height} is more than this model can place: at most "
                                 f"{most_w}x{most_h} (its rotary table's size)")
            image_first = self.defaults.image_first if request.image_first is None else request.image_first
            if image_first and request.mode == "t2v" and request.num_frames > 1:
                raise ValueError("image_first is not valid for CogVideoX 1.5: it samples latent frames in pairs "
                                 "(temporal patch 2), so it cannot sample a first frame alone")
        if self.i2v:
            items = request.conditioning
            if len(items) != 1 or items[0].frame_index != 0 or items[0].source_count != 1:
                raise ValueError("conditioning is not valid for CogVideoX image-to-video: exactly one still at "
                                 "frame 0 (it reads that still's latents on its channels)")
            if items[0].strength != 1.0:
                raise ValueError(f"conditioning.strength = {items[0].strength:g} is not valid for CogVideoX "
                                 "image-to-video: 1 (the still is read on the transformer's channels, which holds "
                                 "it fully or not at all)")

    # ---- latents <-> pixels ----------------------------------------------------------------------------
    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (1, 3, F, H, W) in [-1, 1], as diffusers' video processor normalises."""
        pixels = torch.tensor(frames).float() / 255.0 * 2.0 - 1.0  # (F, H, W, 3)
        return pixels.permute(3, 0, 1, 2).unsqueeze(0).to(self.device, self.vae.dtype)  # (1, 3, F, H, W)

    @torch.no_grad()
    def _posterior(self, frames: np.ndarray):
        # A still is encoded twice per image-to-video request (held latents, then the sampled posterior on the
        # channels): the last still's posterior is kept so that the VAE runs once.
        if len(frames) == 1 and self._still is not None and np.array_equal(self._still[0], frames):
            return self._still[1]
        posterior = self.vae.encode(self._pixels(frames)).latent_dist
        if len(frames) == 1:
            self._still = (np.array(frames), posterior)
        return posterior

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """The posterior's mode, scaled: known frames are held at it."""
        return self._posterior(frames).mode().float() * self.scaling  # (1, C, F', h, w)

    def encode_init(self, frames: np.ndarray) -> Posterior:
        # diffusers' video-to-video samples the posterior with the candidate's generator (see prepare).
        posterior = self._posterior(frames)
        return Posterior(posterior.mean, posterior.std)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        # The decoder reads the first latent alone only when the count is odd (8k+1 frames); an even count
        # decodes to 4 frames per latent, of which the first latent's last stands for its single frame.
        count = latents.shape[2]
        latents = latents.to(self.device, torch.float32) / self.scaling
        video = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        video = video[:, :, video.shape[2] - (1 + (count - 1) * self.geometry.temporal):]
        video = (video[0].float() / 2 + 0.5).clamp(0, 1)
        return (video.permute(1, 2, 3, 0).cpu().numpy() * 255).round().astype(np.uint8)  # (F, H, W, 3)

    # ---- sampling --------------------------------------------------------------------------------------
    def encode_text(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = self.transformer.dtype
        cond = self.prompts(request.prompt).to(self.device, dtype)  # (1, 226, 4096)
        guided = request.guidance_scale > 1.0
        uncond = self.prompts(request.negative_prompt).to(self.device, dtype) if guided else None
        return cond, uncond

    def _steps(self, request: GenerationRequest) -> tuple[int, int]:
        """(first kept step, steps kept): SDEdit keeps the last init_strength of the steps, as diffusers'
        `get_timesteps` (Meng et al., arXiv 2108.01073)."""
        if request.init_strength is None:
            return 0, request.steps
        kept = min(int(request.steps * request.init_strength), request.steps)
        return max(request.steps - kept, 0), kept

    def schedule(self, request: GenerationRequest, shape: tuple[int, ...], generator=None) -> Schedule:
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(request.steps, device=self.device)
        first, _ = self._steps(request)
        return VPSchedule(scheduler, scheduler.timesteps[first * scheduler.order:], generator)

    def prepare(self, request, shape, placed, generator) -> Conditions:
        """Draws in the order of diffusers' pipelines: image-to-video samples the still's posterior, then the
        noise; video-to-video samples the init video's posterior, then the noise; the noise is drawn in
        (B, F, C, H, W) over the padded frames (CogVideoX 1.5) and read in the loop's (B, C, F, H, W)."""
        from diffusers.utils.torch_utils import randn_tensor

        batch, channels, frames, height, width = shape
        padded = frames + temporal_padding(frames, self.patch_t)
        extras: dict[str, Any] = {}
        if self.i2v:
            extras["image_latents"] = self._image_latents(placed[0], padded, generator)
        if request.init_video is not None:
            # The posterior sample's eps, over the VAE's (B, C, F, H, W) like DiagonalGaussianDistribution.sample.
            extras["init_eps"] = randn_tensor(shape, generator=generator, device=self.device, dtype=self.vae.dtype)
        noise = randn_tensor((batch, padded, channels, height, width), generator=generator, device=self.device,
                             dtype=torch.float32)  # (B, F, C, H, W)
        return Conditions(_frames_first(noise), extras)

    @torch.no_grad()
    def _image_latents(self, item, frames: int, generator: torch.Generator) -> torch.Tensor:
        """(1, F, C, H, W): the still's sampled posterior scaled (1/scaling where the VAE says its latents were
        trained inverted, as 1.5 I2V), then zeros for the later frames (diffusers' `prepare_latents`)."""
        still = item.source_frames[item.start:item.start + 1]  # (1, H, W, 3)
        sample = self._posterior(still).sample(generator)  # (1, C, 1, h, w)
        sample = _frames_first(sample.to(torch.float32))  # (1, 1, C, h, w)
        scale = 1 / self.scaling if getattr(self.vae.config, "invert_scale_latents", False) else self.scaling
        sample = scale * sample
        padding = torch.zeros((1, frames - 1, *sample.shape[2:]), device=sample.device, dtype=sample.dtype)
        latents = torch.cat([sample, padding], dim=1)  # (1, F, C, h, w)
        if self.patch_t > 1:  # diffusers repeats the first frame to tile an odd count (never odd after padding)
            latents = torch.cat([latents[:, :latents.shape[1] % self.patch_t], latents], dim=1)
        return latents

    def start(self, schedule: Schedule, conditions: Conditions, init: Posterior | None) -> torch.Tensor:
        if init is None:
            return schedule.start(conditions.noise, None)
        # As CogVideoXVideoToVideoPipeline: the posterior sampled with the eps drawn before the noise, scaled.
        x0 = self.scaling * (init.mean + init.std * conditions.extras["init_eps"])  # (1, C, F, H, W)
        # CogVideoX 1.5 pads an odd count in front; the init's first latent stands in for the padding.
        x0 = _pad_front(x0.float(), conditions.noise.shape[2] - x0.shape[2], x0[:, :, :1].float())
        return schedule.start(conditions.noise, x0)

    def held(self, clean: torch.Tensor, hold: torch.Tensor, conditions: Conditions, strategy: str
             ) -> HeldLatents | None:
        if self.i2v:
            return None  # the still is read on the transformer's channels
        pad = conditions.noise.shape[2] - clean.shape[2]  # CogVideoX 1.5's padding frames are never held
        return HeldLatents(_pad_front(clean, pad), _pad_front(hold, pad), conditions.noise, strategy,
                           self.geometry.patch)

    def window(self, latents: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return latents[:, :, latents.shape[2] - shape[2]:]  # CogVideoX 1.5's padding frames dropped

    def rotary_embeddings(self, frames: int, height: int, width: int, device: torch.device):
        """(cos, sin) of the rotary embeddings over `frames` latent frames of height x width latents, as
        diffusers' `_prepare_rotary_positional_embeddings`: 1.0 fits the grid into the sample size's crop;
        1.5 slices a fixed table (frames counted in temporal patches)."""
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        config = self.transformer.config
        p, p_t = config.patch_size, config.patch_size_t
        grid_h, grid_w = height // p, width // p
        base_w, base_h = config.sample_width // p, config.sample_height // p
        if p_t is None:
            crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
            return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                           grid_size=(grid_h, grid_w), temporal_size=frames, device=device)
        return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=None,
                                       grid_size=(grid_h, grid_w), temporal_size=(frames + p_t - 1) // p_t,
                                       grid_type="slice", max_size=(base_h, base_w), device=device)

    def denoiser(self, request: GenerationRequest, text, conditions: Conditions, batched: bool) -> Denoiser:
        cond, uncond = text
        scale: Any = request.guidance_scale
        if self.defaults.dynamic_guidance:
            steps = self._steps(request)[1]
            scale = lambda timestep: dynamic_guidance(request.guidance_scale, steps, timestep[0].item())  # noqa: E731
        call = _TransformerCall(self, conditions.extras.get("image_latents"))
        return GuidedDenoiser(self.transformer, cond, uncond, scale, batched=batched, call=call,
                              guided=request.guidance_scale > 1.0)
