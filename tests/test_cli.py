"""main.py end to end on tiny offline runs: every promised file, resume, and one-line errors."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from models import PAPER, RECIPE

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "shapes", "--net", "cnn", "--limit", "64", "--batch-size", "32", "--n-T", "20",
        "--num-samples", "4", "--sample-steps", "5", "--eval-samples", "0"]
PER_RUN = {"run.json", "loss.csv", "loss_curve.png", "metrics.csv", "model.pth", "forward_diffusion.png", "config.json",
           "schedules.png"}


def run(*args):
    main.main([str(a) for a in args])


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["DDPM", "DDGM"])
def test_tiny_run_writes_every_file(tmp_path, model):
    out = tmp_path / "out"
    i = TINY.index("--sample-steps")  # DDGM draws by Algorithm 2, which takes every step: --sample-steps is refused
    tiny = TINY[:i] + TINY[i + 2:] if model == "DDGM" else TINY
    run(model, *tiny, "--epochs", "2", "--out", out)
    assert {p.name for p in out.iterdir()} == PER_RUN | {"image_ep001.png", "image_ep002.png"}
    losses = rows(out / "loss.csv")
    assert [int(r["step"]) for r in losses] == [1, 2, 3, 4] and {r["epoch"] for r in losses} == {"1", "2"}
    assert [r["epoch"] for r in rows(out / "metrics.csv")] == ["1", "2"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model and config["n_T"] == 20
    ckpt = torch.load(out / "model.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and set(ckpt) >= {"model", "optimizer", "config", "ema"}
    assert ckpt["ema"]["n"] == 4 and ckpt["ema"]["weights"].keys() == ckpt["model"].keys()
    grid = Image.open(out / "image_ep002.png")
    assert titled(grid, 2 * (4 * 30 + 2), 2 * (30 + 2))  # 4 samples of 28 px, 2 px padding, shown 2x, the title
    assert Image.open(out / "forward_diffusion.png").size == (2 * (11 * 30 + 2), 14 + 2 * (8 * 30 + 2))  # t labels


def titled(image, width: int, height: int) -> bool:
    """A grid of this width and height under a title of one or more 14 px lines (figures.with_labels)."""
    return image.size[0] == width and image.size[1] > height and (image.size[1] - height) % 14 == 0


def test_samples_are_mapped_back_to_zero_one(tmp_path):
    """Grids show x in [-1, 1] as (x + 1) / 2: shapes' black background must come out black-ish, not grey."""
    run("DDPM", *TINY, "--epochs", "1", "--out", tmp_path)
    fwd = np.asarray(Image.open(tmp_path / "forward_diffusion.png").convert("L"))
    clean = fwd[14 + 4:14 + 60, 4:60]  # first image at t = 0 (below the 14-px strip of t labels, shown 2x): a shape
    assert clean.min().item() == 0 and clean.max().item() > 150


def test_resume_continues_exactly(tmp_path):
    """2 epochs in one go == 1 epoch, then --resume to 2: same losses step by step, same weights and EMA."""
    run("DDPM", *TINY, "--epochs", "2", "--out", tmp_path / "straight")
    run("DDPM", *TINY, "--epochs", "1", "--out", tmp_path / "resumed")
    run("DDPM", *TINY, "--epochs", "2", "--out", tmp_path / "resumed", "--resume")
    a, b = rows(tmp_path / "straight" / "loss.csv"), rows(tmp_path / "resumed" / "loss.csv")
    assert len(b) == 4 and a == b
    a, b = (torch.load(tmp_path / d / "model.pth", weights_only=True) for d in ("straight", "resumed"))
    assert b["epoch"] == 2 and b["ema"]["n"] == 4
    assert all(torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]) for k in a["ema"]["weights"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_with_other_network_is_refused(tmp_path, capsys):
    run("DDPM", *TINY, "--epochs", "1", "--out", tmp_path)
    with pytest.raises(SystemExit) as e:
        run("DDPM", *TINY, "--epochs", "2", "--out", tmp_path, "--resume", "--net", "unet")
    assert e.value.code == 2
    assert "trained with net='cnn'" in capsys.readouterr().err


def test_cond_class_grid_has_one_row_per_class_and_guidance_sweep(tmp_path):
    run("COND", *TINY, "--epochs", "1", "--out", tmp_path, "--guidance-sweep", "0", "3")
    # 3 rows, y=0.. at the left
    assert titled(Image.open(tmp_path / "image_ep001.png"), 8 + 7 * 3 + 2 * (8 * 30 + 2), 2 * (3 * 30 + 2))
    a, b = (Image.open(tmp_path / f"guidance_w{w}.png") for w in ("0", "3"))
    assert a.size == b.size and not np.array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((tmp_path / "config.json").read_text())["cond"] == "class"


def test_cond_mask_on_phantom_writes_triplets_and_dice(tmp_path):
    run("COND", "--dataset", "phantom", "--image-size", "16", "--limit", "64", "--batch-size", "32",
        "--n-T", "20", "--num-samples", "4", "--epochs", "1", "--net", "unet", "--out", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["cond"] == "mask" and config["cond_channels"] == 1
    # 4 triplets, 6 a row, headed, 16 px shown 4x
    assert titled(Image.open(tmp_path / "image_ep001.png"), 4 * (6 * 18 + 2), 14 + 4 * (2 * 18 + 2))
    metrics = rows(tmp_path / "metrics.csv")[0]
    assert 0 <= float(metrics["dice"]) <= 1 and "dice_shuffled_masks" in metrics


def cli(*args):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["GAN"], "invalid choice: 'GAN'"),
    (["DDPM", "--betas", "0.02", "0.0001"], "--betas needs 0 < BETA_1 <= BETA_T < 1"),
    (["DDPM", "--epochs", "0"], "--epochs must lie in 1..100000"),
    (["DDPM", "--sampler", "ddpm", "--sample-steps", "10"], "--sample-steps does not apply to --sampler ddpm"),
    (["DDGM", "--theta0", "-1"], "--theta0 must lie in (0, 1e6]"),
    (["DDPM", "--cond", "class"], "--cond class applies to COND only, not DDPM"),
    (["DDPM", "--cond", "mask"], "--cond mask applies to COND, VPRED, FLOW and EDM only, not DDPM"),
    (["DDGM", "--min-snr", "5"], "--min-snr applies to DDPM, COND and VPRED, not DDGM"),
    (["DDPM", "--min-snr", "-1"], "--min-snr must lie in 0 (off) or 0.01..10000"),
])
def test_bad_arguments_one_line_exit_2(args, message):
    r = cli(*args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


def test_missing_mnist_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import data
    monkeypatch.setattr(data, "download_mnist", lambda d: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(SystemExit) as e:
        run("DDPM", "--data-dir", tmp_path, "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "MNIST not found" in err and err.count("\n") == 1


def test_cond_mask_without_masks_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run("COND", *TINY, "--cond", "mask", "--out", tmp_path)
    assert "--cond mask needs masks" in capsys.readouterr().err


def test_unconditional_image_folder_trains_ddgm(tmp_path):
    """--dataset folder without masks/ is a plain image folder for DDPM and DDGM; RGB stays RGB."""
    rng = np.random.default_rng(0)
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    run("DDGM", "--dataset", "folder", "--data-dir", tmp_path / "data", "--image-size", "8", "--net", "cnn",
        "--n-T", "10", "--num-samples", "2", "--epochs", "1", "--out", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["in_channels"] == 3 and config["image_size"] == 8 and config["cond"] is None
    assert (tmp_path / "out" / "image_ep001.png").exists()


def test_fid_is_scored_every_epoch_and_plotted(tmp_path):
    """--eval-samples N: metrics.csv gets fid and fid_real (metrics.py's classifier, cached in --data-dir)."""
    run("DDPM", *TINY, "--epochs", "1", "--eval-samples", "8", "--data-dir", tmp_path / "data", "--out", tmp_path / "o")
    row = rows(tmp_path / "o" / "metrics.csv")[0]
    assert float(row["fid"]) > 0 and float(row["fid_real"]) > 0
    assert len(list((tmp_path / "data" / "classifiers").glob("shapes-*.pt"))) == 1


def test_a_run_folder_is_never_overwritten_silently(tmp_path, capsys):
    """Starting again in a folder with a checkpoint is refused; --overwrite starts afresh and removes
    the old epoch images; the checkpoint of the refused run is untouched."""
    run("DDPM", *TINY, "--epochs", "2", "--out", tmp_path)
    before = (tmp_path / "model.pth").read_bytes()
    with pytest.raises(SystemExit) as e:
        run("DDPM", *TINY, "--epochs", "1", "--out", tmp_path)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "model.pth").read_bytes() == before
    run("DDPM", *TINY, "--epochs", "1", "--out", tmp_path, "--overwrite")
    assert not (tmp_path / "image_ep002.png").exists() and (tmp_path / "image_ep001.png").exists()
    assert torch.load(tmp_path / "model.pth", weights_only=True)["epoch"] == 1


def test_run_ends_saying_where_everything_is(tmp_path, capsys):
    run("DDPM", *TINY, "--epochs", "1", "--out", tmp_path)
    out = capsys.readouterr().out.strip().splitlines()
    assert "image_ep001.png" in out[-2] and f"python sample.py {tmp_path}/model.pth" in out[-1]


class Exploit:
    """A pickle that runs code when unpickled: what a hostile model.pth would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_cannot_run_code(tmp_path, capsys):
    """A valid checkpoint with a __reduce__ payload inside: --resume refuses it, the code never runs."""
    run("DDPM", *TINY, "--epochs", "1", "--out", tmp_path)
    ckpt = torch.load(tmp_path / "model.pth", weights_only=True)
    ckpt["metrics"].append({"epoch": Exploit(tmp_path / "pwned")})
    torch.save(ckpt, tmp_path / "model.pth")
    with pytest.raises(SystemExit) as e:
        run("DDPM", *TINY, "--epochs", "2", "--out", tmp_path, "--resume")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not a checkpoint this project can load safely" in err and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists()


def test_ddim_for_ddgm_is_refused_in_one_line():
    r = cli("DDGM", "--sampler", "ddim")
    assert r.returncode == 2 and "must be ddpm for DDGM" in r.stderr and r.stderr.count("\n") == 1


def test_defaults_are_the_recipe_and_paper_settings_one_flag_away(tmp_path):
    """No option: models.RECIPE in config.json, each process with its own options only. --paper-settings: Ho et
    al.'s lr, batch, warm-up, EMA and Algorithm 2, except for options given explicitly; DDGM always samples by
    Algorithm 2."""
    tiny = ["--dataset", "shapes", "--limit", "16", "--n-T", "10", "--num-samples", "4", "--eval-samples", "0",
            "--epochs", "1"]
    configs = {}
    runs = {"recipe": [], "paper": ["--paper-settings"], "mixed": ["--paper-settings", "--lr", "1e-3"], "ddgm": []}
    for name, extra in runs.items():
        run("DDGM" if name == "ddgm" else "DDPM", *tiny, *extra, "--out", tmp_path / name)
        configs[name] = json.loads((tmp_path / name / "config.json").read_text())
    given = {"dataset", "limit", "n_T", "sample_steps", "num_samples", "eval_samples", "epochs"}
    ddgm_only = {"theta0", "loss"}
    for key, value in RECIPE.items():
        if key in given or key in ("p_uncond", "guidance", *ddgm_only):  # given, or another process's options
            continue
        assert configs["recipe"][key] == value
        assert configs["paper"][key] == PAPER.get(key, value)
    assert configs["mixed"]["lr"] == 1e-3 and configs["mixed"]["batch_size"] == PAPER["batch_size"]
    assert not ddgm_only & set(configs["recipe"]) and all(configs["ddgm"][k] == RECIPE[k] for k in ddgm_only)
    assert configs["ddgm"]["sampler"] == "ddpm" and configs["recipe"]["sampler"] == "ddim"
