"""Shared test settings: every in-process run trains in fp32 unless a test asks for bf16, so that
results do not depend on whether this machine computes bf16 natively (where --precision auto would time
bf16 against fp32 and pick by a clock). tests/test_speed.py tests auto's choice itself.
Every run, in-process or a subprocess, also keeps the number of threads pytest started with (--threads auto
fixes the count too, but the tests' subprocesses would otherwise each take every core)."""
import pytest
import torch

from plumbing import speed


@pytest.fixture(autouse=True)
def fp32_unless_asked(monkeypatch):
    monkeypatch.setattr(speed, "native_bf16", lambda device: (False, "tests run in fp32 (tests/conftest.py)"))


@pytest.fixture(autouse=True)
def fixed_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # speed.thread_policy keeps this count
