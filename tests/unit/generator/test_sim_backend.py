"""The ``sim`` backend (``services.generator.sim_backend``): the GPU stand-in a load test relies on
must render one frame per input with the session's garment, swap like the warp renderer, refuse
sessions beyond its slots, and hold each frame for the configured service time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.generator.backends import make_backend, resolve
from services.generator.rendering import AtCapacity, FrameInput, Garment
from services.generator.settings import GeneratorSettings
from services.generator.sim_backend import OUT_HEIGHT, OUT_WIDTH, SimBackend, SimRenderer
from shared.schemas import BACKENDS
from tools.samples import catalogue_garment

pytestmark = pytest.mark.unit


def garment(garment_id: str, colour: tuple[int, int, int] = (10, 20, 200)) -> Garment:
    return Garment(garment_id, "tshirt", np.zeros((4, 4, 4), np.uint8), {}, colours=[colour])


def frame(seq: int) -> FrameInput:
    return FrameInput(seq, np.zeros((480, 640, 3), np.uint8))


def test_one_small_frame_per_input_with_the_garment_id_and_colour() -> None:
    renderer = SimBackend(service_ms=0).open("s", garment("tee-red", (10, 20, 200)))
    for seq in (3, 4, 5):
        out = renderer.render(frame(seq))
        assert [(f.seq, f.garment_id) for f in out] == [(seq, "tee-red")]
        assert out[0].image_bgr.shape == (OUT_HEIGHT, OUT_WIDTH, 3)
        assert (out[0].image_bgr == (10, 20, 200)).all()
    assert renderer.chunked is False


def test_swap_returns_a_fresh_renderer_on_the_new_garment_and_leaves_the_old_one() -> None:
    old = SimBackend(service_ms=0).open("s", garment("tee-red"))
    new = old.swap(garment("shirt-blue", (200, 0, 0)))
    assert new is not old
    assert isinstance(new, SimRenderer)
    assert new.render(frame(1))[0].garment_id == "shirt-blue"
    assert old.render(frame(1))[0].garment_id == "tee-red"  # a frame in flight keeps its garment


def test_capacity_raises_at_capacity_and_a_closed_session_frees_its_slot() -> None:
    backend = SimBackend(service_ms=0, max_sessions=2)
    backend.open("a", garment("g"))
    backend.open("b", garment("g"))
    a = backend.open("a", garment("g"))  # a running session may reopen
    with pytest.raises(AtCapacity):
        backend.open("c", garment("g"))
    a.close()
    backend.open("c", garment("g"))


def test_render_holds_the_thread_for_at_least_the_configured_service_time() -> None:
    """Loose on purpose: a shared machine may add time, never remove it."""
    renderer = SimBackend(service_ms=25).open("s", garment("g"))
    t0 = time.perf_counter()
    renderer.render(frame(0))
    assert (time.perf_counter() - t0) * 1e3 >= 25


def test_settings_choose_it_by_name_only() -> None:
    settings = GeneratorSettings.from_env({"CHAMELEON_SIM_SERVICE_MS": "7.5", "CHAMELEON_MAX_SESSIONS": "3"})
    backend = make_backend("sim", settings)
    assert isinstance(backend, SimBackend)
    assert (backend.name, backend.service_ms, backend.max_sessions) == ("sim", 7.5, 3)
    assert "sim" in BACKENDS
    assert resolve("sim", settings) == "sim"
    assert resolve("auto", GeneratorSettings(student_checkpoint="/nonexistent")) == "warp"


def test_free_slots_count_open_renderers() -> None:
    backend = SimBackend(service_ms=0, max_sessions=2)
    garment = catalogue_garment("tee-red-solid")
    first = backend.open("a", garment)
    assert backend.free_slots() == 1
    backend.open("b", garment)
    assert backend.free_slots() == 0
    first.close()
    assert backend.free_slots() == 1
