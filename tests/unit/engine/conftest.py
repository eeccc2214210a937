"""Fixtures for the engine's unit tests: tiny engines, float64 where exactness matters."""

from __future__ import annotations

import pytest
from engine_testkit import make_engine

from services.generator.engine import Engine


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def engine64() -> Engine:
    return make_engine()
