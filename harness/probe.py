"""Looking at a running stack from outside: its HTTP endpoints (a service's ``/healthz`` and
``/metrics``, nats-server's monitor) and waiting for a condition to hold."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def get(port: int, path: str = "/healthz", timeout_s: float = 1.0) -> bytes:
    """The body of ``GET http://127.0.0.1:<port><path>``; raises ``OSError`` when nothing answers
    or the answer is an HTTP error (a 503 from an unhealthy service)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
        return resp.read()


def get_json(port: int, path: str = "/healthz", timeout_s: float = 1.0) -> Any:
    """The JSON body of ``GET http://127.0.0.1:<port><path>``; raises ``OSError`` (no answer, an
    HTTP error) or ``ValueError`` (not JSON)."""
    return json.loads(get(port, path, timeout_s))


def healthy(port: int, timeout_s: float = 1.0) -> bool:
    """Whether ``/healthz`` on ``port`` answers 200 with ``"status": "ok"``: a service's, and
    nats-server's monitor (which in a cluster also means its streams are current)."""
    try:
        body = get_json(port, "/healthz", timeout_s)
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("status") == "ok"


async def wait_for(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.01) -> bool:
    """Poll ``predicate()`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


async def until(predicate: Callable[[], object], timeout_s: float = 15.0, what: object = None) -> None:
    """``wait_for``, failing with an ``AssertionError`` that shows ``what`` (called first when it is
    callable): the state worth reading when a condition is never met."""
    if not await wait_for(predicate, timeout_s):
        state = what() if callable(what) else what
        raise AssertionError(f"condition not met in {timeout_s:g} s; state: {state!r:.2000}")
