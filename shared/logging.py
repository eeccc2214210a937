"""structlog configuration: configured once per process, JSON when stderr is not a TTY.

Handlers bind ``session_id`` with ``structlog.contextvars.bound_contextvars`` per message, so every
line a handler logs carries it without threading it through calls.
"""

from __future__ import annotations

import logging
import sys

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
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
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
