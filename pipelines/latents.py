"""Latent sidecars: the final latents of a clip, saved beside it, so chained edits skip the VAE round trip.

A clip's latents form a causal timeline: latent 0 encodes the single frame `first_frame`, each later latent
the next `temporal` frames. A sidecar may cover only part of its clip (a pixel-conditioned extension knows
latents for its generated window only); `covers` says which frames.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipelines.video_io import atomic_path

SIDECAR_SUFFIX = ".latents.safetensors"
log = logging.getLogger(__name__)


def sidecar_path(media: str | Path) -> Path:
    media = Path(media)
    return media.with_name(media.name + SIDECAR_SUFFIX)


def media_digest(path: str | Path) -> str:
    """sha256 of a file, or of a PNG frame folder's files in name order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png") if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class LatentTimeline:
    latents: torch.Tensor  # (C, F, H, W) normalised latents, float32 on CPU
    first_frame: int  # clip frame encoded alone by latent 0
    num_frames: int  # frames of the clip the timeline belongs to
    fps: float
    model_id: str
    temporal: int = 4

    @property
    def last_frame(self) -> int:
        return self.first_frame + self.temporal * (self.latents.shape[1] - 1)

    def latent_ending_at(self, frame: int) -> int | None:
        """Index of the latent whose last frame is `frame`, or None if no latent ends there."""
        offset = frame - self.first_frame
        if offset < 0 or offset % self.temporal or frame > self.last_frame:
            return None
        return offset // self.temporal


def save_timeline(media: str | Path, timeline: LatentTimeline) -> Path:
    """Write the sidecar of `media` (after `media` itself is written: it records the file's digest)."""
    path = sidecar_path(media)
    metadata = {
        "first_frame": str(timeline.first_frame),
        "num_frames": str(timeline.num_frames),
        "fps": repr(float(timeline.fps)),
        "model_id": timeline.model_id,
        "temporal": str(timeline.temporal),
        "media_sha256": media_digest(media),
    }
    with atomic_path(path) as tmp:
        save_file({"latents": timeline.latents.detach().to("cpu", torch.float32).contiguous()}, str(tmp), metadata=metadata)
    return path


def load_timeline(media: str | Path) -> tuple[LatentTimeline | None, str]:
    """The sidecar of `media` if it exists and still matches the file; else None and the reason, worded to
    follow the clip's name ("beach.mp4 has no saved latents")."""
    path = sidecar_path(media)
    if not path.is_file():
        return None, "has no saved latents"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            latents = handle.get_tensor("latents")
        timeline = LatentTimeline(
            latents=latents,
            first_frame=int(metadata["first_frame"]),
            num_frames=int(metadata["num_frames"]),
            fps=float(metadata["fps"]),
            model_id=metadata["model_id"],
            temporal=int(metadata["temporal"]),
        )
    except (OSError, KeyError, ValueError, SafetensorError) as error:
        log.warning("unreadable latent sidecar %s: %s", path, error)
        return None, "has saved latents that cannot be read"
    if latents.ndim != 4:
        return None, "has saved latents that cannot be read"
    if metadata.get("media_sha256") != media_digest(media):
        return None, "changed since its latents were saved"
    return timeline, "ok"

