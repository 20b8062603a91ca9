"""Seamless joins between copied-through source frames and generated frames.

Extend, loop and connect copy the source clips through (a clip that closes the window perhaps from its
second frame, below) and show decoded frames elsewhere. The VAE does not reconstruct the held frames exactly
(training/NOTES.md, "The seams", has the figures), so at a join the picture jumps by the
reconstruction error even where the model continues the motion perfectly: a colour or brightness step, the
"colour drift at joins" users of Wan-based tools report.
The held frames are decoded too, so that error is known there. Carrying it into the generated frames next
to the join makes the join's step the decoder's own frame step:

- the static part (the per-pixel median over the held frames: mostly the background's error) stays on every
  generated frame, so the generated span keeps the source's look;
- the rest of the frame next to the join (mostly the moving objects' error) fades out over `EDGE_FRAMES`,
  so it leaves no ghost where the objects were;
- a span between two joins (connect, loop) hands one correction over to the other along a smootherstep of
  position: flat at both ends, so beside each join its own correction stays nearly whole (a linear blend
  moves the correction by 1/n of their difference on every step of an n-step span, the joins' steps
  included; the comparison is in training/NOTES.md, "The seams"). It changes fastest mid-span, where no join
  is scored; there the crossfade's own steps are several times larger.

A clip copied through from a frame after 0 (connect's B, a backward extension's clip) starts in a generated
latent: the causal encoder reads a clip's first frame alone, so that frame only warms the encoder and the
model never sees it. The cut into the clip can fall before that frame or after it (the output then shows the
model's frame there), and the pipeline keeps the combination of cuts whose worst join steps least, as a
seam search in image stitching picks the least visible seam:
- before it, the frame's residual is the decoder's error plus how far the model's frame is from the clip's;
  carried back, it blends the bridge's last frames into the clip's first frame, much as overlapping windows
  are cross-faded, and spreads the model's miss over them: best for a clip that moves;
- after it, the join is a step into a held latent, like the opening join, where a decoder trained for that
  step (`train_vae --boundary-weight`) is smoothest: best for a clip that holds still.
A loop's bridge wraps back to the clip's own first frame, so its cut always falls before it.

A join is scored by the change across it over the clip's median frame-to-frame change (1 is as smooth as
the clip itself; a loop's wrap, last frame back to first, counts as a join). `best_of` requests keep the
candidate whose worst join scores lowest.
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


def smootherstep(t: float) -> float:
    """Perlin's 6t^5 - 15t^4 + 10t^3: 0 to 1 with zero first and second derivatives at both ends."""
    return t * t * t * (t * (6 * t - 15) + 10)


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
            t = smootherstep((w - a.edge) / (b.edge - a.edge))
            correction = (1 - t) * a.correction(w - a.edge) + t * b.correction(b.edge - w)
        else:
            j = a if a is not None else b
            correction = j.correction(abs(w - j.edge))
        out[w] = np.clip(window[w].astype(np.float32) + correction, 0, 255).round().astype(np.uint8)
    return out


def frame_steps(video: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F-1,) mean absolute change from each frame to the next."""
    return np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def join_ratios(video: np.ndarray, seams: list[int], wraps: bool) -> list[float]:
    """Every join's change over the clip's median frame-to-frame change: each seam (an output frame index
    where copied and generated frames meet: the change from frame seam-1 to seam), then the wrap (last frame
    back to the first) when the clip loops."""
    if not seams and not wraps:  # nothing joined (text to video, an image): no frame steps to measure
        return []
    steps = frame_steps(video)  # (F-1,)
    median = max(float(np.median(steps)), 1e-6)
    ratios = [float(steps[s - 1]) / median for s in seams]
    if wraps:
        ratios.append(float(np.abs(video[0].astype(np.float32) - video[-1].astype(np.float32)).mean()) / median)
    return ratios


def closing_seam(video: np.ndarray, clip: np.ndarray, at: int) -> int:
    """Output index where `clip`, closing a join at output index `at`, starts to be copied through: `at`, or
    `at + 1` where the cut fell after its first frame (the pipeline keeps the smoother cut). Read from the
    pixels alone; a clip copied through neither way is an error."""
    if np.array_equal(video[at:at + len(clip)], clip):
        return at
    if np.array_equal(video[at + 1:at + len(clip)], clip[1:]):
        return at + 1
    raise ValueError(f"the clip is not copied through from output frame {at} or {at + 1}")


def seam_ratio(video: np.ndarray, seam: int) -> float:
    return join_ratios(video, [seam], wraps=False)[0]


def wrap_ratio(video: np.ndarray) -> float:
    return join_ratios(video, [], wraps=True)[0]
