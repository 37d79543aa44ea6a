"""speed.py and parallel.py: the precision auto chooses, threads that give way on a shared machine,
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
from plumbing import speed
from plumbing.parallel import rows
from unet import NETWORKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "phantom", "--image-size", "16", "--limit", "40", "--batch-size", "16", "--unet-widths", "8",
        "16", "16", "--eval-samples", "0", "--num-samples", "4", "--sample-steps", "2", "--n-T", "20"]


def tiny_net(num_classes: int = 0):
    torch.manual_seed(0)
    return NETWORKS["unet"]({"in_channels": 1, "image_size": 8, "num_classes": num_classes, "cond_channels": 0,
                             "unet_widths": [8, 8]})


def test_auto_is_fp32_without_native_bf16_and_never_times(monkeypatch):
    monkeypatch.setattr(speed, "native_bf16", lambda device: (False, "no avx512_bf16"))
    calls = []
    assert speed.choose_precision("auto", torch.device("cpu"), calls.append) == ("fp32", "no avx512_bf16")
    assert calls == []
    assert speed.choose_precision("bf16", torch.device("cpu"), calls.append)[0] == "bf16" and calls == []


@pytest.mark.parametrize("bf16_seconds, expected", [(0.001, "bf16"), (0.02, "fp32")])
def test_auto_takes_bf16_only_where_the_check_shows_it_faster(monkeypatch, bf16_seconds, expected):
    """fp32 work takes 10 ms; bf16 1 ms (10x faster: bf16) or 20 ms (slower: fp32)."""
    import time
    monkeypatch.setattr(speed, "native_bf16", lambda device: (True, "CPU with avx512_bf16"))
    work = lambda precision: time.sleep(0.01 if precision == "fp32" else bf16_seconds)  # noqa: E731
    precision, why = speed.choose_precision("auto", torch.device("cpu"), work, repeats=3)
    assert precision == expected and "avx512_bf16" in why and "x fp32's speed" in why


@pytest.mark.parametrize("native, before, expected", [(True, "bf16", "bf16"), (False, "bf16", "fp32"),
                                                      (True, "fp32", "fp32")])
def test_a_resumed_auto_run_keeps_its_precision_where_it_can(monkeypatch, native, before, expected):
    """--resume with auto: the run goes on in the precision it began with, untimed, unless this machine has no
    native bf16 (a checkpoint moved from a bf16 machine to an AVX2 one trains on in fp32)."""
    monkeypatch.setattr(speed, "native_bf16", lambda device: (native, "here"))
    calls = []
    precision, why = speed.choose_precision("auto", torch.device("cpu"), calls.append, before=before)
    assert precision == expected and calls == []
    assert ("as the run began" in why) == (expected == before)


def test_a_bf16_training_step_matches_fp32_to_bf16_accuracy():
    """The same batch, noise and weights: the bf16 autocast loss is fp32's within bf16's ~3 significant digits."""
    from bench.step import train_step
    losses = {}
    for precision in ("fp32", "bf16"):
        model = DDPM(tiny_net(), linear_beta_schedule(20))
        opt = torch.optim.Adam(model.eps_model.parameters(), lr=1e-3)
        torch.manual_seed(1)
        losses[precision] = train_step(model, opt, None, torch.rand(4, 1, 8, 8) * 2 - 1, 1, 1e-3, 0,
                                       precision=precision).item()
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


@pytest.mark.parametrize("process", ["DDPM", "COND"])
def test_the_ranks_loss_shares_add_up_to_the_batch_loss(process):
    """Data-parallel training (plumbing/run.py, Run.batches): every rank draws t, eps and COND's label drop for
    the whole batch (model.draws, which draws what loss() draws), keeps its rows and weights the mean over them
    by its rows / B, so the shares of 3 ranks (rows 0-2, 3-5, 6-9 of 10) add up to Algorithm 1's mean, with
    min-SNR weights too."""
    net = tiny_net(num_classes=3 if process == "COND" else 0)
    model = (ConditionalDDPM(net, linear_beta_schedule(20), num_classes=3, p_uncond=0.5, min_snr_gamma=5.0)
             if process == "COND" else DDPM(net, linear_beta_schedule(20), min_snr_gamma=5.0))
    x0, cond = torch.rand(10, 1, 8, 8) * 2 - 1, {"y": torch.arange(10) % 3} if process == "COND" else {}
    torch.manual_seed(5)
    whole = model.loss(x0, **cond)
    torch.manual_seed(5)
    draws = model.draws(x0, **cond)
    assert model.loss(x0, **draws, **cond).item() == whole.item()
    shares = []
    for rank in range(3):
        r = rows(10, rank, 3)
        shares.append(model.loss(x0[r], **{k: v[r] for k, v in {**draws, **cond}.items()}) * (r.stop - r.start) / 10)
    assert [rows(10, r, 3) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert sum(shares).item() == pytest.approx(whole.item(), rel=1e-6)


class FakeLoad:
    """SharedCores readings: others keep `others` cores busy over each second, this process none."""

    def __init__(self):
        self.wall, self.busy, self.others = 0.0, 0.0, 0.0

    def __call__(self):
        self.wall += 1.0
        self.busy += self.others
        return self.wall, self.busy, 0.0


def test_threads_give_way_to_other_processes_and_come_back(monkeypatch):
    load = FakeLoad()
    shared = speed.SharedCores(2, every=0.0)
    shared.cpus, shared.reading, shared.last = [0, 1], load, load()
    try:
        assert torch.get_num_threads() == 2
        load.others = 1.0  # another run keeps a core busy
        assert shared.update() is None  # one reading is not enough to change
        assert shared.update() == 1 and torch.get_num_threads() == 1
        load.others = 0.05  # alone again
        assert shared.update() is None and shared.update() == 2 and torch.get_num_threads() == 2
        fixed = speed.SharedCores(2, fixed=True)
        load.others = 2.0
        assert fixed.update() is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(2)


@pytest.mark.parametrize("threads", ["0", "two", "-1"])
def test_bad_threads_are_one_line(tmp_path, capsys, threads):
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", "--threads", threads, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "--threads must be auto, follow or a whole number" in err


def test_a_bf16_run_records_its_precision_and_trains(tmp_path):
    main.main(["DDPM", *TINY, "--epochs", "1", "--precision", "bf16", "--out", str(tmp_path / "r")])
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["precision_used"] == "bf16" and config["precision_why"] == "asked for with --precision"
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


def test_auto_keeps_one_thread_count_however_busy_the_machine(monkeypatch):
    """--threads auto (the default) never changes the count during a run: the same seed gives the same weights."""
    load, before = FakeLoad(), torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(speed.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(speed.SharedCores, "reading", lambda self: load())
    try:
        policy, why = speed.thread_policy("auto")
        assert torch.get_num_threads() == 2 and "kept for the whole run" in why
        load.others = 1.0  # another process keeps a core busy: follow would drop to 1 thread
        assert [policy.update() for _ in range(4)] == [None] * 4 and torch.get_num_threads() == 2
        follow, _ = speed.thread_policy("follow")
        assert [follow.update() for _ in range(2)] == [None, 1] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


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
        assert "1 threads, as the run began (--resume)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "part" / "config.json").read_text())["threads_used"] == 1
    whole, part = (torch.load(tmp_path / d / "model.pth", weights_only=True)["model"] for d in ("whole", "part"))
    assert all(torch.equal(whole[k], part[k]) for k in whole)
