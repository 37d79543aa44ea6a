"""File formats, each header checked before the data are read: IDX (MNIST), .npz, CSV rows of pixels, folders of
images and masks, NIfTI volumes. data.py turns what these return into datasets. No torch here; no plumbing."""
import csv
import gzip
import itertools
import logging
import os
import zlib

import numpy as np

from datatypes import DataError, cause

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_VALUES = 300_000_000   # pixels per split that fit comfortably in memory as float32 (1.2 GB)
MAX_NPZ_BYTES = 2 ** 31    # decoded size of all arrays in one .npz, read from the headers before any data


def read_idx(path: str, limit: int | None = None) -> np.ndarray:
    """An IDX file (MNIST's format, optionally .gz): magic 0x0000 08 nd, nd big-endian sizes, uint8
    data. The header is checked before the data are read; limit reads only the first items."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0:3] != b"\x00\x00\x08" or not 1 <= magic[3] <= 4:
                raise DataError(f"{path} is not a uint8 IDX file (bad magic number): replace it")
            shape = [int.from_bytes(f.read(4), "big") for _ in range(magic[3])]
            if shape[0] == 0:
                raise DataError(f"{path} holds no items (its header says 0): replace it")
            count = min(shape[0], limit or shape[0])
            size = count * int(np.prod(shape[1:]))
            if size > MAX_VALUES:
                raise DataError(f"{path} declares {shape[0]:,} items ({size:,} values), more than fit in memory: "
                                "pass --limit N or replace the file")
            raw = f.read(size)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}): delete it and download it again") from e
    if len(raw) != size:
        raise DataError(f"{path} is truncated: header says {tuple(shape)}, file holds {len(raw)} of {size} values")
    return np.frombuffer(raw, dtype=np.uint8).reshape(count, *shape[1:])


def read_npz(path: str) -> dict:
    """All arrays of a .npz file, loaded without pickle once their sizes, read from the .npy headers, were checked
    against MAX_NPZ_BYTES; two arrays of one name (np.load would use one), a .npy, a damaged zip: DataError."""
    import zipfile
    try:
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path} is not a readable .npz file (not a zip archive of .npy arrays; a single "
                            ".npy array is not one)")
        with zipfile.ZipFile(path) as z:
            names, total = z.namelist(), 0
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise DataError(f"{path} holds two arrays named {twice[0]!r}: which one is meant is unknown; "
                                "write the file again with one array per name")
            for name in names:
                with z.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                                       np.lib.format.read_array_header_2_0)(f)
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if total > MAX_NPZ_BYTES:
            raise DataError(f"{path} would take {total / 2 ** 30:.1f} GiB once decoded (its headers say so), more "
                            f"than the {MAX_NPZ_BYTES / 2 ** 30:.0f} GiB this project reads: use a smaller file")
        with np.load(path, allow_pickle=False) as npz:  # an array of Python objects is refused: it needs pickle
            return {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, RuntimeError, MemoryError,
            SyntaxError) as e:
        raise DataError(f"{path} is not a readable .npz file ({cause(e)})") from e


def parse_csv_rows(path: str, limit: int | None) -> list:
    """Rows of numbers as lists of strings; a first row with any non-number is a header and dropped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
            rows = list(itertools.islice((r for r in csv.reader(f) if r), limit + 1 if limit else None))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV file {path} ({e}): check --data-path") from e
    try:
        list(map(float, rows[0] if rows else []))
    except ValueError:  # a first row with any non-number: a header
        rows = rows[1:]
    return rows[:limit]


def list_files(folder: str, extensions: tuple = IMAGE_EXTENSIONS) -> dict:
    """{name without extension: path} of the files in folder with one of the extensions (any case): images, or
    NIfTI volumes (.nii.gz before .nii). Two files with one name (0.png and 0.jpg) are refused, since the masks and
    the held-out split go by name; so is anything but a regular file (a FIFO would block its reader forever)."""
    found = {}
    for f in sorted(os.listdir(folder)):
        stem = next((f[:-len(e)] for e in extensions if f.lower().endswith(e)), None)
        if stem is None:
            continue
        path = os.path.join(folder, f)
        if stem in found:
            raise DataError(f"{folder} holds {os.path.basename(found[stem])} and {f}: two files with one name; "
                            "keep one of them")
        if not os.path.isfile(path):  # a regular file
            raise DataError(f"{path} is not a regular file (a folder, a FIFO or a device): remove it from {folder}")
        found[stem] = path
    return found


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def scale_high_bit(a: np.ndarray, mode: str, path: str, constant: list) -> np.ndarray:
    """A 16-bit, 32-bit or float image to [0, 1] by its own range (min..max), as is usual for MRI and
    CT, unless already in [0, 1]. A constant image has no range: integer images map to value / 65535
    (their place in the 16-bit range), others to 0.5; its path is added to `constant` for a note."""
    lo, hi = float(a.min()), float(a.max())
    if 0 <= lo and hi <= 1:
        return a.astype(np.float32)
    if hi > lo:  # in float64: the range of float32 values near +-3e38 overflows float32
        return ((a - lo) / (hi - lo)).astype(np.float32)
    constant.append(path)
    return np.full(a.shape, lo / 65535 if mode != "F" and 0 <= lo <= 65535 else 0.5, np.float32)


def read_image(path: str, mode: str | None, constant: list) -> np.ndarray:
    """One image as every viewer shows it (EXIF orientation applied), float32 (H, W) or (H, W, 3) in [0, 1]: 8-bit
    / 255, high bit depths by scale_high_bit. mode: "L", "RGB", None (from the file) or "mask" (binarize_mask)."""
    from PIL import Image, ImageOps
    with Image.open(path) as opened:
        if getattr(opened, "n_frames", 1) > 1:  # a TIFF stack, an animation: never its first frame alone
            raise DataError(f"{path} holds {opened.n_frames} frames: one image per file is read; save each frame "
                            "as a file of its own")
        im = ImageOps.exif_transpose(opened)
        if im.has_transparency_data and im.convert("RGBA").getchannel("A").getextrema()[0] < 255:
            raise DataError(f"{path} has transparent pixels, whose colour no viewer shows (a mask drawn on a "
                            "transparent layer would be read inverted): flatten it onto a black background first")
        high = im.mode in HIGH_BIT_MODES
        if high and mode == "RGB":
            raise DataError(f"{path} is a {im.mode} (high bit depth) grayscale image: use --channels 1")
        if not high:
            im = im.convert("L" if mode == "mask" else mode or ("L" if im.mode in ("1", "L", "LA") else "RGB"))
        a = np.asarray(im, dtype=np.float64 if high else np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{path} holds non-finite pixels (nan/inf): fix or remove it")
    if mode == "mask":
        return binarize_mask(a)
    return scale_high_bit(a, im.mode, path, constant=constant) if high else a / 255


def binarize_mask(a: np.ndarray) -> np.ndarray:
    """A mask by its own values: with one or two values, the higher one (if above 0) is the lesion, so
    0/1 and 0/255 masks alike are read as drawn; with more (JPEG, anti-aliased edges), the values at or
    above half the highest. Float (H, W) in {0, 1}."""
    values = np.unique(a)
    top = values[-1]
    if len(values) <= 2:
        return ((a == top) & (top > values[0] if len(values) == 2 else top > 0)).astype(np.float32)
    return (a >= top / 2).astype(np.float32)


def resize(a: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear resize of a float (H, W[, 3]) image to image_size x image_size, channel by channel."""
    from PIL import Image
    if a.ndim == 2:
        return np.asarray(Image.fromarray(a, mode="F").resize((image_size, image_size), Image.BILINEAR))
    return np.stack([resize(np.ascontiguousarray(a[..., c]), image_size) for c in range(a.shape[2])], axis=-1)


def read_resized(paths: list, image_size: int, mode: str | None, sizes: list | None = None) -> np.ndarray:
    """Images resized to image_size x image_size, float32 (N, H, W[, C]) in [0, 1] (read_image; masks cut at 0.5
    again: {0, 1}). sizes, if a list, gets each file's (H, W). DataError names unreadable, oversized (PIL's
    decompression-bomb limit) or non-finite files."""
    from PIL import Image
    out, bad, constant, stretched = [], [], [], []
    for p in paths:
        try:
            a = read_image(p, mode, constant)
        except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError) as e:
            bad.append(f"{os.path.basename(p)} ({type(e).__name__})")
            continue
        if sizes is not None:
            sizes.append(a.shape[:2])
        if a.shape[0] != a.shape[1]:
            stretched.append(f"{os.path.basename(p)}, {a.shape[1]}x{a.shape[0]}")
        out.append(resize(a, image_size))
    if bad:
        raise DataError(f"{len(bad)} image(s) cannot be read, e.g. {', '.join(bad[:3])}: remove or replace them")
    if constant:
        print(f"note: {len(constant)} high-bit-depth image(s) hold a single value, e.g. {constant[0]}: with no "
              "range to scale by, integer ones were mapped to value / 65535, others to 0.5", flush=True)
    if stretched and mode != "mask":  # a mask is stretched as its image is
        print(f"note: {len(stretched)} image(s) are not square (e.g. {stretched[0]}): each is stretched to "
              f"{image_size}x{image_size}; crop them square first to keep their proportions", flush=True)
    x = np.stack(out).clip(0, 1)  # bilinear resizing keeps [0, 1] up to round-off
    return (x >= 0.5).astype(np.float32) if mode == "mask" else x


# --- NIfTI volumes (.nii, .nii.gz), read by nibabel, an optional dependency ------------------------

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
MAX_VOLUME_VOXELS = 2 ** 27  # one volume of up to 512^3 voxels (0.5 GB as float32), checked from its header


def need_nibabel():
    """The nibabel module, or DataError saying how to install it (an optional dependency)."""
    try:
        import nibabel
    except ImportError as e:
        raise DataError("NIfTI volumes need nibabel, an optional dependency: pip install nibabel") from e
    logging.getLogger("nibabel.global").setLevel(logging.CRITICAL + 1)  # its notes would add lines: errors come here
    return nibabel


def read_volume(path: str) -> tuple:
    """One 3D NIfTI volume (trailing axes of length 1 dropped) as float32 voxels (D, H, W) and its affine, reoriented
    to RAS+ (the closest canonical orientation) so that every volume lies the same way round: D runs inferior to
    superior (an axial slice is x[d]), H anterior to posterior (the nose at the top), W the patient's left to right
    (neurological convention); scaled by the header's slope and intercept. Shape, type and size are checked from the
    header before any voxel is read."""
    nibabel = need_nibabel()
    try:
        image = nibabel.load(path)
        if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
            raise DataError(f"{path} is a {type(image).__name__}, not a NIfTI-1 or NIfTI-2 volume: convert it "
                            "to .nii.gz")
        shape, dtype = tuple(image.shape), image.get_data_dtype()
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise DataError(f"{path} has shape {tuple(image.shape)}: one 3D volume per file is read (split 4D "
                            "series or modalities into files of their own)")
        if min(shape) < 2:
            raise DataError(f"{path} has shape {shape}: a volume needs at least 2 voxels along each side")
        if dtype.kind not in "uif":
            raise DataError(f"{path} stores {dtype} voxels ({'complex' if dtype.kind == 'c' else 'not one number'} per "
                            "voxel): one real intensity per voxel is read; convert it to a grayscale volume")
        if np.prod(shape, dtype=np.float64) > MAX_VOLUME_VOXELS:
            raise DataError(f"{path} is {'x'.join(map(str, shape))} voxels, more than the {MAX_VOLUME_VOXELS:,} "
                            "this project reads from one file: crop or downsample it first")
        if path.lower().endswith(".gz"):
            check_gzip(path, int(image.header.get_data_offset()) + int(np.prod(image.shape)) * dtype.itemsize)
        image = nibabel.as_closest_canonical(nibabel.funcs.squeeze_image(image))
        a = np.asarray(image.get_fdata(dtype=np.float32))
    except DataError:
        raise
    except nibabel.orientations.OrientationError as e:
        raise DataError(f"{path}: its affine gives no orientation (a zero or degenerate sform/qform): fix its "
                        "header") from e
    except (OSError, EOFError, ValueError, zlib.error, MemoryError, nibabel.filebasedimages.ImageFileError,
            nibabel.spatialimages.HeaderDataError) as e:
        raise DataError(f"{path} is not a readable NIfTI file ({cause(e)})") from e
    if not np.isfinite(a).all():
        raise DataError(f"{path} holds non-finite voxels (nan/inf): fix or remove it")
    return np.ascontiguousarray(a.transpose(2, 1, 0)[:, ::-1, :]), image.affine  # RAS (x, y, z) -> (z, -y, x)


def check_gzip(path: str, declared: int) -> None:
    """A .gz read through once: gzip checks its CRC only at the end of the stream, which nibabel, reading just the
    bytes it needs, never reaches (a flipped bit would be a wrong voxel, silently). At most 64 MB past the
    declared size: a stream that inflates on and on is no volume."""
    left = declared + (1 << 26)
    try:
        with gzip.open(path) as f:
            while left > 0 and (n := len(f.read(min(left, 1 << 24)))):
                left -= n
            if left <= 0 and f.read(1):
                raise DataError(f"{path} inflates to more than 64 MB past the size its header declares: it is not "
                                "one volume, or is damaged")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: its voxels cannot be read ({cause(e)}): the file is damaged") from e


def nifti_bytes(v: np.ndarray) -> bytes:
    """A (D, H, W) volume in read_volume's order as the bytes of a .nii.gz: float32 voxels, RAS+ with 1 mm voxels
    (the true spacing is not known to a sample), so that read_volume reads back v."""
    nibabel = need_nibabel()
    a = np.ascontiguousarray(v[:, ::-1, :].transpose(2, 1, 0), dtype=np.float32)  # (z, -y, x) -> RAS (x, y, z)
    return gzip.compress(nibabel.Nifti1Image(a, np.eye(4)).to_bytes(), compresslevel=6)
