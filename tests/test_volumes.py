"""Volumes (B, C, D, H, W): the 3D U-Net and CNN, the phantom3d head volumes with their 3D lesion
masks, the mid-slice figures, and main.py and sample.py end to end on tiny volumes. The processes'
closed-form tests run on volumes in test_ddpm.py, test_ddgm.py and test_ddim.py."""
import json

import pytest
import torch

import main
import sample
from figures import mid_slices
from synthetic import PHANTOM_LESION, make_phantom3d
from test_cli import titled
from unet import NETWORKS

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs


def config(net: str = "unet", **extra) -> dict:
    return {"net": net, "in_channels": 1, "image_size": 8, "num_classes": 0, "cond_channels": 0, "dims": 3,
            "unet_widths": [4, 8, 8], **extra}


@pytest.mark.parametrize("net", ["unet", "cnn"])
def test_3d_networks_map_volumes_to_volumes_with_both_conditions(net):
    torch.manual_seed(0)
    x_t, t = torch.randn(2, 1, 8, 8, 8), torch.tensor([3, 700])
    eps = NETWORKS[net](config(net))(x_t, t)
    assert eps.shape == x_t.shape and torch.isfinite(eps).all()
    masked = NETWORKS[net](config(net, cond_channels=1, num_classes=3))
    out = masked(x_t, t, y=torch.tensor([0, 3]), mask=(x_t > 0).float())
    assert out.shape == x_t.shape
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        masked(x_t, t, mask=torch.zeros(2, 1, 8, 8))


def test_the_3d_unet_refuses_images_and_odd_sides():
    net = NETWORKS["unet"](config())
    for bad in (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8, 6)):
        with pytest.raises(ValueError, match="3D, 2 levels"):
            net(bad, torch.tensor([0]))


def test_2d_networks_keep_their_parameter_names():
    """dims is new; a 2D U-Net has exactly the parameters it had, so old checkpoints load."""
    two = NETWORKS["unet"]({**config(), "dims": 2, "image_size": 28})
    three = NETWORKS["unet"](config())
    assert [n for n, _ in two.named_parameters()] == [n for n, _ in three.named_parameters()]
    assert two.inp.weight.dim() == 4 and three.inp.weight.dim() == 5


@pytest.mark.parametrize("lesion", ["bright", "none", "hidden"])
def test_phantom3d_heads_have_3d_lesion_masks_inside_the_brain(lesion):
    data = make_phantom3d(n=6, size=16, seed=3, lesion=lesion)
    assert data.images.shape == (6, 1, 16, 16, 16) and data.images.min() == -1 and data.images.max() <= 1
    x01 = (data.images + 1) / 2
    if lesion == "none":
        assert data.masks is None and x01.max() < PHANTOM_LESION - 0.1
        return
    m = data.masks.bool()
    assert m.shape == data.images.shape and m.flatten(1).any(1).all()  # every volume has a lesion
    assert m.flatten(1).sum(1).float().mean() > 8  # voxels, in more than one slice
    assert m.any(dim=(1, 3, 4)).sum(1).min() >= 2
    if lesion == "bright":  # the lesion is the only region brighter than 0.8
        assert torch.equal(x01 > 0.8, m)
    else:  # a healthy intensity, skull-bright or ventricle-dark, where the brain would be
        assert ((x01[m] - 0.6).abs() < 1e-6).logical_or((x01[m] - 0.1).abs() < 1e-6).all()
    again = make_phantom3d(n=6, size=16, seed=3, lesion=lesion)
    assert torch.equal(again.images, data.images)


def test_mid_slices_are_axial_coronal_sagittal_in_turn():
    x = torch.zeros(2, 1, 4, 4, 4)
    x[0, 0, 2] = 1        # the axial mid-plane (middle of D) of volume 0
    x[1, 0, :, 2] = 1     # the coronal mid-plane (middle of H) of volume 1
    s = mid_slices(x)
    assert s.shape == (6, 1, 4, 4)
    # volume 0: all, then a row in the coronal and sagittal slices, which show superior (high D) at the top
    assert s[0].eq(1).all() and s[1][0, 1].eq(1).all() and s[2][0, 1].eq(1).all() and s[1].sum() == 4
    assert s[4].eq(1).all() and s[3][0, 2].eq(1).all()  # volume 1: its coronal slice is all ones


TINY3D = ["--dataset", "phantom3d", "--image-size", "8", "--limit", "8", "--batch-size", "4", "--unet-widths", "4",
          "8", "8", "--n-T", "20", "--sample-steps", "2", "--num-samples", "2", "--epochs", "1"]


def test_main_trains_ddpm_on_volumes_and_sample_draws_them(tmp_path):
    out = tmp_path / "run"
    main.main(["DDPM", *TINY3D, "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["dims"] == 3 and config["image_size"] == 8
    assert (out / "image_ep001.png").exists() and (out / "forward_diffusion.png").exists()
    from PIL import Image
    assert titled(Image.open(out / "image_ep001.png"), 8 * (2 + 6 * 10), 8 * (2 + 10))  # 2 volumes x 3 mid-slices, 8x
    sample.main([str(out / "model.pth"), "--num-samples", "3", "--out", str(tmp_path / "s.png")])
    import numpy as np
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (3, 1, 8, 8, 8)
    strip = Image.open(tmp_path / "s_slices.png")  # 3 volumes x 8 axial slices, with a row of z labels above
    assert strip.size[0] == 8 * (2 + 8 * 10) and strip.size[1] > 8 * (2 + 3 * 10)  # 8 px shown 8x


def test_cond_with_3d_masks_reports_dice(tmp_path):
    out = tmp_path / "cond"
    main.main(["COND", *TINY3D, "--out", str(out)])
    with open(out / "metrics.csv") as f:
        header, row = f.read().splitlines()[:2]
    metrics = dict(zip(header.split(","), row.split(",")))
    assert 0 <= float(metrics["dice"]) <= 1 and "dice_shuffled_masks" in metrics
    assert 0 <= float(metrics["lesion_recall"]) <= 1 and "lesion_recall_shuffled_masks" in metrics


def test_augment_on_volumes_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", *TINY3D, "--augment", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "does not work on volumes" in err and len(err.splitlines()) == 1


def write_medmnist3d(path, n: int = 6, side: int = 28) -> None:
    """A MedMNIST 3D .npz in the official layout: uint8 (N, D, H, W) volumes, (N, 1) labels, three splits."""
    import numpy as np
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, side, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 11, (n, 1))
    np.savez(path, **arrays)


def test_medmnist3d_files_load_as_volumes_and_train(tmp_path):
    from data import load_dataset
    write_medmnist3d(tmp_path / "organmnist3d.npz")
    data = load_dataset("organmnist3d", str(tmp_path), train=True, download=False)
    assert data.images.shape == (6, 1, 28, 28, 28) and data.labels.shape == (6,)
    import numpy as np
    with np.load(tmp_path / "organmnist3d.npz") as f:
        expected = torch.from_numpy(f["train_images"][2, 3].astype(np.float32)) / 255 * 2 - 1
    assert torch.allclose(data.images[2, 0, 3], expected)
    out = tmp_path / "run"
    main.main(["DDPM", "--dataset", "organmnist3d", "--data-dir", str(tmp_path), "--limit", "4", "--batch-size", "2",
               "--unet-widths", "4", "8", "8", "--n-T", "10", "--sample-steps", "2", "--num-samples", "2",
               "--epochs", "1", "--eval-samples", "0", "--out", str(out)])
    assert json.loads((out / "config.json").read_text())["dims"] == 3 and (out / "image_ep001.png").exists()


def test_labelled_volumes_get_a_3d_feature_fid_per_epoch_and_in_metrics_py(tmp_path, capsys):
    """MedMNIST 3D is labelled, so a 3D classifier (metrics.FeatureNet, dims 3) is trained on it once and the
    Frechet distance of its features scores the samples: per epoch in metrics.csv and by metrics.py on a .npz."""
    import metrics
    write_medmnist3d(tmp_path / "organmnist3d.npz", n=24, side=8)
    out = tmp_path / "run"
    main.main(["DDPM", "--dataset", "organmnist3d", "--data-dir", str(tmp_path), "--limit", "8", "--batch-size", "4",
               "--unet-widths", "4", "8", "8", "--n-T", "10", "--sample-steps", "2", "--num-samples", "4",
               "--eval-samples", "4", "--epochs", "1", "--out", str(out)])
    with open(out / "metrics.csv") as f:
        header, row = f.read().splitlines()[:2]
    scores = dict(zip(header.split(","), row.split(",")))
    assert float(scores["fid"]) >= 0 and float(scores["fid_real"]) >= 0
    assert list((tmp_path / "classifiers").glob("organmnist3d-*.pt"))
    sample.main([str(out / "model.pth"), "--num-samples", "4", "--out", str(tmp_path / "s.png")])
    capsys.readouterr()
    metrics.main([str(tmp_path / "s.npz"), "--dataset", "organmnist3d", "--data-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert printed.startswith("n=4 fid=") and "fid_real=" in printed


def test_a_2d_file_under_a_3d_name_is_one_line(tmp_path, capsys):
    import numpy as np
    np.savez(tmp_path / "nodulemnist3d.npz", train_images=np.zeros((4, 28, 28), np.uint8),
             train_labels=np.zeros((4, 1)))
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", "--dataset", "nodulemnist3d", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "expected uint8 cubic volumes" in err and len(err.splitlines()) == 1


def test_anomaly_maps_hidden_3d_lesions_beside_the_baselines(tmp_path, capsys):
    """Trained on healthy head volumes (tiny, one epoch: the score is not the point), anomaly.py maps the hidden
    3D lesions voxel by voxel and prints AUROC and Dice with the two model-free baselines."""
    import anomaly
    out = tmp_path / "healthy"
    main.main(["DDPM", *TINY3D, "--dataset", "phantom3d-healthy", "--out", str(out)])
    capsys.readouterr()
    anomaly.main([str(out / "model.pth"), "--dataset", "phantom3d-anomaly", "--n", "3", "--n-val", "3",
                  "--repeats", "1", "--steps", "2", "--out", str(tmp_path / "a.png")])
    printed = capsys.readouterr().out
    assert "auroc=" in printed and printed.count("baseline") == 2 and (tmp_path / "a.png").exists()
    with pytest.raises(SystemExit) as e:
        anomaly.main([str(out / "model.pth"), "--dataset", "phantom-anomaly", "--out", str(tmp_path / "b.png")])
    assert e.value.code == 2 and "trained on volumes" in capsys.readouterr().err


def test_gaussian_blur_of_a_volume_keeps_its_sum_and_spreads_evenly():
    """A unit impulse in the middle of a 9^3 volume: the separable blur keeps the total (no voxel reaches an edge
    at sigma 1, radius 3) and is symmetric along all three axes."""
    from anomaly import gaussian_blur
    m = torch.zeros(1, 9, 9, 9)
    m[0, 4, 4, 4] = 1
    b = gaussian_blur(m, 1.0)
    assert b.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert b[0, 3, 4, 4] == pytest.approx(b[0, 4, 3, 4].item()) == pytest.approx(b[0, 4, 4, 3].item())
    assert b[0, 4, 4, 4] > b[0, 3, 4, 4] > b[0, 2, 4, 4]


def test_sample_reverse_and_mask_conditions_on_volumes(tmp_path):
    out = tmp_path / "cond"
    main.main(["COND", *TINY3D, "--out", str(out)])
    sample.main([str(out / "model.pth"), "--num-samples", "2", "--reverse", "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s_reverse.png").exists()
    import numpy as np
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (2, 1, 8, 8, 8) and f["masks"].shape == (2, 1, 8, 8, 8)


def test_volumes_default_to_their_own_batch_and_widths_unless_given(tmp_path):
    """models.by_size's batch and widths for volumes apply when the options are not given; given ones are kept."""
    base = ["--dataset", "phantom3d", "--image-size", "8", "--limit", "8", "--n-T", "10", "--sample-steps", "1",
            "--num-samples", "1", "--epochs", "1"]
    main.main(["DDPM", *base, "--out", str(tmp_path / "a")])
    main.main(["DDPM", *base, "--batch-size", "4", "--unet-widths", "4", "8", "--out", str(tmp_path / "b")])
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    assert (a["batch_size"], a["unet_widths"]) == (8, [8, 16, 32, 32])
    assert (b["batch_size"], b["unet_widths"]) == (4, [4, 8])


def test_2d_only_sample_options_on_a_3d_model_are_one_line(tmp_path, capsys):
    out = tmp_path / "cond"
    main.main(["COND", *TINY3D, "--out", str(out)])
    (tmp_path / "masks").mkdir()
    from PIL import Image
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "m.png")
    Image.new("L", (8, 8)).save(tmp_path / "scan.png")
    capsys.readouterr()
    for extra, message in ((["--inpaint", str(tmp_path / "scan.png"), "--region", str(tmp_path / "masks" / "m.png")],
                            "--inpaint reads a 2D image"), (["--mask-dir", str(tmp_path / "masks")], "draws volumes")):
        with pytest.raises(SystemExit) as e:
            sample.main([str(out / "model.pth"), *extra, "--out", str(tmp_path / "s.png")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_metrics_py_scores_phantom3d_samples_by_mask_dice(tmp_path, capsys):
    """Real phantom3d volumes with their own masks score Dice and lesion recall 1 (only the lesion passes 0.8);
    with the masks shuffled far less; samples without masks or of the wrong dimension are one line."""
    import numpy as np

    import metrics
    heads = make_phantom3d(n=6, size=16, seed=3)
    np.savez(tmp_path / "real.npz", images=heads.images.numpy(), masks=heads.masks.numpy())
    metrics.main([str(tmp_path / "real.npz"), "--dataset", "phantom3d"])
    scores = dict(kv.split("=") for kv in capsys.readouterr().out.split())
    assert float(scores["dice"]) == 1.0 and float(scores["dice_shuffled_masks"]) < 0.5
    assert float(scores["lesion_recall"]) == 1.0 and float(scores["lesion_recall_shuffled_masks"]) < 0.5
    np.savez(tmp_path / "bare.npz", images=heads.images.numpy())
    np.savez(tmp_path / "flat.npz", images=heads.images[:, :, 8].numpy(), masks=heads.masks[:, :, 8].numpy())
    for name, message in (("bare", "no 'masks' array"), ("flat", "the samples are images but phantom3d holds volumes")):
        with pytest.raises(SystemExit) as e:
            metrics.main([str(tmp_path / f"{name}.npz"), "--dataset", "phantom3d"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
