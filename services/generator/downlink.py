"""A session's output JPEG quality, fitted to what its viewer receives (pure).

The generator cannot see a viewer's downlink; the viewer can. Its receiver reports
(``shared.schemas.ReceiverReport``, about one a second) say how much later than usual the output
frames arrived: a queue in front of a slow downlink. While it stands the quality steps down
(a 640x480 frame is ~90 kB at 95, ~25 kB at 60); once reports come back clear it creeps up
again, to the service's quality at most. The reports are the viewer's word, so they can only ever
lower the quality within the service's bounds, never raise the cost of a session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.schemas import ReceiverReport


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
