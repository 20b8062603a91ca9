"""Finding and loading checkpoints in diffusers layout: a local folder, a registry name or a hub id.

The folder's `model_index.json` names each component's library and class (any tokenizer or text encoder
that transformers knows); each is loaded with that class's `from_pretrained`. An optional `studio.json`
beside it carries the studio's defaults for the model (size, length, steps, guidance, conditioning strategy).
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.request import GenerationRequest, default_guidance

if TYPE_CHECKING:  # the registry and the folder checks run before torch is needed (the CLI's usage errors)
    import torch

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class ModelNotAvailable(RuntimeError):
    """The model cannot be found locally and cannot be downloaded now; the message says what to run."""


_REQUEST = {f.name: f.default for f in fields(GenerationRequest)}


@dataclass(frozen=True)
class ModelDefaults:
    """A model's settings where a request leaves them out (`pipelines.modes.build`). Unset, they are a
    request's own (Wan 2.1's: 832x480, 81 frames at 16 fps, 50 steps, guidance 5)."""

    width: int = _REQUEST["width"]
    height: int = _REQUEST["height"]
    num_frames: int = _REQUEST["num_frames"]
    fps: float = _REQUEST["fps"]
    steps: int = _REQUEST["steps"]
    guidance_scale: float = _REQUEST["guidance_scale"]
    # Extend, loop and connect (None: guidance_scale). Their new frames must meet held frames, and guidance
    # that pushes them towards the prompt also pushes them away from those frames; Stable Video Diffusion
    # lowers its guidance next to its conditioning frame for the same reason (Blattmann et al., arXiv 2311.15127).
    join_guidance_scale: float | None = None
    # Two-expert models (Wan 2.2 A14B): the low-noise expert's guidance (None: guidance_scale, as diffusers).
    guidance_scale_2: float | None = None
    # Frames of each clip extend, loop and connect hold when none are asked for (None: the modes' own
    # default); 1 where a checkpoint holds single stills (Wan's image-to-video: a clip's facing frame).
    context_frames: int | None = None
    conditioning_strategy: str = "replace"
    max_sequence_length: int = 512
    image_first: bool = False  # text-to-video samples its first frame alone, then the clip (see generate)
    # The most latent tokens (the DiT's patches over width, height and time) one request may have; None:
    # LATENT_TOKEN_FACTOR times those of the default size and length (see VideoPipeline.check_request).
    max_latent_tokens: int | None = None
    # CogVideoX's dynamic classifier-free guidance (diffusers' `use_dynamic_cfg`): the scale rises from 1 over
    # the steps on a cosine ramp. Only families that read it (CogVideoX) use it.
    dynamic_guidance: bool = False
    # Stable Video Diffusion's micro-conditioning (GenerationRequest's KNOBS): None on models that read none.
    motion_bucket_id: int | None = None
    noise_aug_strength: float | None = None
    min_guidance_scale: float | None = None
    # The prompt enhancer's system prompt in this model's caption style (pipelines/enhancer.py); None: the
    # general video caption style. The embedded model's describes its world's words.
    enhancer_style: str | None = None

    def guidance_for(self, mode: str) -> float:
        """The default guidance scale of a request of `mode`."""
        return default_guidance(mode, self.guidance_scale, self.join_guidance_scale)


@dataclass(frozen=True)
class ModelEntry:
    source: str  # hub id or a folder
    defaults: ModelDefaults
    note: str = ""


# Defaults several registry entries share, and their notes.
_LTX = ModelDefaults(width=704, height=512, num_frames=161, fps=25.0, steps=50, guidance_scale=3.0,
                     conditioning_strategy="per_token", max_sequence_length=128)
_COGVIDEOX = ModelDefaults(width=720, height=480, num_frames=49, fps=8.0, steps=50, guidance_scale=6.0,
                           max_sequence_length=226)
_COGVIDEOX_15 = replace(_COGVIDEOX, width=1360, height=768, num_frames=81, fps=16.0)
_SVD = ModelDefaults(width=1024, height=576, num_frames=14, fps=7.0, steps=25, guidance_scale=3.0,
                     motion_bucket_id=127, noise_aug_strength=0.02, min_guidance_scale=1.0)
_WAN_I2V = ModelDefaults(context_frames=1)  # Wan 2.1's defaults; a clip's facing frame is what it holds
_WAN_A14B = ModelDefaults(width=1280, height=720, steps=40, guidance_scale=4.0, guidance_scale_2=3.0)
_UNMEASURED = "not yet measured here"
_14B = f"a 14B denoiser: about 28 GB of weights in bfloat16, before UMT5-XXL and activations ({_UNMEASURED})"
_A14B = f"two 14B experts: about 56 GB of weights in bfloat16, before UMT5-XXL and activations ({_UNMEASURED})"

# Registry: names shown in the CLI and the studio's dropdown.
MODELS: dict[str, ModelEntry] = {
    "embedded": ModelEntry(str(ASSETS / "embedded-model"), ModelDefaults(), "runs on a CPU"),
    "wan2.1-t2v-1.3b": ModelEntry("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", ModelDefaults(),
                                  f"Wan's README: 8.2 GB of GPU memory at 832x480x81 with offloading ({_UNMEASURED})"),
    "wan2.2-ti2v-5b": ModelEntry(
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        ModelDefaults(width=1280, height=704, num_frames=121, fps=24.0, conditioning_strategy="per_token"),
        f"Wan's README: 22.9 GB of GPU memory at 1280x704x121 ({_UNMEASURED})"),
    # LTX-Video 2B: LTXPipeline's call defaults. The hub folder of Lightricks/LTX-Video holds 0.9.1 in diffusers
    # layout (its timestep-aware VAE: diffusers' LTX examples decode it with decode_timestep).
    "ltx-video-0.9.1": ModelEntry("Lightricks/LTX-Video", _LTX,
                                  f"2B DiT, 32x8 VAE: 7,392 latent tokens at 704x512x161 ({_UNMEASURED})"),
    "ltx-video-0.9.5": ModelEntry("Lightricks/LTX-Video-0.9.5", _LTX,
                                  f"2B DiT with keyframes anywhere in the clip, new VAE ({_UNMEASURED})"),
    # CogVideoXPipeline's call defaults (CogVideoX 1.5: its model card's 1360x768 at 81 frames and 16 fps).
    "cogvideox-2b": ModelEntry("THUDM/CogVideoX-2b", _COGVIDEOX, _UNMEASURED),
    "cogvideox-5b": ModelEntry("THUDM/CogVideoX-5b", _COGVIDEOX, _UNMEASURED),
    "cogvideox-5b-i2v": ModelEntry("THUDM/CogVideoX-5b-I2V", _COGVIDEOX,
                                   f"animates a still at 720x480 only (its learned positional table); {_UNMEASURED}"),
    "cogvideox1.5-5b": ModelEntry("THUDM/CogVideoX1.5-5B", _COGVIDEOX_15, _UNMEASURED),
    "cogvideox1.5-5b-i2v": ModelEntry("THUDM/CogVideoX1.5-5B-I2V", _COGVIDEOX_15, f"animates a still; {_UNMEASURED}"),
    # StableVideoDiffusionPipeline's call defaults; the frame count is the UNet's num_frames, as diffusers takes it.
    "svd": ModelEntry("stabilityai/stable-video-diffusion-img2vid", _SVD,
                      f"animates a still (no prompt); {_UNMEASURED}"),
    "svd-xt": ModelEntry("stabilityai/stable-video-diffusion-img2vid-xt", replace(_SVD, num_frames=25),
                         f"animates a still (no prompt); {_UNMEASURED}"),
    # Wan 2.1 image-to-video 14B: animate a still (the first-last-frame checkpoint also connects two stills).
    # Sizes are each checkpoint's own resolution, steps and guidance diffusers' call defaults (Wan's own).
    "wan2.1-i2v-14b-480p": ModelEntry("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", _WAN_I2V, _14B),
    "wan2.1-i2v-14b-720p": ModelEntry("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
                                      replace(_WAN_I2V, width=1280, height=720), _14B),
    "wan2.1-flf2v-14b-720p": ModelEntry("Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",
                                        replace(_WAN_I2V, width=1280, height=720), _14B),
    # Wan 2.2 A14B: two 14B experts; Wan's own sample settings (wan/configs/wan_{t2v,i2v}_A14B.py): 40 steps,
    # guidance (high-noise, low-noise) 4.0 / 3.0 for text-to-video and 3.5 / 3.5 for image-to-video.
    "wan2.2-t2v-a14b": ModelEntry("Wan-AI/Wan2.2-T2V-A14B-Diffusers", _WAN_A14B, _A14B),
    "wan2.2-i2v-a14b": ModelEntry("Wan-AI/Wan2.2-I2V-A14B-Diffusers",
                                  replace(_WAN_A14B, guidance_scale=3.5, guidance_scale_2=3.5, context_frames=1), _A14B),
}


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model(model: str) -> tuple[Path, str, ModelDefaults | None]:
    """(local folder, model id, registry defaults) for a registry name, a folder or a hub id."""
    entry = MODELS.get(model) or next((e for e in MODELS.values() if e.source == model), None)
    source = entry.source if entry else model
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise ModelNotAvailable(f"{str(folder)!r} is not a diffusers model folder: it has no model_index.json")
        # An id that survives a change of directory, and names a registry folder by its registry name.
        model_id = next((name for name, e in MODELS.items() if Path(e.source).resolve() == folder.resolve()),
                        str(folder.resolve()))
        return folder, model_id, entry.defaults if entry else None
    if model == "embedded":
        raise ModelNotAvailable(
            f"the embedded model is not in {str(folder)!r}; train it (see training/) or pass --model with a "
            "diffusers folder or a hub id"
        )
    if not _looks_like_hub_id(source):
        raise ModelNotAvailable(
            f"model {model!r} is neither a folder with a model_index.json, a hub id like 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers', "
            f"nor one of {', '.join(MODELS)}"
        )
    return _download(source), source, entry.defaults if entry else None


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        pass
    hint = (f"model {repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached. "
            f"Download it on a connected machine with `hf download {repo_id}` "
            f"(or pass --model with a local diffusers folder)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelNotAvailable(hint + "; HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(repo_id))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
        raise ModelNotAvailable(f"{hint} ({type(error).__name__})") from error


def read_defaults(folder: Path, defaults: ModelDefaults) -> ModelDefaults:
    """`defaults` (the registry's, else the family's) with the folder's studio.json over them."""
    studio = folder / "studio.json"
    if studio.is_file():
        known = {f.name for f in fields(ModelDefaults)}
        overrides = {k: v for k, v in json.loads(studio.read_text()).items() if k in known}  # others: components
        defaults = replace(defaults, **overrides)
    return defaults


def component_path(folder: Path, name: str) -> Path:
    """Where a component's files are: its subfolder, or a folder shipped by an installed package when the
    model's studio.json says so ("package:NAME/sub"), so large shared encoders are not copied per model."""
    studio = folder / "studio.json"
    overrides = json.loads(studio.read_text()).get("components", {}) if studio.is_file() else {}
    source = overrides.get(name)
    if source is None:
        return folder / name
    package, _, sub = source.removeprefix("package:").partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ModelNotAvailable(f"{name} of {str(folder)!r} comes from the Python package {package!r}, which is "
                                f"not installed: pip install {package.replace('_', '-')}") from None
    return Path(str(root / sub))


def load_component(folder: Path, name: str, spec: list[str], dtype: torch.dtype | None) -> Any:
    library, class_name = spec
    module = importlib.import_module(library)
    component_cls = getattr(module, class_name)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    return component_cls.from_pretrained(component_path(folder, name), **kwargs)


def load_components(folder: Path, index: dict[str, Any], required: tuple[str, ...], dtype: torch.dtype
                    ) -> dict[str, Any]:
    """Every component `model_index.json` lists, with the class it names: VAEs in float32 (Wan's degrades in
    half precision), processors, tokenizers and schedulers as saved, every other model in `dtype`."""
    listed = {name: spec for name, spec in index.items()
              if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and spec[0] is not None}
    missing = [name for name in required if name not in listed]
    if missing:
        raise ModelNotAvailable(f"{str(folder)!r} lacks components the pipeline needs: {', '.join(missing)}")
    import torch

    unweighted = ("tokenizer", "scheduler", "processor", "feature_extractor")
    return {name: load_component(folder, name, spec,
                                 torch.float32 if name == "vae" else None if name.startswith(unweighted) or
                                 name.endswith(unweighted) else dtype)
            for name, spec in listed.items()}
