"""The generator's session lifecycle (``services.generator.lifecycle``), with real warp renderers
on real catalogue garments: capacity, restart memory, dedupe, the one swap path, what a swap
reports, and the durable record."""

from __future__ import annotations

import numpy as np
import pytest

from services.generator.lifecycle import APPLIED_EVENTS_KEPT, PENDING_META_KEPT, SessionTable, StoredSession
from services.generator.rendering import FrameInput, Garment
from services.generator.warp import WarpBackend
from shared import control as controls
from shared.errors import CodedError
from shared.headers import FrameMeta
from shared.schemas import SessionState
from tools.samples import catalogue_garment

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def red() -> Garment:
    return catalogue_garment("tee-red-solid")


@pytest.fixture(scope="module")
def blue() -> Garment:
    return catalogue_garment("shirt-blue-checks")


def meta(seq: int) -> FrameMeta:
    return FrameMeta("s", seq, 1_000 + seq, 64, 48)


def test_capacity_is_per_worker_and_a_running_session_may_reopen(red: Garment) -> None:
    table = SessionTable(max_sessions=2)
    table.open("a", red, "warp")
    table.open("b", red, "warp")
    with pytest.raises(CodedError) as exc:
        table.open("c", red, "warp")
    assert exc.value.code == "at_capacity"
    table.open("a", red, "warp")  # already served: not a new slot
    table.close("b")
    table.open("c", red, "warp")
    assert len(table) == 2


def test_a_restart_keeps_idempotency_memory(red: Garment, blue: Garment) -> None:
    table = SessionTable(8)
    state = SessionState(session_id="s", garment_id="tee-red-solid", applied_events=["e1", "e2"])
    first = table.open("s", red, "warp", state)
    assert first.applied_events == ["e1", "e2"]
    first.remember_event("e3")
    again = table.open("s", blue, "warp", None, previous=first)
    assert again.applied_events == ["e1", "e2", "e3"]
    assert again.garment is blue


def test_duplicates_are_found_in_memory_and_in_stored_state(red: Garment) -> None:
    table = SessionTable(8)
    served = table.open("s", red, "warp")
    served.remember_event("live")
    stored = StoredSession(SessionState(session_id="s", garment_id="x", applied_events=["stored"]))
    assert served.is_duplicate("live") and not served.is_duplicate("stored")
    assert stored.is_duplicate("stored") and not stored.is_duplicate("live")
    assert not served.is_duplicate("new") and not stored.is_duplicate("new")


def test_memory_of_events_and_metas_is_bounded(red: Garment) -> None:
    served = SessionTable(8).open("s", red, "warp")
    for i in range(APPLIED_EVENTS_KEPT + 10):
        served.remember_event(f"e{i}")
        served.remember_meta(meta(i))
    assert served.applied_events[0] == "e10" and len(served.applied_events) == APPLIED_EVENTS_KEPT
    assert len(served.metas) == PENDING_META_KEPT
    assert served.take_meta(0) is None and served.take_meta(APPLIED_EVENTS_KEPT + 9) is not None


def test_a_swap_replaces_the_renderer_and_hands_back_the_old_one(red: Garment, blue: Garment) -> None:
    backend = WarpBackend()
    table = SessionTable(8)
    served = table.open("s", red, "warp")
    old = served.renderer = backend.open("s", red)
    new = old.swap(blue)
    swap = controls.swap("s", blue.garment_id)
    stale, replaced = served.swap(swap, blue, new, received_ns=swap.published_ns + 5, started_ns=0)
    assert stale is old and replaced is None and served.renderer is new and served.garment is blue
    assert served.is_duplicate(swap.event_id)
    assert served.pending_swap is not None and served.pending_swap.garment_id == blue.garment_id


def test_a_renderer_drawing_a_frame_is_not_closed_under_it(red: Garment, blue: Garment) -> None:
    backend = WarpBackend()
    served = SessionTable(8).open("s", red, "warp")
    old = served.renderer = backend.open("s", red)
    served.in_flight.append(old)
    assert served.swap(controls.swap("s", "x"), blue, old.swap(blue), 0, 0)[0] is None
    assert not old.closed  # the frame path closes it when its frame ends
    served.in_flight.remove(old)
    drawing = served.renderer
    served.in_flight.append(drawing)
    served.close()
    assert served.renderer is None and not drawing.closed


def test_swap_applied_comes_once_with_the_first_frame_of_the_new_garment(red: Garment, blue: Garment) -> None:
    served = SessionTable(8).open("s", red, "warp")
    swap = controls.swap("s", blue.garment_id)
    served.swap(swap, blue, None, received_ns=swap.published_ns + 2_000_000, started_ns=0)
    assert served.frame_published(red.garment_id, 1, swap.published_ns + 10_000_000) is None
    applied = served.frame_published(blue.garment_id, 2, swap.published_ns + 30_000_000)
    assert applied is not None
    assert applied["event_id"] == swap.event_id and applied["first_seq"] == 2
    assert applied["latency_ms"] == 30.0 and applied["delivery_ms"] == 2.0
    assert served.frame_published(blue.garment_id, 3, swap.published_ns + 40_000_000) is None
    assert served.frames_rendered == 3


def test_the_stored_record_is_the_garment_in_effect_and_the_applied_ids(red: Garment, blue: Garment) -> None:
    served = SessionTable(8).open("s", red, "warp")
    served.remember_event("e1")
    first = served.next_state()
    served.garment = blue
    second = served.next_state()
    assert (first.garment_id, first.backend, first.applied_events) == (red.garment_id, "warp", ["e1"])
    assert second.garment_id == blue.garment_id and second.updated_ns >= first.updated_ns


def test_the_latest_input_is_re_rendered_once(red: Garment) -> None:
    served = SessionTable(8).open("s", red, "warp")
    assert served.take_latest() is None
    inp = FrameInput(seq=4, frame_bgr=np.zeros((48, 64, 3), np.uint8))
    served.keep_latest(inp, meta(4))
    got = served.take_latest()
    assert got is not None and got[0] is inp and got[1].seq == 4
    assert served.take_latest() is None


def test_a_swap_overtaking_one_not_yet_shown_hands_it_back_to_be_answered(
    red: Garment, blue: Garment
) -> None:
    served = SessionTable(8).open("s", red, "warp")
    first, second = controls.swap("s", blue.garment_id), controls.swap("s", red.garment_id)
    served.swap(first, blue, None, 0, 0)
    _, replaced = served.swap(second, red, None, 0, 0)
    assert replaced is not None and replaced.event_id == first.event_id
    assert served.pending_swap is not None and served.pending_swap.event_id == second.event_id


def test_a_swap_applied_but_not_shown_is_answered_by_the_next_owner(red: Garment, blue: Garment) -> None:
    served = SessionTable(8).open("s", red, "warp")
    swap = controls.swap("s", blue.garment_id)
    served.swap(swap, blue, None, 0, 0)
    state = served.next_state()
    assert state.pending_event_id == swap.event_id
    heir = SessionTable(8).open("s", blue, "warp", state)
    applied = heir.frame_published(blue.garment_id, 9, swap.published_ns + 1)
    assert applied is not None and applied["event_id"] == swap.event_id
    served.frame_published(blue.garment_id, 1, swap.published_ns + 1)
    assert served.next_state().pending_event_id == ""  # answered: nobody answers again
