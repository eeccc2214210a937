"""The fleet's pure decisions: where a session goes, when an epoch grows, which queued swaps are
superseded, and when a late swap must not replace a newer garment."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from runtime.fleet.records import Ownership, WorkerLease, next_epoch, place, safe_worker_id
from services.generator.lifecycle import StoredSession, superseded
from shared import control as controls
from shared.schemas import SessionState

pytestmark = pytest.mark.unit
NOW = 1_800_000_000_000_000_000


def lease(worker: str, capacity: int = 4, **kw: object) -> WorkerLease:
    fields: dict[str, object] = {
        "worker_id": worker,
        "stage": "generator",
        "capacity": capacity,
        "renewed_ns": NOW - 100_000_000,
        "lease_ms": 1000,
    }
    fields.update(kw)
    return WorkerLease(**fields)  # type: ignore[arg-type]


def test_the_least_loaded_live_worker_with_room_is_chosen() -> None:
    workers = [lease("a"), lease("b"), lease("c")]
    assert place("s", workers, Counter(a=2, b=1, c=3), NOW).worker_id == "b"  # type: ignore[union-attr]
    assert place("s", workers, Counter(a=4, b=4, c=4), NOW) is None  # every worker full


def test_dead_draining_excluded_wrong_backend_and_full_caches_are_skipped() -> None:
    workers = [
        lease("dead", renewed_ns=NOW - 2_000_000_000),
        lease("draining", draining=True),
        lease("me"),
        lease("warp", backend="warp"),
        lease("nocache", backend="student", free_slots=0),
        lease("ok", backend="student", free_slots=2),
    ]
    chosen = place("s", workers, Counter(), NOW, backend="student", exclude=("me",))
    assert chosen is not None and chosen.worker_id == "ok"


def test_equal_loads_spread_sessions_and_prefer_the_other_stage_s_host() -> None:
    workers = [lease("a", host="h1"), lease("b", host="h2")]
    picks = Counter(place(f"s{i}", workers, Counter(), NOW).worker_id for i in range(200))  # type: ignore[union-attr]
    assert min(picks.values()) > 60  # a stable hash spreads ties, it does not always pick one
    assert {place(f"s{i}", workers, Counter(), NOW, prefer_host="h2").worker_id for i in range(20)} == {"b"}  # type: ignore[union-attr]


def test_epochs_always_grow_even_across_a_deleted_record() -> None:
    assert next_epoch(5, 0) == 6
    assert next_epoch(0, NOW) == NOW // 1_000_000
    assert next_epoch(NOW // 1_000_000 + 10, NOW) == NOW // 1_000_000 + 11


def test_worker_names_become_one_key_token() -> None:
    assert safe_worker_id("host.example.com-42") == "host-example-com-42"
    assert safe_worker_id("") == "worker"


def test_queued_swaps_collapse_to_the_newest_but_a_start_or_stop_keeps_order() -> None:
    s1, s2, s3 = (controls.swap("s", g) for g in ("a", "b", "c"))
    start, stop = controls.start("s", "a"), controls.stop("s")
    assert superseded([s1, s2, s3]) == {0: s3.event_id, 1: s3.event_id}
    assert superseded([s1, start, s2]) == {}
    assert superseded([s1, s2, stop, s3]) == {0: s2.event_id}
    assert superseded([s1, None, s2]) == {0: s2.event_id}  # an undecodable message is not a barrier


def test_a_swap_published_before_the_one_in_effect_is_stale() -> None:
    older = dataclasses.replace(controls.swap("s", "a"), published_ns=NOW)
    newer = dataclasses.replace(controls.swap("s", "b"), published_ns=NOW + 1)
    state = SessionState(session_id="s", garment_id="b", swap_published_ns=newer.published_ns)
    stored = StoredSession(state)
    assert stored.is_stale_swap(older)
    assert not stored.is_stale_swap(newer)
    assert not StoredSession(SessionState(session_id="s", garment_id="b")).is_stale_swap(older)


def test_ownership_and_lease_records_round_trip() -> None:
    record = Ownership(
        session_id="s", stage="generator", worker_id="g-1", epoch=7, assigned_ns=NOW, ready=True
    )
    assert Ownership.decode(record.encode()) == record
    assert WorkerLease.decode(lease("a").encode()) == lease("a")
    assert lease("a").alive(NOW) and not lease("a").alive(NOW + 2_000_000_000)
