"""The fleet's records and its placement rule: a worker's lease, a session's owner record, their
keys, the epoch rule and ``place``. Pure: no bus, no asyncio (docs/fleet.md)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from shared.schemas import Message

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_worker_id(name: str) -> str:
    """A worker name usable as one KV key token (hostnames may hold dots)."""
    return _UNSAFE.sub("-", name)[:64] or "worker"


@dataclass(frozen=True)
class WorkerLease(Message):
    """One worker's registration, renewed four times per lease."""

    TYPE: ClassVar[str] = "worker_lease"
    worker_id: str
    stage: str
    capacity: int
    renewed_ns: int
    lease_ms: int
    backend: str = ""
    host: str = ""
    sessions: int = 0
    free_slots: int = -1  # -1: no pool limit beyond ``capacity`` (the student: free KV cache slots)
    draining: bool = False

    def alive(self, now_ns: int) -> bool:
        return now_ns - self.renewed_ns < self.lease_ms * 1_000_000


@dataclass(frozen=True)
class Ownership(Message):
    """Who serves one session for one stage, since which epoch and why."""

    TYPE: ClassVar[str] = "ownership"
    session_id: str
    stage: str
    worker_id: str
    epoch: int
    assigned_ns: int
    reason: str = "placed"  # placed (session start), failover (lease lapsed), drain (handed over)
    previous: str = ""  # the worker it came from
    ready: bool = False  # the owner has subscribed to the session: its frames are not lost


def lease_key(stage: str, worker_id: str) -> str:
    return f"{stage}.{worker_id}"


def owner_key(stage: str, session_id: str) -> str:
    return f"{stage}.{session_id}"


def next_epoch(previous: int, now_ns: int) -> int:
    """Epochs grow with every owner change, and across a deleted record too (milliseconds since
    1970 as the floor): a viewer that saw an old owner never drops the next one's frames."""
    return max(previous + 1, now_ns // 1_000_000)


def _spread(session_id: str, worker_id: str) -> int:
    """A stable tie-break, so equally loaded workers share new sessions evenly."""
    return int.from_bytes(
        hashlib.blake2b(f"{session_id}/{worker_id}".encode(), digest_size=4).digest(), "big"
    )


def place(
    session_id: str,
    leases: Iterable[WorkerLease],
    owned: Counter[str],
    now_ns: int,
    *,
    backend: str = "",
    exclude: Sequence[str] = (),
    prefer_host: str = "",
) -> WorkerLease | None:
    """The worker that should take ``session_id``: alive, not draining, not excluded, of the
    right backend, with room (``capacity`` and, for the student, free cache slots); least loaded
    first, then on the host that already serves the session's other stage, then spread."""
    candidates = [
        w
        for w in leases
        if w.alive(now_ns)
        and not w.draining
        and w.worker_id not in exclude
        and (not backend or not w.backend or w.backend == backend)
        and owned[w.worker_id] < w.capacity
        and w.free_slots != 0
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda w: (
            owned[w.worker_id],
            w.host != prefer_host if prefer_host else False,
            _spread(session_id, w.worker_id),
        ),
    )
