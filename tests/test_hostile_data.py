"""Data read as the user meant: 0/1 masks, constant 16-bit images, Excel's BOM,
one name with two files, damaged MedMNIST splits, npz files that inflate or hold two arrays of one
name, and samples that metrics.py cannot score honestly (range, labels, shape)."""
import io
import os
import struct
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import metrics
from data import DataError, load_dataset
from formats import MAX_NPZ_BYTES, read_npz
from synthetic import make_shapes


def write_folder(root, images, masks=None, names=None):
    names = names or [f"{i}.png" for i in range(len(images))]
    (root / "images").mkdir(parents=True)
    for name, a in zip(names, images):
        Image.fromarray(a).save(root / "images" / name)
    if masks is not None:
        (root / "masks").mkdir()
        for name, m in zip(names, masks):
            Image.fromarray(m).save(root / "masks" / (os.path.splitext(name)[0] + ".png"))


def square_mask(value: int, dtype=np.uint8) -> np.ndarray:
    m = np.zeros((16, 16), dtype)
    m[4:12, 4:12] = value
    return m


@pytest.mark.parametrize("value", [1, 255, 7])
def test_masks_with_two_values_are_binary_by_their_own_values(tmp_path, value):
    """0/1 PNGs (the usual export of segmentation tools), 0/255 and 0/7 all give the same 8x8 lesion."""
    img = np.full((16, 16), 100, np.uint8)
    write_folder(tmp_path, [img] * 3, masks=[square_mask(value)] * 3)
    m = load_dataset("folder", str(tmp_path), image_size=16).masks
    assert m.shape == (2, 1, 16, 16) and m.sum().item() == 2 * 64 and set(m.unique().tolist()) == {0.0, 1.0}


def test_16_bit_masks_and_anti_aliased_masks(tmp_path):
    """A 0/1 16-bit mask, and a mask with soft edges (more than two values: cut at half the highest)."""
    soft = square_mask(200)
    soft[3, 4:12] = 60  # a faint edge row: below half of 200
    write_folder(tmp_path, [np.zeros((16, 16), np.uint8)] * 3, masks=[square_mask(1, np.uint16), soft, soft])
    m = load_dataset("folder", str(tmp_path), image_size=16).masks
    assert m[0].sum().item() == 64 and m[1].sum().item() == 64


def test_constant_16_bit_images_are_constants_not_black(tmp_path, capsys):
    """All 1000 and all 5000 in 16 bits: no min..max range, so value / 65535, told in one note."""
    write_folder(tmp_path, [np.full((8, 8), v, np.uint16) for v in (1000, 5000, 5000)])
    x01 = (load_dataset("folder", str(tmp_path), image_size=8).images + 1) / 2
    assert x01[0].unique().tolist() == pytest.approx([1000 / 65535], abs=1e-6)
    assert x01[1].unique().tolist() == pytest.approx([5000 / 65535], abs=1e-6)
    out = capsys.readouterr().out
    assert out.count("note: ") >= 1 and "single value" in out


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    """Excel's "CSV UTF-8" starts with U+FEFF: the first row is data, not a header."""
    rows = "1," + ",".join(["0.5"] * 16) + "\n" + "2," + ",".join(["0.25"] * 16) + "\n"
    (tmp_path / "x.csv").write_bytes("\ufeff".encode() + rows.encode())
    d = load_dataset("csv", data_path=str(tmp_path / "x.csv"), image_size=4)
    assert d.labels.tolist() == [1, 2]


def test_only_the_first_csv_row_can_be_a_header(tmp_path):
    (tmp_path / "x.csv").write_text("label,pixels\nnot,numbers\n" + "1" + ",0" * 16 + "\n")
    with pytest.raises(DataError, match="rows have 2 values"):  # the second row is data, so refused, not dropped
        load_dataset("csv", data_path=str(tmp_path / "x.csv"), image_size=4)


def test_a_fractional_csv_label_is_named_with_its_row(tmp_path):
    (tmp_path / "x.csv").write_text("1" + ",0" * 16 + "\n" + "0.5" + ",0" * 16 + "\n")
    with pytest.raises(DataError, match=r"data row 2 has label 0\.5$"):
        load_dataset("csv", data_path=str(tmp_path / "x.csv"), image_size=4)


def test_two_files_with_one_name_are_refused_by_name(tmp_path):
    write_folder(tmp_path, [np.zeros((8, 8), np.uint8)] * 3, names=["0.png", "0.jpg", "1.png"])
    with pytest.raises(DataError, match=r"holds 0\.jpg and 0\.png: two files with one name"):
        load_dataset("folder", str(tmp_path), image_size=8)


def medmnist_npz(path, **splits):
    np.savez(path, **{f"{s}_{k}": v for s, (images, labels) in splits.items()
                      for k, v in (("images", images), ("labels", labels))})


def test_medmnist_splits_that_disagree_are_refused_when_read(tmp_path):
    """Train grayscale, test RGB: refused at once, not after minutes of training in the fid classifier."""
    medmnist_npz(tmp_path / "pathmnist.npz", train=(np.zeros((4, 28, 28), np.uint8), np.zeros((4, 1), np.uint8)),
                 test=(np.zeros((4, 28, 28, 3), np.uint8), np.zeros((4, 1), np.uint8)))
    with pytest.raises(DataError, match="splits disagree"):
        load_dataset("pathmnist", str(tmp_path), download=False)


def test_a_multi_label_medmnist_set_says_which_label_is_the_class(tmp_path, capsys):
    """ChestMNIST holds 14 findings per image; its first became the class without a word."""
    labels = np.eye(14, dtype=np.uint8)[:4]
    medmnist_npz(tmp_path / "chestmnist.npz", train=(np.zeros((4, 28, 28), np.uint8), labels))
    assert load_dataset("chestmnist", str(tmp_path), download=False).labels.tolist() == [1, 0, 0, 0]
    assert "holds 14 labels per image (multi-label): only the first is the class" in capsys.readouterr().out


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members:
            z.writestr(name, raw)


def npy_header(shape, dtype="<f4") -> bytes:
    """A .npy version 1.0 header declaring shape, with no data behind it."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_an_npz_that_would_inflate_past_the_cap_is_refused_from_its_header(tmp_path):
    write_zip(tmp_path / "bomb.npz", [("images.npy", npy_header((10 ** 6, 1, 28, 28)))])
    start = time.time()
    with pytest.raises(DataError, match="GiB once decoded"):
        read_npz(str(tmp_path / "bomb.npz"))
    assert MAX_NPZ_BYTES < 10 ** 6 * 28 * 28 * 4 and time.time() - start < 5


def test_an_npz_with_two_arrays_of_one_name_is_refused(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 1, 28, 28), np.float32))
    with pytest.warns(UserWarning, match="Duplicate name"):
        write_zip(tmp_path / "s.npz", [("images.npy", buf.getvalue()), ("images.npy", buf.getvalue())])
    with pytest.raises(DataError, match="two arrays named 'images.npy'"):
        read_npz(str(tmp_path / "s.npz"))



def test_an_npz_of_python_objects_is_refused_unpickled(tmp_path):
    """Object arrays are stored as pickles: loading one could run code."""
    np.savez(tmp_path / "o.npz", images=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match="Object arrays cannot be loaded when allow_pickle=False"):
        read_npz(str(tmp_path / "o.npz"))

# --- metrics.py: what it cannot score honestly, it refuses, before training any classifier ---

def score_cli(capsys, tmp_path, images, labels=None, dataset="shapes"):
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(tmp_path / "s.npz", **arrays)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        metrics.main([str(tmp_path / "s.npz"), "--dataset", dataset, "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("scale, fragment", [(255.0, "x / 127.5 - 1"), (1e30, "expects [-1, 1]")])
def test_samples_outside_minus_one_one_are_refused_not_clipped(tmp_path, capsys, scale, fragment):
    images = (make_shapes(n=8).images.numpy() + 1) / 2 * scale
    assert fragment in score_cli(capsys, tmp_path, images)
    assert not (tmp_path / "data").exists()  # refused before any classifier was trained


@pytest.mark.parametrize("label", [99, -1])
def test_impossible_labels_are_refused_before_the_classifier_is_trained(tmp_path, capsys, label):
    images = make_shapes(n=8).images.numpy()
    labels = np.array([0] * 7 + [label])
    err = score_cli(capsys, tmp_path, images, labels)
    assert f"{label}" in err and "classes are 0..2" in err
    assert not (tmp_path / "data" / "classifiers").exists()


def test_samples_of_another_shape_are_refused_before_the_classifier_is_trained(tmp_path, capsys):
    err = score_cli(capsys, tmp_path, np.zeros((8, 3, 32, 32), np.float32))
    assert "(3, 32, 32)" in err and "(1, 28, 28)" in err
    assert not (tmp_path / "data" / "classifiers").exists()


@pytest.mark.slow
def test_a_good_samples_file_is_scored(tmp_path, capsys):
    real = make_shapes(n=64, seed=3)
    np.savez(tmp_path / "s.npz", images=real.images.numpy(), labels=real.labels.numpy())
    metrics.main([str(tmp_path / "s.npz"), "--dataset", "shapes", "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert out.startswith("n=64 fid=") and "class_accuracy=" in out and torch.isfinite(torch.tensor(0.0))


# --- files and environments as users leave them -----------------------------------------------------

def test_one_held_out_image_gives_a_zero_covariance_the_distance_can_use():
    """A folder whose held-out split has one image: its covariance was a float32 zero beside float64 ones,
    and frechet_distance failed on the mixed dtypes."""
    many, one = torch.randn(20, 4), torch.randn(1, 4)
    mu, cov = metrics.feature_stats(one)
    assert cov.dtype == torch.float64 and not cov.any()
    d = metrics.frechet_distance(*metrics.feature_stats(many), mu, cov)
    m1 = many.double().mean(0)
    expected = (m1 - one.double()[0]).square().sum() + torch.cov(many.double().T).trace()  # the S2 = 0 closed form
    assert abs(d - expected.item()) < 1e-9


@pytest.mark.parametrize("images, fragment", [
    (np.zeros((0, 1, 28, 28), np.float32), "at least one image"),
    (np.zeros((2, 1, 2, 2), np.float32), "sides in 4..512"),
])
def test_samples_files_with_no_image_or_impossible_sides_are_one_line(tmp_path, capsys, images, fragment):
    assert fragment in score_cli(capsys, tmp_path, images)


def test_metrics_image_size_is_bounded_like_main(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", images=np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(SystemExit) as e:
        metrics.main([str(tmp_path / "s.npz"), "--dataset", "folder", "--image-size", "100000"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--image-size must lie in 4..512" in err


def test_a_read_only_data_dir_caches_the_judge_in_the_users_cache_and_says_where(tmp_path, monkeypatch):
    """metrics.py with a read-only --data-dir trained its classifier, then failed to cache it in three lines
    that suggested an --out it does not have. The cache goes to XDG_CACHE_HOME (or ~/.cache) instead."""
    real = os.makedirs

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "data")):
            raise OSError(30, "Read-only file system", str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(metrics.os, "makedirs", read_only)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    said = []
    path = metrics.cache_path(str(tmp_path / "data"), "shapes-abc.pt", said.append)
    assert path == str(tmp_path / "cache" / "ddpm-course" / "classifiers" / "shapes-abc.pt")
    assert len(said) == 1 and "cannot be written" in said[0] and str(tmp_path / "cache") in said[0]
    monkeypatch.setattr(metrics.os, "makedirs", real)
    assert metrics.cache_path(str(tmp_path / "data"), "shapes-abc.pt", said.append) == \
        str(tmp_path / "data" / "classifiers" / "shapes-abc.pt")  # writable: the data's own folder


@pytest.mark.slow
@pytest.mark.parametrize("value", ["abc", "0", "-1", ""])
@pytest.mark.parametrize("script", ["main.py", "sample.py", "metrics.py"])
def test_a_bad_omp_num_threads_is_one_line_before_torch_starts(value, script):
    """libgomp printed its own "Invalid value" line and went on with its default count."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, script, "whatever"], cwd=root, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OMP_NUM_THREADS": value})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "libgomp" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"{script}: error: OMP_NUM_THREADS={value!r} is not a number of threads")


def test_a_photo_is_read_as_every_viewer_shows_it(tmp_path):
    """A JPEG with an EXIF orientation (6: rotate 90 degrees to show) was read in its stored orientation."""
    from PIL import Image

    from formats import read_resized
    stored = np.zeros((8, 16), np.uint8)
    stored[:, :8] = 255  # left half white as stored; shown rotated, the white half is at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns it 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "p.jpg", exif=exif, quality=100)
    shown = read_resized([str(tmp_path / "p.jpg")], 16, "L")[0]
    assert shown[:4].mean() > 0.9 and shown[-4:].mean() < 0.1


def test_a_tiff_stack_is_refused_not_read_as_its_first_frame(tmp_path):
    """A multi-page TIFF (a stack of slices, as microscopes and some scanners write) was read as its first page."""
    write_folder(tmp_path, [np.zeros((8, 8), np.uint8)] * 3)
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 100, 200)]
    frames[0].save(tmp_path / "images" / "3.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"3\.tif holds 3 frames"):
        load_dataset("folder", str(tmp_path), train=False, image_size=8)


def test_a_mask_drawn_on_a_transparent_layer_is_refused_not_read_inverted(tmp_path):
    """A red lesion on a transparent layer stored as white: its background, brighter than the lesion, was read
    as the lesion."""
    write_folder(tmp_path, [np.zeros((16, 16), np.uint8)] * 3)
    mask = np.zeros((16, 16, 4), np.uint8)
    mask[..., :3] = 255  # transparent white
    mask[4:12, 4:12] = (255, 0, 0, 255)
    (tmp_path / "masks").mkdir()
    for i in range(3):
        Image.fromarray(mask, "RGBA").save(tmp_path / "masks" / f"{i}.png")
    with pytest.raises(DataError, match="2.png has transparent pixels"):
        load_dataset("folder", str(tmp_path), train=False, image_size=16)


def test_an_image_that_is_not_square_is_stretched_with_a_note(tmp_path, capsys):
    """Every image becomes image_size x image_size; one of other proportions was stretched without a word."""
    write_folder(tmp_path, [np.zeros((8, 8), np.uint8)] * 3 + [np.zeros((8, 16), np.uint8)])
    assert load_dataset("folder", str(tmp_path), train=False, image_size=8).images.shape == (1, 1, 8, 8)
    assert "note: 1 image(s) are not square (e.g. 3.png, 16x8)" in capsys.readouterr().out


@pytest.mark.parametrize("train", [True, False])
def test_a_float_tiff_of_extreme_values_is_scaled_without_overflow(tmp_path, train, recwarn):
    """A float TIFF holding +-3e38 was blamed on --lr at step 1 (its range overflowed float32 after the finiteness
    check), and in the held-out split passed with numpy overflow warnings and a NaN image."""
    from PIL import Image
    (tmp_path / "images").mkdir()
    for i in range(12):
        a = np.full((8, 8), -3e38 if i % 2 else 1.0, np.float32)
        a[:4] = 3e38
        Image.fromarray(a, mode="F").save(tmp_path / "images" / f"{i}.tif")
    x = load_dataset("folder", str(tmp_path), train=train, image_size=8).images
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1 and x[:, 0, :4].min() == 1
    assert not [w for w in recwarn if "overflow" in str(w.message)]


def test_no_writable_cache_is_one_line_before_the_judge_is_trained(tmp_path, monkeypatch):
    """Read-only data and XDG_CACHE_HOME pointing to a file: the classifier trained for a minute, then the script
    said "choose another --out", an option it does not have."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classifiers").write_text("not a folder either")  # the data's own folder cannot be made
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with pytest.raises(DataError, match="no folder to cache the judge in.*set XDG_CACHE_HOME"):
        metrics.cache_path(str(tmp_path / "data"), "shapes-abc.pt", print)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["main.py", "sample.py", "metrics.py"])
def test_an_mplconfigdir_that_is_no_folder_is_one_line(tmp_path, script):
    """MPLCONFIGDIR pointing to a file: matplotlib printed two lines of its own."""
    import subprocess
    import sys
    (tmp_path / "file").write_text("x")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, script, "whatever"], cwd=root, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MPLCONFIGDIR": str(tmp_path / "file")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not a writable folder" in r.stderr, r.stderr


def test_channels_that_a_dataset_does_not_convert_to_are_refused():
    """--channels 3 on a grayscale set that does not convert (shapes, MNIST) trained on 1 channel without a word."""
    with pytest.raises(DataError, match="shapes has 1 channel.s.: --channels 3 does not apply"):
        load_dataset("shapes", channels=3)
    assert load_dataset("shapes", channels=1).images.shape[1] == 1
