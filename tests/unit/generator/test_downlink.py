"""A session's output quality follows its viewer's receiver reports (pure)."""

from __future__ import annotations

import pytest

from services.generator.downlink import OutputQuality
from shared.schemas import ReceiverReport, SchemaError

pytestmark = pytest.mark.unit


def report(queue_ms: float, frames: int = 15) -> ReceiverReport:
    return ReceiverReport(
        session_id="s1", window_ms=1000.0, frames=frames, bytes=frames * 30_000, queue_ms=queue_ms
    )


def test_a_queue_in_front_of_the_viewer_lowers_the_quality_then_holds_while_it_drains() -> None:
    q = OutputQuality(max_quality=95, min_quality=50)
    assert q.quality == 95
    assert q.on_report(report(400))
    assert q.quality == 85
    assert not q.on_report(report(400)) and not q.on_report(report(300))  # held: the queue drains
    assert q.on_report(report(250))
    assert q.quality == 75
    for _ in range(30):
        q.on_report(report(500))
    assert q.quality == 50  # never below the service's floor


def test_clear_reports_raise_it_slowly_back_to_the_service_quality_never_above() -> None:
    q = OutputQuality(max_quality=95, min_quality=50)
    q.on_report(report(400))
    for _ in range(2):
        q.on_report(report(0))  # the hold
    raised = [q.on_report(report(5)) for _ in range(6)]
    assert raised == [False, False, True, False, False, True]
    assert q.quality == 95
    for _ in range(10):
        q.on_report(report(0))
    assert q.quality == 95


def test_a_report_in_between_or_with_no_frames_changes_nothing() -> None:
    q = OutputQuality()
    for r in (report(60), report(60), report(60), report(999, frames=0)):
        assert not q.on_report(r)
    assert q.quality == 95


def test_receiver_reports_are_validated() -> None:
    r = report(12.5)
    assert ReceiverReport.decode(r.encode()) == r
    for bad in (
        {"session_id": "a b"},
        {"window_ms": 0.0},
        {"frames": -1},
        {"queue_ms": -1.0},
    ):
        fields = {**r.to_dict(), **bad}
        with pytest.raises(SchemaError):
            ReceiverReport.from_dict(fields)


def test_reports_off_the_bus_are_checked_counted_and_kept_for_served_sessions_only() -> None:
    from dataclasses import dataclass

    from prometheus_client import CollectorRegistry

    from services.generator.downlink import Downlinks
    from shared.subjects import Subjects

    @dataclass
    class Served:
        session_id: str
        output_quality: OutputQuality | None = None

    subjects, registry = Subjects(), CollectorRegistry()
    served = {"s1": Served("s1")}
    links = Downlinks("generator-1", subjects, served, 95, 50, registry)
    assert links.quality(served["s1"]) == 95  # before any report: the service's quality
    assert links.take(subjects.feedback("s1"), report(400).encode()) == "changed"
    assert links.quality(served["s1"]) == 85
    assert links.take(subjects.feedback("s1"), report(5).encode()) == "kept"
    assert links.take(subjects.feedback("s2"), report(400).encode()) == "bad"  # not its subject
    assert links.take(subjects.feedback("s1"), b"\x00junk") == "bad"
    other = ReceiverReport(session_id="s9", window_ms=1000.0, frames=15, bytes=1, queue_ms=400.0)
    assert links.take(subjects.feedback("s9"), other.encode()) == "not_served"
    counts = {
        s.labels["outcome"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "chameleon_receiver_reports_total"
    }
    assert counts == {"changed": 1.0, "kept": 1.0, "bad": 2.0, "not_served": 1.0}
