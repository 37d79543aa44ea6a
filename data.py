"""Datasets as in-memory tensors: images (N, C, H, W) in [-1, 1], labels (N,) or None,
masks (N, 1, H, W) in {0, 1} or None. Batches are drawn by random index (no per-image
transforms in the training loop). This module owns the [0, 1] <-> [-1, 1] mapping.

Datasets: mnist, shapes (synthetic), MedMNIST 2D subsets by name (pathmnist,
pneumoniamnist, ...), csv, folder (images/ and optional masks/), phantom (synthetic heads
with a lesion mask). Every problem with the files raises DataError with a one-line message.
"""
import csv
import gzip
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class DataError(Exception):
    """A missing, corrupt or inconsistent data file; the message says how to fix it."""


class Dataset(NamedTuple):
    images: Tensor              # (N, C, H, W) float in [-1, 1]
    labels: Tensor | None       # (N,) long
    masks: Tensor | None        # (N, 1, H, W) float in {0, 1}


def normalize_to_neg_one_to_one(x: Tensor) -> Tensor:
    return x * 2 - 1


def unnormalize_to_zero_to_one(x: Tensor) -> Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def uint8_to_images(a: np.ndarray) -> Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.array(a)).float() / 255
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return normalize_to_neg_one_to_one(x.contiguous())


def read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST's format, optionally .gz): magic 0x0000 08 nd, nd big-endian sizes, uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} ({e}): delete it and download it again") from e
    if len(raw) < 4 or raw[0:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number): replace it")
    nd = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    values = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, file holds {values.size} values")
    return values.reshape(shape)


def find_file(folder: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        if os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None


def try_download(fetch) -> str | None:
    """Run fetch(); None if it worked, else the first line of why not (offline, proxy, disk full...)."""
    try:
        fetch()
        return None
    except Exception as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__


def download_mnist(data_dir: str) -> None:
    import torchvision
    torchvision.datasets.MNIST(data_dir, download=True)


def download_medmnist(name: str, data_dir: str) -> None:
    from torchvision.datasets.utils import download_url
    download_url(MEDMNIST_URL.format(name=name), data_dir, f"{name}.npz")


def load_mnist(data_dir: str, train: bool = True, download: bool = True) -> Dataset:
    """MNIST from the IDX files in data_dir/MNIST/raw/ (gzipped or not); downloads if absent."""
    raw = os.path.join(data_dir, "MNIST", "raw")
    names = MNIST_FILES[train]
    if any(find_file(raw, n) is None for n in names):
        err = try_download(lambda: download_mnist(data_dir)) if download else "download disabled"
        if err is not None:
            raise DataError(f"MNIST not found in {raw}/ and could not be downloaded ({err}): "
                            f"put {', '.join(n + '.gz' for n in names)} there or pass --data-dir")
    images = read_idx(find_file(raw, names[0]))
    labels = read_idx(find_file(raw, names[1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST files in {raw} disagree: images {images.shape}, labels {labels.shape}")
    return Dataset(uint8_to_images(images), torch.from_numpy(labels.astype(np.int64)), None)


def read_npz(path: str) -> dict:
    """All arrays of a .npz file, loaded without pickle; anything else (a .npy, an empty, truncated
    or corrupt zip) raises DataError naming the file."""
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (AttributeError, TypeError):  # np.load returned a plain array: a .npy file, not a .npz
        raise DataError(f"{path} is a single .npy array, not a .npz archive of named arrays") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path} is not a readable .npz file ({reason})") from e


def load_medmnist(name: str, data_dir: str, train: bool = True, download: bool = True) -> Dataset:
    """A 2D MedMNIST subset from data_dir/<name>.npz (keys train_images, train_labels, ...)."""
    path = os.path.join(data_dir, f"{name}.npz")
    if not os.path.isfile(path):
        err = try_download(lambda: download_medmnist(name, data_dir)) if download else "download disabled"
        if err is not None:
            raise DataError(f"{path} not found and could not be downloaded ({err}): "
                            f"get {name}.npz from MedMNIST (zenodo.org/records/10519652) into {data_dir}")
    split = "train" if train else "test"
    arrays = read_npz(path)
    if f"{split}_images" not in arrays or f"{split}_labels" not in arrays:
        raise DataError(f"{path} is not a MedMNIST .npz: it has no {split}_images/{split}_labels arrays")
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(f"{path}: expected uint8 images (N, H, W[, C]) and N labels, "
                        f"got {images.dtype} {images.shape} and {labels.shape}")
    labels = labels.reshape(len(labels), -1)[:, 0].astype(np.int64)  # (N, 1) -> (N,)
    return Dataset(uint8_to_images(images), torch.from_numpy(labels), None)


def load_csv(path: str, image_size: int, channels: int) -> Dataset:
    """One image per row: H*W*C values 0..255 in (H, W, C) order, optionally preceded by a
    label column (a first column named 'label' in a header row, or one extra value per row)."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError as e:
        raise DataError(f"cannot read CSV file {path} ({e}): check --data-path") from e
    if rows and not rows[0][0].strip().lstrip("-").replace(".", "", 1).isdigit():
        rows = rows[1:]  # header row
    n = image_size * image_size * channels
    if not rows or len(rows[0]) not in (n, n + 1):
        width = len(rows[0]) if rows else 0
        raise DataError(f"{path}: rows have {width} values, expected {n} (--image-size {image_size} "
                        f"--channels {channels}) or {n + 1} with a label first")
    try:
        a = np.array(rows, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric or ragged rows ({e})") from e
    labels = torch.from_numpy(a[:, 0].astype(np.int64)) if a.shape[1] == n + 1 else None
    pixels = a[:, -n:]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0..255, found {pixels.min()}..{pixels.max()}")
    images = pixels.round().astype(np.uint8).reshape(len(a), image_size, image_size, channels)
    return Dataset(uint8_to_images(images), labels, None)


def list_images(folder: str) -> dict:
    """{file stem: path} of the image files in folder."""
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(IMAGE_EXTENSIONS)}


def read_resized(paths: list, image_size: int, mode: str | None) -> np.ndarray:
    """Images resized to image_size x image_size, uint8 (N, H, W[, C]); mode "L", "RGB" or None
    (grayscale stays "L", anything else becomes "RGB"). DataError names the unreadable files."""
    from PIL import Image
    out, bad = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert(mode or ("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"))
                out.append(np.asarray(im.resize((image_size, image_size), Image.BILINEAR)))
        except OSError:
            bad.append(os.path.basename(p))
    if bad:
        raise DataError(f"{len(bad)} image(s) cannot be read, e.g. {', '.join(bad[:5])}: remove or replace them")
    return np.stack(out)


def load_folder(data_dir: str, image_size: int, channels: int | None, train: bool = True) -> Dataset:
    """data_dir/images/ (+ optional data_dir/masks/ with the same file names). The last 10% of
    the sorted names are held out (train=False). Masks are binarised at half intensity."""
    image_dir, mask_dir = os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")
    if not os.path.isdir(image_dir):
        raise DataError(f"no images/ folder in {data_dir}: put the images in {image_dir}")
    images = list_images(image_dir)
    if not images:
        raise DataError(f"{image_dir} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    masks = list_images(mask_dir) if os.path.isdir(mask_dir) else None
    if masks is not None and images.keys() != masks.keys():
        only_i, only_m = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
        raise DataError(f"images and masks do not match: without mask: {', '.join(only_i[:5]) or '-'}; "
                        f"without image: {', '.join(only_m[:5]) or '-'} (names must match)")
    names = sorted(images)
    held_out = max(1, len(names) // 10) if len(names) > 1 else 0
    names = names[:len(names) - held_out] if train else names[len(names) - held_out:] or names
    if channels is None:  # grayscale if the first image is
        channels = 1 if read_resized([images[names[0]]], 1, None).ndim == 3 else 3
    x = uint8_to_images(read_resized([images[n] for n in names], image_size, "L" if channels == 1 else "RGB"))
    m = None
    if masks is not None:
        m = torch.from_numpy(read_resized([masks[n] for n in names], image_size, "L") >= 128)
        m = m[:, None].float()
    return Dataset(x, None, m)


def grid_coordinates(size: int) -> tuple:
    """Pixel-centre coordinates in [0, 1], each (1, size, size)."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return xx[None], yy[None]


def ellipse(xx: Tensor, yy: Tensor, cx: Tensor, cy: Tensor, a: Tensor, b: Tensor, angle: Tensor) -> Tensor:
    """Boolean (N, H, W): inside the ellipse with centre (cx, cy), semi-axes a, b, rotated by angle."""
    cx, cy, a, b, angle = (v.view(-1, 1, 1) for v in (cx, cy, a, b, angle))
    u = (xx - cx) * angle.cos() + (yy - cy) * angle.sin()
    v = -(xx - cx) * angle.sin() + (yy - cy) * angle.cos()
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def make_shapes(n: int = 4096, size: int = 28, seed: int = 0) -> Dataset:
    """Synthetic offline dataset: one disc (label 0), square (1) or bar (2) per image, random
    position, size and brightness on black. Deterministic given the seed."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    xx, yy = grid_coordinates(size)
    labels = torch.randint(0, 3, (n,), generator=g)
    cx, cy, r = u(0.3, 0.7).view(-1, 1, 1), u(0.3, 0.7).view(-1, 1, 1), u(0.12, 0.25).view(-1, 1, 1)
    dx, dy = (xx - cx).abs(), (yy - cy).abs()
    vertical = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1)
    disc = dx ** 2 + dy ** 2 <= r ** 2
    square = torch.maximum(dx, dy) <= 0.85 * r
    bar = torch.where(vertical, (dx <= 0.3 * r) & (dy <= 1.4 * r), (dy <= 0.3 * r) & (dx <= 1.4 * r))
    inside = torch.where(labels.view(-1, 1, 1) == 0, disc, torch.where(labels.view(-1, 1, 1) == 1, square, bar))
    x01 = inside.float() * u(0.6, 1.0).view(-1, 1, 1)
    return Dataset(normalize_to_neg_one_to_one(x01[:, None]), labels, None)


PHANTOM_LESION, PHANTOM_SKULL, PHANTOM_BRAIN, PHANTOM_VENTRICLE = 1.0, 0.6, 0.35, 0.1


def make_phantom(n: int = 2048, size: int = 64, seed: int = 0) -> Dataset:
    """Synthetic head phantoms in the spirit of Shepp & Logan (1974): a skull ring, brain
    tissue, two dark ventricles and one bright lesion (the only pixels brighter than 0.8 in
    [0, 1]), whose binary mask is returned. Deterministic given the seed."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    xx, yy = grid_coordinates(size)
    cx, cy, a, b, tilt = u(0.47, 0.53), u(0.47, 0.53), u(0.36, 0.44), u(0.30, 0.36), u(-0.3, 0.3)
    head = ellipse(xx, yy, cx, cy, a, b, tilt)
    brain = ellipse(xx, yy, cx, cy, 0.88 * a, 0.86 * b, tilt)
    x01 = PHANTOM_SKULL * head.float()
    x01[brain] = PHANTOM_BRAIN
    for side in (-1, 1):  # ventricles, left and right of the centre
        v = ellipse(xx, yy, cx + side * u(0.05, 0.09), cy + u(-0.04, 0.04), u(0.03, 0.05), u(0.07, 0.11), tilt)
        x01[v] = PHANTOM_VENTRICLE
    radius, angle = u(0.0, 0.5), u(0.0, 6.2832)  # lesion centre inside the brain's inner half
    lx, ly = cx + radius * 0.8 * a * angle.cos(), cy + radius * 0.8 * b * angle.sin()
    lesion = ellipse(xx, yy, lx, ly, u(0.05, 0.11), u(0.05, 0.11), u(0.0, 3.1416)) & brain
    x01[lesion] = PHANTOM_LESION
    return Dataset(normalize_to_neg_one_to_one(x01[:, None]), None, lesion[:, None].float())


MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
DATASETS = ("mnist", "shapes", "phantom", "folder", "csv", *MEDMNIST_2D)


def load_dataset(name: str, data_dir: str = "data", train: bool = True, image_size: int | None = None,
                 channels: int | None = None, data_path: str | None = None, download: bool = True) -> Dataset:
    """The one entry point: name in DATASETS. image_size applies to folder (default 64),
    phantom (64) and csv (28); channels to folder (default: from the files) and csv (1)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if image_size is not None and name not in ("folder", "phantom", "csv") and image_size != 28:
        raise DataError(f"{name} images are 28x28: --image-size applies to folder, phantom and csv only")
    if name == "mnist":
        return load_mnist(data_dir, train, download)
    if name == "shapes":
        return make_shapes(seed=0 if train else 1)
    if name == "phantom":
        return make_phantom(n=8192 if train else 256, size=image_size or 64, seed=0 if train else 1)
    if name == "folder":
        return load_folder(data_dir, image_size or 64, channels, train)
    if name == "csv":
        if not data_path:
            raise DataError("--dataset csv needs --data-path FILE.csv")
        return load_csv(data_path, image_size or 28, channels or 1)
    return load_medmnist(name, data_dir, train, download)
