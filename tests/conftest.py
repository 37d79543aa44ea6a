"""Shared test settings: every in-process run trains in fp32 unless a test asks for bf16, so that
results do not depend on whether this machine computes bf16 natively (where --precision auto would time
bf16 against fp32 and pick by a clock). tests/test_speed.py tests auto's choice itself."""
import pytest

import speed


@pytest.fixture(autouse=True)
def fp32_unless_asked(monkeypatch):
    monkeypatch.setattr(speed, "native_bf16", lambda device: (False, "tests run in fp32 (tests/conftest.py)"))
