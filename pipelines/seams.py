"""Seamless joins between copied-through source frames and generated frames.

Extend, loop and connect copy the source clips through untouched and show decoded frames elsewhere. The
VAE does not reconstruct the held frames exactly (about 26 dB on the embedded model, a few dB better on
Wan's), so at a join the picture jumps by the reconstruction error even where the model continues the
motion perfectly: a colour or brightness step, the "colour drift at joins" users of Wan-based tools report.
The held frames are decoded too, so that error is known there. Carrying it into the generated frames next
to the join makes the join's step the decoder's own frame step:

- the static part (the per-pixel median over the held frames: mostly the background's error) stays on every
  generated frame, so the generated span keeps the source's look;
- the rest of the frame next to the join (mostly the moving objects' error) fades out over `EDGE_FRAMES`,
  so it leaves no ghost where the objects were;
- a span between two joins (connect, loop) blends the two corrections by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGE_FRAMES = 3


@dataclass
class Join:
    """Where a copied-through clip meets generated frames, in window coordinates."""

    edge: int  # window index of the copied frame that the generated frames touch
    side: int  # +1: the generated frames follow the edge; -1: they precede it
    residuals: np.ndarray  # (K, H, W, 3) float32: source minus decode over the held frames, the edge's last

    def __post_init__(self) -> None:
        self.static = np.median(self.residuals, axis=0)  # (H, W, 3)

    def correction(self, distance: int) -> np.ndarray:
        """(H, W, 3) float32 to add to the generated frame `distance` frames away from the edge."""
        fade = max(0.0, 1.0 - (distance - 1) / EDGE_FRAMES)
        return self.static + (self.residuals[-1] - self.static) * fade


def held_residuals(source: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """(K, H, W, 3) uint8 held source frames and their decodes -> float32 residuals."""
    return source.astype(np.float32) - decoded.astype(np.float32)


def carry_residuals(window: np.ndarray, joins: list[Join]) -> np.ndarray:
    """(T, H, W, 3) uint8 decoded window -> the same with every generated frame next to a join corrected.
    Frames outside the joins' generated sides are returned unchanged."""
    if not joins:
        return window
    out = window.copy()
    for w in range(len(window)):
        before = [j for j in joins if j.side > 0 and j.edge < w]  # joins whose generated frames follow
        after = [j for j in joins if j.side < 0 and j.edge > w]  # joins whose generated frames precede
        a = max(before, key=lambda j: j.edge) if before else None
        b = min(after, key=lambda j: j.edge) if after else None
        if a is None and b is None:
            continue
        if a is not None and b is not None:
            t = (w - a.edge) / (b.edge - a.edge)
            correction = (1 - t) * a.correction(w - a.edge) + t * b.correction(b.edge - w)
        else:
            j = a if a is not None else b
            correction = j.correction(abs(w - j.edge))
        out[w] = np.clip(window[w].astype(np.float32) + correction, 0, 255).round().astype(np.uint8)
    return out
