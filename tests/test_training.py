"""The embedded model's training code: what the VAE is taught to keep, the DiT's conditioning masks, resuming."""

import json

import numpy as np
import pytest
import torch

from training import model_card, train_dit, train_vae
from training.world import Scene, Thing, foreground, render


def test_the_foreground_mask_is_the_objects_and_nothing_else():
    thing = Thing("square", "red", "right", True, (0.5, 0.5))
    scene = Scene((thing,), "night", look="glowing", pan=0.1)  # stars pan: the mask must not follow them
    video = render(scene, 96, 96, 9, 8.0)
    mask = foreground(video, scene)
    assert mask.shape == video.shape[:3]
    empty = Scene((), "night", pan=0.1)
    assert not foreground(render(empty, 96, 96, 9, 8.0), empty).any()
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


def test_the_temporal_term_sees_flicker_and_not_a_steady_error():
    weight = torch.ones(1, 1, 5, 8, 8)
    steady = torch.full((1, 3, 5, 8, 8), 0.3)  # the same error on every frame: no flicker
    assert train_vae.temporal_error(steady, weight).item() == 0.0
    flicker = steady.clone()
    flicker[:, :, 1::2] *= -1  # the error changes sign every frame
    assert train_vae.temporal_error(flicker, weight).item() == pytest.approx(0.6)
    assert train_vae.temporal_error(steady[:, :, :1], weight[:, :, :1]).item() == 0.0  # a still has no frame change
    # The background's term counts only pixels that are background in both frames of a change.
    mask = torch.zeros(1, 1, 5, 8, 8)
    mask[:, :, 2, :4] = 1  # an object over the top half of frame 2
    moving = steady.clone()
    moving[:, :, 2, :4] += 0.5  # its error changes where it is, and nowhere else
    assert train_vae.background_flicker(moving, mask).item() == 0.0
    assert train_vae.temporal_error(moving, weight).item() > 0
    assert train_vae.background_flicker(flicker, mask).item() == pytest.approx(0.6)
    # A boundary weight counts the steps into each latent's first frame (0 -> 1, 4 -> 5) that much more.
    jumps = torch.zeros(1, 3, 6, 8, 8)
    jumps[:, :, 5:] = 0.5  # the error jumps by 0.4 into frame 5, the first frame of the second 4-frame latent
    jumps[:, :, 3:5] += 0.1  # and moves within the first, 2 -> 3
    weight6 = torch.ones(1, 1, 6, 8, 8)
    assert train_vae.temporal_error(jumps, weight6).item() == pytest.approx(0.5 / 5)
    assert train_vae.temporal_error(jumps, weight6, boundary=3.0).item() == pytest.approx((3 * 0.4 + 0.1) / (3 + 1 + 1 + 1 + 3))
    assert train_vae.background_flicker(jumps, torch.zeros_like(weight6), boundary=3.0).item() == pytest.approx(
        train_vae.temporal_error(jumps, weight6, boundary=3.0).item())


def test_a_decoder_only_fine_tune_keeps_the_encoder_and_records_itself(tmp_path, capsys, keep_threads):
    from training.components import new_vae

    start = new_vae().state_dict()
    torch.save({"model": start, "step": 0}, tmp_path / "vae.pt")  # as `--init MODEL --steps 0` saves
    train_vae.main(["--run", str(tmp_path), "--steps", "1", "--threads", "1", "--decoder-only"])
    tuned = torch.load(tmp_path / "vae.pt", weights_only=False)
    assert tuned["decoder_only"] and tuned["step"] == 1 and tuned["temporal_weight"] == train_vae.TEMPORAL_WEIGHT
    decoder = [k for k in start if k.startswith(("decoder.", "post_quant_conv."))]
    assert decoder and all(torch.equal(start[k], tuned["model"][k]) for k in start if k not in decoder)
    assert sum(not torch.equal(start[k], tuned["model"][k]) for k in decoder) > len(decoder) // 2
    records = [json.loads(line) for line in (tmp_path / "vae_log.jsonl").read_text().splitlines()]
    assert records[-1]["temporal"] > 0  # the first step decodes 17-frame clips: their error changes per frame
    with pytest.raises(SystemExit, match="--decoder-only"):  # a resume must train the same parts
        train_vae.main(["--run", str(tmp_path), "--steps", "2", "--threads", "1"])
    for bad, named in ((["--temporal-weight", "2"], "--temporal-weight"),
                       (["--decoder-only", "--temporal-weight", "-1"], "--temporal-weight"),
                       (["--temporal-on", "all"], "--temporal-on"), (["--transitions", "0.5"], "--transitions"),
                       (["--decoder-only", "--transitions", "2"], "--transitions"),
                       (["--boundary-weight", "3"], "--boundary-weight"),
                       (["--decoder-only", "--boundary-weight", "0.5"], "--boundary-weight")):
        with pytest.raises(SystemExit):
            train_vae.main(["--run", str(tmp_path / "bad"), "--steps", "1", *bad])
        assert named in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_decoder_batches_hold_bridges_only_where_a_bridge_fits():
    from training.world import TRANSITION_JOINS

    for frames, fits in ((max(TRANSITION_JOINS), False), (25, True)):
        plain, _ = train_vae.random_batch(np.random.default_rng(3), frames, 2, 64)
        bridged, masks = train_vae.random_batch(np.random.default_rng(3), frames, 2, 64, transitions=1.0)
        assert bridged.shape == plain.shape and masks.shape == (2, 1, frames, 64, 64)
        assert torch.equal(bridged, plain) != fits


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 7])
def test_dit_masks_never_hold_every_frame(frames):
    rng = np.random.default_rng(frames)
    masks = np.stack([train_dit.sample_mask(rng, frames) for _ in range(400)])
    assert not masks.all(axis=1).any()
    if frames == 1:
        assert not masks.any()  # a single latent is always generated (text to image)
    else:
        assert masks[:, 0].mean() > 0.3 and (~masks).all(axis=1).mean() > 0.2  # animate-like and t2v both seen
        later = np.stack([train_dit.sample_mask(rng, frames, starts_held=True) for _ in range(400)])
        assert later[:, 0].all() and not later.all(axis=1).any()  # a window cut from a clip's middle


def test_dit_noise_levels_follow_the_samplers_shifted_schedule():
    sigmas = train_dit.sample_sigmas(np.random.default_rng(0), 20_000)
    assert sigmas.min() >= 1e-3 and sigmas.max() <= 1.0
    # u has median 1/2; shift 3 maps it to 3/4, where the studio's 20-step schedule also has its median.
    assert abs(sigmas.median().item() - 0.75) < 0.02
    assert (sigmas > 0.9).float().mean().item() > 0.15  # unshifted, about 0.06 would be


def test_latent_masks_mark_the_cells_the_vae_maps_object_pixels_into():
    mask = np.zeros((9, 64, 64), bool)
    mask[0, 3, 3] = True  # frame 0 has a latent frame of its own
    mask[5, 20, 45] = True  # frames 5-8 share latent frame 2
    cells = train_dit.latent_mask(mask)
    assert cells.shape == (3, 8, 8)
    assert cells.nonzero().tolist() == [[0, 0, 0], [2, 2, 5]]
    scene = Scene((Thing("ball", "red", "right", False, (0.3, 0.5)),), "day")
    video = render(scene, 128, 96, 25, 8.0)
    cells = train_dit.latent_mask(foreground(video, scene))  # (7, 12, 16)
    assert cells.shape == (7, 12, 16)
    assert all(0 < frame.float().mean() < 0.15 for frame in cells)  # a small ball: a few cells, in every frame
    columns = [frame.nonzero()[:, 1].float().mean().item() for frame in cells]
    assert columns[-1] > columns[0]  # and they follow it to the right


def test_contrast_pairs_train_a_clip_beside_its_mirror_twin(tmp_path, capsys, keep_threads):
    from training.components import new_vae

    torch.save({"model": new_vae().state_dict(), "step": 0}, tmp_path / "vae.pt")
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "--seed", "3", "cache", "--clips", "24"])
    with pytest.raises(SystemExit, match="cache --mirror"):
        train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "1", "--pairs", "0.5"])
    with pytest.raises(SystemExit, match="from 0 to 1"):
        train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "1", "--pairs", "1.5"])
    assert not (tmp_path / "dit.pt").exists()
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "--seed", "3", "cache", "--clips", "24", "--mirror"])
    clips = torch.load(tmp_path / "cache.pt", weights_only=False)["groups"]
    twins = torch.load(tmp_path / "mirror.pt", weights_only=False)["groups"]
    assert 0 < sum(len(g["captions"]) for g in twins.values()) < 24  # only clips that move sideways have twins
    for size, group in twins.items():
        for caption, source in zip(group["captions"], group["source"].tolist()):
            original = clips[size]["captions"][source]
            assert caption != original and caption.replace("left", "right") == original.replace("left", "right")
        assert group["latents"].shape[1:] == clips[size]["latents"].shape[1:]
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "2", "--batch", "2", "--pairs", "1",
                    "--only", "text"])
    assert "contrast pairs, in 100% of the steps" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "dit_log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and np.isfinite(records[-1]["loss"])
    # --only text moved the text embedder and the cross-attention and nothing else.
    from training.components import new_transformer

    torch.manual_seed(0)  # train() builds its model after seeding 0, so this is the model it started from
    start = new_transformer().state_dict()
    trained = torch.load(tmp_path / "dit.pt", weights_only=False)["model"]
    moved = {name for name in start if not torch.equal(start[name], trained[name])}
    assert moved and all(any(part in name for part in train_dit.TEXT_PATH) for name in moved)
    assert any("text_embedder" in name for name in moved) and any(".attn2." in name for name in moved)
    train_dit.main(["--run", str(tmp_path), "export", "--out", str(tmp_path / "model")])
    rows = model_card.training_rows(json.loads((tmp_path / "model" / "training.json").read_text()))
    assert "the text path alone" in rows and "contrast pairs (mirror twins) in 100% of the steps" in rows


def test_bridges_train_under_connects_mask(tmp_path, capsys, keep_threads):
    from training.components import new_vae
    from training.world import TRANSITION_JOINS

    torch.save({"model": new_vae().state_dict(), "step": 0}, tmp_path / "vae.pt")
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "cache", "--clips", "8"])
    with pytest.raises(SystemExit, match="cache --transitions"):
        train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "1", "--transitions", "0.5"])
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "cache", "--clips", "8", "--transitions"])
    (bridges,) = torch.load(tmp_path / "transitions.pt", weights_only=False)["groups"].values()
    assert bridges["latents"].shape[0] == len(bridges["captions"]) == 8 and bridges["latents"].shape[2] == 7
    assert set(bridges["join"].tolist()) <= set(TRANSITION_JOINS)
    with pytest.raises(SystemExit, match="together at most 1"):
        train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "1", "--transitions", "0.8",
                        "--pairs", "0.4"])
    assert not (tmp_path / "dit.pt").exists()
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "2", "--batch", "2",
                    "--transitions", "1"])
    assert "8 transitions, in 100% of the steps" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "dit_log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and np.isfinite(records[-1]["loss"])
    train_dit.main(["--run", str(tmp_path), "export", "--out", str(tmp_path / "model")])
    rows = model_card.training_rows(json.loads((tmp_path / "model" / "training.json").read_text()))
    assert "bridges (connect and loop) in 100% of the steps" in rows
    # A run started from this one's dit.pt keeps its recipe in the history it carries on.
    again = tmp_path / "again"
    again.mkdir()
    (again / "cache.pt").symlink_to(tmp_path / "cache.pt")
    train_dit.main(["--run", str(again), "--threads", "1", "train", "--steps", "1", "--batch", "2",
                    "--init", str(tmp_path / "dit.pt")])
    assert torch.load(again / "dit.pt", weights_only=False)["history"][-1]["transitions"] == 1.0


def test_dit_caches_object_masks_and_training_resumes(tmp_path, capsys, keep_threads):
    from training.components import new_vae

    torch.save({"model": new_vae().state_dict(), "step": 5}, tmp_path / "vae.pt")  # as train_vae saves
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "cache", "--clips", "8"])
    cache = torch.load(tmp_path / "cache.pt", weights_only=False)
    (group,) = cache["groups"].values()
    assert group["objects"].shape == (8, 7, *group["latents"].shape[-2:]) and group["objects"].dtype == torch.bool
    assert group["objects"].any()
    assert group["text"].shape[0] == len(group["captions"]) == 8
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "2", "--batch", "2"])
    first = torch.load(tmp_path / "dit.pt", weights_only=False)
    train_dit.main(["--run", str(tmp_path), "--threads", "1", "train", "--steps", "3", "--batch", "2"])
    assert "resumed at step 2" in capsys.readouterr().out
    second = torch.load(tmp_path / "dit.pt", weights_only=False)
    assert (first["step"], second["step"]) == (2, 3)
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    records = [json.loads(line) for line in (tmp_path / "dit_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3] and all(np.isfinite(r["loss"]) for r in records)
    # The exported model records its steps, and new runs start from it: how a session goes on from the shipped one.
    train_dit.main(["--run", str(tmp_path), "export", "--out", str(tmp_path / "model")])
    info = json.loads((tmp_path / "model" / "training.json").read_text())
    assert (info["vae_steps"], info["transformer_steps"]) == (5, 3)
    assert [(s["part"], s["steps"]) for s in info["history"]] == [("vae", 5), ("transformer", 3)]
    assert info["history"][1]["loss"] == records[-1]["loss"]
    again = tmp_path / "again"
    again.mkdir()
    (again / "cache.pt").symlink_to(tmp_path / "cache.pt")
    train_dit.main(["--run", str(again), "--threads", "1", "train", "--steps", "1", "--batch", "2",
                    "--init", str(tmp_path / "model"), "--also", str(tmp_path / "cache.pt")])
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "16 clips from 2 cache(s)" in out  # another run's clips join this one's
    assert torch.load(again / "dit.pt", weights_only=False)["history"] == info["history"][1:]
    train_vae.main(["--run", str(again), "--steps", "1", "--threads", "1", "--init", str(tmp_path / "model")])
    assert torch.load(again / "vae.pt", weights_only=False)["history"] == info["history"][:1]
    train_vae.main(["--run", str(tmp_path / "taken"), "--steps", "0", "--init", str(tmp_path / "model")])
    taken = torch.load(tmp_path / "taken" / "vae.pt", weights_only=False)  # the saved VAE as it is, to cache with
    assert taken["step"] == 0 and taken["history"] == info["history"][:1]
    # Exported again, the model lists every run of each part, and the card shows them with the totals.
    train_dit.main(["--run", str(again), "export", "--out", str(again / "model")])
    info = json.loads((again / "model" / "training.json").read_text())
    assert (info["vae_steps"], info["transformer_steps"]) == (6, 4)
    assert [(s["part"], s["steps"]) for s in info["history"]] == [("vae", 5), ("vae", 1), ("transformer", 3),
                                                                  ("transformer", 1)]
    rows = model_card.training_rows(info)
    assert "| VAE in all | 6 |" in rows and "| DiT in all | 4 |" in rows
    # A soup: the run's DiT averaged with the model it started from.
    train_dit.main(["--run", str(again), "export", "--out", str(again / "soup"), "--soup", str(tmp_path / "model")])
    from training.components import exported_weights

    mixed, _ = exported_weights(again / "soup", "transformer")
    start, _ = exported_weights(tmp_path / "model", "transformer")
    end = torch.load(again / "dit.pt", weights_only=False)["ema"]
    assert any(not torch.equal(start[k], end[k]) for k in start)
    assert all(torch.allclose(mixed[k], (start[k] + end[k]) / 2, atol=2e-3, rtol=2e-3) for k in start)
    assert "after 3 steps and after 4" in json.loads((again / "soup" / "training.json").read_text())["transformer_weights"]
    # A run warm-started from the soup says so in its card, not that it went on from the last run's weights.
    onwards = tmp_path / "onwards"
    onwards.mkdir()
    (onwards / "cache.pt").symlink_to(tmp_path / "cache.pt")
    train_dit.main(["--run", str(onwards), "--threads", "1", "train", "--steps", "1", "--batch", "2",
                    "--init", str(again / "soup")])
    train_dit.main(["--run", str(onwards), "export", "--out", str(onwards / "model"), "--vae-run", str(again)])
    last_row = model_card.training_rows(json.loads((onwards / "model" / "training.json").read_text())).splitlines()[-2]
    assert last_row.startswith("| DiT, continued from the mean of the DiT's weights after 3 steps and after 4 ")
    # A weighted soup leans towards this run; a share outside (0, 1) is refused before anything is written.
    train_dit.main(["--run", str(again), "export", "--out", str(again / "leaning"), "--soup", str(tmp_path / "model"),
                    "--soup-weight", "0.75"])
    leaning, _ = exported_weights(again / "leaning", "transformer")
    assert all(torch.allclose(leaning[k], 0.75 * end[k] + 0.25 * start[k], atol=2e-3, rtol=2e-3) for k in start)
    assert "weighted mean (0.25 and 0.75)" in json.loads((again / "leaning" / "training.json").read_text())[
        "transformer_weights"]
    with pytest.raises(SystemExit, match="strictly between 0 and 1"):
        train_dit.main(["--run", str(again), "export", "--out", str(again / "bad"), "--soup", str(tmp_path / "model"),
                        "--soup-weight", "1.5"])
    assert not (again / "bad").exists()
    # A decoder fine-tune of the VAE the cache was encoded with ships beside the run's DiT.
    tuned = tmp_path / "decoder"
    train_vae.main(["--run", str(tuned), "--steps", "0", "--init", str(again / "model")])
    train_vae.main(["--run", str(tuned), "--steps", "1", "--threads", "1", "--decoder-only", "--temporal-weight", "3",
                    "--temporal-on", "all", "--transitions", "0.5", "--boundary-weight", "2"])
    train_dit.main(["--run", str(again), "export", "--out", str(again / "tuned"), "--vae-run", str(tuned)])
    info = json.loads((again / "tuned" / "training.json").read_text())
    assert [(s["part"], s["steps"], s.get("decoder_only", False), s.get("temporal_weight"))
            for s in info["history"]][:3] == [("vae", 5, False, None), ("vae", 1, False, None), ("vae", 1, True, 3.0)]
    assert (f"{model_card.DECODER_STAGE}, temporal term weighted 3 over every pixel alike, 2x on the step into each "
            f"latent's first frame, bridges in 50% of the 25-frame clips |") in model_card.training_rows(info)
    exported, _ = exported_weights(again / "tuned", "vae")
    assert all(torch.allclose(exported[k], v.half().float()) for k, v in
               torch.load(tuned / "vae.pt", weights_only=False)["model"].items())


def test_model_card_judge_only_rewrites_the_judge_section_alone(tmp_path):
    results = {"adherence": {"colour": 0.9, "motion": 0.8, "background": 1.0, "prompts": 108},
               "settings": {"guidance_scale": 4.0, "join_guidance_scale": 1.0}, "seconds_per_clip": 1.3,
               "fidelity": {"animate_first_frame_psnr_db": 28.6, "extend_seam_ratio": 0.84, "loop_seam_ratio": 0.8,
                            "connect_seam_ratio": 1.24}}
    (tmp_path / "judge.json").write_text(json.dumps(results))
    head = "# Embedded model\n\n## Training\n| stage | steps |\n|---|---|\n| DiT | 3000 |\n\n"
    (tmp_path / "README.md").write_text(head + "## Judge\nold table, connect 1.65\n")
    model_card.main(["--judge-only", "--judge", str(tmp_path / "judge.json"), "--out", str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert text.startswith(head + "## Judge\n") and "1.65" not in text
    assert "| connect: worst join / median step" in text and "| 1.24 |" in text and "| 90.0% |" in text

    (tmp_path / "README.md").write_text(head)  # a card without a judge section is left as it was
    with pytest.raises(SystemExit):
        model_card.main(["--judge-only", "--judge", str(tmp_path / "judge.json"), "--out", str(tmp_path)])
    assert (tmp_path / "README.md").read_text() == head
