"""Run folders and writes, as a user or an attacker may leave them: a folder belongs to its run (manifest),
--overwrite removes exactly that run's files, a lock keeps out a second writer, no tool writes over its own input
or over a file it did not write there, an epoch is saved all or nothing (a full disk or a Ctrl-C at any point
leaves the last finished epoch intact, and the message says which), and torchrun's processes agree or stop in
one line."""
import argparse
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from plumbing import run
from plumbing.errors import run_script
from plumbing.progress import Progress

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "shapes", "--net", "cnn", "--limit", "64", "--batch-size", "32", "--n-T", "20",
        "--num-samples", "4", "--sample-steps", "5", "--eval-samples", "0"]


def refused(capsys, argv, fragment, script=main.main):
    """script(argv) ends with exit code 2 and exactly one stderr line containing fragment."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        script(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err and fragment in err, err
    return err


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_folder_of_user_files_is_refused_and_left_untouched(tmp_path, capsys):
    """The user's own config.json, loss.csv, ... in --out: not a run of ours, so nothing is written."""
    for name in ("config.json", "loss.csv", "metrics.csv", "schedules.png", "image_ep001.png"):
        (tmp_path / name).write_text(f"the user's own {name}")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path), *extra], "main.py did not write")
    assert snapshot(tmp_path) == before


def test_a_text_file_named_model_pth_is_not_a_run(tmp_path, capsys):
    (tmp_path / "model.pth").write_text("my notes")
    (tmp_path / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path), "--overwrite"], "main.py did not write")
    assert snapshot(tmp_path) == before


def test_overwrite_removes_exactly_the_runs_files(tmp_path):
    """A 2-epoch run, then the user's files beside it, then --overwrite with 1 epoch: the old run's
    image_ep002.png is gone, the user's files (whatever their names) are untouched."""
    main.main(["DDPM", *TINY, "--epochs", "2", "--out", str(tmp_path)])
    mine = {"image_ep_holiday.jpg": b"photo", "guidance_whatever.txt": b"notes", "image_ep003.png.bak": b"x"}
    for name, content in mine.items():
        (tmp_path / name).write_bytes(content)
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path), "--overwrite"])
    assert all((tmp_path / n).read_bytes() == c for n, c in mine.items())
    assert not (tmp_path / "image_ep002.png").exists() and (tmp_path / "image_ep001.png").exists()
    assert torch.load(tmp_path / "model.pth", weights_only=True)["epoch"] == 1


def test_a_manifest_cannot_make_overwrite_delete_other_files(tmp_path, capsys):
    """run.json naming a file outside the run's names (../victim) is refused, not obeyed."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(out)])
    (out / "run.json").write_text('{"files": ["model.pth", "../victim.txt"]}')
    refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(out), "--overwrite"], "not a main.py manifest")
    assert victim.read_text() == "keep me" and (out / "model.pth").exists()


def test_a_second_process_cannot_write_a_locked_folder(tmp_path):
    """Two real runs into one --out a moment apart, the second even with --overwrite: it stops in one
    line naming the first's process, and removes nothing."""
    out = tmp_path / "out"
    args = [sys.executable, "main.py", "DDPM", *TINY, "--epochs", "200", "--out", str(out)]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "config.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        second = subprocess.run([*args[:-4], "--epochs", "1", "--out", str(out), "--overwrite"], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"process {first.pid}" in second.stderr and "is writing" in second.stderr
        assert (out / "config.json").exists()
    finally:
        first.kill()
        first.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    """The kernel drops an fcntl lock when its process dies: the lock file of a dead process blocks
    nothing, and the run says it took it over."""
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / run.LOCK).write_text(f"{dead.pid}\n")
    capsys.readouterr()
    main.main(["DDPM", *TINY, "--epochs", "2", "--out", str(tmp_path), "--resume"])
    assert f"left by process {dead.pid}" in capsys.readouterr().out
    assert not (tmp_path / run.LOCK).exists()


def test_a_run_that_fails_to_start_leaves_no_folder(tmp_path, capsys):
    refused(capsys, ["DDPM", "--dataset", "folder", "--data-dir", str(tmp_path / "none"), "--out",
                     str(tmp_path / "out")], "no images/ folder")
    assert not (tmp_path / "out").exists()


# --- all or nothing: a failure while saving an epoch keeps the last finished one ---

def fail_on_save(monkeypatch, epoch: int, error: Exception):
    """The checkpoint of `epoch` fails half way through its write with `error`."""
    real = run.save_tensors

    def save(state, path):
        if state["epoch"] == epoch:
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            raise error
        return real(state, path)
    monkeypatch.setattr(run, "save_tensors", save)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), OSError(122, "Disk quota exceeded")])
def test_disk_full_while_saving_keeps_the_last_finished_epoch(tmp_path, capsys, monkeypatch, error):
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    before = snapshot(tmp_path)
    fail_on_save(monkeypatch, 2, error)
    err = refused(capsys, ["DDPM", *TINY, "--epochs", "2", "--out", str(tmp_path), "--resume"],
                  "could not write the files of epoch 2")
    assert "The last finished epoch, 1, is in" in err
    after = snapshot(tmp_path)
    del before["config.json"], after["config.json"]  # config.json says --epochs 2 from the start of the run
    assert after == before  # loss.csv, metrics.csv, the grids, the checkpoint: all still epoch 1
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
    monkeypatch.undo()
    main.main(["DDPM", *TINY, "--epochs", "2", "--out", str(tmp_path), "--resume"])
    assert (tmp_path / "image_ep002.png").exists()


def test_disk_full_in_the_first_epoch_says_no_epoch_has_finished(tmp_path, capsys, monkeypatch):
    fail_on_save(monkeypatch, 1, OSError(28, "No space left on device"))
    err = refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)], "No epoch has finished yet")
    assert "--resume" not in err and not (tmp_path / "model.pth").exists()


def test_a_bug_while_saving_keeps_its_traceback_and_leaves_no_staged_file(tmp_path, monkeypatch):
    """Only failed writes are one line: a writer that raises anything else is a bug, raised as it is (a
    traceback to report), and the files staged before it are removed, not left as .tmp files."""
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    before = snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise KeyError("fid_real")
    monkeypatch.setattr(main, "save_loss_curve", broken)
    with pytest.raises(KeyError):
        main.main(["DDPM", *TINY, "--epochs", "2", "--out", str(tmp_path), "--resume"])
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
    after = snapshot(tmp_path)
    for name in ("config.json", "run.json"):  # the run's config, and the manifest of the names it may write
        del before[name], after[name]
    assert after == before


@pytest.fixture
def full_disk(tmp_path, request):
    """A small tmpfs (4 MB, or the size the test passes), mounted where this machine lets the tests mount one
    (Linux, as root)."""
    folder = tmp_path / "FULL"
    folder.mkdir()
    size = getattr(request, "param", "4m")
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs Linux and root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_really_full_disk_is_one_line_and_keeps_the_last_epoch(full_disk):
    """A 4 MB disk fills during epoch 2 (each checkpoint is 2.5 MB). One line, exit 2,
    the first epoch's files intact, nothing staged left behind: decided by the failed write, not by a message."""
    r = subprocess.run([sys.executable, "main.py", "DDPM", "--dataset", "shapes", "--limit", "128", "--epochs", "6",
                        "--n-T", "20", "--num-samples", "16", "--eval-samples", "0", "--precision", "fp32",
                        "--out", str(full_disk / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "No space left on device" in r.stderr and "The last finished epoch, 1, is in" in r.stderr
    assert not [n for n in os.listdir(full_disk / "run") if ".tmp" in n]
    assert torch.load(full_disk / "run" / "model.pth", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("full_disk", ["150k", "300k", "1m", "2200k", "2400k"], indirect=True)
def test_a_disk_full_at_any_point_of_a_run_is_one_line_and_leaves_no_staged_file(full_disk):
    """Disks of 150k to 2400k fill at the run's start, in its first or in a later save."""
    r = subprocess.run([sys.executable, "main.py", "DDPM", "--dataset", "shapes", "--limit", "128", "--epochs", "3",
                        "--n-T", "20", "--num-samples", "16", "--eval-samples", "0", "--precision", "fp32",
                        "--out", str(full_disk / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "No space left on device" in r.stderr
    assert not [n for n in os.listdir(full_disk / "run") if ".tmp" in n] if (full_disk / "run").exists() else True


def test_divergence_in_the_first_epoch_says_no_epoch_has_finished(tmp_path, capsys):
    err = refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path), "--lr", "1", "--warmup", "0",
                           "--min-snr", "0"], "training diverged")
    assert "No epoch has finished yet" in err and "model.pth; continue" not in err


# --- no tool writes over its own input ---

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(out)])
    return out


def test_sample_never_writes_over_its_checkpoint(run_dir, capsys):
    import sample
    ckpt = run_dir / "model.pth"
    before = ckpt.read_bytes()
    refused(capsys, [str(ckpt), "--out", str(ckpt)], "must end in .png", script=sample.main)
    disguised = run_dir / "weights.npz"  # a checkpoint named like sample.py's own .npz output
    disguised.write_bytes(before)
    refused(capsys, [str(disguised), "--out", str(run_dir / "weights.png")], "is one of this command's inputs",
            script=sample.main)
    assert ckpt.read_bytes() == before and disguised.read_bytes() == before
    disguised.unlink()


def test_sample_checks_out_before_drawing(run_dir, capsys):
    import sample
    err = refused(capsys, [str(run_dir / "model.pth"), "--out", str(run_dir / "no" / "such" / "x.png")],
                  "does not exist or cannot be written", script=sample.main)
    assert "samples from" not in capsys.readouterr().out + err


def test_anomaly_never_writes_over_its_checkpoint(run_dir, capsys):
    import anomaly
    ckpt = run_dir / "model.pth"
    before = ckpt.read_bytes()
    refused(capsys, [str(ckpt), "--out", str(ckpt)], "must end in .png", script=anomaly.main)
    assert ckpt.read_bytes() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_ctrl_c_says_which_epoch_the_checkpoint_holds(tmp_path):
    """Ctrl-C (SIGINT) once an epoch is saved: exit code 130 and one line naming the epoch in model.pth."""
    p = subprocess.Popen([sys.executable, "main.py", "DDPM", *TINY, "--epochs", "1000", "--out", str(tmp_path)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (tmp_path / "model.pth").exists() and p.poll() is None:
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)  # once: a Ctrl-C must never need a second press
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:  # never leave a training run behind, whatever failed
            p.kill()
            p.wait()
    epoch = torch.load(tmp_path / "model.pth", weights_only=True)["epoch"]
    assert p.returncode == 130 and err.strip().splitlines() == [
        f"interrupted. The last finished epoch, {epoch}, is in {tmp_path}/model.pth; continue with --resume"]


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="needs signal.raise_signal")
def test_a_ctrl_c_that_lands_in_garbage_collection_still_ends_the_work(capsys):
    """Python cannot raise a KeyboardInterrupt inside a weakref callback: it printed "Exception ignored in ..."
    with a traceback and the run trained on. It ends the work at the next progress step."""
    steps = []

    def work(_):
        thing = type("Thing", (), {})()
        ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))  # Ctrl-C during its collection
        del thing
        for i in Progress(1000, "work", show=False).wrap(range(1000)):
            steps.append(i)
        return ref

    with pytest.raises(SystemExit) as e:
        run_script(argparse.ArgumentParser(prog="x.py"), work, None)
    assert e.value.code == 130 and capsys.readouterr().err == "\ninterrupted\n" and len(steps) == 1


# --- torchrun's environment, as a user may leave it --------------------------------------------------

@pytest.mark.parametrize("rank, size", [("1", "1"), ("5", "2"), ("0", "0"), ("0", "x"), ("2", None), (None, "2")])
def test_rank_and_world_size_of_no_torchrun_process_are_refused_at_once(tmp_path, capsys, monkeypatch, rank, size):
    """RANK=1 WORLD_SIZE=1 trained unseen and wrote nothing (exit 0); RANK=5 WORLD_SIZE=2 waited for ranks that
    never come; WORLD_SIZE=0 failed with "Default process group has not been initialized"."""
    for name, value in (("RANK", rank), ("WORLD_SIZE", size)):
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")], "is no torchrun process")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo's rendezvous, tested on Linux")
def test_a_rank_that_never_comes_ends_the_wait_in_one_line(tmp_path, capsys, monkeypatch):
    """RANK=0 WORLD_SIZE=2 alone waited an hour for rank 1; the wait is bounded (here 3 s) and said."""
    import datetime
    import socket


    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(run, "RENDEZVOUS", datetime.timedelta(seconds=3))
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")], "rank 1 never came")
    assert time.monotonic() - start < 60 and not (tmp_path / "r" / "model.pth").exists()


# --- a run folder's files, as a user or a killed run may leave them --------------------------------

def test_resume_never_writes_over_a_users_file_named_like_the_runs(tmp_path, capsys):
    """cp mine.png RUN/image_ep002.png, then --resume --epochs 2: the user's file was overwritten. A name that
    is not in the manifest is not the run's, however it looks: refused before training, the file kept."""
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    (tmp_path / "image_ep002.png").write_bytes(b"my own picture")
    refused(capsys, ["DDPM", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path)],
            "is not in its manifest (run.json)")
    assert (tmp_path / "image_ep002.png").read_bytes() == b"my own picture"
    assert torch.load(tmp_path / "model.pth", weights_only=True)["epoch"] == 1


def test_a_file_that_appears_during_the_run_is_not_written_over(tmp_path, capsys, monkeypatch):
    """The same name put into the folder while the run trains: the epoch's save refuses, the file stays."""
    real = run.Run.path

    def planting(self, name):
        if name == "image_ep001.png" and name not in self.files:
            (tmp_path / name).write_bytes(b"mine")
        return real(self, name)
    monkeypatch.setattr(run.Run, "path", planting)
    refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)], "appeared during the run")
    assert (tmp_path / "image_ep001.png").read_bytes() == b"mine"
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_a_hard_linked_lock_is_refused_and_the_other_file_kept(tmp_path, capsys):
    """ln victim.txt RUN/.main.lock: the PID was written into victim.txt."""
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")])
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's notes\n")
    os.link(victim, tmp_path / "run" / ".main.lock")
    refused(capsys, ["DDPM", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path / "run")], "is a hard link")
    assert victim.read_text() == "the user's notes\n"


def test_a_deeply_nested_manifest_is_one_line(tmp_path, capsys):
    (tmp_path / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(capsys, ["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)], "is not a main.py manifest")


def test_staging_files_left_by_a_killed_save_are_removed_when_the_run_starts(tmp_path, capsys):
    """SIGKILL during a save left .model.pth.XXXXXXXX.tmp.pth (1.9 MB) that nothing removed; a user's hidden
    file of another name stays."""
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    stale = [".model.pth.ab12cd34.tmp.pth", ".image_ep002.png.x_y_z_01.tmp.png", ".run.json.q1w2e3r4.tmp.json"]
    for name in stale:
        (tmp_path / name).write_bytes(b"half a file")
    (tmp_path / ".my_notes.tmp").write_bytes(b"mine")
    capsys.readouterr()
    main.main(["DDPM", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path)])
    assert "removed 3 staging files" in capsys.readouterr().out
    assert not any((tmp_path / n).exists() for n in stale) and (tmp_path / ".my_notes.tmp").read_bytes() == b"mine"


@pytest.mark.parametrize("edit, fragment", [
    (lambda c: c["ema"].update(n=-10), "update count (a whole number, at least 0)"),
    (lambda c: c["metrics"][0].update(fid=12.5), None),  # a fid without fid_real: the curve leaves a gap
])
def test_resume_from_edited_checkpoints_is_one_line_or_works_and_leaves_no_staged_file(tmp_path, capsys, edit,
                                                                                        fragment):
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    ckpt = torch.load(tmp_path / "model.pth", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "model.pth")
    argv = ["DDPM", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path)]
    if fragment:
        refused(capsys, argv, fragment)
    else:
        main.main(argv)
        assert torch.load(tmp_path / "model.pth", weights_only=True)["epoch"] == 2
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


# --- sample.py writes beside --out only what it may replace ------------------------------------------

def hashes(folder: Path) -> dict:
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sample_never_replaces_a_users_file_beside_out(run_dir, tmp_path, capsys):
    """--out DIR/pneumoniamnist.png replaced DIR/pneumoniamnist.npz, the dataset: a file beside --out that this
    project did not write (.npz, _reverse.png, the PNG itself) is refused; its own earlier output is replaced."""
    import sample
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"the dataset")
    (tmp_path / "mine_reverse.png").write_bytes(b"a figure of mine")
    (tmp_path / "photo.png").write_bytes(b"my photo")
    before = hashes(tmp_path)
    base = [str(run_dir / "model.pth"), "--num-samples", "2", "--steps", "2"]
    for out, extra in (("pneumoniamnist.png", []), ("mine.png", ["--reverse"]), ("photo.png", [])):
        refused(capsys, [*base, *extra, "--out", str(tmp_path / out)], "is not an output this project wrote there",
                script=sample.main)
    assert hashes(tmp_path) == before
    for _ in range(2):  # its own output, twice: the second run replaces the first
        sample.main([*base, "--out", str(tmp_path / "s.png")])
    assert {"s.png", "s.npz"} <= set(os.listdir(tmp_path))


def test_sample_never_writes_into_the_masks_it_draws_for(tmp_path, capsys):
    """sample.py COND_RUN/model.pth --out DATA/masks/997.png replaced a held-out mask that the same command
    reads (and dropped 997.npz beside it)."""
    from PIL import Image

    import sample
    rng = np.random.default_rng(0)
    for i in range(12):
        for sub, a in (("images", rng.integers(0, 255, (16, 16))), ("masks", (rng.random((16, 16)) > 0.7) * 255)):
            (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a.astype(np.uint8)).save(tmp_path / "data" / sub / f"{990 + i}.png")
    main.main(["COND", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--image-size", "16", "--net",
               "cnn", "--n-T", "20", "--epochs", "1", "--num-samples", "2", "--sample-steps", "2", "--eval-samples",
               "0", "--out", str(tmp_path / "run")])
    before = hashes(tmp_path / "data")
    refused(capsys, [str(tmp_path / "run" / "model.pth"), "--num-samples", "2", "--steps", "2", "--out",
                     str(tmp_path / "data" / "masks" / "1001.png")], "it may be your data", script=sample.main)
    assert hashes(tmp_path / "data") == before


def test_sample_names_the_missing_checkpoint_not_the_out_folder(tmp_path, capsys):
    import sample
    refused(capsys, [str(tmp_path / "nonexistent" / "model.pth")], "no checkpoint at", script=sample.main)


def test_nifti_onto_a_dangling_link_is_refused_before_anything_is_written(tmp_path, capsys):
    """--nifti onto a dangling symlink named a temporary folder, after writing the .png, .npz and _slices.png."""
    import sample
    main.main(["DDPM", "--dataset", "phantom3d", "--image-size", "8", "--unet-widths", "4", "8", "--limit", "16",
               "--batch-size", "8", "--n-T", "10", "--epochs", "1", "--num-samples", "2", "--sample-steps", "2",
               "--eval-samples", "0", "--out", str(tmp_path / "run")])
    os.symlink(tmp_path / "nowhere", tmp_path / "v_nifti")
    pytest.importorskip("nibabel")
    refused(capsys, [str(tmp_path / "run" / "model.pth"), "--num-samples", "2", "--steps", "2", "--nifti", "--out",
                     str(tmp_path / "v.png")], "v_nifti, which exists", script=sample.main)
    assert sorted(os.listdir(tmp_path)) == ["run", "v_nifti"]


# --- marks prove what a script wrote where; only regular files are read or replaced ---------------------

def test_an_npz_with_someone_elses_mark_is_never_replaced(run_dir, tmp_path, capsys):
    """np.savez(user.npz, ..., written_by='alice'): the check looked for the key, not its value; a mark of this
    project naming another path (a copy) is not this output's either."""
    import sample
    np.savez(tmp_path / "user.npz", data=np.zeros(3), written_by="alice")
    sample.main([str(run_dir / "model.pth"), "--num-samples", "2", "--out", str(tmp_path / "mine.png")])
    os.rename(tmp_path / "mine.npz", tmp_path / "moved.npz")  # our mark, written for another path
    before = hashes(tmp_path)
    for out in ("user.png", "moved.png"):
        refused(capsys, [str(run_dir / "model.pth"), "--num-samples", "2", "--out", str(tmp_path / out)],
                "is not an output this project wrote there", script=sample.main)
    assert hashes(tmp_path) == before


def test_a_mark_that_would_inflate_is_never_read(run_dir, tmp_path, capsys):
    """A 261 KB .npz at the output path whose written_by.npy inflates to 256 MB: checking its mark allocated all of
    it (a larger one ends the process). A mark is a path, under 64 KB: a larger entry is no mark, and unread."""
    import tracemalloc
    import zipfile

    import sample
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z, \
            z.open("written_by.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.zeros(2 ** 28, np.uint8))
    before = hashes(tmp_path)
    tracemalloc.start()
    refused(capsys, [str(run_dir / "model.pth"), "--num-samples", "2", "--out", str(tmp_path / "bomb.png")],
            "is not an output this project wrote there", script=sample.main)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 ** 26 and hashes(tmp_path) == before  # 64 MB: the model and the checks, not the 256 MB


def test_a_copy_of_a_grid_is_the_users_and_the_original_stays_the_scripts(run_dir, tmp_path, capsys):
    """A sample grid copied as thesis_fig.png and named as --out was replaced: a mark says which path it was
    written for, so the copy is the user's; the original at its own path is still replaced by a second run."""
    import shutil

    import sample
    argv = [str(run_dir / "model.pth"), "--num-samples", "2", "--out"]
    sample.main([*argv, str(tmp_path / "grid.png")])
    shutil.copy(tmp_path / "grid.png", tmp_path / "thesis_fig.png")
    before = (tmp_path / "thesis_fig.png").read_bytes()
    refused(capsys, [*argv, str(tmp_path / "thesis_fig.png")], "is not an output this project wrote there",
            script=sample.main)
    assert (tmp_path / "thesis_fig.png").read_bytes() == before
    sample.main([*argv, str(tmp_path / "grid.png")])


def test_a_file_that_appears_while_sampling_is_kept(run_dir, tmp_path, capsys, monkeypatch):
    """Outputs were checked once before sampling, never at the write: a file put there meanwhile was replaced."""
    import sample
    real = sample.draw

    def planting(*args, **kwargs):
        (tmp_path / "r.npz").write_text("precious")
        return real(*args, **kwargs)
    monkeypatch.setattr(sample, "draw", planting)
    refused(capsys, [str(run_dir / "model.pth"), "--num-samples", "2", "--out", str(tmp_path / "r.png")],
            "appeared while this command ran", script=sample.main)
    assert (tmp_path / "r.npz").read_text() == "precious" and not [n for n in os.listdir(tmp_path) if ".tmp" in n]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("where", ["out", "npz", "image"])
def test_a_fifo_is_refused_and_never_blocks(run_dir, tmp_path, where):
    """mkfifo out.png (or out.npz, or a FIFO among a folder's images) blocked forever: only regular files are
    read or replaced. Each script runs in its own process with a deadline, so that a hang fails the test."""
    from PIL import Image
    if where == "image":
        (tmp_path / "data" / "images").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(tmp_path / "data" / "images" / f"{i}.png")
        os.mkfifo(tmp_path / "data" / "images" / "4.png")
        argv = ["main.py", "DDPM", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--image-size", "8",
                *TINY[2:], "--epochs", "1", "--out", str(tmp_path / "run")]
    else:
        os.mkfifo(tmp_path / ("out.png" if where == "out" else "out.npz"))
        argv = ["sample.py", str(run_dir / "model.pth"), "--num-samples", "2", "--out", str(tmp_path / "out.png")]
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert ("not a regular file" if where == "image" else "is not an output this project wrote there") in done.stderr


def test_ship_never_writes_through_a_link_or_to_a_name_that_is_no_file(run_dir, tmp_path, capsys):
    """A dangling link at the destination was replaced by a file; "new.pth/" and "" said "free some space" and left
    a 669 KB staged file behind."""
    from plumbing import ship
    os.symlink(tmp_path / "nowhere.pth", tmp_path / "link.pth")
    for out, fragment in ((tmp_path / "link.pth", "exists"), (f"{tmp_path}/new.pth/", "is not a file name"),
                          ("", "is not a file name")):
        refused(capsys, [str(run_dir / "model.pth"), str(out)], fragment, script=ship.main)
    assert os.path.islink(tmp_path / "link.pth") and os.listdir(tmp_path) == ["link.pth"]


# --- Ctrl-C at any point of the save, in any thread; a second one during the lock's release ------------

@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_ctrl_c_delivered_to_another_thread_during_the_save_waits_for_the_renames(tmp_path, capsys, monkeypatch):
    """Once torch runs threads of its own, SIGINT may be delivered to any of them: one sent after the first rename
    of epoch 2 left model.pth at epoch 2, metrics.csv at epoch 1, staged files, and a message saying epoch 1."""
    import threading

    from plumbing import files
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    other = threading.Thread(target=time.sleep, args=(30,), daemon=True)
    other.start()
    renames, real = [], files.os.replace

    def replace(src, dst):
        real(src, dst)
        renames.append(dst)
        if str(dst).endswith("model.pth") and len([r for r in renames if str(r).endswith("model.pth")]) == 1:
            signal.pthread_kill(other.ident, signal.SIGINT)  # after the first rename of epoch 2's save
    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", *TINY, "--epochs", "3", "--out", str(tmp_path), "--resume"])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 130 and err == f"interrupted. The last finished epoch, 2, is in {tmp_path}/model.pth; " \
        "continue with --resume"
    assert torch.load(tmp_path / "model.pth", weights_only=True)["epoch"] == 2
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3 and (tmp_path / "image_ep002.png").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_a_second_ctrl_c_during_the_locks_release_keeps_the_message_and_frees_the_lock(tmp_path, capsys, monkeypatch):
    """A second Ctrl-C while the lock was released shrank the message to "interrupted" and left .main.lock."""
    real_save, real_release = run.Run.save_epoch, run.Run.release

    def save_then_press(self, epoch, *args, **kwargs):
        real_save(self, epoch, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C once the first epoch is saved

    def press_again(self):
        signal.raise_signal(signal.SIGINT)
        real_release(self)
    monkeypatch.setattr(run.Run, "save_epoch", save_then_press)
    monkeypatch.setattr(run.Run, "release", press_again)
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", *TINY, "--epochs", "3", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 130 and err.startswith("interrupted. The last finished epoch, 1, is in")
    assert not (tmp_path / run.LOCK).exists()


# --- a run keeps its own data and recipe --------------------------------------------------------------

def image_folder(folder: Path, n: int, seed: int) -> Path:
    from PIL import Image
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
    return folder


def test_resume_with_other_data_is_refused(tmp_path, capsys):
    """--resume --data-dir OTHER (as many images, other pixels) trained on in silence: the run records its data's
    name, count and fingerprint (data_id)."""
    argv = ["DDPM", "--dataset", "folder", "--image-size", "8", *TINY[2:], "--out", str(tmp_path / "run")]
    main.main([*argv, "--data-dir", str(image_folder(tmp_path / "a", 12, 0)), "--epochs", "1"])
    refused(capsys, [*argv, "--data-dir", str(image_folder(tmp_path / "b", 12, 1)), "--epochs", "2", "--resume"],
            "was trained with data_id=")


def test_a_resumed_run_draws_with_its_own_sampler_and_every_row_says_which(tmp_path, monkeypatch):
    """After the default sampler changed in the source, epoch 2 of a resumed run was drawn by the new one."""
    import csv

    from ddpm import DDPM
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(tmp_path)])
    monkeypatch.setattr(DDPM, "samplers", ("euler", "ddim", "ddpm"))  # today's code: another default
    main.main(["DDPM", *TINY, "--epochs", "2", "--out", str(tmp_path), "--resume"])
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["sampler"] for r in rows] == ["ddim", "ddim"] and [r["sample_steps"] for r in rows] == ["5", "5"]


def test_resume_from_shipped_weights_says_so(run_dir, tmp_path, capsys):
    """A run's model.pth replaced by its shipped weights: --resume blamed the optimiser options."""
    import shutil

    from plumbing import ship
    shutil.copytree(run_dir, tmp_path / "run")
    os.remove(tmp_path / "run" / "model.pth")
    ship.main([str(run_dir / "model.pth"), str(tmp_path / "run" / "model.pth")])
    refused(capsys, ["DDPM", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path / "run")],
            "holds shipped weights")


# --- torchrun's processes agree on their data, and a lost one ends the others in one line -------------

def ranks(per_rank: list, kill_rank_1_once: Path | None = None) -> list:
    """Two processes of one run, started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), each with
    its own arguments; rank 1 is killed once the file kill_rank_1_once exists. [(exit code, stderr)] per rank."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "main.py", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
             for r, argv in enumerate(per_rank)]
    try:
        deadline = time.time() + 240
        while kill_rank_1_once is not None and not kill_rank_1_once.exists() and time.time() < deadline:
            time.sleep(0.2)
        if kill_rank_1_once is not None:
            procs[1].kill()
        errors = [p.communicate(timeout=240)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errors)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo's rendezvous, tested on Linux")
@pytest.mark.parametrize("counts", [(12, 12), (12, 16)], ids=["same count", "other count"])
def test_processes_with_other_data_stop_before_the_first_step(tmp_path, counts):
    """Rank 0 and rank 1 on other images of the same count trained on with exit 0; on other counts rank 0
    printed 21 lines and rank 1 aborted in C++ (rc 134). Both now stop at once, one line each."""
    folders = [image_folder(tmp_path / f"d{r}", n, r) for r, n in enumerate(counts)]
    argv = lambda r: ["DDPM", "--dataset", "folder", "--data-dir", str(folders[r]), "--image-size", "8",  # noqa: E731
                      *TINY[2:], "--epochs", "1", "--out", str(tmp_path / "run")]
    for code, err in ranks([argv(0), argv(1)]):
        assert code == 2 and err.count("\n") == 1 and "holds other data or settings than rank 0" in err, err
    assert not (tmp_path / "run" / "model.pth").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo's rendezvous, tested on Linux")
def test_a_lost_process_ends_the_other_in_one_line_naming_it(tmp_path):
    """One process killed mid-run: rank 0 printed about 60 lines of gloo. It now ends in one line that names the
    lost rank and where the run stands; the folder holds its last finished epoch."""
    argv = ["DDPM", *TINY, "--limit", "256", "--batch-size", "16", "--epochs", "500", "--out", str(tmp_path / "run")]
    (code, err), _ = ranks([argv, argv], kill_rank_1_once=tmp_path / "run" / "model.pth")
    assert code == 2 and err.count("\n") == 1 and "rank 1 of this torchrun stopped" in err, err
    assert torch.load(tmp_path / "run" / "model.pth", weights_only=True)["epoch"] >= 1
