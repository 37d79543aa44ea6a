"""Checkpoints as input: a checkpoint is checked like the command line (settings.py) by
every script that loads one, before anything is allocated, and every failure is one line, exit
code 2. Also the one-line argparse errors of every script and the shared error wrapper."""
import argparse
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anomaly
import main
import metrics
import sample
from bench import bench
from datatypes import DataError, one_line
from plumbing.errors import run_script
from test_hostile_runs import refused

TINY = ["--dataset", "phantom-healthy", "--image-size", "8", "--net", "cnn", "--limit", "32", "--batch-size", "16",
        "--n-T", "20", "--num-samples", "2", "--sample-steps", "2", "--eval-samples", "0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    main.main(["DDPM", *TINY, "--epochs", "1", "--out", str(out)])
    return torch.load(out / "model.pth", weights_only=True)


def one_line_exit_2(capsys, script, argv, fragment=""):
    return refused(capsys, argv, fragment, script=script)


def edited(ckpt: dict, folder: Path, **config) -> str:
    ckpt = {**ckpt, "config": {**ckpt["config"], **config}}
    path = folder / "edited.pth"
    torch.save(ckpt, path)
    return str(path)


def sample_argv(path, folder):
    return [path, "--num-samples", "2", "--steps", "2", "--out", str(Path(folder) / "s.png"), "--device", "cpu"]


def anomaly_argv(path, folder):
    return [path, "--dataset", "phantom-healthy", "--n", "2", "--steps", "2", "--repeats", "1", "--out",
            str(Path(folder) / "a.png"), "--device", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("key, value", [
    ("n_T", 10 ** 9), ("n_T", -5), ("n_T", "20"), ("image_size", -1), ("image_size", 0), ("image_size", 100_000),
    ("unet_widths", [10 ** 6] * 3), ("betas", [0.1]), ("model", "GAN"), ("net", "transformer"),
    ("schedule", "quadratic"), ("sample_steps", 10 ** 6), ("min_snr", float("nan")), ("in_channels", True),
    ("min_snr", 10 ** 400),  # an int too large for a float: once an OverflowError
])
@pytest.mark.parametrize("script", ["sample", "anomaly"])
def test_an_edited_config_is_refused_naming_the_key(checkpoint, tmp_path, capsys, key, value, script):
    path = edited(checkpoint, tmp_path, **{key: value})
    run, argv = (sample.main, sample_argv) if script == "sample" else (anomaly.main, anomaly_argv)
    err = one_line_exit_2(capsys, run, argv(path, tmp_path), f"its config has {key}=")
    assert "edited or damaged" in err


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sample", "anomaly", "resume"])
def test_a_side_the_network_cannot_take_is_one_line(tmp_path, capsys, script):
    """image_size edited to 30, within the bounds but not a side the U-Net (2 levels) can halve twice: a 29- and
    a 55-line traceback in sample.py and anomaly.py, where the checkpoint's config is read."""
    unet = [*TINY, "--net", "unet", "--unet-widths", "8", "8", "8", "--out", str(tmp_path / "run")]
    main.main(["DDPM", *unet, "--epochs", "1"])
    ckpt = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    ckpt["config"]["image_size"] = 30
    torch.save(ckpt, tmp_path / "run" / "model.pth")
    if script == "resume":  # the data are 8 px: the run's own config disagrees with them
        one_line_exit_2(capsys, main.main, ["DDPM", *unet, "--epochs", "2", "--resume"], "image_size=30")
    else:
        run, argv = (sample.main, sample_argv) if script == "sample" else (anomaly.main, anomaly_argv)
        err = one_line_exit_2(capsys, run, argv(str(tmp_path / "run" / "model.pth"), tmp_path),
                              "needs image sides divisible by 4")
        assert "edited or damaged" in err


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sample", "anomaly"])
def test_damaged_weights_are_refused(checkpoint, tmp_path, capsys, script):
    run, argv = (sample.main, sample_argv) if script == "sample" else (anomaly.main, anomaly_argv)
    cases = {"EMA entry has no weights": {**checkpoint, "ema": {"decay": 0.9}},
             "hold NaN or inf": {**checkpoint, "ema": None,
                                 "model": {k: v.clone().fill_(float("nan")) for k, v in checkpoint["model"].items()}},
             "tensors differ from the network its config describes, e.g. `": {
                 **checkpoint, "ema": None, "model": {**checkpoint["model"], "conv_in.weight": torch.zeros(3, 3)}
                 if "conv_in.weight" in checkpoint["model"] else
                 {k: torch.zeros(1) if i == 0 else v for i, (k, v) in enumerate(checkpoint["model"].items())}}}
    for fragment, ckpt in cases.items():
        torch.save(ckpt, tmp_path / "bad.pth")
        one_line_exit_2(capsys, run, argv(str(tmp_path / "bad.pth"), tmp_path), fragment)
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "a.png").exists()


def first_weight(ckpt: dict, make) -> dict:
    """The checkpoint with its first weight tensor replaced by make(tensor)."""
    name = next(iter(ckpt["model"]))
    return {**ckpt, "ema": None, "model": {**ckpt["model"], name: make(ckpt["model"][name])}}


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sample", "anomaly"])
def test_edited_entries_of_a_checkpoint_are_refused(checkpoint, tmp_path, capsys, script):
    """Integer or complex weights loaded; an EMA update count of -5 made the EMA overshoot (a step
    weight of 1.8) and -10 divided by zero; losses saved as strings failed with "too many dimensions 'str'"."""
    run, argv = (sample.main, sample_argv) if script == "sample" else (anomaly.main, anomaly_argv)
    ema = checkpoint["ema"]
    cases = {"torch.int64 values": first_weight(checkpoint, lambda v: v.round().long()),
             "torch.complex64 values": first_weight(checkpoint, lambda v: v.to(torch.complex64)),
             "update count (a whole number, at least 0)": {**checkpoint, "ema": {**ema, "n": -5}},
             "lists of numbers main.py writes": {**checkpoint, "losses": [("1", "1", "0.5")]},
             "lists of numbers main.py writes ": {**checkpoint, "metrics": [{"epoch": 1, "fid": "good"}]}}
    for fragment, ckpt in cases.items():
        torch.save(ckpt, tmp_path / "bad.pth")
        one_line_exit_2(capsys, run, argv(str(tmp_path / "bad.pth"), tmp_path), fragment.strip())
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "a.png").exists()


@pytest.mark.slow
def test_resume_with_other_widths_names_one_tensor_in_one_line(tmp_path, capsys):
    """A shape mismatch is told as "N tensors differ, e.g. `name` (a) vs (b)", not an 85-line diff."""
    args = ["--dataset", "phantom", "--image-size", "8", "--limit", "16", "--batch-size", "16", "--n-T", "10",
            "--num-samples", "2", "--sample-steps", "2", "--eval-samples", "0", "--out", str(tmp_path)]
    main.main(["DDPM", *args, "--unet-widths", "8", "8", "8", "--epochs", "1"])
    ckpt = torch.load(tmp_path / "model.pth", weights_only=True)
    del ckpt["config"]["unet_widths"]  # as in a checkpoint from before --unet-widths existed
    torch.save(ckpt, tmp_path / "model.pth")
    err = one_line_exit_2(capsys, main.main, ["DDPM", *args, "--unet-widths", "8", "16", "16", "--epochs", "2",
                                              "--resume"], "tensors differ")
    assert ", e.g. `" in err and ") vs (" in err


CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12), st.integers(0, 40),
                          st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                          st.lists(st.integers(-3, 10 ** 7), max_size=4), st.sampled_from(["DDGM", "COND", "cosine",
                                                                                          "ddpm", "unet", "mask"]))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_checkpoint_configs_give_one_line_or_a_correct_run(checkpoint, capsys, data):
    """Any config value, through sample.py and anomaly.py: a correct run (its figure written) or one
    line and exit code 2, never a traceback."""
    key = data.draw(st.sampled_from(sorted(checkpoint["config"])), label="key")
    value = data.draw(CONFIG_VALUES, label="value")
    script = data.draw(st.sampled_from(["sample", "anomaly"]), label="script")
    with tempfile.TemporaryDirectory() as folder:
        path = edited(checkpoint, Path(folder), **{key: value})
        run, argv = (sample.main, sample_argv) if script == "sample" else (anomaly.main, anomaly_argv)
        capsys.readouterr()
        try:
            run(argv(path, folder))
        except SystemExit as e:
            err = capsys.readouterr().err
            assert e.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        else:
            assert (Path(folder) / ("s.png" if script == "sample" else "a.png")).exists()


@pytest.mark.parametrize("script, argv", [
    (sample.main, ["model.pth", "--bogus"]), (sample.main, []), (metrics.main, ["x.npz"]),
    (bench.main, ["--steps", "many"]), (anomaly.main, ["ckpt", "--t-lambda"]), (main.main, ["DDPM", "--seed", "x"]),
])
def test_argument_errors_of_every_script_are_one_line(capsys, script, argv):
    err = one_line_exit_2(capsys, script, argv, "error:")
    assert "usage:" not in err


def test_sample_bounds_guidance_as_main_does(capsys):
    """sample.py --guidance 1e308 said "this checkpoint's network diverged"; main.py bounds guidance to 0..100."""
    one_line_exit_2(capsys, sample.main, ["model.pth", "--guidance", "1e308"], "--guidance must be a finite number")


@pytest.mark.parametrize("script, argv", [
    (main.main, ["DDPM", "--seed", str(2 ** 70)]), (sample.main, ["model.pth", "--seed", str(2 ** 70)]),
    (anomaly.main, ["model.pth", "--seed", "-1"]), (bench.main, ["--seed", str(2 ** 64)]),
])
def test_an_overflowing_seed_is_named(capsys, script, argv):
    one_line_exit_2(capsys, script, argv, "--seed must lie in 0..")


def test_min_snr_too_small_to_train_is_refused(capsys):
    one_line_exit_2(capsys, main.main, ["DDPM", "--min-snr", "1e-300"], "--min-snr must lie in 0 (off) or 0.01")


def test_warnings_do_not_add_lines_to_an_error(capsys):
    """A library warning before the failure: stderr still holds the error line alone."""
    def work(_):
        warnings.warn("a torch warning\nover two lines", stacklevel=1)
        raise DataError("the real problem")
    p = argparse.ArgumentParser(prog="x.py")
    with pytest.raises(SystemExit) as e:
        run_script(p, work, None)
    assert e.value.code == 2 and capsys.readouterr().err == "x.py: error: the real problem\n"


def test_warnings_of_a_good_run_become_one_note_each(capsys):
    def work(_):
        for _ in range(3):
            warnings.warn("the same warning\nover two lines", stacklevel=1)
    run_script(argparse.ArgumentParser(prog="x.py"), work, None)
    assert capsys.readouterr().err == "x.py: note: the same warning over two lines\n"


def test_a_file_left_open_elsewhere_adds_no_note(capsys, tmp_path):
    """A ResourceWarning (hidden by Python's defaults) raised while the script runs, e.g. when the garbage
    collector closes a file some earlier caller left open, is not the script's news."""
    (tmp_path / "f").write_bytes(b"x")

    def work(_):
        open(tmp_path / "f", "rb")  # never closed: CPython closes it here, with a ResourceWarning
    run_script(argparse.ArgumentParser(prog="x.py"), work, None)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                                                 "tried to allocate 9e12 bytes"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")])
def test_running_out_of_memory_is_one_line_naming_what_to_lower(capsys, error):
    def work(_):
        raise error
    with pytest.raises(SystemExit) as ended:
        run_script(argparse.ArgumentParser(prog="x.py"), work, None, memory="lower --batch-size")
    assert ended.value.code == 2
    assert capsys.readouterr().err == "x.py: error: out of memory: lower --batch-size\n"


def test_any_other_runtime_error_keeps_its_traceback():
    def work(_):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")  # a bug, not bad input
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run_script(argparse.ArgumentParser(prog="x.py"), work, None)


def test_long_causes_are_cut_at_a_word_never_inside_one():
    cause = "Error downloading train-images-idx3-ubyte.gz: Tried http://yann.lecun.com/exdb/mnist/, got error"
    cut = one_line(cause, 70)
    assert cut.endswith(" ...") and cause.startswith(cut[:-4]) and cause[len(cut) - 4] == " "
    assert one_line("short\ntext", 70) == "short text"
