"""The segmenter judge (metrics.MaskScore) on a folder of phantom scans with lesion masks: real
held-out scans scored as samples reach exactly mask_dice_real, shuffled masks fall to chance, and
blurred or noisy images score a worse fid than real ones."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import metrics
from synthetic import make_phantom

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs


def write_phantom_folder(root, n=100, size=32):
    d = make_phantom(n=n, size=size, seed=5)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(((d.images[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(
            root / "images" / f"{i:03d}.png")
        Image.fromarray((d.masks[i, 0].numpy() * 255).astype(np.uint8)).save(root / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    root = write_phantom_folder(tmp_path_factory.mktemp("phantoms"))
    return metrics.MaskScore(str(root), 32, steps=150, log=None), root


def test_real_held_out_scans_with_their_masks_score_the_ceiling(judge):
    score, _ = judge
    r = score(score.held.images, masks=score.held.masks)
    assert r["mask_dice"] == r["mask_dice_real"] and r["mask_dice_real"] > 0.6


def test_shuffled_masks_fall_to_chance(judge):
    """Chance: the Dice of each true mask with another scan's (phantom lesions share the brain's centre)."""
    score, _ = judge
    masks = score.held.masks
    chance = metrics.dice(masks.roll(1, dims=0), masks).mean().item()
    r = score(score.held.images, masks=masks.roll(1, dims=0))
    assert abs(r["mask_dice"] - chance) < 0.1 and r["mask_dice"] < r["mask_dice_real"] - 0.3


def test_blurred_and_noisy_images_score_a_worse_fid_than_real_ones(judge):
    score, _ = judge
    real = score.held.images
    blurred = F.avg_pool2d(real, 5, stride=1, padding=2, count_include_pad=False)
    noisy = (real + 0.5 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    fids = [score(x)["fid"] for x in (real, blurred, noisy)]
    assert fids[0] < fids[1] and fids[0] < fids[2]


def test_the_segmenter_is_cached_and_reused(judge, monkeypatch):
    score, root = judge
    assert len(list((root / "classifiers").glob("segmenter-32px-150-*.pt"))) == 1
    monkeypatch.setattr(metrics, "train_segmenter", lambda *a, **k: pytest.fail("trained again"))
    again = metrics.MaskScore(str(root), 32, steps=150, log=None)
    assert again.real_dice == score.real_dice


def test_metrics_cli_scores_a_folder_in_one_line_with_the_critics_floor(judge, tmp_path, capsys, monkeypatch):
    """Beside mask_dice and fid: critic_accuracy and its floor critic_real (held-out against training scans)."""
    score, root = judge
    monkeypatch.setattr(metrics, "SEGMENTER_STEPS", 150)  # the cached segmenter of the fixture
    np.savez(tmp_path / "s.npz", images=score.held.images.numpy(), masks=score.held.masks.numpy())
    metrics.main([str(tmp_path / "s.npz"), "--dataset", "folder", "--data-dir", str(root)])
    out = capsys.readouterr().out
    assert all(f"{key}=" in out for key in ("mask_dice", "fid", "critic_accuracy", "critic_real"))


def test_synthetic_gain_prints_the_table_and_draws_the_figure(tmp_path, capsys):
    """synthetic_gain.py end to end on phantoms: per K a row real-only vs + synthetic, and the figure."""
    import main
    from bench import synthetic_gain
    root = write_phantom_folder(tmp_path / "scans", n=40, size=16)
    main.main(["COND", "--dataset", "folder", "--data-dir", str(root), "--image-size", "16", "--unet-widths", "8", "8",
               "8", "--n-T", "10", "--batch-size", "18", "--epochs", "1", "--eval-samples", "0", "--num-samples", "2",
               "--sample-steps", "2", "--out", str(tmp_path / "cond")])
    capsys.readouterr()
    synthetic_gain.main([str(tmp_path / "cond" / "model.pth"), "--data-dir", str(root), "--k", "4", "0", "--m", "4",
                         "--seeds", "2", "--steps", "3", "--sample-steps", "2", "--out", str(tmp_path / "gain.png")])
    out = capsys.readouterr().out
    assert "| 4 | " in out and "| 36 | " in out and (tmp_path / "gain.png").exists()


def test_the_critic_cannot_tell_real_from_real_and_tells_flattened_contrast():
    """metrics.critic_accuracy: between two draws of the same phantoms it stays near chance (0.5); against the same
    scans with their contrast halved (greyer, flatter: what MRI samples looked like) it is near 1."""
    from metrics import critic_accuracy
    from synthetic import make_phantom
    real = make_phantom(n=64, size=16, seed=1, lesion="bright").images
    other = make_phantom(n=64, size=16, seed=2, lesion="bright").images
    assert abs(critic_accuracy(real, other, steps=200) - 0.5) < 0.2
    assert critic_accuracy(real, other * 0.5, steps=200) > 0.9
