"""Shared test settings: every in-process run trains in fp32 unless a test asks for bf16, so that
results do not depend on whether this machine computes bf16 natively (where --precision auto would time
bf16 against fp32 and pick by a clock). tests/test_speed.py tests auto's choice itself.
Every run, in-process or a subprocess, also keeps a fixed number of threads: --threads auto takes fewer
while other processes keep the cores busy, and sums split over fewer threads round differently, so two
runs that must agree bit for bit (resume, kill -9) would not on a loaded machine."""
import pytest
import torch

from plumbing import speed


@pytest.fixture(autouse=True)
def fp32_unless_asked(monkeypatch):
    monkeypatch.setattr(speed, "native_bf16", lambda device: (False, "tests run in fp32 (tests/conftest.py)"))


@pytest.fixture(autouse=True)
def fixed_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # speed.thread_policy keeps this count
