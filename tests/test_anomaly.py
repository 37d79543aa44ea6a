"""anomaly.py: the partial reverse process, the scores on synthetic maps, the hidden-lesion phantoms,
and the command line on a tiny checkpoint."""
import itertools

import pytest
import torch
from PIL import Image

import anomaly
import main
from datatypes import DataError
from synthetic import PHANTOM_BRAIN, head_region, make_phantom
from test_ddim import PointMassEps, model_with

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("t_lambda", [1, 40, 250, 1000])
def test_reconstruction_returns_the_only_anatomy_the_model_knows(sampler, t_lambda):
    """A model whose data are one image c (the exact eps of a point mass) denoises any partially noised
    scan back to c, from every t_lambda and with both samplers, so the map |x_0 - x0_rec| is |x_0 - c|."""
    c = torch.zeros(1, 1, 4, 4)
    x0 = c.clone().repeat(3, 1, 1, 1)
    x0[:, :, 1:3, 1:3] = 0.8  # a "lesion" the model has never seen
    model = model_with(PointMassEps, c)
    rec = anomaly.reconstruct(model, x0, t_lambda, sampler=sampler, steps=10,
                              generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rec, c.expand_as(x0), atol=1e-3)  # float32: at t = 1, 1 - alpha_bar_1 is 1e-4
    maps, _ = anomaly.anomaly_maps(model, x0, t_lambda, sampler=sampler, steps=10, eta=0.0, repeats=2, smooth=0)
    assert torch.allclose(maps, (x0 - c).abs()[:, 0], atol=1e-3)


def test_partial_reverse_takes_only_the_steps_below_t_lambda():
    """Algorithm 2 from t_lambda calls the network t_lambda times, DDIM min(steps, t_lambda) times."""
    calls = []
    model = model_with(PointMassEps, torch.zeros(1, 1, 2, 2), T=100)
    model.net.register_forward_hook(lambda *a: calls.append(1))
    x0 = torch.zeros(2, 1, 2, 2)
    anomaly.reconstruct(model, x0, 30, sampler="ddpm")
    assert len(calls) == 30
    calls.clear()
    anomaly.reconstruct(model, x0, 30, sampler="ddim", steps=10)
    assert len(calls) == 10
    calls.clear()
    anomaly.reconstruct(model, x0, 5, sampler="ddim", steps=10)
    assert len(calls) == 5


def test_a_bright_disc_missing_from_the_reconstruction_gives_auroc_1():
    """The metric on a synthetic map: the scan is the reconstruction plus a constant disc, so the map
    is the disc alone: AUROC 1, and the validation threshold separates it exactly (Dice 1)."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    rec = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    disc = ((xx - 12) ** 2 + (yy - 18) ** 2 <= 16).expand(4, 32, 32)
    scan = rec + 0.7 * disc
    m = (scan - rec).abs()
    inside = torch.ones_like(disc)
    assert anomaly.auroc(m, disc) == 1.0
    r = anomaly.score(m[:2], disc[:2], inside[:2], m[2:], disc[2:], inside[2:])
    assert r["auroc"] == 1.0 and r["dice"] == 1.0
    assert anomaly.auroc(-m, disc) == 0.0  # the other direction


def test_auroc_counts_ties_half_like_the_pairwise_definition():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (60,), generator=g).float()  # many ties
    labels = torch.rand(60, generator=g) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    assert anomaly.auroc(scores, labels) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    with pytest.raises(DataError, match="both lesion and healthy"):  # e.g. masks/ that mark nothing: bad input
        anomaly.auroc(scores, torch.zeros(60, dtype=torch.bool))


def test_best_threshold_maximises_dice_among_all_thresholds():
    g = torch.Generator().manual_seed(2)
    labels = torch.rand(300, generator=g) < 0.2
    scores = labels.float() + torch.randn(300, generator=g) * 0.6
    thr = anomaly.best_threshold(scores, labels)
    best = max(anomaly.dice(scores >= s, labels) for s in scores)
    assert anomaly.dice(scores >= thr, labels) == pytest.approx(best)
    assert anomaly.dice(torch.zeros(5), torch.zeros(5)) == 1.0
    assert anomaly.dice(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == 0.5


def test_gaussian_blur_keeps_constants_and_spreads_an_impulse_by_sigma():
    const = torch.full((1, 9, 9), 0.3)
    assert torch.allclose(anomaly.gaussian_blur(const, 1.5), const)
    assert torch.equal(anomaly.gaussian_blur(const, 0), const)
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1
    b = anomaly.gaussian_blur(impulse, 2.0)[0]
    x = torch.arange(41.0) - 20
    assert b.sum() == pytest.approx(1, abs=1e-5)
    assert (b.sum(0) * x ** 2).sum() == pytest.approx(4.0, rel=0.02)  # variance sigma^2


def test_hidden_lesions_have_only_healthy_intensities():
    """phantom-anomaly: every lesion pixel has an intensity that healthy heads also have inside the head,
    the mask is exactly where the scan differs from the same head without the lesion, and the healthy
    phantoms have no masks. The bright phantom is unchanged: its lesion is the only region above 0.8."""
    healthy, sick = make_phantom(64, 32, 0, "none"), make_phantom(64, 32, 1, "hidden")
    assert healthy.masks is None and sick.masks.sum() > 0
    inside_healthy = set(healthy.images[head_region(healthy.images)].unique().tolist())
    lesion_values = set(sick.images[sick.masks.bool()].unique().tolist())
    assert lesion_values <= inside_healthy and len(lesion_values) == 2
    x01 = (sick.images + 1) / 2
    assert not (x01[sick.masks.bool()] == PHANTOM_BRAIN).any()  # changed pixels really changed
    bright = make_phantom(64, 32, 1, "bright")
    assert torch.equal(bright.masks.bool(), (bright.images + 1) / 2 > 0.8)
    assert torch.equal(make_phantom(8, 16, 3, "hidden").images, make_phantom(8, 16, 3, "hidden").images)


def test_baseline_intensity_direction_is_chosen_on_validation():
    dark = torch.zeros(2, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:4, 2:4] = True
    dark[mask] = -1.0
    inside = torch.ones_like(mask)
    b = anomaly.baselines(dark, mask, inside, dark, mask, inside, torch.zeros(8, 8))
    name = next(iter(b))
    assert "dark" in name and b[name]["auroc"] == 1.0 and b[name]["dice"] == 1.0


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("healthy")
    main.main(["DDPM", "--dataset", "phantom-healthy", "--image-size", "16", "--limit", "64", "--n-T", "40",
               "--batch-size", "32", "--epochs", "1", "--eval-samples", "0", "--num-samples", "4", "--out", str(out)])
    return out


def test_cli_scores_writes_figure_and_sweep_deterministically(healthy_run, tmp_path, capsys):
    args = [str(healthy_run / "model.pth"), "--n", "6", "--n-val", "6", "--repeats", "2", "--steps", "4"]
    anomaly.main([*args, "--out", str(tmp_path / "a.png"), "--sweep"])
    first = capsys.readouterr().out
    line = next(x for x in first.splitlines() if x.startswith("n="))
    assert line.startswith("n=6 auroc=") and " dice=" in line and line.endswith(" t_lambda=10")  # T/4
    assert "baseline intensity" in first and "baseline |x - mean healthy scan|" in first
    assert Image.open(tmp_path / "a.png").size[1] > Image.open(tmp_path / "a.png").size[0]  # 6 rows of 4
    assert (tmp_path / "a_sweep.png").exists() and first.count("sweep t_lambda=") == 6
    anomaly.main([*args, "--out", str(tmp_path / "b.png")])
    assert line in capsys.readouterr().out.splitlines()


def test_cli_without_a_validation_split_writes_the_figure_only(healthy_run, tmp_path, capsys):
    anomaly.main([str(healthy_run / "model.pth"), "--dataset", "phantom-healthy", "--n", "3", "--repeats", "1",
                  "--steps", "2", "--sampler", "ddpm", "--t-lambda", "5", "--out", str(tmp_path / "h.png")])
    assert "no score" in capsys.readouterr().out and (tmp_path / "h.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--t-lambda", "0"], "--t-lambda must be at least 1"),
    (["--t-lambda", "41"], "--t-lambda must lie in 1..40"),
    (["--eta", "nan"], "--eta must lie in [0, 1]"),
    (["--repeats", "0"], "--repeats must lie in 1..100"),
    (["--smooth", "-1"], "--smooth must lie in 0..20"),
])
def test_bad_input_is_one_line_and_exit_2(healthy_run, extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        anomaly.main([str(healthy_run / "model.pth"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_conditional_checkpoint_and_missing_file_are_refused(tmp_path, capsys):
    out = tmp_path / "cond"
    main.main(["COND", "--dataset", "shapes", "--net", "cnn", "--limit", "32", "--n-T", "10", "--batch-size", "32",
               "--epochs", "1", "--eval-samples", "0", "--out", str(out)])
    for path, message in ((out / "model.pth", "not a class-conditional one"), (tmp_path / "none.pth", "no checkpoint")):
        with pytest.raises(SystemExit) as e:
            anomaly.main([str(path)])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_mask_conditioned_model_maps_held_out_scans_with_an_empty_mask(tmp_path, capsys):
    """Counterfactual maps (Sanchez et al. 2022's idea with a mask condition): held-out folder scans are
    split into validation (chooses t_lambda) and test halves, scored beside the baselines."""
    from test_judge import write_phantom_folder
    root = write_phantom_folder(tmp_path / "scans", n=40, size=16)
    out = tmp_path / "cond"
    main.main(["COND", "--dataset", "folder", "--data-dir", str(root), "--image-size", "16", "--unet-widths", "8", "8",
               "8", "--n-T", "20", "--batch-size", "18", "--epochs", "1", "--eval-samples", "0", "--num-samples", "2",
               "--sample-steps", "2", "--out", str(out)])
    capsys.readouterr()
    anomaly.main([str(out / "model.pth"), "--dataset", "folder", "--data-dir", str(root), "--steps", "2",
                  "--repeats", "1", "--out", str(tmp_path / "a.png")])
    lines = capsys.readouterr().out.splitlines()
    chosen = next(x for x in lines if "the best AUROC on the 2 validation scans" in x)
    assert any("empty condition mask" in x for x in lines) and any(x.startswith("n=2 auroc=") for x in lines)
    assert any("baseline |x - mean training scan|" in x for x in lines) and chosen.startswith("t_lambda=")
    assert (tmp_path / "a.png").exists()
