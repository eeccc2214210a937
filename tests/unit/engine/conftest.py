"""Fixtures for the engine's unit tests: tiny engines, float64 where exactness matters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from engine_testkit import make_engine

from services.generator.engine import Engine


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    """The CI box has two shared cores; one thread keeps timings and results stable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def engine64() -> Engine:
    return make_engine()
