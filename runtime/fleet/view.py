"""The fleet seen from one process: a live copy of the registry and the owner records, kept by
two KV watches, and the compare-and-set writes that change an owner record."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.fleet.records import Ownership, WorkerLease, lease_key, next_epoch, owner_key
from runtime.jetstream import key_value, leader_get
from runtime.logging import get_logger
from shared.schemas import SchemaError
from shared.subjects import Subjects

log = get_logger("fleet")

KV_DELETES = ("DEL", "PURGE")
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "wrong last sequence" error codes


def _lost_race(exc: Exception) -> bool:
    """A compare-and-set that lost: nats-py raises KeyWrongLastSequenceError from update/create
    but a plain APIError (code 10071) from delete."""
    return isinstance(exc, KeyWrongLastSequenceError) or (
        isinstance(exc, APIError) and exc.err_code in WRONG_LAST_SEQUENCE
    )


def registry_configs(subjects: Subjects, replicas: int = 1) -> tuple[KeyValueConfig, KeyValueConfig]:
    """The two buckets: leases (memory: a lease is worthless after a restart) and owners (file)."""
    workers = KeyValueConfig(
        bucket=subjects.worker_bucket,
        history=1,
        storage=StorageType.MEMORY,
        replicas=replicas,
        direct=False,  # reads that decide come from the leader (docs/fleet.md, "Reads on a cluster")
        description="fleet registry: <stage>.<worker> -> WorkerLease",
    )
    owners = KeyValueConfig(
        bucket=subjects.owner_bucket,
        history=1,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=False,
        description="session ownership: <stage>.<session> -> Ownership",
    )
    return workers, owners


OwnerChange = Callable[[str, str, "Ownership | None"], None]


class FleetView:
    """A live local copy of the registry and the owner records, kept by two KV watches.

    ``ready`` is set once both have delivered what the buckets held; listeners hear every change
    of an owner record (``stage, session_id, record or None``)."""

    def __init__(self, workers: KeyValue, owners: KeyValue, js: JetStreamContext | None = None) -> None:
        self.workers_kv = workers
        self.owners_kv = owners
        # leader reads (``confirm_lapsed``); nats-py's KeyValue keeps its bucket and context private
        self.js = js if js is not None else workers._js
        self.workers_bucket = workers._name
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
        try:  # the leader's copy: a follower that lags would show a live worker as lapsed
            entry = await leader_get(self.js, self.workers_bucket, lease_key(stage, worker_id))
        except Exception:
            return False  # cannot tell (no leader yet): do nothing now, the next sweep looks again
        if entry is None:
            self.leases.pop((stage, worker_id), None)
            return True
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
    return await FleetView(workers, owners, js).start()


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
