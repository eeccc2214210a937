"""Helpers for service tests that start a service as a real subprocess."""

from __future__ import annotations

import asyncio
import time

from harness import probe
from runtime.fleet.view import open_view
from services.ingest.admission import Admission
from shared.errors import CodedError
from shared.subjects import Subjects


async def admit_when_registered(
    nc, subjects: Subjects, stage: str, session: str, proc: asyncio.subprocess.Process, timeout_s: float = 60
) -> None:  # type: ignore[no-untyped-def]
    """Place ``session`` on the worker of ``stage`` that ``proc`` runs, once it has registered
    (a subprocess needs seconds to start); fails if it never does or the process dies."""
    admission = Admission(await open_view(nc.jetstream(), subjects), [stage])
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await admission.admit(session)
                return
            except CodedError:
                assert time.monotonic() < deadline and proc.returncode is None, f"no {stage} worker"
                await asyncio.sleep(0.2)
    finally:
        await admission.view.close()


async def until(predicate, timeout: float = 15.0, what: object = None) -> None:  # type: ignore[no-untyped-def]
    """``harness.probe.until`` with the tests' name for its bound."""
    await probe.until(predicate, timeout, what)
