"""Helpers for service tests that start a service as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import probe
from runtime.fleet.view import open_view
from services.ingest.admission import Admission
from shared.errors import CodedError
from shared.subjects import Subjects

ROOT = Path(__file__).resolve().parents[2]


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


async def spawn_service(module: str, nats_url: str, prefix: str, worker_id: str, **env: str):  # type: ignore[no-untyped-def]
    """A service as deployed: a process of its own (JSON logs on a stderr pipe to read)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        cwd=ROOT,
        env={
            **os.environ,
            "CHAMELEON_NATS_URL": nats_url,
            "CHAMELEON_SUBJECT_PREFIX": prefix,
            "CHAMELEON_WORKER_ID": worker_id,
            "CHAMELEON_LOG_JSON": "true",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
