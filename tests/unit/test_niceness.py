"""CHAMELEON_NICE: a service lowers its own CPU priority at start (and never raises it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.settings import BaseSettings

pytestmark = pytest.mark.unit

CHILD = "from shared.service import apply_niceness; import sys; print(apply_niceness(int(sys.argv[1])))"


def _niceness_after(increment: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(increment)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def test_niceness_goes_up_by_the_increment_in_its_own_process() -> None:
    base = os.nice(0)
    if base + 3 > 19:
        pytest.skip(f"this process already runs at niceness {base}")
    assert _niceness_after(3) == base + 3
    assert _niceness_after(0) == base  # 0 and negatives never raise the priority
    assert _niceness_after(-5) == base
    assert os.nice(0) == base  # the parent is untouched


def test_setting() -> None:
    assert BaseSettings.from_env({"CHAMELEON_NICE": "5"}).nice == 5
    assert BaseSettings.from_env({}).nice == 0
