"""A cheap latent-to-RGB preview for progress displays: one linear map per model instead of a VAE decode.

Latent channels of a VAE are close to a linear function of the colour of the 8x8 patch they cover (the
observation behind ComfyUI's and A1111's "latent RGB factors"). Rather than ship factors per checkpoint, the
map is fitted once per pipeline by least squares on the VAE's own encoding of a colour test card, so the
embedded model, Wan and any other VAE get a preview with no extra files.
"""

from __future__ import annotations

import numpy as np
import torch


def test_card(width: int, height: int) -> np.ndarray:
    """(1, H, W, 3) uint8: hue across, brightness down, with a grey ramp strip, smooth at the patch scale."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    hue = xs / width * 6.0
    value = 1.0 - ys / height * 0.85
    sector = np.floor(hue) % 6
    f = hue - np.floor(hue)
    p, q, t = np.zeros_like(f), 1 - f, f
    one = np.ones_like(f)
    table = [(one, t, p), (q, one, p), (p, one, t), (p, q, one), (t, p, one), (one, p, q)]
    rgb = np.zeros((height, width, 3), np.float32)
    for index, (r, g, b) in enumerate(table):
        chosen = sector == index
        rgb[chosen] = np.stack([r, g, b], -1)[chosen]
    rgb *= value[..., None]
    strip = ys > height * 0.8  # a grey ramp so black, white and greys are in the fit
    rgb[strip] = (xs[strip] / width)[:, None]
    return (rgb * 255).round().astype(np.uint8)[None]


class LatentPreviewer:
    """Maps normalised latents (1, C, F, h, w) to a small RGB frame with a fitted (C + 1, 3) matrix."""

    def __init__(self, factors: torch.Tensor):
        self.factors = factors  # (C + 1, 3): weights and bias

    @classmethod
    @torch.no_grad()
    def fit(cls, encode, width: int, height: int) -> LatentPreviewer:
        """`encode`: (F, H, W, 3) uint8 -> (1, C, F', h, w) normalised latents (the pipeline's `encode`)."""
        card = test_card(width, height)
        latents = encode(card)[0, :, 0].float().cpu()  # (C, h, w)
        channels, h, w = latents.shape
        target = torch.from_numpy(card[0]).float().div(255.0)  # (H, W, 3)
        target = torch.nn.functional.adaptive_avg_pool2d(target.permute(2, 0, 1)[None], (h, w))[0]  # (3, h, w)
        design = torch.cat([latents.reshape(channels, -1), torch.ones(1, h * w)]).T  # (h*w, C + 1)
        ridge = 1e-3 * torch.eye(channels + 1)
        factors = torch.linalg.solve(design.T @ design + ridge, design.T @ target.reshape(3, -1).T)  # (C + 1, 3)
        return cls(factors)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, frame: int = -1, scale: int = 8) -> np.ndarray:
        """(H, W, 3) uint8 of one latent frame (default the last), upscaled by `scale` with nearest pixels."""
        latent = latents[0, :, frame].float().cpu()  # (C, h, w)
        channels = latent.shape[0]
        rgb = torch.einsum("chw,cd->hwd", latent, self.factors[:channels]) + self.factors[channels]  # (h, w, 3)
        image = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return image.repeat(scale, axis=0).repeat(scale, axis=1)
