"""Loaders read exactly what the files hold, in [-1, 1], and bad files end in a clear DataError."""
import gzip
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import DataError, in_number_order, load_dataset
from synthetic import make_phantom, make_shapes


def write_idx(path: str, a: np.ndarray, compress: bool = True) -> None:
    """IDX: two zero bytes, type 0x08 (uint8), ndim, then big-endian int32 sizes and the data."""
    raw = bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape) + a.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(raw)


@pytest.fixture
def mnist_dir(tmp_path):
    """A 6-image MNIST in tmp_path/MNIST/raw: train files gzipped, test files plain."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = (np.arange(6 * 28 * 28) % 256).astype(np.uint8).reshape(6, 28, 28)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    write_idx(str(raw / "train-images-idx3-ubyte.gz"), images)
    write_idx(str(raw / "train-labels-idx1-ubyte.gz"), labels)
    write_idx(str(raw / "t10k-images-idx3-ubyte"), images[:2], compress=False)
    write_idx(str(raw / "t10k-labels-idx1-ubyte"), labels[:2], compress=False)
    return tmp_path, images, labels


def test_mnist_idx_files_load_offline_to_minus_one_one(mnist_dir, monkeypatch):
    root, images, labels = mnist_dir
    monkeypatch.setattr(data, "download_mnist", lambda d: pytest.fail("no download when files exist"))
    ds = load_dataset("mnist", str(root))
    assert ds.images.shape == (6, 1, 28, 28) and ds.labels.tolist() == labels.tolist()
    assert torch.allclose(ds.images[:, 0], torch.from_numpy(images).float() / 255 * 2 - 1)
    assert ds.images.min().item() == -1.0 and ds.images.max().item() == 1.0
    assert load_dataset("mnist", str(root), train=False).images.shape == (2, 1, 28, 28)


def test_mnist_missing_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(data_dir):
        raise OSError("network unreachable")
    monkeypatch.setattr(data, "download_mnist", offline)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path))
    message = str(e.value)
    assert "network unreachable" in message and "MNIST/raw" in message and "train-images-idx3-ubyte.gz" in message
    assert "\n" not in message


def test_corrupt_and_truncated_idx_files_are_named(mnist_dir):
    root, images, _ = mnist_dir
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (6).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images[:3].tobytes())
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", str(root))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist", str(root))


def test_pathmnist_npz_rgb_to_chw(tmp_path):
    """MedMNIST: uint8 (N, H, W, 3) -> (N, 3, H, W) in [-1, 1], labels (N, 1) -> (N,)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    labels = np.array([[0], [8], [3], [3], [1]], dtype=np.uint8)
    np.savez(tmp_path / "pathmnist.npz", train_images=images, train_labels=labels,
             test_images=images[:2], test_labels=labels[:2])
    ds = load_dataset("pathmnist", str(tmp_path), download=False)
    assert ds.images.shape == (5, 3, 28, 28) and ds.labels.tolist() == [0, 8, 3, 3, 1]
    assert ds.images[2, 1, 4, 7].item() == pytest.approx(images[2, 4, 7, 1] / 255 * 2 - 1)
    assert load_dataset("pathmnist", str(tmp_path), train=False).images.shape == (2, 3, 28, 28)


def test_medmnist_missing_or_wrong_file(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="pathmnist.npz not found"):
        load_dataset("pathmnist", str(tmp_path), download=False)
    monkeypatch.setattr(data, "download_medmnist", lambda name, d: (_ for _ in ()).throw(OSError("no route")))
    with pytest.raises(DataError, match=r"could not be downloaded \(no route\)"):
        load_dataset("pathmnist", str(tmp_path))
    np.savez(tmp_path / "pathmnist.npz", something_else=np.zeros(3))
    with pytest.raises(DataError, match="not a MedMNIST"):
        load_dataset("pathmnist", str(tmp_path))


def test_csv_with_header_and_labels(tmp_path):
    """Rows: label, then H*W*C values in (H, W, C) order."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, 4 * 4 * 3))
    path = tmp_path / "imgs.csv"
    header = "label," + ",".join(f"p{i}" for i in range(48))
    path.write_text(header + "\n" + "\n".join(f"{i % 2}," + ",".join(map(str, r)) for i, r in enumerate(pixels)))
    ds = load_dataset("csv", data_path=str(path), image_size=4, channels=3)
    assert ds.images.shape == (4, 3, 4, 4) and ds.labels.tolist() == [0, 1, 0, 1]
    hwc = pixels.reshape(4, 4, 4, 3)
    assert ds.images[3, 2, 1, 0].item() == pytest.approx(hwc[3, 1, 0, 2] / 255 * 2 - 1)
    with pytest.raises(DataError, match="expected 16"):
        load_dataset("csv", data_path=str(path), image_size=4, channels=1)


def write_pngs(folder, names, size=(40, 30), value=200):
    os.makedirs(folder, exist_ok=True)
    for n in names:
        a = np.zeros(size[::-1], dtype=np.uint8)
        a[5:15, 5:20] = value
        Image.fromarray(a).save(os.path.join(folder, n))


def test_folder_with_matching_masks(tmp_path):
    names = [f"{i}.png" for i in range(10)]
    write_pngs(tmp_path / "images", names, value=120)
    write_pngs(tmp_path / "masks", names, value=255)
    train = load_dataset("folder", str(tmp_path), image_size=16)
    held_out = load_dataset("folder", str(tmp_path), image_size=16, train=False)
    assert train.images.shape == (9, 1, 16, 16) and held_out.images.shape == (1, 1, 16, 16)
    assert set(train.masks.unique().tolist()) == {0.0, 1.0} and train.masks.shape == (9, 1, 16, 16)
    assert train.images.min().item() == -1.0


def test_folder_holds_out_the_last_numbers_as_a_contiguous_range(tmp_path):
    """Slices numbered 1..30 (neighbours: one patient): the held-out 10 % are 28, 29, 30, never 9 and the
    names after it in string order. Each image's value is its number, to see which ones a split holds."""
    folder = tmp_path / "images"
    os.makedirs(folder)
    for i in range(1, 31):
        Image.fromarray(np.full((8, 8), 3 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    number = lambda ds: sorted(round((v + 1) / 2 * 255 / 3) for v in ds.images[:, 0, 0, 0].tolist())  # noqa: E731
    assert number(load_dataset("folder", str(tmp_path), image_size=8, train=False)) == [28, 29, 30]
    assert number(load_dataset("folder", str(tmp_path), image_size=8)) == list(range(1, 28))
    assert sorted(["scan_10", "scan_9", "b2", "a10", "a9"], key=in_number_order) == \
        ["a9", "a10", "b2", "scan_9", "scan_10"]


def test_folder_mismatched_names_listed(tmp_path):
    write_pngs(tmp_path / "images", ["a.png", "b.png", "c.png"])
    write_pngs(tmp_path / "masks", ["a.png", "x.png"])
    with pytest.raises(DataError) as e:
        load_dataset("folder", str(tmp_path))
    assert "without mask: b, c" in str(e.value) and "without image: x" in str(e.value)


def test_folder_empty_or_unreadable(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="holds no"):
        load_dataset("folder", str(tmp_path))
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset("folder", str(tmp_path))
    with pytest.raises(DataError, match="no images/ folder"):
        load_dataset("folder", str(tmp_path / "nowhere"))


def test_shapes_deterministic_labelled_in_range():
    a, b = make_shapes(n=64, seed=3), make_shapes(n=64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_shapes(n=64, seed=4).images)
    assert a.images.min().item() == -1.0 and a.images.max().item() <= 1.0
    assert set(a.labels.tolist()) == {0, 1, 2}


def test_phantom_deterministic_binary_masks_lesion_is_brightest():
    a, b = make_phantom(n=16, size=32, seed=0), make_phantom(n=16, size=32, seed=0)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert set(a.masks.unique().tolist()) == {0.0, 1.0} and (a.masks.flatten(1).sum(1) > 0).all()
    x01 = (a.images + 1) / 2
    assert torch.equal(x01 > 0.8, a.masks > 0.5)  # the lesion is exactly the bright region


def test_unknown_dataset_and_wrong_image_size():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="28x28"):
        load_dataset("shapes", image_size=32)
