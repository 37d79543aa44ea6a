"""metrics.py: the Frechet distance against an independent SciPy reference, its behaviour on real
and corrupted images, the feature classifier, and Dice."""
import numpy as np
import pytest
import torch

import metrics
from metrics import FeatureNet, QualityScore, dice, feature_stats, frechet_distance, read_samples, train_classifier
from synthetic import make_phantom, make_shapes


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy.linalg.sqrtm, as FID reference code computes it."""
    from scipy import linalg
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def fd(a, b):
    return frechet_distance(*feature_stats(torch.from_numpy(a)), *feature_stats(torch.from_numpy(b)))


def test_frechet_distance_matches_scipy_reference():
    """Random correlated features (500 x 16): our eigh-based square root agrees with sqrtm to 1e-6."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16))
    a = rng.normal(size=(500, 16)) @ mix
    b = rng.normal(size=(500, 16)) @ mix * 1.3 + 0.5
    assert fd(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6)


def test_frechet_distance_closed_forms():
    """Itself: 0. Shifted by m in every one of D dimensions: D m^2 (covariances cancel exactly)."""
    a = np.random.default_rng(1).normal(size=(300, 8))
    assert fd(a, a) == pytest.approx(0, abs=1e-8)
    assert fd(a, a + 0.5) == pytest.approx(8 * 0.25, rel=1e-9)


def test_frechet_distance_with_fewer_samples_than_features_is_finite():
    """20 samples of 64 features: singular covariances, where sqrtm of a product is fragile."""
    rng = np.random.default_rng(2)
    d = fd(rng.normal(size=(20, 64)), rng.normal(size=(20, 64)))
    assert np.isfinite(d) and d > 0


@pytest.fixture(scope="module")
def shapes_score(tmp_path_factory):
    return QualityScore("shapes", str(tmp_path_factory.mktemp("data")), log=lambda m: None)


@pytest.mark.slow
def test_classifier_is_accurate_and_cached(shapes_score, monkeypatch):
    """The feature classifier must classify its dataset (>= 97 % on held-out shapes; MNIST: README), and
    a second QualityScore for the same data loads it from DATA_DIR/classifiers/ instead of training."""
    assert shapes_score.test_accuracy >= 0.97
    assert shapes_score.cache.is_file() and shapes_score.cache.parent.name == "classifiers"
    monkeypatch.setattr(metrics, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
    again = QualityScore("shapes", str(shapes_score.cache.parent.parent), log=lambda m: None)
    assert again.test_accuracy == shapes_score.test_accuracy


@pytest.mark.slow
def test_fid_grows_as_noise_is_added_to_real_images(shapes_score):
    """Real held-out images score near fid_real; Gaussian noise of growing std (clipped to [-1, 1], the
    range samples have) moves them away."""
    real = make_shapes(n=256, seed=2).images
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    fids = [shapes_score((real + s * noise).clamp(-1, 1))["fid"]
            for s in (0.0, 0.2, 0.5, 1.0)]
    assert fids == sorted(fids) and fids[-1] > 10 * fids[0]


@pytest.mark.slow
def test_class_accuracy_of_labelled_samples(shapes_score):
    real = make_shapes(n=200, seed=3)
    assert shapes_score(real.images, real.labels)["class_accuracy"] >= 0.95
    assert shapes_score(real.images, (real.labels + 1) % 3)["class_accuracy"] <= 0.05


@pytest.mark.slow
def test_train_classifier_learns_mnist_like_shapes():
    """Alone and small: 150 steps on 1,024 shapes already separate the three classes (>= 90 %)."""
    net, acc = train_classifier(make_shapes(n=1024, seed=0), make_shapes(n=256, seed=1), min_steps=150)
    assert isinstance(net, FeatureNet) and acc >= 0.9


def test_read_samples_refuses_bad_files(tmp_path):
    from data import DataError
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4, 4)))
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "nan.npz", images=np.full((2, 1, 4, 4), np.nan, dtype=np.float32))
    for name in ("x.npy", "empty.npz", "nan.npz", "missing.npz"):
        with pytest.raises(DataError):
            read_samples(str(tmp_path / name))


def test_dice_closed_forms():
    """Dice = 2|A and B| / (|A| + |B|): itself 1, disjoint 0, half-overlapping squares 2*2/(4+4) = 0.5."""
    m = make_phantom(n=4, size=32).masks
    assert dice(m, m).tolist() == [1.0] * 4
    a, b = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    a[..., 0:2, 0:2], b[..., 0:2, 1:3] = 1, 1
    assert dice(a, b).item() == 0.5 and dice(a, 1 - a).item() == 0.0
    assert dice(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0


@pytest.mark.slow
def test_damaged_classifier_cache_is_rebuilt(tmp_path):
    """A cache file that is not a classifier (or would run code) is retrained, never trusted."""
    score = QualityScore("shapes", str(tmp_path), log=lambda m: None)
    cached = next((tmp_path / "classifiers").glob("shapes-*.pt"))
    cached.write_bytes(b"garbage")
    messages = []
    again = QualityScore("shapes", str(tmp_path), log=messages.append)
    assert any("not a usable classifier" in m for m in messages)
    assert again.test_accuracy == score.test_accuracy  # same seed, same data: the same classifier


def test_lesion_recall_counts_the_masks_pixels_drawn_bright_whatever_else_is_bright():
    """Half of the mask bright: recall 0.5; bright grain elsewhere lowers the Dice but not the recall."""
    from metrics import lesion_dice, lesion_recall
    masks = torch.zeros(2, 1, 4, 4)
    masks[:, :, :2, :2] = 1  # 4 pixels each
    x = -torch.ones(2, 1, 4, 4)
    x[:, :, 0, :2] = 1       # 2 of the 4 drawn bright
    assert lesion_recall(x, masks) == 0.5 and lesion_dice(x, masks) == pytest.approx(2 * 2 / (2 + 4))
    x[:, :, 3, :] = 1        # grain: 4 bright pixels outside
    assert lesion_recall(x, masks) == 0.5 and lesion_dice(x, masks) == pytest.approx(2 * 2 / (6 + 4))
