"""Helpers for service tests that start a service as a real subprocess."""

from __future__ import annotations

import asyncio
import time

from shared.errors import CodedError
from shared.fleet import Admission, open_view
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
