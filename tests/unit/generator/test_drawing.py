"""Drawing off the event loop (``services.generator.drawing``) with the real ``sim`` renderer: a
frame drawn while a swap replaced the renderer is dropped and the old renderer closed; otherwise
the frames come back encoded."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.generator.drawing import draw, held_back
from services.generator.lifecycle import ServedSession
from services.generator.rendering import FrameInput, Garment
from services.generator.sim_backend import SimBackend

pytestmark = pytest.mark.unit


def _garment(garment_id: str) -> Garment:
    return Garment(garment_id, "tshirt", np.zeros((4, 4, 4), np.uint8), {}, colours=[(10, 20, 200)])


def _served(renderer) -> ServedSession:
    return ServedSession("s1", renderer.garment, "sim", renderer=renderer)


async def test_a_frame_comes_back_encoded_with_its_renderer_kept() -> None:
    renderer = SimBackend(service_ms=0).open("s1", _garment("tee-red"))
    served = _served(renderer)
    out = await draw(served, renderer, FrameInput(7, np.zeros((48, 64, 3), np.uint8)), 80)
    assert out is not None and [f.seq for f, _ in out] == [7]
    assert out[0][1][:2] == b"\xff\xd8"  # a JPEG
    assert not renderer.closed and served.in_flight == []


async def test_a_swap_while_drawing_drops_the_frame_and_closes_the_old_renderer() -> None:
    backend = SimBackend(service_ms=200)
    old = backend.open("s1", _garment("tee-red"))
    served = _served(old)
    task = asyncio.create_task(draw(served, old, FrameInput(1, np.zeros((48, 64, 3), np.uint8)), 80))
    await asyncio.sleep(0.05)  # the frame is on its worker thread
    assert served.in_flight == [old]
    assert await held_back(served, 80) == []  # never while a frame is drawing
    served.renderer = old.swap(_garment("shirt-blue"))
    assert await task is None
    assert old.closed and not served.renderer.closed
