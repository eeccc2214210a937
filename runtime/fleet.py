"""The fleet: workers, leases and session ownership on JetStream KV (docs/fleet.md).

Why here and not a scheduler of our own: JetStream KV already gives what ownership needs, a
compare-and-set on a key's revision (``create`` fails if the key exists, ``update(last=rev)``
fails unless the key is still at ``rev``) and watches that push every change. So:

- each stateful worker (preprocess, generator) keeps a **lease** in ``<P>_WORKERS`` under
  ``<stage>.<worker>``: capacity, load, backend, renewed four times per ``lease_s``;
- each session has an **owner record** per stage in ``<P>_OWNERS`` under ``<stage>.<session>``:
  the worker, and an **epoch** that grows with every change of owner. Records are written only
  with compare-and-set, so two placers can never both win;
- **placement** (``place``) happens at session start only (``Admission``, run by ingest), and
  again only when an owner's lease lapsed (any worker of the stage notices and re-places) or its
  owner drains (it re-places its own sessions before it exits);
- **fencing**: a worker stops publishing for its sessions once its own renewals have failed for
  three quarters of a lease, before anyone may take them over (a full lease); outputs carry the
  epoch, and receivers drop anything older than the newest epoch they have seen.

Liveness compares the lease's wall-clock renewal time with the reader's clock: across machines
the clocks must be NTP-synced (as glass-to-glass latency already requires).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.jetstream import key_value
from runtime.logging import get_logger
from shared.errors import CodedError
from shared.schemas import Message, SchemaError
from shared.subjects import Subjects

log = get_logger("fleet")

STATEFUL_STAGES = ("preprocess", "generator")
KV_DELETES = ("DEL", "PURGE")
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


WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "wrong last sequence" error codes


def _lost_race(exc: Exception) -> bool:
    """A compare-and-set that lost: nats-py raises KeyWrongLastSequenceError from update/create
    but a plain APIError (code 10071) from delete."""
    return isinstance(exc, KeyWrongLastSequenceError) or (
        isinstance(exc, APIError) and exc.err_code in WRONG_LAST_SEQUENCE
    )


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


def registry_configs(subjects: Subjects, replicas: int = 1) -> tuple[KeyValueConfig, KeyValueConfig]:
    """The two buckets: leases (memory: a lease is worthless after a restart) and owners (file)."""
    workers = KeyValueConfig(
        bucket=subjects.worker_bucket,
        history=1,
        storage=StorageType.MEMORY,
        replicas=replicas,
        description="fleet registry: <stage>.<worker> -> WorkerLease",
    )
    owners = KeyValueConfig(
        bucket=subjects.owner_bucket,
        history=1,
        storage=StorageType.FILE,
        replicas=replicas,
        description="session ownership: <stage>.<session> -> Ownership",
    )
    return workers, owners


OwnerChange = Callable[[str, str, "Ownership | None"], None]


class FleetView:
    """A live local copy of the registry and the owner records, kept by two KV watches.

    ``ready`` is set once both have delivered what the buckets held; listeners hear every change
    of an owner record (``stage, session_id, record or None``)."""

    def __init__(self, workers: KeyValue, owners: KeyValue) -> None:
        self.workers_kv = workers
        self.owners_kv = owners
        self.leases: dict[tuple[str, str], WorkerLease] = {}
        self.lease_seen: dict[tuple[str, str], float] = {}  # when each lease last changed (monotonic)
        self.owners: dict[tuple[str, str], tuple[Ownership, int]] = {}
        self.listeners: list[OwnerChange] = []
        self.changed = asyncio.Event()  # set on every owner-record change (waiters clear it)
        self.last_update: dict[str, float] = {}  # bucket -> when its watch last delivered (monotonic)
        self.stall_s = 2.0  # a registry watch silent this long (leases renew 4x a lease) is reopened
        self.ready = asyncio.Event()
        self._synced: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: dict[str, KeyValue.KeyWatcher] = {}

    async def start(self, timeout_s: float = 10.0) -> FleetView:
        self._tasks = [
            asyncio.create_task(
                self._watch(self.workers_kv, "workers", self._on_lease), name="fleet:workers"
            ),
            asyncio.create_task(self._watch(self.owners_kv, "owners", self._on_owner), name="fleet:owners"),
            asyncio.create_task(self._watchdog(), name="fleet:watchdog"),
        ]
        await asyncio.wait_for(self.ready.wait(), timeout_s)
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # asyncio.wait: a cancellation of the caller itself is never swallowed
            await asyncio.wait(self._tasks, timeout=5.0)
        for watcher in self._watchers.values():  # unsubscribe, or a drain waits on them
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _watchdog(self) -> None:
        """Reopen both watches when the registry's has gone quiet: leases are renewed four times a
        lease, so silence means the watch's consumer sat on a lost node (nats-py's ordered
        consumer would only notice after two missed 5 s heartbeats, 10-18 s of a stale view)."""
        while True:
            await asyncio.sleep(self.stall_s / 2)
            quiet = time.monotonic() - self.last_update.get("workers", time.monotonic())
            now = time.time_ns()
            if quiet > self.stall_s and any(w.alive(now - int(quiet * 1e9)) for w in self.leases.values()):
                log.warning("fleet_watch_stalled", quiet_s=round(quiet, 1))
                self.last_update["workers"] = time.monotonic()
                for name, watcher in list(self._watchers.items()):
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # ends its loop in _watch, which opens a new one
                    self._watchers.pop(name, None)

    async def _watch(self, kv: KeyValue, name: str, apply: Callable[[str, bytes | None, int], None]) -> None:
        """Follow one bucket for ever; a watch that breaks or is stopped by the watchdog (a node
        lost) is opened again and replays the bucket's current contents."""
        while True:
            try:
                old = self._watchers.pop(name, None)
                if old is not None:
                    with contextlib.suppress(Exception):
                        await old.stop()
                watcher = self._watchers[name] = await kv.watchall()
                self.last_update[name] = time.monotonic()
                async for entry in watcher:
                    self.last_update[name] = time.monotonic()
                    if entry is None:  # the bucket's contents so far have all arrived
                        self._synced.add(name)
                        if self._synced >= {"workers", "owners"}:
                            self.ready.set()
                        continue
                    deleted = entry.operation in KV_DELETES
                    apply(entry.key, None if deleted else entry.value, entry.revision or 0)
                await asyncio.sleep(0.05)  # stopped: open it again
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fleet_watch_restarted", bucket=name, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.2)

    def _on_lease(self, key: str, value: bytes | None, revision: int) -> None:
        stage, _, worker = key.partition(".")
        if value is None:
            self.leases.pop((stage, worker), None)
            return
        try:
            self.leases[(stage, worker)] = WorkerLease.decode(value)
            self.lease_seen[(stage, worker)] = time.monotonic()
        except SchemaError as exc:
            log.warning("fleet_bad_lease", key=key, error=str(exc))

    def _on_owner(self, key: str, value: bytes | None, revision: int) -> None:
        stage, _, session = key.partition(".")
        if value is None:
            self.record(stage, session, None, revision)
            return
        try:
            self.record(stage, session, Ownership.decode(value), revision)
        except SchemaError as exc:
            log.warning("fleet_bad_owner", key=key, error=str(exc))

    def record(self, stage: str, session_id: str, owner: Ownership | None, revision: int) -> None:
        """Apply one owner record (from the watch, or at once after our own write): a revision
        older than the one held is an echo and ignored."""
        held = self.owners.get((stage, session_id))
        if held is not None and revision and revision < held[1]:
            return
        if owner is None:
            if held is None:
                return
            del self.owners[(stage, session_id)]
        else:
            if held is not None and held[1] == revision and held[0] == owner:
                return
            self.owners[(stage, session_id)] = (owner, revision)
        self.changed.set()
        for listener in self.listeners:
            listener(stage, session_id, owner)

    # -- queries --------------------------------------------------------------------------------
    def workers(self, stage: str) -> list[WorkerLease]:
        return [w for (s, _), w in self.leases.items() if s == stage]

    def lease(self, stage: str, worker_id: str) -> WorkerLease | None:
        return self.leases.get((stage, worker_id))

    def owner(self, stage: str, session_id: str) -> tuple[Ownership, int] | None:
        return self.owners.get((stage, session_id))

    def owned(self, stage: str) -> Counter[str]:
        return Counter(o.worker_id for (s, _), (o, _) in self.owners.items() if s == stage)

    def sessions_of(self, stage: str, worker_id: str) -> list[str]:
        return [sid for (s, sid), (o, _) in self.owners.items() if s == stage and o.worker_id == worker_id]

    async def confirm_lapsed(self, stage: str, worker_id: str) -> bool:
        """Read a lease straight from the bucket before acting on its lapse: the watch may be
        stale (a lost node), and re-placing a live worker's session makes two owners fight."""
        try:
            entry = await self.workers_kv.get(lease_key(stage, worker_id))
        except KeyNotFoundError:
            self.leases.pop((stage, worker_id), None)
            return True
        except Exception:
            return False  # cannot tell: do nothing now, the next sweep looks again
        if not entry.value:
            return True
        try:
            lease = WorkerLease.decode(entry.value)
        except SchemaError:
            return True
        if lease.alive(time.time_ns()):
            self.leases[(stage, worker_id)] = lease
            self.lease_seen[(stage, worker_id)] = time.monotonic()
            return False
        return True

    def registry_stale(self, stage: str, now_ns: int | None = None) -> bool:
        """No worker of ``stage`` looks alive: the registry itself is not being renewed (its
        JetStream leader is being re-elected after a node loss), or every worker is gone. Either
        way re-placing sessions cannot help, and existing owners are kept."""
        now = time.time_ns() if now_ns is None else now_ns
        return not any(w.alive(now) for w in self.workers(stage))

    def owner_alive(self, stage: str, session_id: str, now_ns: int | None = None) -> bool:
        held = self.owner(stage, session_id)
        if held is None:
            return False
        lease = self.lease(stage, held[0].worker_id)
        return lease is not None and lease.alive(time.time_ns() if now_ns is None else now_ns)


async def open_view(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> FleetView:
    workers_cfg, owners_cfg = registry_configs(subjects, replicas)
    workers = await key_value(js, workers_cfg)
    owners = await key_value(js, owners_cfg)
    return await FleetView(workers, owners).start()


async def assign(
    view: FleetView,
    stage: str,
    session_id: str,
    worker_id: str,
    reason: str,
    expected: tuple[Ownership, int] | None,
) -> Ownership | None:
    """Give a session to ``worker_id`` with compare-and-set against ``expected`` (None: the key
    must not exist). Returns the new record, or None when someone else changed it first."""
    now = time.time_ns()
    record = Ownership(
        session_id=session_id,
        stage=stage,
        worker_id=worker_id,
        epoch=next_epoch(expected[0].epoch if expected else 0, now),
        assigned_ns=now,
        reason=reason,
        previous=expected[0].worker_id if expected else "",
    )
    key = owner_key(stage, session_id)
    try:
        if expected is None:
            revision = await view.owners_kv.create(key, record.encode())
        else:
            revision = await view.owners_kv.update(key, record.encode(), last=expected[1])
    except Exception as exc:
        if _lost_race(exc):
            return None
        raise
    view.record(stage, session_id, record, revision)
    return record


async def unassign(view: FleetView, stage: str, session_id: str, worker_id: str) -> bool:
    """Delete the record if ``worker_id`` still holds it (compare-and-set on its revision)."""
    held = view.owner(stage, session_id)
    if held is None or held[0].worker_id != worker_id:
        return False
    try:
        await view.owners_kv.delete(owner_key(stage, session_id), last=held[1])
    except KeyNotFoundError:
        return False
    except Exception as exc:
        if _lost_race(exc):
            return False
        raise
    view.record(stage, session_id, None, held[1] + 1)
    return True


class Admission:
    """Admit a session for the whole pipeline once, at its start: an owner in every stateful
    stage, or a clear ``at_capacity`` with a retry hint and nothing half-placed."""

    def __init__(
        self, view: FleetView, stages: Sequence[str], retry_after_s: float = 2.0, ready_timeout_s: float = 2.0
    ) -> None:
        self.view = view
        self.stages = tuple(stages)
        self.retry_after_s = retry_after_s
        self.ready_timeout_s = ready_timeout_s
        self._lock = asyncio.Lock()

    def admitted(self, session_id: str) -> bool:
        now = time.time_ns()
        return all(
            self.view.owner_alive(stage, session_id, now)
            or (self.view.owner(stage, session_id) is not None and self.view.registry_stale(stage, now))
            for stage in self.stages
        )

    async def admit(self, session_id: str, backend: str = "") -> dict[str, Ownership]:
        """Owners for every stage (existing live ones are kept); raises ``CodedError`` (also
        ``unavailable`` when JetStream cannot be reached, e.g. during a leader election).

        One placement at a time in this process: two sessions placed at once would both see the
        same free slot. (Placers in several processes can still meet; a worker's own
        ``max_sessions`` check is the backstop, see docs/fleet.md.)"""
        async with self._lock:
            try:
                return await self._admit(session_id, backend)
            except CodedError:
                raise
            except Exception as exc:
                raise CodedError(
                    "unavailable",
                    f"placement failed ({type(exc).__name__}); retry in {self.retry_after_s:g} s",
                    retry_after_s=self.retry_after_s,
                ) from None

    async def _admit(self, session_id: str, backend: str) -> dict[str, Ownership]:
        placed: dict[str, Ownership] = {}
        created: list[tuple[str, str]] = []
        host = ""
        for stage in self.stages:
            for _attempt in range(3):
                now = time.time_ns()
                held = self.view.owner(stage, session_id)
                if held is not None and (
                    self.view.owner_alive(stage, session_id, now)
                    or not await self.view.confirm_lapsed(stage, held[0].worker_id)
                ):
                    placed[stage] = held[0]
                    break
                chosen = place(
                    session_id,
                    self.view.workers(stage),
                    self.view.owned(stage),
                    now,
                    backend=backend if stage == "generator" else "",
                    prefer_host=host,
                )
                if chosen is None and self.view.workers(stage):
                    chosen = await self._place_confirmed(session_id, stage, backend, host)
                if chosen is None and self.view.workers(stage) and self.view.registry_stale(stage):
                    raise CodedError(
                        "unavailable",
                        f"the {stage} registry is not being renewed (a NATS node was lost?); "
                        f"retry in {self.retry_after_s:g} s",
                        retry_after_s=self.retry_after_s,
                    )
                if chosen is None:
                    for done_stage, worker in created:  # nothing half-placed
                        await unassign(self.view, done_stage, session_id, worker)
                    raise CodedError(
                        "at_capacity",
                        f"every {stage} worker is full; retry in {self.retry_after_s:g} s",
                        retry_after_s=self.retry_after_s,
                        stage=stage,
                    )
                reason = "failover" if held is not None else "placed"
                record = await assign(self.view, stage, session_id, chosen.worker_id, reason, held)
                if record is not None:
                    placed[stage] = record
                    created.append((stage, chosen.worker_id))
                    host = chosen.host
                    break
            else:
                raise CodedError("unavailable", f"could not place {stage} for {session_id!r}: contended")
        await self._until_ready(session_id, self.ready_timeout_s)
        return placed

    async def _place_confirmed(
        self, session_id: str, stage: str, backend: str, host: str
    ) -> WorkerLease | None:
        """Before answering at_capacity: read the leases straight from the bucket (the watch may
        be stale after a node loss and show live workers as lapsed)."""
        for worker in self.view.workers(stage):
            await self.view.confirm_lapsed(stage, worker.worker_id)
        return place(
            session_id,
            self.view.workers(stage),
            self.view.owned(stage),
            time.time_ns(),
            backend=backend if stage == "generator" else "",
            prefer_host=host,
        )

    async def _until_ready(self, session_id: str, timeout_s: float) -> None:
        """Wait until every owner has subscribed, so the session's first frames are not lost."""
        deadline = time.monotonic() + timeout_s
        while not all(
            (held := self.view.owner(stage, session_id)) is not None and held[0].ready
            for stage in self.stages
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("admission_not_ready", session_id=session_id)
                return
            self.view.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.view.changed.wait(), left)


ServeHook = Callable[[str, Ownership], Awaitable[None]]
StopHook = Callable[[str, str], Awaitable[None]]


class FleetMember:
    """One stateful worker in the fleet: its lease, the sessions it owns, and its share of the
    failover duty. ``on_serve(session, record)`` / ``on_unserve(session, reason)`` run one at a
    time, in order, when this worker gains or loses a session."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        stage: str,
        worker_id: str,
        capacity: int,
        lease_s: float,
        on_serve: ServeHook,
        on_unserve: StopHook,
        *,
        backend: str = "",
        free_slots: Callable[[], int] | None = None,
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.subjects = subjects
        self.stage = stage
        self.worker_id = safe_worker_id(worker_id)
        self.capacity = capacity
        self.lease_s = lease_s
        self.backend = backend
        self.host = socket.gethostname()
        self.replicas = replicas
        self._on_serve = on_serve
        self._on_unserve = on_unserve
        self._free_slots = free_slots
        self.view: FleetView | None = None
        self.serving: dict[str, Ownership] = {}
        self.draining = False
        self._renewed_mono = 0.0
        self._changes: asyncio.Queue[tuple[str, Ownership | None]] = asyncio.Queue()
        self._emptied = asyncio.Event()  # set whenever this worker stops serving its last session
        self._busy = False  # a serve/unserve callback is running
        self._renew_failed = False
        self._sweep_after = 0.0  # monotonic time before which this worker re-places nothing
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.view = await open_view(self.js, self.subjects, self.replicas)
        self.view.listeners.append(self._on_owner_change)
        await self._renew()
        self._tasks = [
            asyncio.create_task(self._apply_changes(), name="fleet:changes"),
            asyncio.create_task(self._renew_loop(), name="fleet:lease"),
            asyncio.create_task(self._sweep_loop(), name="fleet:sweep"),
        ]
        for session_id in self.view.sessions_of(self.stage, self.worker_id):  # a restart with our id
            held = self.view.owner(self.stage, session_id)
            if held is not None:
                self._changes.put_nowait((session_id, held[0]))

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Hand every session to another worker before exiting (SIGTERM): the others see this
        worker draining and place nothing new here; each session is re-placed with
        compare-and-set, and this worker stops serving it as soon as the new owner holds it."""
        assert self.view is not None
        self.draining = True
        with contextlib.suppress(Exception):
            await self._renew()
        for session_id in list(self.serving):
            held = self.view.owner(self.stage, session_id)
            if held is None or held[0].worker_id != self.worker_id:
                continue
            chosen = place(
                session_id,
                self.view.workers(self.stage),
                self.view.owned(self.stage),
                time.time_ns(),
                backend=self.backend,
                exclude=(self.worker_id,),
            )
            if (
                chosen is None
                or await assign(self.view, self.stage, session_id, chosen.worker_id, "drain", held) is None
            ):
                await unassign(self.view, self.stage, session_id, self.worker_id)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled(), timeout_s)

    async def _settled(self) -> None:
        while self.serving or not self._changes.empty() or self._busy:
            self._emptied.clear()
            await self._emptied.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=5.0)
        if self.view is not None:
            with contextlib.suppress(Exception):  # leave the registry at once, not a lease later
                await self.view.workers_kv.delete(lease_key(self.stage, self.worker_id))
            await self.view.close()

    # -- what the stage asks ------------------------------------------------------------------------
    @property
    def fenced(self) -> bool:
        """True once this worker's renewals have failed for 3/4 of a lease while other workers'
        still get through: it must stop publishing, because at a full lease another worker may
        take its sessions. When nobody's renewals get through (the registry's JetStream leader
        is being re-elected after a node loss, seconds), nobody can take anything over either,
        so the stream keeps flowing instead of freezing for the election."""
        now = time.monotonic()
        stale = now - self._renewed_mono > 0.75 * self.lease_s
        if not stale or self.view is None:
            return stale
        return any(  # someone else renewed within the last half lease: the registry works, we don't
            now - seen < 0.5 * self.lease_s
            for key, seen in self.view.lease_seen.items()
            if key != (self.stage, self.worker_id)
        )

    def may_publish(self, session_id: str) -> bool:
        return session_id in self.serving and not self.fenced

    def epoch(self, session_id: str) -> int:
        record = self.serving.get(session_id)
        return record.epoch if record is not None else 0

    async def release(self, session_id: str) -> None:
        """Give a session up (stop, idle): its record goes, and the next start places it anew."""
        if self.view is not None:
            await unassign(self.view, self.stage, session_id, self.worker_id)

    @property
    def healthy(self) -> bool:
        return self.view is not None and not self.fenced

    # -- internals --------------------------------------------------------------------------------
    def _lease(self) -> WorkerLease:
        return WorkerLease(
            worker_id=self.worker_id,
            stage=self.stage,
            capacity=self.capacity,
            renewed_ns=time.time_ns(),
            lease_ms=int(self.lease_s * 1000),
            backend=self.backend,
            host=self.host,
            sessions=len(self.serving),
            free_slots=self._free_slots() if self._free_slots else -1,
            draining=self.draining,
        )

    async def _renew(self) -> None:
        assert self.view is not None
        lease = self._lease()
        started = time.monotonic()
        await self.view.workers_kv.put(lease_key(self.stage, self.worker_id), lease.encode())
        if self._renew_failed:  # after an outage, let every lease be renewed before judging any
            self._sweep_after = time.monotonic() + 1.5 * self.lease_s
            self._renew_failed = False
        self._renewed_mono = started
        self.view.leases[(self.stage, self.worker_id)] = lease

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 4)
            try:
                await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._renew_failed = True
                log.warning("lease_renew_failed", worker=self.worker_id, error=str(exc) or type(exc).__name__)

    async def _sweep_loop(self) -> None:
        """Re-place the sessions of workers whose lease lapsed. Every worker of the stage does
        this; compare-and-set lets exactly one re-placement through."""
        while True:
            await asyncio.sleep(self.lease_s / 4)
            stale = time.monotonic() - self._renewed_mono > 0.75 * self.lease_s
            if stale or self._renew_failed or time.monotonic() < self._sweep_after or self.draining:
                continue  # a worker that cannot renew its own lease must not judge the others
            try:
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fleet_sweep_failed", error=str(exc) or type(exc).__name__)

    async def _sweep(self) -> None:
        assert self.view is not None
        now = time.time_ns()
        for (stage, session_id), held in list(self.view.owners.items()):
            if stage != self.stage or self.view.owner_alive(stage, session_id, now):
                continue
            if not await self.view.confirm_lapsed(stage, held[0].worker_id):
                continue  # the watch was behind: that worker is alive
            owned = self.view.owned(stage)
            chosen = place(session_id, self.view.workers(stage), owned, now, backend=self.backend)
            if chosen is None:
                continue  # nobody has room: the session waits (its camera gets at_capacity at ingest)
            record = await assign(self.view, stage, session_id, chosen.worker_id, "failover", held)
            if record is not None:
                log.info(
                    "session_failed_over",
                    session_id=session_id,
                    to=chosen.worker_id,
                    previous=held[0].worker_id,
                )

    async def _mark_ready(self, session_id: str) -> None:
        """Tell the placer this worker now takes the session's frames (compare-and-set: if the
        session moved on meanwhile, the newer record stands)."""
        assert self.view is not None
        held = self.view.owner(self.stage, session_id)
        if held is None or held[0].worker_id != self.worker_id or held[0].ready:
            return
        record = replace(held[0], ready=True)
        with contextlib.suppress(KeyWrongLastSequenceError):
            revision = await self.view.owners_kv.update(
                owner_key(self.stage, session_id), record.encode(), last=held[1]
            )
            self.view.record(self.stage, session_id, record, revision)

    def _on_owner_change(self, stage: str, session_id: str, record: Ownership | None) -> None:
        if stage == self.stage:
            mine = record is not None and record.worker_id == self.worker_id
            if mine or session_id in self.serving:
                self._changes.put_nowait((session_id, record))

    async def _apply_changes(self) -> None:
        while True:
            session_id, record = await self._changes.get()
            mine = record is not None and record.worker_id == self.worker_id
            self._busy = True
            try:
                if mine and session_id not in self.serving and len(self.serving) >= self.capacity:
                    # placed here by a placer that did not see our last slot go: give it back
                    # (the next frame's admission places it elsewhere)
                    log.warning("session_over_capacity_returned", session_id=session_id)
                    await unassign(self.view, self.stage, session_id, self.worker_id)  # type: ignore[arg-type]
                elif mine and session_id not in self.serving:
                    assert record is not None
                    self.serving[session_id] = record
                    await self._on_serve(session_id, record)
                    await self._mark_ready(session_id)
                elif mine:
                    assert record is not None
                    self.serving[session_id] = record  # same owner, newer epoch
                elif session_id in self.serving:
                    del self.serving[session_id]
                    reason = "released" if record is None else f"moved to {record.worker_id}"
                    await self._on_unserve(session_id, reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet_change_failed", session_id=session_id)
            finally:
                self._busy = False
            if not self.serving and self._changes.empty():
                self._emptied.set()


def worker_registry_summary(view: FleetView, stage: str) -> list[dict[str, object]]:
    """For health endpoints and benches: each worker of ``stage`` with what it owns."""
    owned = view.owned(stage)
    now = time.time_ns()
    return [
        {
            **{k: getattr(w, k) for k in ("worker_id", "capacity", "backend", "draining")},
            "owned": owned[w.worker_id],
            "alive": w.alive(now),
        }
        for w in view.workers(stage)
    ]


__all__ = [
    "STATEFUL_STAGES",
    "Admission",
    "FleetMember",
    "FleetView",
    "Ownership",
    "WorkerLease",
    "assign",
    "next_epoch",
    "open_view",
    "place",
    "registry_configs",
    "unassign",
]
