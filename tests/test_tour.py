"""The guided tour (docs/tour.py, jupytext percent format) runs end to end, offline, on small settings."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_tour_runs_and_writes_its_figures(tmp_path):
    env = {**os.environ, "TOUR_OUT": str(tmp_path), "TOUR_IMAGES": "64"}
    r = subprocess.run([sys.executable, "docs/tour.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    for name in ("forward_diffusion.png", "schedules.png", "reverse_process.png", "run/model.pth"):
        assert (tmp_path / name).exists(), name
