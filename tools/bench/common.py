"""What every benchmark reports the same way: the machine it ran on, when, the CPU time of the
processes it measured, and its output (a readable table on stderr unless ``--json``, then one JSON
object as the last line)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


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


# -- CPU time of processes ----------------------------------------------------------------------------
def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_total(pids: Iterable[int]) -> float:
    return sum(process_cpu_s(pid) for pid in pids)


def _processes() -> Iterable[tuple[int, str, int]]:
    """(pid, command name, parent pid) of every process, from ``/proc``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        yield int(entry.name), comm, int(rest[1])


def child_pids(name_prefix: str) -> list[int]:
    """Direct children of this process whose command name starts with ``name_prefix``."""
    me = os.getpid()
    return [pid for pid, comm, ppid in _processes() if ppid == me and comm.startswith(name_prefix)]


def process_tree(root: int) -> dict[int, str]:
    """``root`` and every process below it: pid -> command name."""
    names: dict[int, str] = {}
    parent: dict[int, int] = {}
    for pid, comm, ppid in _processes():
        names[pid], parent[pid] = comm, ppid
    tree, frontier = {root: names.get(root, "")}, [root]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in tree:
                tree[child] = names[child]
                frontier.append(child)
    return tree


def tree_cpu_s(root: int, name_prefix: str = "") -> float:
    """CPU seconds of ``root``'s process tree (only commands starting with ``name_prefix``)."""
    total = 0.0
    for pid, name in process_tree(root).items():
        if name.startswith(name_prefix):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += process_cpu_s(pid)
    return total
