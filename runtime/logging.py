"""structlog configuration: configured once per process, JSON when stderr is not a TTY.

Handlers bind ``session_id`` with ``structlog.contextvars.bound_contextvars`` per message, so every
line a handler logs carries it without threading it through calls.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog


def configure_logging(level: str = "info", json: bool | None = None, service: str = "") -> None:
    if json is None:
        json = not sys.stderr.isatty()
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    colours = sys.stderr.isatty() and not os.environ.get("NO_COLOR")  # no escape codes into a pipe
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=colours)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if service:
        structlog.contextvars.bind_contextvars(service=service)


class _StderrLogger:
    """Writes each line to the *current* ``sys.stderr`` and never raises: a log line must not
    take a handler down (a closed or swapped stream, as under test capture, is ignored)."""

    def __init__(self, *_args: object) -> None:
        pass

    def msg(self, message: str) -> None:
        try:
            print(message, file=sys.stderr, flush=True)
        except (ValueError, OSError):
            pass

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def get_logger(name: str = "") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name) if name else structlog.get_logger()


class RateLimitedLog:
    """Lines of one kind, at most ``burst`` per ``interval_s`` for each key; the lines left out
    are counted, and the next line written for that key carries ``lines_suppressed``.

    Per service, not per session: a camera sending junk, or junk under a new session id per
    message, costs a few lines per interval instead of a line (or three) per message. What each
    message was is still in the metrics (by code) and in the session's error events.
    """

    def __init__(
        self,
        logger: structlog.stdlib.BoundLogger,
        interval_s: float = 1.0,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.burst = max(1, burst)
        self._clock = clock
        self._windows: dict[Hashable, tuple[float, int]] = {}  # key -> (window start, lines written)
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        """Lines suppressed since the last one for ``key`` when one may be written now, else None
        (and this one is counted as suppressed). Keys must be few (event names, error codes)."""
        now = self._clock()
        start, written = self._windows.get(key, (-math.inf, 0))
        if now - start >= self.interval_s:
            start, written = now, 0
        if written >= self.burst:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._windows[key] = (start, written + 1)
        return self._suppressed.pop(key, 0)

    def log(self, level: str, event: str, key: Hashable = None, **fields: Any) -> bool:
        """Write ``event`` at ``level`` unless its key is over budget; True when written."""
        suppressed = self.allow((event, key))
        if suppressed is None:
            return False
        getattr(self.logger, level)(event, lines_suppressed=suppressed, **fields)
        return True

    def info(self, event: str, key: Hashable = None, **fields: Any) -> bool:
        return self.log("info", event, key, **fields)

    def warning(self, event: str, key: Hashable = None, **fields: Any) -> bool:
        return self.log("warning", event, key, **fields)

    def exception(self, event: str, key: Hashable = None, **fields: Any) -> bool:
        """An error line with the traceback of the exception being handled (call inside ``except``)."""
        return self.log("exception", event, key, **fields)
