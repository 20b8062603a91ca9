"""A procedural video world with captions: the embedded model's training data and the tests' fixtures.

Scenes are one or two shapes with a colour, a size and a motion, over a background, in a look. Everything is
deterministic given a seed, and rendered at any size, length and frame rate: positions are functions of time
in seconds and of normalised image coordinates (the shorter side spans 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 225, 30), "green": (40, 180, 60),
    "cyan": (30, 210, 220), "blue": (35, 70, 225), "purple": (140, 50, 200), "pink": (245, 120, 185),
    "white": (245, 245, 245), "black": (15, 15, 15),
}
COLOUR_WORDS = {
    "red": ["red", "crimson", "scarlet"], "orange": ["orange", "tangerine"], "yellow": ["yellow", "golden", "lemon"],
    "green": ["green", "emerald", "lime"], "cyan": ["cyan", "turquoise", "aqua"], "blue": ["blue", "navy", "cobalt"],
    "purple": ["purple", "violet", "lilac"], "pink": ["pink", "rose", "magenta"], "white": ["white", "snow-white"],
    "black": ["black", "jet-black", "dark"],
}
SHAPES = ("ball", "square", "triangle", "star", "ring", "diamond")
SHAPE_WORDS = {
    "ball": ["ball", "sphere", "circle", "orb", "dot"], "square": ["square", "box", "cube", "block"],
    "triangle": ["triangle", "pyramid", "wedge"], "star": ["star", "starburst"],
    "ring": ["ring", "hoop", "donut"], "diamond": ["diamond", "rhombus", "gem"],
}
DIRECTIONS: dict[str, tuple[float, float]] = {  # unit motion in image coordinates (y down)
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
    "up-left": (-0.7071, -0.7071), "up-right": (0.7071, -0.7071),
    "down-left": (-0.7071, 0.7071), "down-right": (0.7071, 0.7071),
}
MOTIONS = (*DIRECTIONS, "bounce", "spin", "grow", "shrink", "orbit", "still")
MOTION_WORDS = {
    "left": ["moves to the left", "drifts left", "slides to the left", "glides leftward", "travels left"],
    "right": ["moves to the right", "drifts right", "slides to the right", "glides rightward", "travels right"],
    "up": ["moves up", "rises", "floats upward", "drifts up", "climbs"],
    "down": ["moves down", "falls", "sinks", "drifts down", "descends"],
    "up-left": ["moves up and to the left", "drifts diagonally up-left", "rises toward the left"],
    "up-right": ["moves up and to the right", "drifts diagonally up-right", "rises toward the right"],
    "down-left": ["moves down and to the left", "drifts diagonally down-left", "sinks toward the left"],
    "down-right": ["moves down and to the right", "drifts diagonally down-right", "sinks toward the right"],
    "bounce": ["bounces", "bounces on the ground", "hops up and down"],
    "spin": ["spins", "rotates", "twirls in place"],
    "grow": ["grows", "gets bigger", "expands"],
    "shrink": ["shrinks", "gets smaller", "contracts"],
    "orbit": ["circles around", "orbits the center", "moves in a circle"],
    "still": ["sits still", "stays in place", "rests motionless"],
}
BACKGROUNDS = ("solid", "day", "sunset", "night", "floor")
BACKGROUND_WORDS = {
    "day": ["in a clear day sky", "against a blue sky", "under a bright sky"],
    "sunset": ["at sunset", "against a sunset sky", "in the evening glow"],
    "night": ["at night", "under the stars", "in a starry night sky"],
    "floor": ["above a floor", "over the ground", "in a room with a horizon"],
}
LOOKS = ("flat", "outlined", "glowing", "pixel", "pastel")
LOOK_WORDS = {
    "flat": ["", "flat", "simple"], "outlined": ["outlined", "with a dark outline", "cartoon"],
    "glowing": ["glowing", "neon", "shining"], "pixel": ["pixel-art", "pixelated", "8-bit"],
    "pastel": ["pastel", "soft pastel", "pale"],
}
SPEED = 0.3  # normalised units per second for directional motion


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    motion: str
    large: bool = False
    start: tuple[float, float] = (0.5, 0.5)  # normalised centre at t = 0
    phase: float = 0.0


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str = "day"
    background_colour: str = "blue"  # for solid backgrounds
    look: str = "flat"
    pan: float = 0.0  # camera pan speed (normalised units per second; the background moves)
    seed: int = 0
    extras: dict = field(default_factory=dict, compare=False)


# ---- sampling scenes -------------------------------------------------------------------------------------
LOW_CONTRAST = {("black", "night"), ("white", "day"), ("orange", "sunset")}  # never generated


def held_out(colour: str, motion: str, background: str) -> bool:
    """Attribute combinations never shown in training: the judge's held-out prompts draw only from these."""
    if motion not in DIRECTIONS or background == "solid" or (colour, background) in LOW_CONTRAST:
        return False
    key = COLOURS_INDEX[colour] * 31 + MOTION_INDEX[motion] * 7 + BACKGROUND_INDEX[background] * 3
    return key % 6 == 0


COLOURS_INDEX = {c: i for i, c in enumerate(COLOURS)}
MOTION_INDEX = {m: i for i, m in enumerate(MOTIONS)}
BACKGROUND_INDEX = {b: i for i, b in enumerate(BACKGROUNDS)}


def _start_for(motion: str, rng: np.random.Generator, aspect: float, duration: float) -> tuple[float, float]:
    """A start that keeps the object in view for `duration` seconds."""
    if motion in DIRECTIONS:
        dx, dy = DIRECTIONS[motion]
        travel = SPEED * duration
        x = 0.5 * aspect - dx * travel / 2 + rng.uniform(-0.1, 0.1) * aspect
        y = 0.5 - dy * travel / 2 + rng.uniform(-0.1, 0.1)
        return float(x), float(y)
    if motion == "bounce":
        return float(rng.uniform(0.3, 0.7) * aspect), 0.75
    return float(rng.uniform(0.35, 0.65) * aspect), float(rng.uniform(0.35, 0.65))


def sample_scene(seed: int, aspect: float = 1.0, duration: float = 2.0, split: str = "train") -> Scene:
    """A random scene. split='train' never yields a held-out (colour, motion, background) for its first
    thing; split='heldout' yields only those."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        colour = str(rng.choice(list(COLOURS)))
        motion = str(rng.choice(MOTIONS))
        background = str(rng.choice(BACKGROUNDS))
        if (colour, background) not in LOW_CONTRAST and held_out(colour, motion, background) == (split == "heldout"):
            break
    else:  # pragma: no cover - the rejection loop always finds one
        raise RuntimeError("no scene found")
    bg_colour = str(rng.choice([c for c in COLOURS if c != colour]))
    first = Thing(str(rng.choice(SHAPES)), colour, motion, bool(rng.random() < 0.5),
                  _start_for(motion, rng, aspect, duration), float(rng.uniform(0, 2 * math.pi)))
    things = [first]
    if split == "train" and rng.random() < 0.25:
        other_motion = str(rng.choice(MOTIONS))
        other_colour = str(rng.choice([c for c in COLOURS if c not in (colour, bg_colour)]))
        things.append(Thing(str(rng.choice(SHAPES)), other_colour, other_motion, False,
                            _start_for(other_motion, rng, aspect, duration), float(rng.uniform(0, 2 * math.pi))))
    look = str(rng.choice(LOOKS)) if split == "train" else "flat"
    pan = float(rng.choice([0.0, 0.0, 0.0, -0.1, 0.1])) if background in ("day", "floor", "night") else 0.0
    return Scene(tuple(things), background, bg_colour, look, pan, seed)


# ---- captions --------------------------------------------------------------------------------------------
def caption(scene: Scene, seed: int | None = None, drop: float = 0.0) -> str:
    """A paraphrased caption; with probability `drop` each of look, size and background is left out."""
    rng = np.random.default_rng(scene.seed if seed is None else seed)
    pick = lambda words: str(rng.choice(words))  # noqa: E731
    parts = []
    for i, thing in enumerate(scene.things):
        look = pick(LOOK_WORDS[scene.look]) if rng.random() >= drop else ""
        size = pick(["large", "big"] if thing.large else ["small", "little", "tiny"]) if rng.random() >= drop else ""
        words = [w for w in (look, size, pick(COLOUR_WORDS[thing.colour]), pick(SHAPE_WORDS[thing.shape])) if w]
        article = "an" if words[0][0] in "aeiou" else "a"
        parts.append(f"{'' if i == 0 else 'and '}{article} {' '.join(words)} {pick(MOTION_WORDS[thing.motion])}")
    text = " ".join(parts)
    if rng.random() >= drop:
        if scene.background == "solid":
            text += f" on a {pick(COLOUR_WORDS[scene.background_colour])} background"
        else:
            text += " " + pick(BACKGROUND_WORDS[scene.background])
    return text


def prompt_for(colour: str, shape: str, motion: str, background: str, background_colour: str = "blue") -> str:
    """The canonical prompt for an attribute combination (the judge's held-out prompts)."""
    bg = (f"on a {background_colour} background" if background == "solid" else BACKGROUND_WORDS[background][0])
    return f"a {colour} {SHAPE_WORDS[shape][0]} {MOTION_WORDS[motion][0]} {bg}"


def caption_style() -> str:
    """The prompt enhancer's system prompt for a model trained on this world (pipelines/enhancer.py): the
    world's whole vocabulary, so that free wording is rewritten into words the model was trained on."""
    words = lambda table: ", ".join(dict.fromkeys(w for ws in table.values() for w in ws if w))  # noqa: E731
    return (
        "You rewrite a user's prompt for a small video model that knows only one world: one or two shapes, "
        "each of one colour and one motion, over a background, in one look. Rewrite the prompt as one short "
        "caption in that world's words, keeping what the user asked for as closely as the words allow and "
        "choosing the nearest word for anything else. "
        f"Shapes: {words(SHAPE_WORDS)}. Colours: {words(COLOUR_WORDS)}. "
        f"Motions: {words(MOTION_WORDS)}. "
        f"Backgrounds: on a <colour> background, {words(BACKGROUND_WORDS)}. Looks: {words(LOOK_WORDS)}. "
        f"Sizes: large, small. For example: \"{caption(sample_scene(7))}\". Answer with the caption alone."
    )


# ---- rendering -------------------------------------------------------------------------------------------
def _background(scene: Scene, xs: np.ndarray, ys: np.ndarray, t: float) -> np.ndarray:
    h, w = ys.shape
    if scene.background == "solid":
        return np.broadcast_to(np.array(COLOURS[scene.background_colour], np.float32), (h, w, 3)).copy()
    v = ys / ys.max() if ys.max() > 0 else ys  # 0 top .. 1 bottom
    if scene.background == "day":
        top, bottom = np.array([40, 110, 230], np.float32), np.array([170, 215, 250], np.float32)
        img = top + (bottom - top) * v[..., None]
    elif scene.background == "sunset":
        stops = np.array([[60, 30, 110], [230, 90, 70], [250, 180, 60]], np.float32)
        a = np.clip(v * 2, 0, 1)[..., None]
        b = np.clip(v * 2 - 1, 0, 1)[..., None]
        img = np.where(v[..., None] < 0.5, stops[0] + (stops[1] - stops[0]) * a, stops[1] + (stops[2] - stops[1]) * b)
    elif scene.background == "night":
        img = np.broadcast_to(np.array([10, 14, 40], np.float32), (h, w, 3)).copy()
        rng = np.random.default_rng(1234)
        stars = rng.uniform(0, 1, size=(40, 2))
        short = min(h, w)
        for sx, sy in stars:
            x = ((sx * w / short * 2 - scene.pan * t) % (w / short * 2)) * short / 2
            y = sy * h
            mask = (np.abs(xs * short - x) < 0.9) & (np.abs(ys * short - y) < 0.9)
            img[mask] = (230, 230, 200)
    else:  # floor
        horizon = 0.62
        wall = np.array([200, 190, 170], np.float32) + 0 * v[..., None]
        floor = np.array([120, 85, 55], np.float32) * (0.8 + 0.4 * v[..., None])
        img = np.where(v[..., None] < horizon, wall, floor)
        stripes = ((xs + scene.pan * t) * 6) % 1.0 < 0.5
        img = np.where(((v >= horizon) & stripes)[..., None], img * 0.85, img)
    return img.astype(np.float32)


def _shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Signed distance (normalised units, negative inside) of a shape of radius r centred at 0."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = c * dx + s * dy, -s * dx + c * dy
    if shape == "ball":
        return np.hypot(x, y) - r
    if shape == "ring":
        return np.abs(np.hypot(x, y) - r * 0.75) - r * 0.25
    if shape == "square":
        q = np.maximum(np.abs(x), np.abs(y))
        return q - r * 0.85
    if shape == "diamond":
        return (np.abs(x) + np.abs(y)) * 0.7071 - r * 0.75
    if shape == "triangle":
        k = math.sqrt(3)
        px, py = np.abs(x), -y + r * 0.25  # apex up (image y points down)
        return np.maximum(px * k * 0.5 + py * 0.5, -py) - r * 0.5
    if shape == "star":
        theta = np.arctan2(y, x)
        radius = np.hypot(x, y)
        edge = r * (0.72 + 0.28 * np.cos(5 * theta + math.pi / 2))
        return radius - edge
    raise ValueError(f"unknown shape {shape!r}")


def _thing_state(thing: Thing, t: float) -> tuple[float, float, float, float]:
    """(x, y, radius, angle) at time t seconds."""
    x, y = thing.start
    r = 0.16 if thing.large else 0.09
    angle = 0.0
    if thing.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[thing.motion]
        x, y = x + dx * SPEED * t, y + dy * SPEED * t
    elif thing.motion == "bounce":
        period = 1.25
        phase = (t / period + thing.phase / (2 * math.pi)) % 1.0
        y = 0.8 - r - 4 * 0.45 * phase * (1 - phase)
    elif thing.motion == "spin":
        angle = 2.0 * t + thing.phase
    elif thing.motion == "grow":
        r *= 0.6 + 0.5 * t
    elif thing.motion == "shrink":
        r *= max(0.2, 1.4 - 0.5 * t)
    elif thing.motion == "orbit":
        a = thing.phase + 2.0 * t
        x, y = x + 0.2 * math.cos(a), y + 0.2 * math.sin(a)
    return x, y, r, angle


def render(scene: Scene, width: int, height: int, frames: int, fps: float) -> np.ndarray:
    """(frames, height, width, 3) uint8."""
    short = min(width, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = (xs + 0.5) / short, (ys + 0.5) / short
    pixel = 1.0 / short
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        t = f / fps
        img = _background(scene, xs, ys, t)
        for thing in scene.things:
            x, y, r, angle = _thing_state(thing, t)
            colour = np.array(COLOURS[thing.colour], np.float32)
            gx, gy = xs, ys
            if scene.look == "pixel":
                block = 4 * pixel
                gx, gy = (np.floor(xs / block) + 0.5) * block, (np.floor(ys / block) + 0.5) * block
            d = _shape_distance(thing.shape, gx - x, gy - y, r, angle)
            if scene.look == "pastel":
                colour = colour * 0.55 + 255 * 0.45
            if scene.look == "glowing":
                halo = np.exp(-np.maximum(d, 0) / (r * 0.35))[..., None] * 0.6
                img = img * (1 - halo) + (colour * 0.5 + 127) * halo
            alpha = np.clip(0.5 - d / pixel, 0, 1)[..., None] if scene.look != "pixel" else (d < 0)[..., None]
            img = img * (1 - alpha) + colour * alpha
            if scene.look == "outlined":
                line = np.clip(1.0 - np.abs(d) / (1.5 * pixel), 0, 1)[..., None]
                img = img * (1 - line) + np.array([10, 10, 10], np.float32) * line
        out[f] = np.clip(img, 0, 255).round().astype(np.uint8)
    return out


def foreground(video: np.ndarray, scene: Scene, fps: float = 8.0) -> np.ndarray:
    """(F, H, W) bool: where the scene's objects (with their outlines and halos) change the background of
    `video`, the scene rendered at `fps`."""
    frames, height, width, _ = video.shape
    empty = render(replace(scene, things=()), width, height, frames, fps)
    return np.abs(video.astype(np.int16) - empty).sum(-1) > 24


def clip(seed: int, width: int = 128, height: int = 128, frames: int = 17, fps: float = 8.0,
         split: str = "train") -> tuple[np.ndarray, str, Scene]:
    """A rendered clip, its caption and its scene."""
    scene = sample_scene(seed, aspect=width / min(width, height), duration=frames / fps, split=split)
    return render(scene, width, height, frames, fps), caption(scene, drop=0.3 if split == "train" else 0.0), scene


def mirrored_clip(seed: int, width: int = 128, height: int = 128, frames: int = 17,
                  fps: float = 8.0) -> tuple[np.ndarray, str, Scene] | None:
    """clip(seed)'s scene flipped left to right, its caption the same paraphrase with left and right swapped:
    the other half of a contrast pair whose captions differ in the sideways words alone. None where the flip
    would change no caption (nothing moves sideways) or would show a held-out combination."""
    aspect = width / min(width, height)
    scene = mirrored(sample_scene(seed, aspect=aspect, duration=frames / fps), aspect)
    first = scene.things[0]
    if not any(DIRECTIONS.get(t.motion, (0, 0))[0] for t in scene.things) or held_out(
            first.colour, first.motion, scene.background):
        return None
    return render(scene, width, height, frames, fps), caption(scene, drop=0.3), scene


def mirrored(scene: Scene, aspect: float) -> Scene:
    """The scene flipped left to right (left and right motions swap): free data augmentation."""
    swap = {"left": "right", "right": "left", "up-left": "up-right", "up-right": "up-left",
            "down-left": "down-right", "down-right": "down-left"}
    things = tuple(replace(t, motion=swap.get(t.motion, t.motion), start=(aspect - t.start[0], t.start[1]))
                   for t in scene.things)
    return replace(scene, things=things, pan=-scene.pan)


# ---- transitions -----------------------------------------------------------------------------------------
TRANSITION_CONTEXT = 9  # frames of clip A that open a transition clip: connect's default context
TRANSITION_JOINS = (12, 16, 20)  # where clip B's first frame may land: a latent's last frame, as connect puts it


def transition_clip(seed: int, width: int = 128, height: int = 128, frames: int = 25,
                    fps: float = 8.0) -> tuple[np.ndarray, str, np.ndarray, int]:
    """A bridge as connect and loop ask for one: TRANSITION_CONTEXT frames of a clip A, an eased crossfade from A
    (still moving) to B's first frame, then B from its first frame at `join`. Half are loops, where B is A's own
    clip from its start and A's frames come from later in it; the rest connect A to another scene, on A's background
    half of the time. Returns the video, a caption (A's or B's), the objects' pixels (F, H, W) and `join`."""
    rng = np.random.default_rng(seed)
    aspect = width / min(width, height)
    join = int(rng.choice(TRANSITION_JOINS))
    scene_a = sample_scene(seed, aspect=aspect, duration=2 * frames / fps)
    if rng.random() < 0.5:  # a loop
        scene_b, a_start = scene_a, int(rng.integers(4, 17))
    else:
        scene_b, a_start = sample_scene(int(rng.integers(2**31)), aspect=aspect, duration=frames / fps), 0
        first = scene_b.things[0]
        if rng.random() < 0.5 and not held_out(first.colour, first.motion, scene_a.background):
            scene_b = replace(scene_b, background=scene_a.background, background_colour=scene_a.background_colour,
                              pan=scene_a.pan)
    rendered_a = render(scene_a, width, height, a_start + join, fps)
    a, a_objects = rendered_a[a_start:], foreground(rendered_a, scene_a, fps)[a_start:]  # (join, H, W, 3), (join, H, W)
    b = render(scene_b, width, height, frames - join, fps)  # (frames - join, H, W, 3)
    b_objects = foreground(b, scene_b, fps)
    # B's weight: 0 over A's context and the bridge's first quarter, then rising, below 1 before the join, where
    # B itself takes over. It eases in and out (smootherstep) as an editor's dissolve does: a linear fade
    # changes every frame by the same share of the A-to-B difference, so the first and last bridge frames jump
    # by it however smoothly the clips move, while an eased one leaves both joins stepping about as the clips
    # do. The quarter's wait is for the VAE: the bridge's first latent starts right after A's last frame and
    # stands for 4 frames, so a fade under way inside it leaks into its first frame (the join's) on decode.
    span = join - TRANSITION_CONTEXT + 1  # frame steps from A's last context frame to B's first
    progress = np.clip((np.arange(join) - (TRANSITION_CONTEXT - 1) - span / 4) / (span * 3 / 4), 0, 1)
    mix = progress**3 * (progress * (6 * progress - 15) + 10)  # (join,)
    bridge = (1 - mix[:, None, None, None]) * a.astype(np.float32) + mix[:, None, None, None] * b[0].astype(np.float32)
    video = np.concatenate([bridge.round().astype(np.uint8), b])  # (frames, H, W, 3)
    objects = np.concatenate([a_objects | (b_objects[0] & (mix > 0)[:, None, None]), b_objects])  # (frames, H, W)
    text = caption(scene_a if rng.random() < 0.5 else scene_b, drop=0.3)
    return video, text, objects, join
