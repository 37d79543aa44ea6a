"""Hostile or odd input gives one line and exit code 2 (never a traceback, never
silently wrong data), runs are never lost, and the loaders survive random bytes."""
import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import data
import main
from data import DataError, load_dataset

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "shapes", "--net", "cnn", "--limit", "64", "--batch-size", "32", "--n-T", "20",
        "--num-samples", "4", "--sample-steps", "5", "--eval-samples", "0"]


def cli(*args, script="main.py"):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def one_line_error(r, fragment=""):
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and fragment in r.stderr, r.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "1e30"], "--lr must lie in (0, 1]"),
    (["--theta0", "inf"], "--theta0 applies to DDGM, not DDPM"),  # a process's own option, then its bounds:
    (["--guidance", "inf"], "--guidance applies to COND, not DDPM"),
    (["--n-T", "2000000000"], "--n-T must lie in 2..10000"),
    (["--num-samples", "2000000000"], "--num-samples must lie in 1..10000"),
    (["--image-size", "3000"], "--image-size must lie in 4..512"),
    (["--batch-size", "0"], "--batch-size must lie in 1..4096"),
    (["--out", "main.py"], "could not read or write main.py (File exists)"),
    (["--out", "main.py/sub"], "(Not a directory)"),
])
def test_bad_numbers_and_paths_refused_before_loading(args, fragment):
    one_line_error(cli("DDPM", *args), fragment)


@pytest.mark.parametrize("args, fragment", [(["DDGM", "--theta0", "inf"], "--theta0 must be a finite number"),
                                            (["COND", "--guidance", "inf"], "--guidance must be a finite number")])
def test_a_process_option_out_of_bounds_is_refused(args, fragment):
    one_line_error(cli(*args), fragment)


def test_guidance_sweep_nan_refused():
    one_line_error(cli("COND", "--guidance-sweep", "1", "nan"), "--guidance-sweep must be a finite number")


def test_help_shows_every_default():
    """--help lists every option with its default (the recipe's, from models.RECIPE)."""
    r = cli("--help")
    assert r.returncode == 0
    options = r.stdout[r.stdout.index("options:"):].replace("\n                        ", " ").splitlines()
    for option in ("--epochs", "--batch-size", "--lr", "--betas", "--seed", "--num-samples", "--p-uncond",
                   "--guidance"):
        line = next(x for x in options if x.strip().startswith(option + " "))
        assert "(default: " in line, line


@pytest.mark.parametrize("args, fragment", [
    (["DDGM", "--theta0", "10"], "cannot represent its Gamma noise"),
    (["DDGM", "--theta0", "1e-200"], "cannot represent its Gamma noise"),
    (["DDGM", "--betas", "0.5", "0.9"], "cannot represent its Gamma noise"),
    (["DDGM", "--n-T", "10000", "--sampler", "ddpm"], "cannot represent its Gamma noise"),
    (["DDPM", "--device", "foo"], "is not a device"),
])
def test_process_and_device_refused_before_loading(args, fragment, tmp_path):
    one_line_error(cli(*args, "--data-dir", tmp_path / "nothing"), fragment)
    assert not (tmp_path / "nothing").exists()


def test_diverging_training_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    good = (tmp_path / "model.pth").read_bytes()
    r = cli("DDPM", *TINY, "--epochs", "3", "--out", tmp_path, "--resume", "--lr", "1")
    one_line_error(r, "--resume")  # a changed learning rate is refused, not silently ignored
    r = cli("DDPM", *TINY, "--epochs", "1", "--out", tmp_path / "big", "--lr", "1", "--warmup", "0", "--min-snr", "0")
    assert r.returncode == 2 and "training diverged" in r.stderr and "step" in r.stderr, r.stderr
    assert (tmp_path / "model.pth").read_bytes() == good


def test_resume_with_nothing_to_do_says_so(tmp_path, capsys):
    main.main(["DDPM", *TINY, "--epochs", "2", "--out", str(tmp_path)])
    capsys.readouterr()
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path), "--resume"])
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("key, value", [("--batch-size", "16"), ("--limit", "32"), ("--seed", "1"),
                                        ("--ema-decay", "0.9")])
def test_resume_refuses_changed_training_settings(tmp_path, capsys, key, value):
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    args = [a for a in TINY]
    if key in args:
        args[args.index(key) + 1] = value
    else:
        args += [key, value]
    with pytest.raises(SystemExit):
        main.main(["DDPM", *args, "--epochs", "2", "--out", str(tmp_path), "--resume"])
    assert "--resume" in capsys.readouterr().err


def test_planted_link_at_a_temporary_name_is_not_followed(tmp_path):
    """The old fixed temporary name model.pth.tmp.pth, planted in a run folder as a link to a file
    outside it: the next epoch's writes replace nothing through it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(out)])
    os.symlink(victim, out / "model.pth.tmp.pth")
    main.main(["DDPM", *TINY, "--epochs", "2", "--out", str(out), "--resume"])
    assert victim.read_text() == "keep me"
    assert not [p for p in out.iterdir() if ".tmp" in p.name and p.name != "model.pth.tmp.pth"]


def test_failed_write_leaves_no_temporary_file(tmp_path):
    from plumbing.files import save_atomic

    def fail(path):
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        save_atomic(fail, str(tmp_path / "model.pth"))
    assert list(tmp_path.iterdir()) == []


# --- data: convert correctly or refuse, naming the file ---

def write_folder(root, arrays, masks=None, ext="png"):
    (root / "images").mkdir(parents=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(root / "images" / f"{i}.{ext}")
    if masks is not None:
        (root / "masks").mkdir()
        for i, m in enumerate(masks):
            Image.fromarray(m).save(root / "masks" / f"{i}.png")


def test_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 16).astype(np.uint16), (16, 1))  # a 12-bit ramp stored in 16 bits
    write_folder(tmp_path, [ramp, ramp])
    x = load_dataset("folder", str(tmp_path), image_size=16).images
    assert x.min().item() == pytest.approx(-1) and x.max().item() == pytest.approx(1)
    assert (x > 0.99).float().mean().item() < 0.1  # not 38-82 % white as when clipped at 255


def test_float_tiff_in_zero_one_is_kept(tmp_path):
    a = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    write_folder(tmp_path, [a, a], ext="tif")
    x = (load_dataset("folder", str(tmp_path), image_size=16).images + 1) / 2
    assert x.max().item() == pytest.approx(1, abs=0.02) and x.mean().item() == pytest.approx(0.5, abs=0.02)


def test_mask_of_another_size_is_refused(tmp_path):
    img = np.zeros((32, 32), np.uint8)
    write_folder(tmp_path, [img, img], masks=[np.zeros((16, 16), np.uint8), np.zeros((32, 32), np.uint8)])
    with pytest.raises(DataError, match="mask 0 is 16x16 but its image is 32x32"):
        load_dataset("folder", str(tmp_path), image_size=8)


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    write_folder(tmp_path, [np.zeros((64, 64), np.uint8)] * 2)
    with pytest.raises(DataError, match="cannot be read"):
        load_dataset("folder", str(tmp_path), image_size=8)


@pytest.mark.parametrize("rows, fragment", [
    ("0.5," * 15 + "nan\n", "non-finite"),
    ("2.7" + ",0" * 16 + "\n", "whole numbers"),
    ("1e9" + ",0" * 16 + "\n", "labels must lie in"),
    ("-1" + ",0" * 16 + "\n", "labels must lie in"),
])
def test_csv_bad_values_refused(tmp_path, rows, fragment):
    (tmp_path / "x.csv").write_text(rows * 2)
    with pytest.raises(DataError, match=fragment):
        load_dataset("csv", data_path=str(tmp_path / "x.csv"), image_size=4)


def test_csv_fractions_are_not_black_and_first_row_is_data(tmp_path):
    """Pixels in 0..1 are fractions (not 8-bit levels); a first row starting with 1e0 is data, not a header."""
    (tmp_path / "x.csv").write_text("1e0" + ",0.5" * 15 + "\n" + ",".join(["0.25"] * 16) + "\n")
    x = (load_dataset("csv", data_path=str(tmp_path / "x.csv"), image_size=4).images + 1) / 2
    assert len(x) == 2 and x[0].max().item() == pytest.approx(1) and x[1].mean().item() == pytest.approx(0.25)


def test_npz_that_is_npy_empty_truncated_or_channels_first(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    os.rename(tmp_path / "a.npy", tmp_path / "pathmnist.npz")
    with pytest.raises(DataError, match="a single .npy array"):
        load_dataset("pathmnist", str(tmp_path), download=False)
    (tmp_path / "pathmnist.npz").write_bytes(b"")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("pathmnist", str(tmp_path), download=False)
    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((4, 3, 28, 28), np.uint8), train_labels=np.zeros((4, 1), np.uint8))
    (tmp_path / "pathmnist.npz").write_bytes(buf.getvalue()[:-100])
    with pytest.raises(DataError):
        load_dataset("pathmnist", str(tmp_path), download=False)
    (tmp_path / "pathmnist.npz").write_bytes(buf.getvalue())
    assert load_dataset("pathmnist", str(tmp_path), download=False).images.shape == (4, 3, 28, 28)


def test_idx_with_zero_or_too_many_images(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, n in (("train-images-idx3-ubyte.gz", 0), ("train-labels-idx1-ubyte.gz", 0)):
        with gzip.open(raw / name, "wb") as f:
            f.write(bytes([0, 0, 8, 3 if "images" in name else 1]) + n.to_bytes(4, "big")
                    + ((28).to_bytes(4, "big") * 2 if "images" in name else b""))
    with pytest.raises(DataError, match="holds no items"):
        load_dataset("mnist", str(tmp_path), download=False)
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:  # declares 1.5 M images, holds none
        f.write(bytes([0, 0, 8, 3]) + (1_500_000).to_bytes(4, "big") + (280).to_bytes(4, "big") * 2)
    with pytest.raises(DataError, match="more than fit in memory"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_limit_reads_only_the_first_images(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:  # declares 100 images, holds 5
        f.write(bytes([0, 0, 8, 3]) + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(5 * 784))
    with gzip.open(raw / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(100))
    assert len(load_dataset("mnist", str(tmp_path), download=False, limit=5).images) == 5


def test_offline_mnist_names_all_files_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(data_dir):
        os.makedirs(os.path.join(data_dir, "MNIST", "raw"), exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://x, got:\nno network")
    monkeypatch.setattr(data, "download_mnist", offline)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "data"))
    message = str(e.value)
    assert "no network" in message and "\n" not in message
    assert all(n in message for n in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
    assert not (tmp_path / "data").exists()


def test_non_square_images_refused(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((4, 28, 20), np.uint8), train_labels=np.zeros((4, 1), np.uint8))
    (tmp_path / "pathmnist.npz").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="square"):
        load_dataset("pathmnist", str(tmp_path), download=False)


# --- fuzz: random bytes, truncations and bit flips at every loader, through the CLI entry point ---

def valid_files():
    """One small valid file per loader: (dataset, relative path, bytes)."""
    idx = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    idx += bytes(range(256)) * 6 + bytes(32)
    lab = bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([3, 7])
    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.ones((2, 1), np.uint8))
    png = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(png, format="PNG")
    labels = {"MNIST/raw/train-labels-idx1-ubyte.gz": gzip.compress(lab)}
    return [("mnist", "MNIST/raw/train-images-idx3-ubyte.gz", gzip.compress(idx), labels),
            ("pneumoniamnist", "pneumoniamnist.npz", buf.getvalue(), {}),
            ("folder", "images/a.png", png.getvalue(), {"images/b.png": png.getvalue()}),
            ("csv", "x.csv", ("1," + "0," * 15 + "7\n").encode() * 2, {})]


def mutate(raw: bytes, how: str, where: float, byte: int) -> bytes:
    i = int(where * max(len(raw) - 1, 0))
    if how == "truncate":
        return raw[:i]
    if how == "flip":
        return raw[:i] + bytes([raw[i] ^ (1 << (byte % 8))]) + raw[i + 1:] if raw else raw
    return bytes([byte]) * (i % 300)  # random junk of some length


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 3), how=st.sampled_from(["truncate", "flip", "junk"]), where=st.floats(0, 1),
       byte=st.integers(0, 255))
def test_fuzzed_files_give_one_line_or_load(tmp_path_factory, capsys, which, how, where, byte):
    """Whatever a loader is fed, main.py either trains on it (a checkpoint written) or stops with one
    line on stderr, exit code 2."""
    name, rel, raw, others = valid_files()[which]
    root = tmp_path_factory.mktemp("fuzz")
    for path, content in {rel: mutate(raw, how, where, byte), **others}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    args = ["DDPM", "--dataset", name, "--data-dir", str(root), "--data-path", str(root / "x.csv"), "--image-size",
            "4" if name == "csv" else "28" if name != "folder" else "8", "--net", "cnn", "--n-T", "5", "--epochs", "1",
            "--num-samples", "2", "--eval-samples", "0", "--out", str(root / "out")]
    if name not in ("folder", "csv"):
        args.remove("--image-size")
        args.remove("28")
    capsys.readouterr()
    try:
        main.main(args)
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    else:
        assert (root / "out" / "model.pth").exists()


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_is_exact(tmp_path):
    """Kill -9 after the first checkpoint: model.pth loads, and --resume reproduces an uninterrupted run."""
    import signal
    import time
    args = [*TINY, "--epochs", "3", "--precision", "fp32"]  # the same precision in and out of pytest
    args[args.index("--limit") + 1] = "128"
    proc = subprocess.Popen([sys.executable, "main.py", "DDPM", *args, "--out", str(tmp_path / "killed")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (tmp_path / "killed" / "model.pth").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(tmp_path / "killed" / "model.pth", weights_only=True)["epoch"]
    assert 1 <= epoch <= 3
    main.main(["DDPM", *args, "--out", str(tmp_path / "killed"), "--resume"])
    main.main(["DDPM", *args, "--out", str(tmp_path / "straight")])
    a, b = ((tmp_path / d / "loss.csv").read_text() for d in ("killed", "straight"))
    assert a == b


def test_resume_without_a_checkpoint_says_so_before_loading_data(tmp_path):
    one_line_error(cli("DDPM", "--resume", "--out", tmp_path / "none", "--data-dir", tmp_path / "nodata"),
                   "no checkpoint at")
    assert not (tmp_path / "nodata").exists()


def test_resume_of_an_older_checkpoint_with_other_widths_is_one_line(tmp_path, capsys):
    """A checkpoint from before --unet-widths existed has no such key: weights that do not fit the
    network asked for end in one line, not a load_state_dict traceback."""
    args = [*TINY, "--image-size", "8"]
    args[args.index("--net") + 1], args[args.index("--dataset") + 1] = "unet", "phantom"
    main.main(["DDPM", *args, "--unet-widths", "8", "8", "8", "--epochs", "1", "--out", str(tmp_path)])
    ckpt = torch.load(tmp_path / "model.pth", weights_only=True)
    del ckpt["config"]["unet_widths"]
    torch.save(ckpt, tmp_path / "model.pth")
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", *args, "--unet-widths", "8", "16", "16", "--epochs", "2", "--out", str(tmp_path),
                   "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "do not fit this network" in err and err.count("\n") == 1
