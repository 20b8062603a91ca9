"""Crash safety: SIGKILL a process while it writes outputs, again and again, then check the history.

    python -m benchmarks.kill_during_write --model MODEL --outputs DIR [--kills 20]

One clip is generated, then each round forks a writer that saves it as new outputs (video, GIF, latent
sidecar, JSON sidecar: what the studio writes after every generation) in a loop, and kills it with
SIGKILL after a random delay, so kills land at every stage of a write. Afterwards the history is opened as
the studio opens it at start (sweep, then list), and every listed output is read back in full: its video
must decode to the frame count its sidecar records, its GIF likewise, its latents must load. Prints the
counts; exits 1 if a listed output is not whole.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def _writer(result, outputs: Path) -> None:
    """The forked child: write outputs until killed."""
    from studio.outputs import History

    history = History(outputs)
    while True:
        history.write(result, gif=True)


def kill_rounds(result, outputs: Path, kills: int, seed: int, max_delay: float) -> list[float]:
    """Fork a writer `kills` times and SIGKILL each after a random delay; returns the delays."""
    rng = random.Random(seed)
    delays = []
    for _ in range(kills):
        delay = rng.uniform(0.02, max_delay)
        pid = os.fork()
        if pid == 0:  # the child never returns: it is killed mid-write
            try:
                _writer(result, outputs)
            finally:
                os._exit(1)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        delays.append(delay)
    return delays


def audit(outputs: Path) -> dict:
    """Open the folder as the studio does and read every listed output back in full."""
    import av
    from PIL import Image

    from pipelines.latents import load_timeline
    from studio.outputs import History

    leftovers = sorted(p.name for p in outputs.glob(".*.partial*"))
    unlisted_media = [p for p in outputs.glob("*.mp4") if not p.with_suffix(".mp4.json").is_file()]
    history = History(outputs)
    swept = history.sweep()
    entries = history.entries()
    broken = []
    for entry in entries:
        expected = entry.sidecar["frames"]
        try:
            with av.open(str(entry.media)) as container:
                decoded = sum(1 for _ in container.decode(video=0))
            with Image.open(entry.media.with_suffix(".gif")) as gif:
                gif_frames = gif.n_frames
            timeline, reason = load_timeline(entry.media)
        except (OSError, ValueError, av.FFmpegError) as error:
            broken.append(f"{entry.media.name}: {error}")
            continue
        if decoded != expected or gif_frames != expected or timeline is None:
            broken.append(f"{entry.media.name}: {decoded} video / {gif_frames} GIF frames of {expected}, "
                          f"latents: {reason or 'ok'}")
    return {"listed": len(entries), "partial_files_left_by_kills": len(leftovers), "swept": len(swept),
            "videos_without_sidecar": len(unlisted_media), "broken_listed": broken,
            "partial_after_sweep": len(list(outputs.glob(".*.partial*"))),
            "unfinished_after_sweep": len([p for p in outputs.glob("*.mp4") if not p.with_suffix(".mp4.json").is_file()]
                                          + list(outputs.glob(".*.writing")))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a diffusers folder or registry name")
    parser.add_argument("--outputs", type=Path, required=True)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=1.5, help="longest wait before a kill, in seconds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from pipelines import VideoPipeline, text_to_video

    # One intra-op thread: the forked writers must not inherit a thread pool they cannot use.
    torch.set_num_threads(1)
    pipe = VideoPipeline.from_pretrained(args.model, device="cpu")
    result = pipe.generate(text_to_video("a red ball bounces", num_frames=17, width=64, height=64, steps=2, seed=1))
    started = time.perf_counter()
    delays = kill_rounds(result, args.outputs, args.kills, args.seed, args.max_delay)
    report = {"kills": len(delays), "seconds": round(time.perf_counter() - started, 1), **audit(args.outputs)}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    whole = not report["broken_listed"] and report["partial_after_sweep"] == report["unfinished_after_sweep"] == 0
    return 0 if whole else 1


if __name__ == "__main__":
    sys.exit(main())
