"""Datasets as in-memory tensors: images (N, C, H, W) in [-1, 1], labels (N,) or None,
masks (N, 1, H, W) in {0, 1} or None (datatypes.Dataset; the [0, 1] <-> [-1, 1] mapping is there too).
Batches are drawn by random index; --augment (augment) flips, shifts and rotates whole batches.

DATASETS, at the end, is the registry of the names a user can type: mnist, MedMNIST 2D and 3D subsets
by name (pathmnist, organmnist3d, ...), csv, folder (images/ and optional masks/), nifti (the same with
.nii.gz volumes, read by the optional nibabel), and the synthetic shapes and phantoms of synthetic.py.
The file formats are read in formats.py.
Every loader checks what it reads (dtype, range, shape, finiteness, label values) and either
converts it correctly or raises DataError with a one-line message naming the file; sizes are
checked before anything large is allocated.
"""
import hashlib
import math
import os
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datatypes import DataError, Dataset, cause, normalize_to_neg_one_to_one
from formats import (
    IMAGE_EXTENSIONS,
    MAX_VALUES,
    NIFTI_EXTENSIONS,
    list_files,
    parse_csv_rows,
    read_idx,
    read_npz,
    read_resized,
    read_volume,
)

MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
MEDMNIST_3D = ("organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d",
               "synapsemnist3d")  # volumes (N, 28, 28, 28)
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
MAX_CLASSES = 1000


def to_images(a: np.ndarray) -> Tensor:
    """float (N, H, W) or (N, H, W, C) in [0, 1] -> float32 (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return normalize_to_neg_one_to_one(x.contiguous())


def uint8_to_images(a: np.ndarray) -> Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    return to_images(a.astype(np.float32) / 255)


def check_labels(labels: np.ndarray, where: str, item: str = "item") -> Tensor:
    """Class labels must be whole numbers in 0..MAX_CLASSES-1 (NaN, 2.7, -1 or 1e9 are refused)."""
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        bad = ~np.isfinite(labels) | (labels != np.round(labels)) if np.issubdtype(labels.dtype, np.floating) \
            else np.ones(labels.shape, dtype=bool)
        if bad.any():
            i = int(np.argmax(bad.reshape(-1)))
            raise DataError(f"{where}: labels must be whole numbers, but {item} {i + 1} has label "
                            f"{labels.reshape(-1)[i].item()}")
    if labels.size and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        raise DataError(f"{where}: labels must lie in 0..{MAX_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return torch.from_numpy(labels.astype(np.int64))


def fingerprint(data: Dataset) -> str:
    """12 hex digits that change when the images, labels or masks change (what a run records as data_id)."""
    h = hashlib.sha1()
    for a in data:
        h.update(b"-" if a is None else a.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def find_file(folder: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        if os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None


def try_download(fetch, made: str) -> str | None:
    """Run fetch(); None if it worked, else why not in one line (offline, proxy, disk full...).
    On failure, removes the empty folders fetch left under `made` (nothing is left behind)."""
    existed = {d for d in (made, *(os.path.join(made, s) for s in ("MNIST", "MNIST/raw"))) if os.path.isdir(d)}
    try:
        fetch()
        return None
    except Exception as e:
        for d in (os.path.join(made, "MNIST", "raw"), os.path.join(made, "MNIST"), made):
            if d not in existed and os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
        return cause(e)


def download_mnist(data_dir: str) -> None:
    import torchvision
    torchvision.datasets.MNIST(data_dir, download=True)


def download_medmnist(name: str, data_dir: str) -> None:
    from torchvision.datasets.utils import download_url
    download_url(MEDMNIST_URL.format(name=name), data_dir, f"{name}.npz")


def load_mnist(data_dir: str, train: bool = True, download: bool = True, limit: int | None = None) -> Dataset:
    """MNIST from the IDX files in data_dir/MNIST/raw/ (gzipped or not); downloads if absent."""
    raw = os.path.join(data_dir, "MNIST", "raw")
    names = MNIST_FILES[train]
    if any(find_file(raw, n) is None for n in names):
        err = try_download(lambda: download_mnist(data_dir), data_dir) if download else "download disabled"
        if err is not None:
            every = ", ".join(n + ".gz" for n in (*MNIST_FILES[True], *MNIST_FILES[False]))
            raise DataError(f"MNIST not found in {raw}/ and could not be downloaded ({err}): "
                            f"put {every} there, or pass --data-dir DIR with them in DIR/MNIST/raw/")
    images = read_idx(find_file(raw, names[0]), limit)
    labels = read_idx(find_file(raw, names[1]), limit)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST files in {raw} disagree: images {images.shape}, labels {labels.shape}")
    return Dataset(uint8_to_images(images), check_labels(labels, raw), None)


def medmnist_split(name: str, data_dir: str, train: bool, download: bool, limit: int | None) -> tuple:
    """(images, labels, path) of one split of data_dir/<name>.npz (keys train_images, train_labels, ...),
    downloaded if missing, every split checked (check_splits)."""
    path = os.path.join(data_dir, f"{name}.npz")
    if not os.path.isfile(path):
        err = try_download(lambda: download_medmnist(name, data_dir), data_dir) if download else "download disabled"
        if err is not None:
            raise DataError(f"{path} not found and could not be downloaded ({err}): "
                            f"get {name}.npz from MedMNIST (zenodo.org/records/10519652) into {data_dir}")
    split = "train" if train else "test"
    arrays = read_npz(path)
    if f"{split}_images" not in arrays or f"{split}_labels" not in arrays:
        raise DataError(f"{path} is not a MedMNIST .npz: it has no {split}_images/{split}_labels arrays")
    check_splits(arrays, path)
    return arrays[f"{split}_images"][:limit], arrays[f"{split}_labels"][:limit], path


def load_medmnist(name: str, data_dir: str, train: bool = True, download: bool = True,
                  limit: int | None = None) -> Dataset:
    """A 2D MedMNIST subset from data_dir/<name>.npz (keys train_images, train_labels, ...)."""
    images, labels, path = medmnist_split(name, data_dir, train, download=download, limit=limit)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # channels first (N, C, H, W) -> MedMNIST's (N, H, W, C)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0 or len(images) != len(labels) \
            or (images.ndim == 4 and images.shape[3] != 3):
        raise DataError(f"{path}: expected uint8 images (N, H, W) or (N, H, W, 3) and N labels, "
                        f"got {images.dtype} {images.shape} and {labels.shape}")
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] > 1:  # ChestMNIST: 14 findings per image, each 0 or 1
        print(f"note: {path} holds {labels.shape[1]} labels per image (multi-label): only the first is the class "
              "(for --cond class and the fid judge's classifier)", flush=True)
    labels = labels[:, 0]  # (N, 1) -> (N,)
    return Dataset(uint8_to_images(images), check_labels(labels, path), None)


def load_medmnist3d(name: str, data_dir: str, train: bool = True, download: bool = True,
                    limit: int | None = None) -> Dataset:
    """A MedMNIST 3D subset (organmnist3d, ...) from data_dir/<name>.npz: uint8 volumes (N, D, H, W),
    28^3 (64^3 in MedMNIST+), and labels (N, 1), as float volumes (N, 1, D, H, W) in [-1, 1]."""
    images, labels, path = medmnist_split(name, data_dir, train, download=download, limit=limit)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0 or len(images) != len(labels) \
            or len(set(images.shape[1:])) != 1:
        raise DataError(f"{path}: expected uint8 cubic volumes (N, D, H, W) and N labels, "
                        f"got {images.dtype} {images.shape} and {labels.shape}")
    x = normalize_to_neg_one_to_one(torch.from_numpy(images.astype(np.float32) / 255)[:, None])
    return Dataset(x, check_labels(labels.reshape(len(labels), -1)[:, 0], path), None)


def check_splits(arrays: dict, path: str) -> None:
    """Every split of a MedMNIST file (train, val, test) must hold images of one shape and dtype and
    as many labels as images, so that no split is found to differ after minutes of training."""
    splits = [s for s in ("train", "val", "test") if f"{s}_images" in arrays]
    shapes = {s: (arrays[f"{s}_images"].shape[1:], arrays[f"{s}_images"].dtype) for s in splits}
    if len(set(shapes.values())) > 1:
        told = ", ".join(f"{s} {shape} {dtype}" for s, (shape, dtype) in shapes.items())
        raise DataError(f"{path}: its splits disagree in image shape or type ({told}): the file is damaged; "
                        "download it again")
    for s in splits:
        labels, n = arrays.get(f"{s}_labels"), len(arrays[f"{s}_images"])
        if labels is None or len(labels) != n:
            raise DataError(f"{path}: {s}_images has {n} images but {'no' if labels is None else len(labels)} "
                            "labels: the file is damaged; download it again")


def load_csv(path: str, image_size: int, channels: int, limit: int | None = None) -> Dataset:
    """One image per row: H*W*C values in (H, W, C) order, 0..255 (or 0..1 if no value exceeds 1),
    optionally preceded by a whole-number label column (a first row with non-numbers is a header)."""
    rows = parse_csv_rows(path, limit)
    n = image_size * image_size * channels
    if not rows or len(rows[0]) not in (n, n + 1):
        width = len(rows[0]) if rows else 0
        raise DataError(f"{path}: rows have {width} values, expected {n} (--image-size {image_size} "
                        f"--channels {channels}) or {n + 1} with a label first")
    if len(rows) * n > MAX_VALUES:
        raise DataError(f"{path}: {len(rows):,} images of {n} values do not fit in memory: pass --limit N")
    try:
        a = np.array(rows, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric or ragged rows ({e})") from e
    pixels = a[:, -n:]
    if not np.isfinite(a).all():
        row = int(np.argwhere(~np.isfinite(a))[0, 0])
        raise DataError(f"{path}: row {row + 1} of the data holds a non-finite value (nan/inf): fix or remove it")
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0..255 (or 0..1), found {pixels.min()}..{pixels.max()}")
    scale = 1.0 if pixels.max() <= 1 else 255.0  # values in 0..1 are fractions, else 8-bit levels
    labels = check_labels(a[:, 0], path, "data row") if a.shape[1] == n + 1 else None
    return Dataset(to_images(pixels.reshape(len(a), image_size, image_size, channels) / scale), labels, None)


def in_number_order(name: str) -> list:
    """Sort key that reads the digits in a name as a number: 2.png before 10.png, scan_9 before scan_10.
    Numbered slices of one patient sit next to each other, so the held-out tail is a contiguous range
    of numbers, never 9, 90-99 and 900-999 as plain string order would give."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def folder_split(data_dir: str, item: str, extensions: tuple, train: bool, limit: int | None) -> tuple:
    """(files, mask files or None, names of this split) of data_dir/images/ and the optional data_dir/masks/,
    matched by name; the last 10% of the names, in number order (in_number_order), are held out
    (train=False). Files are listed by formats.list_files with these extensions; item names
    what a file holds, for the messages."""
    image_dir, mask_dir = os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")
    if not os.path.isdir(image_dir):
        raise DataError(f"no images/ folder in {data_dir}: put the {item}s ({'/'.join(extensions)}) in {image_dir}")
    images = list_files(image_dir, extensions)
    if not images:
        raise DataError(f"{image_dir} holds no {'/'.join(extensions)} {item}s")
    masks = list_files(mask_dir, extensions) if os.path.isdir(mask_dir) else None
    if masks is not None and images.keys() != masks.keys():
        only_i, only_m = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
        raise DataError(f"{item}s and masks do not match: without mask: {', '.join(only_i[:5]) or '-'}; "
                        f"without {item}: {', '.join(only_m[:5]) or '-'} (names must match)")
    names = sorted(images, key=in_number_order)
    held_out = max(1, len(names) // 10) if len(names) > 1 else 0
    return images, masks, (names[:len(names) - held_out] if train else names[len(names) - held_out:] or names)[:limit]


def load_folder(data_dir: str, image_size: int, channels: int | None, train: bool = True,
                limit: int | None = None) -> Dataset:
    """data_dir/images/ (+ optional data_dir/masks/ with the same file names and sizes). The last
    10% of the sorted names are held out (train=False). Masks are binarised by their own values
    (binarize_mask)."""
    images, masks, names = folder_split(data_dir, "image", IMAGE_EXTENSIONS, train=train, limit=limit)
    if channels is None:  # grayscale if the first image is
        channels = 1 if read_resized([images[names[0]]], 1, None).ndim == 3 else 3
    image_sizes, mask_sizes = [], []
    x = to_images(read_resized([images[n] for n in names], image_size, "L" if channels == 1 else "RGB",
                               sizes=image_sizes))
    m = None
    if masks is not None:
        m = torch.from_numpy(read_resized([masks[n] for n in names], image_size, "mask", sizes=mask_sizes))[:, None]
        for n, a, b in zip(names, image_sizes, mask_sizes):
            if a != b:
                raise DataError(f"mask {n} is {b[0]}x{b[1]} but its image is {a[0]}x{a[1]}: masks must have "
                                "their image's size")
        m = m.float()
    return Dataset(x, None, m)


def resize_volume(a: np.ndarray, size: int) -> Tensor:
    """A float (D, H, W) volume resampled to size^3: averaging over the voxels each new one covers along
    the sides that shrink (area), then trilinear along those that grow. Values stay within the input's range."""
    v = torch.from_numpy(a)[None, None]
    v = F.interpolate(v, size=tuple(min(s, size) for s in a.shape), mode="area")
    return F.interpolate(v, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]


def binarize_label_map(a: np.ndarray, path: str, soft: list) -> np.ndarray:
    """A 3D mask by its values: a label map of whole numbers (0 background, 1, 2, 4 ... lesion classes, as in
    BraTS) marks every nonzero label; a probability map (fractions in 0..1) the voxels of probability at least
    0.5, and its path goes into `soft` for a note. Fractions outside 0..1 are neither, and refused."""
    if np.array_equal(a, np.round(a)):
        return a != 0
    if a.min() < 0 or a.max() > 1:
        raise DataError(f"mask {path} holds fractions in {a.min():.3g}..{a.max():.3g}: neither a label map (whole "
                        "numbers) nor a probability map (0..1); save it as one of these")
    soft.append(path)
    return a >= 0.5


def load_nifti_folder(data_dir: str, image_size: int, channels: int | None, train: bool = True,
                      limit: int | None = None) -> Dataset:
    """data_dir/images/*.nii(.gz) (+ optional data_dir/masks/ with the same names, on the same voxel grid),
    as (N, 1, S, S, S) volumes in [-1, 1] with S = image_size: each reoriented to RAS+ (formats.read_volume),
    scaled by its own min..max (CT and MRI intensities have no common scale) and resampled to a cube, as
    MedMNIST 3D does. Masks by binarize_label_map, resampled the same way and cut at 0.5. The last 10% of
    the sorted names are held out (train=False)."""
    if channels not in (None, 1):
        raise DataError("NIfTI volumes are read as one channel: drop --channels 3")
    images, masks, names = folder_split(data_dir, "volume", NIFTI_EXTENSIONS, train=train, limit=limit)
    x, m, soft = [], [], []
    for name in names:
        a, affine = read_volume(images[name])
        lo, hi = float(a.min()), float(a.max())
        if hi == lo:
            raise DataError(f"{images[name]} holds the single value {lo:g}: an empty volume has nothing to learn; "
                            "remove it")
        x.append(resize_volume((a - lo) / (hi - lo), image_size).clamp(0, 1))  # clamp: round-off only
        if masks is not None:
            mask, mask_affine = read_volume(masks[name])
            if mask.shape != a.shape or not np.allclose(mask_affine, affine, rtol=1e-4, atol=1e-3):
                raise DataError(f"mask {name} ({'x'.join(map(str, mask.shape))}) is not on its volume's voxel grid "
                                f"({'x'.join(map(str, a.shape))}, or another affine): masks must share it")
            b = binarize_label_map(mask, masks[name], soft).astype(np.float32)
            m.append(resize_volume(b, image_size) >= 0.5)
    if soft:
        print(f"note: {len(soft)} mask{'s' * (len(soft) > 1)} (e.g. {soft[0]}) hold fractions in 0..1: read as "
              "probability maps, the lesion where the probability is at least 0.5", flush=True)
    return Dataset(normalize_to_neg_one_to_one(torch.stack(x)[:, None]), None,
                   torch.stack(m)[:, None].float() if masks is not None else None)


def load_dataset(name: str, data_dir: str = "data", train: bool = True, image_size: int | None = None,
                 channels: int | None = None, data_path: str | None = None, download: bool = True,
                 limit: int | None = None) -> Dataset:
    """The one entry point: name in DATASETS (or a MedMNIST 2D name). image_size applies to the
    entries with a size (folder, phantoms: default 64; csv: 28); channels to folder (default: from
    the files) and csv (1).
    limit: the first N images only, read without the rest where the format allows."""
    data = read_dataset(name, data_dir, train, image_size=image_size, channels=channels, data_path=data_path,
                        download=download, limit=limit)
    data = Dataset(*(None if a is None else a[:limit] for a in data))
    N, C, *sides = data.images.shape  # count, channels, then H, W (volumes: D, H, W)
    if N == 0:
        raise DataError(f"{name}: no images to {'train on' if train else 'hold out'}")
    if len(set(sides)) != 1:
        raise DataError(f"{name}: images are {'x'.join(map(str, sides))}; this project trains on square images "
                        "and cubic volumes (--dataset folder resizes to --image-size)")
    if channels is not None and channels != C:  # a dataset that does not convert (mnist, MedMNIST, phantoms)
        raise DataError(f"{name} has {C} channel(s): --channels {channels} does not apply to it; leave it out")
    return data


# --- augmentation for small datasets (--augment) ---------------------------------------------------

def augment(x0: Tensor, mask: Tensor | None = None, max_shift: float = 0.0625, max_degrees: float = 10.0,
            flip: bool = True) -> tuple:
    """--augment: per image a random horizontal flip, shift (up to max_shift of the side) and rotation
    (up to max_degrees), one affine map applied alike to the image (bilinear, background -1 outside)
    and its mask (nearest, 0 outside). x0 (B, C, H, W) in [-1, 1], mask (B, 1, H, W) or None. Uses
    torch's global generator, which main.py seeds per epoch (so --resume draws the same)."""
    B = x0.shape[0]
    angle = (torch.rand(B) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(B, 2) * 2 - 1) * max_shift * 2  # affine_grid's coordinates span [-1, 1]: 2 per side
    sign = torch.where(torch.rand(B) < 0.5, -1.0, 1.0) if flip else torch.ones(B)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sign, -sin, shift[:, 0]], 1),
                         torch.stack([sin * sign, cos, shift[:, 1]], 1)], 1).to(x0)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x0.shape), align_corners=False)
    x = F.grid_sample(x0 + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    if mask is None:
        return x, None
    return x, F.grid_sample(mask, grid.to(mask.dtype), mode="nearest", padding_mode="zeros", align_corners=False)


# --- the registry: one entry per dataset a user can name ------------------------------------------

class DatasetInfo(NamedTuple):
    """What the rest of the project asks of a dataset. read(train=, image_size=, data_dir=, channels=,
    data_path=, download=, limit=) -> Dataset (take what you need, ignore the rest with **_)."""
    read: Callable
    size: int | None = None     # default side when --image-size may resize it; None: fixed 28x28
    masks: bool = False         # lesion masks (COND --cond mask; a held-out split with masks is loaded)
    judge: str | None = None    # "classifier" (labels, test split: metrics.QualityScore) or "segmenter" (MaskScore)
    lesion: str | None = None   # synthetic phantoms: "bright" (mask Dice by threshold), "none", "hidden"


def read_mnist(data_dir, train, download, limit, **_):
    return load_mnist(data_dir, train, download, limit=limit)


def read_shapes(train, **_):
    from synthetic import make_shapes
    return make_shapes(seed=0 if train else 1)


def read_phantom(lesion: str):
    def read(train, image_size, **_):
        from synthetic import make_phantom
        return make_phantom(n=8192 if train else 256, size=image_size, seed=0 if train else 1, lesion=lesion)
    return read


def read_phantom3d(lesion: str):
    def read(train, image_size, **_):
        from synthetic import make_phantom3d
        return make_phantom3d(n=512 if train else 64, size=image_size, seed=0 if train else 1, lesion=lesion)
    return read


def read_folder(data_dir, train, image_size, channels, limit, **_):
    return load_folder(data_dir, image_size, channels, train=train, limit=limit)


def read_nifti(data_dir, train, image_size, channels, limit, **_):
    return load_nifti_folder(data_dir, image_size, channels, train=train, limit=limit)


def read_csv(data_path, image_size, channels, limit, **_):
    if not data_path:
        raise DataError("--dataset csv needs --data-path FILE.csv")
    return load_csv(data_path, image_size, channels or 1, limit=limit)


DATASETS = {
    "mnist": DatasetInfo(read_mnist, judge="classifier"),
    "shapes": DatasetInfo(read_shapes, judge="classifier"),
    "phantom": DatasetInfo(read_phantom("bright"), size=64, masks=True, lesion="bright"),
    "phantom-healthy": DatasetInfo(read_phantom("none"), size=64, lesion="none"),
    "phantom-anomaly": DatasetInfo(read_phantom("hidden"), size=64, masks=True, lesion="hidden"),
    "phantom3d": DatasetInfo(read_phantom3d("bright"), size=32, masks=True, lesion="bright"),
    "phantom3d-healthy": DatasetInfo(read_phantom3d("none"), size=32, lesion="none"),
    "phantom3d-anomaly": DatasetInfo(read_phantom3d("hidden"), size=32, masks=True, lesion="hidden"),
    "folder": DatasetInfo(read_folder, size=64, masks=True, judge="segmenter"),
    "nifti": DatasetInfo(read_nifti, size=32, masks=True),
    "csv": DatasetInfo(read_csv, size=28),
}


def read_medmnist(name: str):
    load = load_medmnist3d if name in MEDMNIST_3D else load_medmnist
    return lambda data_dir, train, download, limit, **_: load(name, data_dir, train, download, limit)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of a dataset name (a MedMNIST 2D or 3D subset by its name too), or DataError listing
    them. Every MedMNIST subset is labelled: its fid uses a classifier trained on it (2D or 3D)."""
    if name in DATASETS:
        return DATASETS[name]
    if name in MEDMNIST_2D or name in MEDMNIST_3D:
        return DatasetInfo(read_medmnist(name), judge="classifier")
    raise DataError(f"unknown dataset {name!r}: choose one of {', '.join([*DATASETS, *MEDMNIST_2D, *MEDMNIST_3D])}")


def read_dataset(name, data_dir, train, image_size, channels, data_path, download, limit) -> Dataset:
    info = dataset_info(name)
    if image_size is not None and info.size is None and image_size != 28:
        resizable = ", ".join(n for n, i in DATASETS.items() if i.size is not None)
        raise DataError(f"{name} images are 28x28: --image-size applies to {resizable} only")
    return info.read(data_dir=data_dir, train=train, image_size=image_size or info.size, channels=channels,
                     data_path=data_path, download=download, limit=limit)
