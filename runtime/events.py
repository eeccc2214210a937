"""Structured events for a session: errors and status, logged and published together.

Errors are rate-limited per (session, code): a camera sending garbage at 30 fps produces one
event per ``min_interval_s`` carrying the count of suppressed repeats, not a flood. Their log
lines are rate-limited per service as well (per code): junk sent under a new session id per
message would otherwise still cost a line per message.
"""

from __future__ import annotations

import time
from typing import Any

from nats.aio.client import Client as NATS

from runtime.bus import publish_event
from runtime.logging import RateLimitedLog, get_logger
from shared.headers import now_ns
from shared.schemas import Event
from shared.subjects import InvalidSessionId, Subjects, validate_session_id

log = get_logger("events")


class EventPublisher:
    def __init__(self, nc: NATS, subjects: Subjects, service: str, min_interval_s: float = 1.0) -> None:
        self.nc = nc
        self.subjects = subjects
        self.service = service
        self.min_interval_s = min_interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lines = RateLimitedLog(log, min_interval_s, burst=3)

    async def emit(self, kind: str, session_id: str, code: str, message: str = "", **data: Any) -> None:
        try:
            validate_session_id(session_id)
        except InvalidSessionId:
            self._lines.warning("event_for_invalid_session", kind=kind, code=code, session_id=session_id[:80])
            return
        event = Event(
            kind=kind,
            session_id=session_id,
            service=self.service,
            code=code,
            message=message,
            ts_ns=now_ns(),
            data=data,
        )
        await publish_event(self.nc, self.subjects, event)

    async def error(self, session_id: str, code: str, message: str, **data: Any) -> None:
        key = (session_id, code)
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.min_interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        repeats = self._suppressed.pop(key, 0)
        self._lines.warning(
            "session_error", key=code, session_id=session_id, code=code, error=message, suppressed=repeats
        )
        await self.emit("error", session_id, code, message, suppressed=repeats, **data)

    async def status(self, session_id: str, code: str, message: str = "", **data: Any) -> None:
        # every change is published; its log line is rate-limited per code (a camera alternating
        # good and garbage frames changes a pose status every frame)
        self._lines.info("session_status", key=code, session_id=session_id, code=code, detail=message)
        await self.emit("status", session_id, code, message, **data)

    def forget(self, session_id: str) -> None:
        for key in [k for k in self._last if k[0] == session_id]:
            self._last.pop(key, None)
            self._suppressed.pop(key, None)
