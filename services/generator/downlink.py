"""A session's output JPEG quality, fitted to what its viewer receives.

The generator cannot see a viewer's downlink; the viewer can. Its receiver reports
(``shared.schemas.ReceiverReport``, about one a second) say how much later than usual the output
frames arrived: a queue in front of a slow downlink. While it stands the quality steps down
(a 640x480 frame is ~90 kB at 95, ~25 kB at 60); once reports come back clear it creeps up
again, to the service's quality at most. The reports are the viewer's word, so they can only ever
lower the quality within the service's bounds, never raise the cost of a session.

``OutputQuality`` is the pure rule; ``Downlinks`` takes the reports as they come off the bus
(decoded and checked, counted, logged at a limited rate) and keeps one rule per served session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from runtime.logging import RateLimitedLog, get_logger
from shared.schemas import ReceiverReport, SchemaError
from shared.subjects import InvalidSessionId, Subjects

log = get_logger("generator")


@dataclass
class OutputQuality:
    max_quality: int = 95
    min_quality: int = 50
    step_down: int = 10
    step_up: int = 5
    queued_ms: float = 100.0  # a report this far over the viewer's best arrival: the downlink is full
    clear_ms: float = 30.0
    clear_reports: int = 3  # clear reports in a row before a step up
    hold_reports: int = 2  # after a step down, reports that cannot step again (the queue drains)
    quality: int = field(init=False)
    _clear: int = field(init=False, default=0)
    _hold: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.min_quality = min(self.min_quality, self.max_quality)
        self.quality = self.max_quality

    def on_report(self, report: ReceiverReport) -> bool:
        """Take one report; True when the quality changed."""
        if report.frames == 0:  # nothing arrived: nothing measured (a stall, or no output yet)
            return False
        if self._hold > 0:
            self._hold -= 1
            return False
        before = self.quality
        if report.queue_ms > self.queued_ms:
            self._clear = 0
            self.quality = max(self.min_quality, self.quality - self.step_down)
            self._hold = self.hold_reports
        elif report.queue_ms < self.clear_ms:
            self._clear += 1
            if self._clear >= self.clear_reports:
                self._clear = 0
                self.quality = min(self.max_quality, self.quality + self.step_up)
        else:
            self._clear = 0
        return self.quality != before


class _Served(Protocol):
    session_id: str
    output_quality: OutputQuality | None


class _Table(Protocol):
    def get(self, session_id: str) -> _Served | None: ...


class Downlinks:
    """Receiver reports to output quality, for the sessions this worker serves (every worker
    hears every report; only the session's owner keeps one)."""

    def __init__(
        self,
        service: str,
        subjects: Subjects,
        served: _Table,
        quality: int,
        min_quality: int,
        registry: CollectorRegistry,
    ) -> None:
        self.service, self.subjects, self.served = service, subjects, served
        self.max_quality, self.min_quality = quality, min_quality
        self.reports = Counter(
            "chameleon_receiver_reports_total",
            "Viewers' receiver reports by outcome (a changed output quality, kept, not ours, bad)",
            ["service", "outcome"],
            registry=registry,
        )
        self._lines = RateLimitedLog(log, burst=3)

    def quality(self, served: _Served) -> int:
        """The JPEG quality of this session's next output frame."""
        fit = served.output_quality
        return fit.quality if fit is not None else self.max_quality

    def take(self, subject: str, data: bytes) -> str:
        """One report off the bus; returns its outcome (the metric's label)."""
        outcome = self._take(subject, data)
        self.reports.labels(self.service, outcome).inc()
        return outcome

    def _take(self, subject: str, data: bytes) -> str:
        try:
            report = ReceiverReport.decode(data)
            if report.session_id != self.subjects.session_of(subject):
                raise SchemaError("receiver_report session_id differs from its subject")
        except (SchemaError, InvalidSessionId) as exc:
            self._lines.warning("receiver_report_rejected", key="bad_report", error=str(exc))
            return "bad"
        served = self.served.get(report.session_id)
        if served is None:
            return "not_served"
        if served.output_quality is None:
            served.output_quality = OutputQuality(self.max_quality, self.min_quality)
        if not served.output_quality.on_report(report):
            return "kept"
        log.info(
            "output_quality",
            session_id=served.session_id,
            quality=served.output_quality.quality,
            queue_ms=report.queue_ms,
        )
        return "changed"
