"""NIfTI folders (--dataset nifti): .nii/.nii.gz volumes and masks read by nibabel, reoriented to RAS+,
scaled by their own range and resampled to a cube; bad files are one line; main.py trains on them."""
import gzip
import json
import struct
import sys

import nibabel  # optional for users, installed by requirements.txt for these tests
import numpy as np
import pytest

import main
from data import load_dataset

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs


def head(side: int = 16) -> np.ndarray:
    """A (x, y, z) volume in RAS voxel order: background 0, a box of 100, and a bright 8^3 corner of 300 at
    the patient's right (high x), anterior (high y) and superior (high z)."""
    a = np.zeros((side, side, side), np.float32)
    a[2:-2, 2:-2, 2:-2] = 100
    a[side // 2:, side // 2:, side // 2:] = 300
    return a


def write(path, a: np.ndarray, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))


def test_volumes_are_reoriented_to_ras_scaled_by_their_range_and_resized(tmp_path):
    """The same head stored RAS and LPS (x and y flipped, with the affine saying so) loads identically, with
    superior at high D, anterior at the top (low H) and the patient's right at high W; -1..1; 16^3 -> 8^3."""
    a = head()
    write(tmp_path / "ras" / "images" / "a.nii.gz", a)
    write(tmp_path / "lps" / "images" / "a.nii", a[::-1, ::-1].copy(), np.diag([-2.0, -2.0, 2.0, 1.0]))
    ras, lps = (load_dataset("nifti", str(tmp_path / d), image_size=8).images for d in ("ras", "lps"))
    assert ras.shape == (1, 1, 8, 8, 8) and bool((ras == lps).all())
    x = ras[0, 0]
    assert x.min() == -1 and x.max() == 1
    assert bool((x[4:, :4, 4:] == 1).all())  # superior, anterior, right: the bright corner
    assert x[:4].max() < 1 and x[:, 4:].max() < 1 and x[:, :, :4].max() < 1


def test_label_maps_mark_every_label_and_probability_maps_their_likely_voxels(tmp_path):
    a = head()
    labels = np.zeros_like(a, np.uint8)
    labels[0:8, 0:8, 0:8], labels[8:, 8:, 8:], labels[0:8, 8:, 8:] = 1, 2, 4  # BraTS-like labels
    fractions = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    for name in ("a", "b"):
        write(tmp_path / "images" / f"{name}.nii.gz", a)
    write(tmp_path / "masks" / "a.nii.gz", labels)
    write(tmp_path / "masks" / "b.nii.gz", fractions)
    d = load_dataset("nifti", str(tmp_path), image_size=8)
    held = load_dataset("nifti", str(tmp_path), image_size=8, train=False)
    expected = np.zeros((8, 8, 8), bool)  # (z, -y, x): labels at z 0..3 / 4..7 by their blocks
    expected[0:4, 4:8, 0:4] = expected[4:8, 0:4, 4:8] = expected[4:8, 0:4, 0:4] = True
    for masks in (d.masks, held.masks):
        assert masks.shape == (1, 1, 8, 8, 8) and np.array_equal(masks[0, 0].numpy() > 0.5, expected)


def test_main_trains_cond_on_a_nifti_folder_with_masks(tmp_path):
    for i in range(4):
        a = head(12) + i
        m = np.zeros_like(a, np.uint8)
        m[6:10, 6:10, 6:10] = 1
        write(tmp_path / "data" / "images" / f"s{i}.nii.gz", a)
        write(tmp_path / "data" / "masks" / f"s{i}.nii.gz", m)
    out = tmp_path / "run"
    main.main(["COND", "--dataset", "nifti", "--data-dir", str(tmp_path / "data"), "--image-size", "8",
               "--unet-widths", "4", "8", "8", "--n-T", "20", "--sample-steps", "2", "--num-samples", "2",
               "--epochs", "1", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert (config["dims"], config["image_size"], config["cond"]) == (3, 8, "mask")
    assert (out / "image_ep001.png").exists()


def damaged(folder, _):
    write(folder / "a.nii.gz", head())
    raw = (folder / "a.nii.gz").read_bytes()
    (folder / "a.nii.gz").write_bytes(raw[:len(raw) // 2])


def header_edit(offset, fmt, *values):
    def make(folder, _):
        write(folder / "a.nii", head(8))
        raw = bytearray((folder / "a.nii").read_bytes())
        struct.pack_into(fmt, raw, offset, *values)
        (folder / "a.nii").write_bytes(bytes(raw))
    return make


def with_nan(folder, _):
    a = head(8)
    a[1, 1, 1] = np.nan
    write(folder / "a.nii", a)


def crc_mismatch(folder, _):
    """A .nii.gz whose stream inflates without error to a volume one voxel off, with the original's CRC."""
    good, changed = head(8), head(8)
    changed[3, 3, 3] += 2.0
    write(folder / "good.nii.gz", good)
    write(folder / "a.nii.gz", changed)
    raw = (folder / "a.nii.gz").read_bytes()
    (folder / "a.nii.gz").write_bytes(raw[:-8] + (folder / "good.nii.gz").read_bytes()[-8:-4] + raw[-4:])
    (folder / "good.nii.gz").unlink()


def inflating(folder, _):
    """A .nii.gz of an 8^3 volume whose stream goes on with 128 MB of zeros (128 KB on disk)."""
    write(folder / "v.nii", head(8))
    with gzip.open(folder / "a.nii.gz", "wb") as f:
        f.write((folder / "v.nii").read_bytes())
        for _ in range(8):
            f.write(bytes(1 << 24))
    (folder / "v.nii").unlink()


def mask_on_another_grid(folder, masks):
    write(folder / "a.nii", head(8))
    write(masks / "a.nii", np.ones((8, 8, 6), np.uint8))


BAD = {
    "damaged": (damaged, "its voxels cannot be read"),
    "not nifti": (lambda f, _: (f / "a.nii").write_bytes(b"hello" * 100), "not a readable NIfTI file"),
    "4D": (lambda f, _: write(f / "a.nii", np.ones((6, 6, 6, 3), np.float32)), "one 3D volume per file"),
    "one slice": (lambda f, _: write(f / "a.nii", np.ones((6, 6, 1), np.float32)), "at least 2 voxels"),
    "complex": (lambda f, _: write(f / "a.nii", np.ones((6, 6, 6), np.complex64)), "complex"),
    "nan": (with_nan, "non-finite voxels"),
    "constant": (lambda f, _: write(f / "a.nii", np.full((6, 6, 6), 7, np.int16)), "single value 7"),
    "huge header": (header_edit(40, "<4h", 3, 30000, 30000, 30000), "more than the"),
    "no orientation": (header_edit(280, "<12f", *[0.0] * 12), "gives no orientation"),
    "one stem twice": (lambda f, _: (write(f / "a.nii", head(8)), write(f / "a.nii.gz", head(8))),
                       "two files with one name"),
    "mask grid": (mask_on_another_grid, "not on its volume's voxel grid"),
    "mask names": (lambda f, m: (write(f / "a.nii", head(8)), write(m / "b.nii", head(8))), "do not match"),
    "gzip crc": (crc_mismatch, "CRC check failed"),
    "inflating": (inflating, "64 MB past the size its header declares"),
    "mask fractions": (lambda f, m: (write(f / "a.nii", head(8)), write(m / "a.nii", head(8) / 120)),
                       "neither a label map (whole numbers) nor a probability map"),
}


def test_a_soft_mask_is_a_probability_map_not_half_its_maximum(tmp_path, capsys):
    """A probability map with values in 0..0.01 became 49 % lesion (cut at half its maximum); as
    probabilities, nothing in it reaches 0.5, so no voxel is lesion, and a note says how it was read."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write(tmp_path / "images" / f"{name}.nii.gz", head())
        write(tmp_path / "masks" / f"{name}.nii.gz", (rng.random((16, 16, 16)) * 0.01).astype(np.float32))
    d = load_dataset("nifti", str(tmp_path), image_size=8)
    assert d.masks.sum() == 0
    assert "read as probability maps" in capsys.readouterr().out


@pytest.mark.parametrize("case", BAD)
def test_bad_nifti_folders_are_one_line(tmp_path, capsys, case):
    make, message = BAD[case]
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    if case.startswith("mask"):
        masks.mkdir()
    make(images, masks)
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", "--dataset", "nifti", "--data-dir", str(tmp_path), "--image-size", "8", "--epochs", "1",
                   "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_without_nibabel_a_nifti_folder_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch):
    write(tmp_path / "images" / "a.nii", head(8))
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel now raises ImportError
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", "--dataset", "nifti", "--data-dir", str(tmp_path), "--epochs", "1",
                   "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install nibabel" in err and len(err.splitlines()) == 1, err


def test_sample_writes_volumes_and_masks_as_a_nifti_folder_that_loads_back(tmp_path, capsys):
    import sample
    from test_volumes import TINY3D
    out = tmp_path / "cond"
    main.main(["COND", *TINY3D, "--out", str(out)])
    sample.main([str(out / "model.pth"), "--num-samples", "3", "--nifti", "--out", str(tmp_path / "s.png")])
    with np.load(tmp_path / "s.npz") as f:
        images, masks = f["images"], f["masks"]
    folder = tmp_path / "s_nifti"
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["0000.nii.gz", "0001.nii.gz", "0002.nii.gz"]
    back = load_dataset("nifti", str(folder), image_size=8)  # the first 2 of 3 (the last is held out)
    lo, hi = images.min(axis=(1, 2, 3, 4), keepdims=True), images.max(axis=(1, 2, 3, 4), keepdims=True)
    np.testing.assert_allclose(back.images.numpy(), ((images - lo) / (hi - lo) * 2 - 1)[:2], atol=1e-5)
    assert np.array_equal(back.masks.numpy(), masks[:2])
    before = (folder / "images" / "0000.nii.gz").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a second run never writes into the folder
        sample.main([str(out / "model.pth"), "--num-samples", "3", "--nifti", "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "exists: move it" in err and len(err.splitlines()) == 1, err
    assert (folder / "images" / "0000.nii.gz").read_bytes() == before


def test_sample_nifti_on_a_2d_model_is_one_line(tmp_path, capsys):
    import sample
    out = tmp_path / "ddpm"
    main.main(["DDPM", "--dataset", "shapes", "--limit", "8", "--batch-size", "4", "--net", "cnn", "--n-T", "10",
               "--sample-steps", "1", "--num-samples", "1", "--epochs", "1", "--eval-samples", "0", "--out", str(out)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample.main([str(out / "model.pth"), "--nifti", "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--nifti writes volumes" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s_nifti").exists() and not (tmp_path / "s.png").exists()


def test_anomaly_py_maps_a_nifti_folder_and_refuses_the_wrong_dimension(tmp_path, capsys):
    import anomaly
    for i in range(4):
        write(tmp_path / "data" / "images" / f"s{i}.nii.gz", head(12) + i)
    out = tmp_path / "run"
    main.main(["DDPM", "--dataset", "nifti", "--data-dir", str(tmp_path / "data"), "--image-size", "8",
               "--unet-widths", "4", "8", "8", "--n-T", "20", "--sample-steps", "2", "--num-samples", "2",
               "--epochs", "1", "--out", str(out)])
    capsys.readouterr()
    anomaly.main([str(out / "model.pth"), "--dataset", "nifti", "--data-dir", str(tmp_path / "data"), "--repeats", "1",
                  "--steps", "2", "--out", str(tmp_path / "a.png")])
    assert (tmp_path / "a.png").exists() and "no score" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        anomaly.main([str(out / "model.pth"), "--dataset", "folder", "--data-dir", str(tmp_path / "data"),
                      "--out", str(tmp_path / "b.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "use --dataset nifti" in err and len(err.splitlines()) == 1, err


def test_a_folder_that_fails_half_way_is_not_left_behind(tmp_path):
    """files.save_folder_atomic (sample.py --nifti): an error after some files leaves no folder and no
    temporary one."""
    from plumbing.files import save_folder_atomic

    def write(folder):
        (tmp_path / "probe").write_text(folder)
        open(f"{folder}/0000.nii.gz", "wb").close()
        raise OSError("disk full")
    with pytest.raises(OSError):
        save_folder_atomic(write, str(tmp_path / "s_nifti"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]
