"""The README's "How to extend", done as a student does it: every code block of that section is pasted, exactly
as it stands in the README, into the file its sentence names ("Append to `ddpm.py`:", "Save as `huber.py`:") in a
copy of the repository, and main.py, sample.py --reverse and anomaly.py then run there as separate processes on
the new names. A name added to a registry's dict literal is tried the same way. If a recipe goes stale, or a way
of registering stops working, these tests fail."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--limit", "32", "--batch-size", "16", "--n-T", "10", "--num-samples", "2", "--sample-steps", "2",
        "--eval-samples", "0", "--epochs", "1"]
pytestmark = pytest.mark.slow  # the recipes in a copy of the repository, each script in its own process


def recipes() -> list:
    """[(verb, file, code)] of the README's "How to extend", in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## How to extend", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"(Append to|Save as|append to) `([\w./]+)`:\s*```python\n(.*?)```", section, re.S)


def copy_of_the_repository(to) -> str:
    """The repository's files (tracked, or new and not ignored), as a fresh clone would hold them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.join(to, os.path.dirname(name)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), os.path.join(to, name))
    return str(to)


def run(repo: str, *args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *map(str, args)], cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """A copy of the repository with every recipe pasted in, as the README says."""
    repo = copy_of_the_repository(tmp_path_factory.mktemp("student"))
    for verb, name, code in recipes():
        with open(os.path.join(repo, name), "w" if verb == "Save as" else "a") as f:
            f.write(code if verb == "Save as" else "\n\n" + code)
    return repo


def test_the_readme_shows_a_recipe_for_each_registry():
    assert [(verb.lower(), name) for verb, name, _ in recipes()] == [
        ("append to", "ddpm.py"), ("append to", "unet.py"), ("append to", "data.py"), ("append to", "models.py"),
        ("save as", "huber.py"), ("append to", "models.py")]


def test_every_recipe_runs_through_every_script(student, tmp_path):
    """The new process, schedule, network, dataset and sampler in one run; then the checkpoint samples with the
    reverse process and maps anomalies from a noised scan, each script in a process of its own."""
    run(student, "main.py", "HUBER", "--dataset", "stripes", "--net", "tiny", "--schedule", "quadratic",
        "--sampler", "one-step", *TINY, "--out", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["model"], config["dataset"], config["net"], config["schedule"], config["sampler"]) == (
        "HUBER", "stripes", "tiny", "quadratic", "one-step") and config["image_size"] == 16
    assert "min_snr" not in config and "loss" not in config  # HUBER takes no min-SNR, and DDGM's --loss is not its
    checkpoint = tmp_path / "run" / "model.pth"
    run(student, "sample.py", checkpoint, "--num-samples", "2", "--reverse", "--out", tmp_path / "s.png")
    run(student, "anomaly.py", checkpoint, "--t-lambda", "4", "--n", "2", "--n-val", "2", "--repeats", "1",
        "--out", tmp_path / "a.png")
    assert all((tmp_path / name).is_file() for name in ("s.png", "s_reverse.png", "a.png"))


def test_a_name_in_the_dict_literal_itself_works(student, tmp_path):
    """The third way of registering: an entry written into the literal, here ddpm.SCHEDULES."""
    path = os.path.join(student, "ddpm.py")
    with open(path) as f:
        source = f.read()
    literal = 'SCHEDULES = {\n'
    assert literal in source
    with open(path, "w") as f:
        f.write(source.replace(literal, literal + '    "cubic": lambda T, betas: torch.linspace(betas[0] ** (1 / 3), '
                                                  'betas[1] ** (1 / 3), T, dtype=torch.float64) ** 3,\n'))
    run(student, "main.py", "DDPM", "--dataset", "shapes", "--net", "cnn", "--schedule", "cubic", *TINY, "--out",
        tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["schedule"] == "cubic"


def test_an_unknown_name_is_one_line_listing_the_known_ones():
    done = subprocess.run([sys.executable, "main.py", "DDPM", "--schedule", "quadratic"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "'linear', 'cosine'" in done.stderr
