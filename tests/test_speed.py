"""plumbing/run.py's use of the machine: the precision auto chooses by the hardware, one thread count per run,
and data-parallel training whose ranks' loss shares add up to the one-process loss."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import main
from cond import ConditionalDDPM
from ddpm import DDPM, linear_beta_schedule
from plumbing import run
from unet import NETWORKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "phantom", "--image-size", "16", "--limit", "40", "--batch-size", "16", "--unet-widths", "8",
        "16", "16", "--eval-samples", "0", "--num-samples", "4", "--sample-steps", "2", "--n-T", "20"]
pytestmark = pytest.mark.slow  # the two processes of torchrun, precision and threads on tiny runs


def tiny_net(num_classes: int = 0):
    torch.manual_seed(0)
    return NETWORKS["unet"]({"in_channels": 1, "image_size": 8, "num_classes": num_classes, "cond_channels": 0,
                             "unet_widths": [8, 8]})


@pytest.mark.parametrize("native, asked, expected", [(True, "auto", "bf16"), (False, "auto", "fp32"),
                                                     (False, "bf16", "bf16"), (True, "fp32", "fp32")])
def test_auto_is_bf16_exactly_where_the_hardware_computes_it(tmp_path, monkeypatch, native, asked, expected):
    """--precision auto follows the hardware alone, so that the same command gives the same weights however busy
    the machine is; fp32 and bf16 are taken as asked."""
    monkeypatch.setattr(run, "native_bf16", lambda device: native)
    main.main(["DDPM", *TINY, "--epochs", "1", "--precision", asked, "--out", str(tmp_path / "r")])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["precision_used"] == expected


@pytest.mark.parametrize("native", [True, False])
def test_a_resumed_run_keeps_its_precision_where_the_hardware_can(tmp_path, monkeypatch, native):
    """A run begun in fp32 goes on in fp32 with auto; one begun in bf16 goes on in bf16 where the hardware computes
    it natively, and in fp32 on a machine that would emulate it (a checkpoint moved to an AVX2 laptop)."""
    out = str(tmp_path / "r")
    for begun in ("fp32", "bf16"):
        main.main(["DDPM", *TINY, "--epochs", "1", "--precision", begun, "--out", out, "--overwrite"])
        monkeypatch.setattr(run, "native_bf16", lambda device: native)
        main.main(["DDPM", *TINY, "--epochs", "2", "--out", out, "--resume"])
        expected = begun if begun == "fp32" or native else "fp32"
        assert json.loads((tmp_path / "r" / "config.json").read_text())["precision_used"] == expected


def test_a_bf16_training_step_matches_fp32_to_bf16_accuracy():
    """The same batch, noise and weights: the bf16 autocast loss is fp32's within bf16's ~3 significant digits."""
    from bench.step import train_step
    losses = {}
    for precision in ("fp32", "bf16"):
        model = DDPM(tiny_net(), linear_beta_schedule(20))
        opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
        torch.manual_seed(1)
        losses[precision] = train_step(model, opt, None, torch.rand(4, 1, 8, 8) * 2 - 1, 1, 1e-3, 0,
                                       precision=precision).item()
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


@pytest.mark.parametrize("process", ["DDPM", "COND"])
def test_the_ranks_loss_shares_add_up_to_the_batch_loss(process):
    """Data-parallel training (Run.split): every rank draws t, eps and COND's label drop for the whole batch
    (model.draws, as main.train does; it draws what loss() draws), keeps its rows and weights the mean over them
    by its share, so that 3 ranks (rows 0-2, 3-5, 6-9 of 10) average to Algorithm 1's mean, with min-SNR weights too."""
    net = tiny_net(num_classes=3 if process == "COND" else 0)
    model = (ConditionalDDPM(net, linear_beta_schedule(20), num_classes=3, p_uncond=0.5, min_snr_gamma=5.0)
             if process == "COND" else DDPM(net, linear_beta_schedule(20), min_snr_gamma=5.0))
    x0, cond = torch.rand(10, 1, 8, 8) * 2 - 1, {"y": torch.arange(10) % 3} if process == "COND" else {}
    torch.manual_seed(5)
    whole = model.loss(x0, **cond)
    shares, sizes = [], []
    for rank in range(3):
        ranked = run.Run("unused")
        ranked.rank, ranked.size = rank, 3
        torch.manual_seed(5)  # every rank draws the same numbers
        x, c = ranked.split(x0, {**cond, **model.draws(x0, **cond)})
        shares.append(model.loss(x, **c) * ranked.share / 3)  # DDP averages the 3 gradients
        sizes.append(len(x))
    assert sizes == [3, 3, 4] and sum(shares).item() == pytest.approx(whole.item(), rel=1e-6)


@pytest.mark.parametrize("threads", ["0", "two", "-1"])
def test_bad_threads_are_one_line(tmp_path, capsys, threads):
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", "--threads", threads, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "--threads must be auto or a whole number" in err


def test_a_bf16_run_records_its_precision_and_trains(tmp_path):
    main.main(["DDPM", *TINY, "--epochs", "1", "--precision", "bf16", "--out", str(tmp_path / "r")])
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["precision_used"] == "bf16"
    with open(tmp_path / "r" / "loss.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)


def losses_of(folder) -> list:
    with open(os.path.join(folder, "loss.csv")) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun's gloo rendezvous, tested on Linux")
def test_torchrun_two_processes_train_as_one_and_resume(tmp_path):
    """The same global batches (16: 8 rows per rank, the last of 40 images 4 each), the same losses as one
    process within float rounding; rank 0 alone writes; --resume under torchrun continues the same run."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    main.main(["DDPM", *TINY, "--epochs", "2", "--precision", "fp32", "--out", one])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py",
                "DDPM", *TINY, "--precision", "fp32", "--out", two]
    for extra in (["--epochs", "1"], ["--epochs", "2", "--resume"]):
        done = subprocess.run(torchrun + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert losses_of(two) == pytest.approx(losses_of(one), rel=1e-4) and len(losses_of(one)) == 6
    manifest = json.loads((tmp_path / "two" / "run.json").read_text())
    assert sorted(n for n in os.listdir(two) if not n.startswith(".")) == sorted(manifest["files"] + ["run.json"])
    shutil.rmtree(two)


def test_resume_keeps_the_thread_count_the_run_began_with(tmp_path, monkeypatch, capsys):
    """A run begun with 1 thread and resumed with the default auto goes on with 1 thread and ends with the
    weights of the uninterrupted run."""
    tiny = ["DDPM", "--dataset", "shapes", "--net", "cnn", "--limit", "64", "--n-T", "20", "--num-samples", "4",
            "--sample-steps", "5", "--eval-samples", "0"]
    monkeypatch.delenv("OMP_NUM_THREADS")
    before = torch.get_num_threads()
    try:
        main.main([*tiny, "--epochs", "2", "--threads", "1", "--out", str(tmp_path / "whole")])
        main.main([*tiny, "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "part")])
        capsys.readouterr()
        main.main([*tiny, "--epochs", "2", "--resume", "--out", str(tmp_path / "part")])
        assert "1 threads for the whole run" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "part" / "config.json").read_text())["threads_used"] == 1
    whole, part = (torch.load(tmp_path / d / "model.pth", weights_only=True)["model"] for d in ("whole", "part"))
    assert all(torch.equal(whole[k], part[k]) for k in whole)


def test_openmp_threads_spin_briefly_and_the_weights_do_not_change(tmp_path):
    """On a busy CPU libgomp's threads, spinning 300,000 times before they sleep, made an epoch cost 33 times its
    time alone: every script sets GOMP_SPINCOUNT=10000 before torch starts unless the user chose a wait policy.
    When a thread waits does not change what it sums: the same seed gives the same weights either way."""
    probe = "import plumbing.preflight, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for given, expected in (({}, "10000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")):
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**env, **given})
        assert done.stdout.strip() == expected
    for name, given in (("default", {}), ("active", {"OMP_WAIT_POLICY": "ACTIVE"})):
        subprocess.run([sys.executable, "main.py", "DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path / name)],
                       cwd=ROOT, env={**env, **given}, check=True, capture_output=True, timeout=300)
    default, active = (torch.load(tmp_path / p / "model.pth", weights_only=True)["model"]
                       for p in ("default", "active"))
    assert all(torch.equal(default[k], active[k]) for k in default)
