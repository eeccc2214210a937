"""What every benchmark reports the same way: the machine it ran on, when, the CPU time and memory
of the processes it measured (psutil), and its output (a readable table on stderr unless
``--json``, then one JSON object as the last line)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from harness.stack import Stack

NATS_SERVER = "nats_server"  # the embedded nats-server's name among a stack's stages


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's name where there is none)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return model


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu_model()})"


def provenance() -> dict[str, str]:
    """``machine`` and ``date`` (UTC, to the second) for a report."""
    return {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def emit(report: dict[str, Any], json_only: bool, width: int = 36) -> int:
    """The report as a table on stderr (unless ``json_only``), then as the last line of stdout."""
    if not json_only:
        for key, value in report.items():
            print(f"{key:>{width}}: {value}", file=sys.stderr)
    print(json.dumps(report))
    return 0


# -- CPU time and memory of processes (psutil) ---------------------------------------------------------
def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads, not its children)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def cpu_total(pids: Iterable[int]) -> float:
    return sum(process_cpu_s(pid) for pid in pids)


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``, in KiB."""
    return psutil.Process(pid).memory_info().rss // 1024


def child_pids(name_prefix: str) -> list[int]:
    """Direct children of this process whose command name starts with ``name_prefix``."""
    return [p.pid for p in psutil.Process().children() if _name(p).startswith(name_prefix)]


def stage_pids(stack: Stack) -> dict[str, list[int]]:
    """Each service's processes (several for a stage run with ``workers``), and the nats-server."""
    pids: dict[str, list[int]] = {}
    for c in stack.children:
        pids.setdefault(c.name, []).append(c.proc.pid)
    servers = child_pids("nats-server") if stack.nats is not None else []
    if len(servers) == 1:
        pids[NATS_SERVER] = servers
    return pids


def tree_cpu_s(root: int, name_prefix: str = "") -> float:
    """CPU seconds of ``root``'s process tree (only commands starting with ``name_prefix``)."""
    top = psutil.Process(root)
    total = 0.0
    for process in [top, *top.children(recursive=True)]:
        if _name(process).startswith(name_prefix):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:  # gone meanwhile
        return ""
