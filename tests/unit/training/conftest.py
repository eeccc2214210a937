"""Training tests share two cores with other jobs: one torch thread keeps them fast and stable."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here on one torch thread (tests/conftest.py)."""
