from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import save_diffusers_folder, tiny_wan21, tiny_wan22_ti2v  # noqa: E402

from pipelines import ModelDefaults, VideoPipeline  # noqa: E402
from pipelines.video_io import write_frames  # noqa: E402


def make_pipeline(components: dict, strategy: str = "replace", model_id: str = "tiny") -> VideoPipeline:
    return VideoPipeline.from_parts(components, model_id=model_id,
                         defaults=ModelDefaults(width=32, height=32, num_frames=9, fps=8.0, steps=2,
                                                guidance_scale=4.0, conditioning_strategy=strategy,
                                                max_sequence_length=16))


@pytest.fixture(scope="session")
def wan21_components() -> dict:
    return tiny_wan21()


@pytest.fixture(scope="session")
def wan21(wan21_components) -> VideoPipeline:
    return make_pipeline(wan21_components)


@pytest.fixture(scope="session")
def ti2v_components() -> dict:
    return tiny_wan22_ti2v()


@pytest.fixture(scope="session")
def ti2v(ti2v_components) -> VideoPipeline:
    return make_pipeline(ti2v_components, strategy="per_token", model_id="tiny-ti2v")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: many tiny windows or timed calibration steps, where on a loaded
    2-core machine torch's second thread mostly waits for the first (a 5-window take: 15-22 s on two, 1.2 s
    on one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, wan21_components) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-wan"
    # max_latent_tokens: the tiny model's default (32x32x9, 12 tokens) is far smaller than the runs that must
    # outlast a Cancel (test_browser: 96x96 at 121 frames, 1116 tokens), so it states its own budget.
    studio = {"width": 32, "height": 32, "num_frames": 9, "fps": 8.0, "steps": 2, "guidance_scale": 4.0,
              "join_guidance_scale": 1.5, "max_sequence_length": 16, "max_latent_tokens": 1200}
    return save_diffusers_folder(wan21_components, folder, studio)


def moving_square(frames: int, width: int = 32, height: int = 32, seed: int = 0) -> np.ndarray:
    """(F, H, W, 3) uint8: a coloured square crossing a gradient, a clip whose every frame differs."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(60, 255, size=3)
    ys, xs = np.mgrid[0:height, 0:width]
    clip = np.zeros((frames, height, width, 3), np.uint8)
    for f in range(frames):
        clip[f, ..., 0] = (xs * 255 // width).astype(np.uint8)
        clip[f, ..., 2] = (ys * 255 // height).astype(np.uint8)
        x = (3 * f + int(rng.integers(0, 4))) % (width - 8)
        clip[f, 8:16, x:x + 8] = colour
    return clip


@pytest.fixture
def png_clip(tmp_path):
    """Write a lossless PNG-folder clip and return (path, frames)."""
    def write(frames: int, name: str = "clip", seed: int = 0, width: int = 32, height: int = 32):
        clip = moving_square(frames, width, height, seed)
        folder = tmp_path / name
        write_frames(folder, clip)
        return str(folder), clip
    return write


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_studio(model_dir: Path, outputs: Path, *flags: str, **options):
    """The studio on a free local port with the settings `python launch.py --model model_dir --outputs
    outputs *flags` serves it with: yields (url, history)."""
    from studio.serve import build_parser, create, launch_kwargs

    args = build_parser().parse_args(["--model", str(model_dir), "--outputs", str(outputs),
                                      "--port", str(free_port()), *flags])
    demo, history = create(args.model, args.outputs, device="cpu", **options)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(args, history))
    try:
        yield url, history
    finally:
        demo.close()


# The tiny model's settings as the tabs' API takes them: negative, seed, steps, guidance, sampler, size.
SIZE = "1:1 · 32x32"
API_SETTINGS = ("", 7, 2, 4.0, "default", SIZE)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """The outputs folder of the module's studio (`server`)."""
    return tmp_path_factory.mktemp("studio-outputs")


@pytest.fixture(scope="module")
def server(tiny_model_dir, outputs):
    """One studio on the tiny model for the module's tests: (url, history)."""
    with launched_studio(tiny_model_dir, outputs, queue_size=4) as served:
        yield served


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def clip_with_audio(path, frames: np.ndarray, fps: float, seconds: float, rising: bool = False) -> None:
    """An MP4 of `frames` with a 440 Hz tone of `seconds`; `rising`: it gets louder second by second, so where
    a copy of it starts can be heard."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=int(fps))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        for f in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(video.encode())
        t = np.arange(int(44100 * seconds)) / 44100
        tone = ((0.25 * t if rising else 0.3) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = np.stack([tone[start:start + 1024]] * 2)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, start
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: a real full disk (needs root, as CI and this machine have)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill the disk until `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))
