"""The shipped weights (weights/) load safely and draw at once through sample.py, as weights/README.md says;
plumbing.ship keeps the sampling weights and the config, and never replaces a file."""
import os

import numpy as np
import pytest
import torch

import main
import sample
from plumbing import ship
from plumbing.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(ROOT, "weights")
SHIPPED = {  # file: (what its config says, extra sample.py arguments, the shape of 2 samples)
    "mnist_ddpm.pth": ({"model": "DDPM", "dataset": "mnist", "cond": None}, [], (2, 1, 28, 28)),
    "mnist_cond.pth": ({"model": "COND", "dataset": "mnist", "cond": "class"}, ["--label", "3"], (2, 1, 28, 28)),
    "mri64_cond.pth": ({"model": "COND", "dataset": "folder", "cond": "mask"},
                       ["--mask-dir", os.path.join(WEIGHTS, "mri64_examples", "masks")], (2, 1, 64, 64)),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_and_draw(name, tmp_path):
    expected, extra, shape = SHIPPED[name]
    ckpt = load_checkpoint(os.path.join(WEIGHTS, name))
    assert {k: ckpt["config"][k] for k in expected} == expected and ckpt["config"]["shipped"]
    assert ckpt["ema"] is None and "optimizer" not in ckpt and ckpt["metrics"]
    sample.main([os.path.join(WEIGHTS, name), "--num-samples", "2", "--steps", "5", *extra,
                 "--out", str(tmp_path / "samples" / "s.png")])  # as weights/README.md: a new folder is made
    x = np.load(tmp_path / "samples" / "s.npz")["images"]
    assert x.shape == shape and np.isfinite(x).all() and -1 <= x.min() and x.max() <= 1


def test_ship_keeps_the_ema_weights_and_the_config_sets_sample_steps_and_never_replaces(tmp_path, capsys):
    main.main(["DDPM", "--dataset", "shapes", "--net", "cnn", "--limit", "32", "--batch-size", "16", "--n-T", "10",
               "--num-samples", "2", "--sample-steps", "2", "--eval-samples", "0", "--epochs", "1",
               "--out", str(tmp_path / "run")])
    run = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    ship.main([str(tmp_path / "run" / "model.pth"), str(tmp_path / "w.pth"), "--note", "a test"])
    shipped = load_checkpoint(str(tmp_path / "w.pth"))
    assert shipped["config"]["shipped"] == "a test" and shipped["config"]["net"] == "cnn"
    assert all(torch.equal(shipped["model"][k], v) for k, v in run["ema"]["weights"].items())
    assert os.path.getsize(tmp_path / "w.pth") < os.path.getsize(tmp_path / "run" / "model.pth") / 2
    before = (tmp_path / "w.pth").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ship.main([str(tmp_path / "run" / "model.pth"), str(tmp_path / "w.pth")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "never replaced" in err
    assert (tmp_path / "w.pth").read_bytes() == before
    ship.main([str(tmp_path / "run" / "model.pth"), str(tmp_path / "w5.pth"), "--sample-steps", "5"])
    assert load_checkpoint(str(tmp_path / "w5.pth"))["config"]["sample_steps"] == 5  # the run's was 2
    for steps in ("11", "0"):  # T is 10
        with pytest.raises(SystemExit) as e:
            ship.main([str(tmp_path / "run" / "model.pth"), str(tmp_path / "w11.pth"), "--sample-steps", steps])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "--sample-steps" in err and not os.path.exists(
            tmp_path / "w11.pth")


def test_ship_half_stores_float16_that_samples_like_the_float32_weights(tmp_path):
    main.main(["DDPM", "--dataset", "shapes", "--net", "cnn", "--limit", "32", "--batch-size", "16", "--n-T", "10",
               "--num-samples", "2", "--sample-steps", "2", "--eval-samples", "0", "--epochs", "1",
               "--out", str(tmp_path / "run")])
    for name, extra in (("full", []), ("half", ["--half"])):
        ship.main([str(tmp_path / "run" / "model.pth"), str(tmp_path / f"{name}.pth"), *extra])
        sample.main([str(tmp_path / f"{name}.pth"), "--num-samples", "2", "--steps", "2", "--device", "cpu",
                     "--out", str(tmp_path / f"{name}.png")])
    assert all(v.dtype == torch.float16 for v in load_checkpoint(str(tmp_path / "half.pth"))["model"].values())
    assert os.path.getsize(tmp_path / "half.pth") < 0.6 * os.path.getsize(tmp_path / "full.pth")
    full, half = (np.load(tmp_path / f"{n}.npz")["images"] for n in ("full", "half"))
    assert np.abs(full - half).mean() < 0.01
