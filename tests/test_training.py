"""The embedded model's training code: what the VAE is taught to keep, the DiT's conditioning masks, resuming."""

import json

import numpy as np
import pytest
import torch

from training import train_dit, train_vae
from training.world import Scene, Thing, render


def test_the_foreground_mask_is_the_objects_and_nothing_else():
    thing = Thing("square", "red", "right", True, (0.5, 0.5))
    scene = Scene((thing,), "night", look="glowing", pan=0.1)  # stars pan: the mask must not follow them
    video = render(scene, 96, 96, 9, 8.0)
    mask = train_vae.foreground(video, scene)
    assert mask.shape == video.shape[:3]
    empty = Scene((), "night", pan=0.1)
    assert not train_vae.foreground(render(empty, 96, 96, 9, 8.0), empty).any()
    # A large square covers about 8 % of the frame and its glow as much again twice over; each frame's mask
    # is one blob around the object's centre, which moves right.
    centres = [np.nonzero(frame)[1].mean() for frame in mask]
    assert all(0.05 < frame.mean() < 0.4 for frame in mask)
    assert all(b > a for a, b in zip(centres, centres[1:]))


def test_vae_batches_are_mostly_centred_on_an_object():
    rng = np.random.default_rng(0)
    pixels, masks = train_vae.random_batch(rng, frames=1, batch=24, crop=64)
    assert pixels.shape == (24, 3, 1, 64, 64) and masks.shape == (24, 1, 1, 64, 64)
    assert pixels.min() >= -1 and pixels.max() <= 1
    with_object = (masks.flatten(1).sum(1) > 0).float().mean().item()
    assert with_object >= 0.6  # three in four crops are centred on an object; random ones may catch one too


@pytest.fixture
def keep_threads():
    """The training CLIs set torch's thread count; later tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_vae_training_resumes_where_it_stopped(tmp_path, capsys, keep_threads):
    train_vae.main(["--run", str(tmp_path), "--steps", "2", "--threads", "1"])
    first = torch.load(tmp_path / "vae.pt", weights_only=False)
    assert first["step"] == 2
    train_vae.main(["--run", str(tmp_path), "--steps", "3", "--threads", "1"])
    assert "resumed at step 2" in capsys.readouterr().out
    second = torch.load(tmp_path / "vae.pt", weights_only=False)
    assert second["step"] == 3
    changed = [not torch.equal(first["model"][k], second["model"][k]) for k in first["model"]]
    assert sum(changed) > len(changed) // 2  # the third step trained the resumed weights
    records = [json.loads(line) for line in (tmp_path / "vae_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 7])
def test_dit_masks_never_hold_every_frame(frames):
    rng = np.random.default_rng(frames)
    masks = np.stack([train_dit.sample_mask(rng, frames) for _ in range(400)])
    assert not masks.all(axis=1).any()
    if frames == 1:
        assert not masks.any()  # a single latent is always generated (text to image)
    else:
        assert masks[:, 0].mean() > 0.3 and (~masks).all(axis=1).mean() > 0.2  # animate-like and t2v both seen


def test_dit_noise_levels_follow_the_samplers_shifted_schedule():
    sigmas = train_dit.sample_sigmas(np.random.default_rng(0), 20_000)
    assert sigmas.min() >= 1e-3 and sigmas.max() <= 1.0
    # u has median 1/2; shift 3 maps it to 3/4, where the studio's 20-step schedule also has its median.
    assert abs(sigmas.median().item() - 0.75) < 0.02
    assert (sigmas > 0.9).float().mean().item() > 0.15  # unshifted, about 0.06 would be
