"""The student backend on a real camera frame (issue #16, part 4): the tiny student's 64x64
generation may only replace the garment region, never the person or the background, and every
frame it is given must come out once, the last incomplete chunk included (``flush``).

Runs the shipped tiny checkpoint on CPU over the bus photo through the real preprocessing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.generator.rendering import FrameInput, Garment, RenderedFrame
from services.generator.settings import GeneratorSettings
from services.generator.sim_backend import SimBackend
from services.generator.student_backend import StudentBackend, StudentRenderer, checkpoint_path
from tools.samples import catalogue_garment, preprocessed_frames

pytestmark = pytest.mark.unit
SETTINGS = GeneratorSettings(backend="student", student_device="cpu", max_sessions=2)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def backend() -> StudentBackend:
    if checkpoint_path(SETTINGS) is None:
        pytest.fail("the shipped checkpoint services/generator/checkpoints/tiny.safetensors is missing")
    return StudentBackend.from_settings(SETTINGS)


@pytest.fixture(scope="module")
def person(bus_photo: np.ndarray) -> FrameInput:
    frame = preprocessed_frames([bus_photo])[0]
    if frame.garment_mask is None or not frame.garment_mask.any():
        pytest.fail("no garment region found in the bus photo")
    return frame


@pytest.fixture(scope="module")
def red_tee() -> Garment:
    return catalogue_garment("tee-red-solid")


def frames(person: FrameInput, n: int) -> list[FrameInput]:
    """``n`` frames of one person, each a slightly different camera image (noise), so a frame
    that came out from the wrong input would be caught."""
    rng = np.random.default_rng(0)
    out = []
    for seq in range(n):
        noise = rng.integers(-3, 4, person.frame_bgr.shape)
        image = np.clip(person.frame_bgr.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        out.append(dataclasses.replace(person, seq=seq, frame_bgr=image))
    return out


def render_all(renderer: StudentRenderer, inputs: list[FrameInput]) -> list[RenderedFrame]:
    out: list[RenderedFrame] = []
    for f in inputs:
        out += renderer.render(f)
    return out


def test_outside_the_garment_region_the_camera_frame_stays_bit_identical(
    backend: StudentBackend, person: FrameInput, red_tee: Garment
) -> None:
    inputs = frames(person, 9)  # the first chunk
    renderer = backend.open("composite", red_tee)
    try:
        out = render_all(renderer, inputs)
    finally:
        renderer.close()
    assert [f.seq for f in out] == [f.seq for f in inputs]
    for inp, rendered in zip(inputs, out, strict=True):
        assert rendered.image_bgr.shape == inp.frame_bgr.shape
        outside = inp.garment_mask == 0
        assert np.array_equal(rendered.image_bgr[outside], inp.frame_bgr[outside])
        # it drew, only inside the region, and what it drew is not the camera's pixels
        assert rendered.drawn_mask is not None
        drawn = rendered.drawn_mask > 0
        assert drawn.any() and not (drawn & outside).any()
        changed = np.any(rendered.image_bgr != inp.frame_bgr, axis=2)
        assert changed[drawn].mean() > 0.5


def test_without_a_garment_region_the_camera_frame_comes_out_as_is(
    backend: StudentBackend, person: FrameInput, red_tee: Garment
) -> None:
    inputs = [dataclasses.replace(f, garment_mask=None) for f in frames(person, 9)]
    renderer = backend.open("no-person", red_tee)
    try:
        out = render_all(renderer, inputs)
    finally:
        renderer.close()
    assert len(out) == 9
    for inp, rendered in zip(inputs, out, strict=True):
        assert np.array_equal(rendered.image_bgr, inp.frame_bgr) and rendered.drawn_mask is None


def test_every_frame_comes_out_once_including_the_last_incomplete_chunk(
    backend: StudentBackend, person: FrameInput, red_tee: Garment
) -> None:
    inputs = frames(person, 9 + 12 + 5)  # two full chunks, then five frames of a third
    renderer = backend.open("flush", red_tee)
    try:
        out = render_all(renderer, inputs)
        assert [f.seq for f in out] == list(range(21)), "the five of the third chunk are held back"
        out += renderer.flush()
        assert renderer.flush() == []
    finally:
        renderer.close()
    assert [f.seq for f in out] == [f.seq for f in inputs]
    tail = out[21:]
    for inp, rendered in zip(inputs[21:], tail, strict=True):
        outside = inp.garment_mask == 0
        assert np.array_equal(rendered.image_bgr[outside], inp.frame_bgr[outside])
        assert rendered.drawn_mask is not None and rendered.drawn_mask.any()


def test_a_swap_queued_after_the_last_frame_shows_on_the_flushed_frames(
    backend: StudentBackend, person: FrameInput, red_tee: Garment
) -> None:
    renderer = backend.open("flush-swap", red_tee)
    try:
        assert render_all(renderer, frames(person, 4)) == []
        assert renderer.swap(catalogue_garment("shirt-blue-checks")) is renderer
        flushed = renderer.flush()
    finally:
        renderer.close()
    assert [(f.seq, f.garment_id) for f in flushed] == [(s, "shirt-blue-checks") for s in range(4)]


def test_a_frame_by_frame_renderer_holds_nothing_back(red_tee: Garment) -> None:
    renderer = SimBackend(service_ms=0).open("sim", red_tee)
    assert len(renderer.render(FrameInput(0, np.zeros((48, 64, 3), np.uint8)))) == 1
    assert renderer.flush() == []


def test_free_slots_follow_the_cache_pool(backend: StudentBackend, red_tee: Garment) -> None:
    """What the worker's lease advertises to the fleet: a session takes a cache, closing gives it back."""
    before = backend.free_slots()
    assert before == backend.engine.pool.capacity - backend.engine.pool.in_use >= 1
    renderer = backend.open("slots", red_tee)
    try:
        assert backend.free_slots() == before - 1
    finally:
        renderer.close()
    assert backend.free_slots() == before
