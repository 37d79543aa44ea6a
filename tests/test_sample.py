"""sample.py and metrics.py end to end: samples from a checkpoint alone, in every conditioning."""
import numpy as np
import pytest
from PIL import Image

import main
import metrics
import sample
from test_cli import titled

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs

TINY = ["--dataset", "shapes", "--net", "cnn", "--limit", "64", "--batch-size", "32", "--n-T", "20",
        "--num-samples", "4", "--sample-steps", "5", "--eval-samples", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny DDPM, COND (class) and COND (phantom masks) run, trained once for all tests here."""
    root = tmp_path_factory.mktemp("runs")
    main.main(["DDPM", *TINY, "--out", str(root / "ddpm")])
    main.main(["COND", *TINY, "--out", str(root / "cond")])
    main.main(["COND", *TINY, "--dataset", "phantom", "--image-size", "16", "--net", "unet", "--out",
               str(root / "mask")])
    return root


def npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_samples_png_and_npz_from_checkpoint_alone(runs, tmp_path):
    sample.main([str(runs / "ddpm" / "model.pth"), "--num-samples", "10", "--steps", "4", "--out",
                 str(tmp_path / "s.png")])
    arrays = npz(tmp_path / "s.npz")
    assert arrays["images"].dtype == np.float32 and arrays["images"].shape == (10, 1, 28, 28)
    assert arrays["images"].min() >= -1 and arrays["images"].max() <= 1 and "labels" not in arrays
    assert titled(Image.open(tmp_path / "s.png"), 2 * (8 * 30 + 2), 2 * (2 * 30 + 2))  # 8 per row, 2x, under a title


def test_same_seed_same_samples_and_both_samplers(runs, tmp_path):
    ckpt = str(runs / "ddpm" / "model.pth")
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "1"]), ("d", ["--sampler", "ddpm"])):
        sample.main([ckpt, "--num-samples", "3", "--out", str(tmp_path / f"{name}.png"), *extra])
    a, b, c, d = (npz(tmp_path / f"{n}.npz")["images"] for n in "abcd")
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_reverse_figure_shows_the_visited_steps_and_x0_for_four_samples(runs, tmp_path):
    """figures.save_reverse_process: one x_t column per recorded step (ten, or all of a 5-step DDIM run)
    and x_0 (columns of 1.1 in), 2 rows per sample (x_t over x0_hat, 1.15 in each) at 100 dpi."""
    for steps, columns in ((5, 5 + 1), (20, 10 + 1)):
        sample.main([str(runs / "ddpm" / "model.pth"), "--num-samples", "4", "--steps", str(steps), "--reverse",
                     "--out", str(tmp_path / "r.png")])
        assert Image.open(tmp_path / "r_reverse.png").size == (110 * columns, 920)


def test_class_rows_and_single_label(runs, tmp_path):
    """Shapes has 3 classes: by default one row of 8 per class; --label 2 draws only class 2."""
    ckpt = str(runs / "cond" / "model.pth")
    sample.main([ckpt, "--out", str(tmp_path / "rows.png")])
    assert npz(tmp_path / "rows.npz")["labels"].tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert titled(Image.open(tmp_path / "rows.png"), 8 + 7 * 3 + 2 * (8 * 30 + 2), 2 * (3 * 30 + 2))  # y=0.. left
    sample.main([ckpt, "--label", "2", "--num-samples", "5", "--guidance", "0", "--out", str(tmp_path / "two.png")])
    assert npz(tmp_path / "two.npz")["labels"].tolist() == [2] * 5


def test_mask_model_uses_held_out_masks_or_a_mask_folder(runs, tmp_path):
    ckpt = str(runs / "mask" / "model.pth")
    sample.main([ckpt, "--num-samples", "3", "--out", str(tmp_path / "held.png")])
    assert npz(tmp_path / "held.npz")["masks"].shape == (3, 1, 16, 16)
    (tmp_path / "masks").mkdir()
    disc = np.zeros((40, 40), np.uint8)
    disc[10:30, 10:30] = 255
    Image.fromarray(disc).save(tmp_path / "masks" / "a.png")
    sample.main([ckpt, "--mask-dir", str(tmp_path / "masks"), "--out", str(tmp_path / "dir.png")])
    masks = npz(tmp_path / "dir.npz")["masks"]
    assert masks.shape == (1, 1, 16, 16) and masks[0, 0, 8, 8] == 1 and masks[0, 0, 0, 0] == 0


@pytest.mark.parametrize("args, message", [
    (["--label", "7"], "--label must lie in 0..2"),
    (["--steps", "50"], "--steps must lie in 1..20"),
    (["--steps", "0"], "--steps must lie in 1..20"),
    (["--sampler", "ddpm", "--steps", "-3"], "--steps does not apply to --sampler ddpm"),  # it was ignored
    (["--sampler", "euler", "--eta", "0.5"], "--eta does not apply to --sampler euler"),
    (["--sampler", "euler", "--steps", "0"], "--steps must lie in 1..20"),
    (["--eta", "nan"], "--eta must lie in [0, 1]"),
    (["--mask-dir", "."], "--mask-dir needs a mask-conditioned checkpoint"),  # was drawn without the masks
])
def test_bad_options_one_line(runs, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        sample.main([str(runs / "cond" / "model.pth"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_not_a_checkpoint_one_line(tmp_path, capsys):
    (tmp_path / "model.pth").write_bytes(b"not a checkpoint")
    for path in (tmp_path / "model.pth", tmp_path / "missing.pth"):
        with pytest.raises(SystemExit) as e:
            sample.main([str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1


def test_metrics_cli_prints_one_line_for_the_data_the_npz_records(runs, tmp_path, capsys):
    """sample.py records the model's dataset in the .npz, so metrics.py needs no --dataset."""
    sample.main([str(runs / "cond" / "model.pth"), "--out", str(tmp_path / "s.png")])
    capsys.readouterr()
    assert str(np.load(tmp_path / "s.npz")["dataset"]) == "shapes"
    metrics.main([str(tmp_path / "s.npz"), "--data-dir", str(tmp_path / "data")])
    line = capsys.readouterr().out.strip()
    assert line.startswith("n=24 fid=") and "fid_real=" in line and "class_accuracy=" in line


def test_metrics_without_a_recorded_dataset_asks_for_one_in_one_line(tmp_path, capsys):
    np.savez(tmp_path / "old.npz", images=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(SystemExit) as e:
        metrics.main([str(tmp_path / "old.npz")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "pass --dataset NAME" in err
