"""Shared test settings: every in-process run trains and samples in fp32 unless a test asks for bf16, so that
results do not depend on whether this machine computes bf16 natively (tests/test_speed.py tests the rule itself).
Every run, in-process or a subprocess, keeps the number of threads pytest started with, and OpenMP's threads
spin briefly before they sleep, as plumbing/preflight.py sets it for every script."""
import plumbing.preflight  # noqa: F401  (first, as in every script: OpenMP's settings before torch starts)

import pytest
import torch


@pytest.fixture(autouse=True)
def fp32_unless_asked(monkeypatch):
    import bench.peers
    import plumbing.run
    import sample
    for module in (plumbing.run, sample, bench.peers):
        monkeypatch.setattr(module, "native_bf16", lambda device: False)


@pytest.fixture(autouse=True)
def fixed_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # plumbing.run.cores keeps this count
