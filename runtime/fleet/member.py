"""One stateful worker in the fleet: its lease, renewed four times a lease; the sessions it owns;
its share of re-placing a lapsed worker's sessions; fencing; and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError

from runtime.fleet.records import Ownership, WorkerLease, lease_key, owner_key, place, safe_worker_id
from runtime.fleet.view import FleetView, assign, open_view, unassign
from runtime.jetstream import START_DEADLINE_S, until_answered
from runtime.logging import get_logger
from shared.subjects import Subjects

log = get_logger("fleet")
SWEEP_PARALLEL = 16  # owner records written at once by one failover sweep
# ``ready`` marks written at once: off the change loop, but never a burst that queues a lease
# renewal behind thousands of writes at the server (2,000 sessions placed in 4 s)
READY_PARALLEL = 8


class WorkerSettings(Protocol):
    worker_name: str
    max_sessions: int
    lease_s: float
    js_replicas: int


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
        self._orphaned_since: dict[str, float] = {}  # session -> when this worker saw it orphaned
        self._tasks: list[asyncio.Task[None]] = []
        self._readying: set[asyncio.Task[None]] = set()  # ``_mark_ready`` writes in flight
        self._ready_gate = asyncio.Semaphore(READY_PARALLEL)

    @classmethod
    def of_worker(
        cls,
        js: JetStreamContext,
        subjects: Subjects,
        stage: str,
        settings: WorkerSettings,
        on_serve: ServeHook,
        on_unserve: StopHook,
        **options: Any,
    ) -> FleetMember:
        """A stateful worker's membership as its settings describe it (its name, capacity, lease
        and the replicas of the buckets it creates)."""
        return cls(
            js,
            subjects,
            stage,
            settings.worker_name,
            settings.max_sessions,
            settings.lease_s,
            on_serve,
            on_unserve,
            replicas=settings.js_replicas,
            **options,
        )

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.view = await open_view(self.js, self.subjects, self.replicas)
        self.view.listeners.append(self._on_owner_change)
        # a cluster still electing leaders at start: ask again, do not exit
        await until_answered(
            self._renew, START_DEADLINE_S, log, "lease_not_written_yet", worker=self.worker_id
        )
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
        with contextlib.suppress(Exception):  # bounded: a renewal that hangs must not hold the exit
            await asyncio.wait_for(self._renew(), self.lease_s)
        deadline = time.monotonic() + timeout_s
        while True:
            # what the records give this worker, not only what it serves: a session handed here
            # meanwhile by a worker draining at the same moment is passed on too
            for session_id in self.view.sessions_of(self.stage, self.worker_id):
                await self._hand_over(session_id)
            if self._is_settled() or time.monotonic() >= deadline:
                return
            self.view.changed.clear()
            self._emptied.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (self.view.changed, self._emptied)]
            await asyncio.wait(waits, timeout=min(0.25, deadline - time.monotonic()))
            for w in waits:
                w.cancel()

    async def _hand_over(self, session_id: str) -> None:
        """Re-place one of this worker's sessions elsewhere (never here), or give it up."""
        assert self.view is not None
        held = self.view.owner(self.stage, session_id)
        if held is None or held[0].worker_id != self.worker_id:
            return
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

    def _is_settled(self) -> bool:
        assert self.view is not None
        return (
            not self.serving
            and self._changes.empty()
            and not self._busy
            and not self.view.sessions_of(self.stage, self.worker_id)
        )

    async def close(self) -> None:
        for task in [*self._tasks, *self._readying]:
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
        """One pass: the sessions of lapsed workers (each lapse confirmed once, from the bucket's
        leader), re-placed by the worker that placement gives them to, in parallel.

        Why each takes its own share: a worker with hundreds of sessions leaves hundreds of
        orphans, and every survivor walking all of them one by one, racing the others on each
        compare-and-set, took seconds per hundred. Every survivor computes the same placement (same
        records, sorted), so each claims only what lands on itself, all at once; a session nobody
        claimed within a lease (the views differed) is re-placed by whichever worker sees it."""
        assert self.view is not None
        now, mono = time.time_ns(), time.monotonic()
        stage = self.stage
        lapsed: dict[str, bool] = {}
        orphans: list[tuple[str, tuple[Ownership, int]]] = []
        for (s, session_id), held in sorted(self.view.owners.items()):
            if s != stage or self.view.owner_alive(stage, session_id, now):
                continue
            worker = held[0].worker_id
            if worker not in lapsed:  # the watch may be behind: that worker may be alive
                lapsed[worker] = await self.view.confirm_lapsed(stage, worker)
            if lapsed[worker]:
                orphans.append((session_id, held))
        seen = {session_id for session_id, _ in orphans}
        self._orphaned_since = {k: v for k, v in self._orphaned_since.items() if k in seen}
        owned = self.view.owned(stage)
        workers = self.view.workers(stage)
        claims: list[tuple[str, str, tuple[Ownership, int]]] = []
        for session_id, held in orphans:
            since = self._orphaned_since.setdefault(session_id, mono)
            chosen = place(session_id, workers, owned, now, backend=self.backend)
            if chosen is None:
                continue  # nobody has room: the session waits (its camera gets at_capacity at ingest)
            owned[chosen.worker_id] += 1  # the next orphan sees this one placed
            if chosen.worker_id == self.worker_id or mono - since > self.lease_s:
                claims.append((session_id, chosen.worker_id, held))
        gate = asyncio.Semaphore(SWEEP_PARALLEL)

        async def claim(session_id: str, worker: str, held: tuple[Ownership, int]) -> None:
            async with gate:
                record = await assign(self.view, stage, session_id, worker, "failover", held)  # type: ignore[arg-type]
            if record is not None:
                log.info("session_failed_over", session_id=session_id, to=worker, previous=held[0].worker_id)

        results = await asyncio.gather(*(claim(*c) for c in claims), return_exceptions=True)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # the next sweep tries them again
            log.warning(
                "fleet_sweep_failed", claims=len(failed), error=str(failed[0]) or type(failed[0]).__name__
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

    def _ready_later(self, session_id: str) -> None:
        """``_mark_ready`` off the change loop: it is a KV round trip, and a worker taking over
        hundreds of orphaned sessions served them one round trip apart (at 2,000 sessions on 8
        workers the last of a survivor's share resumed about a second after its first)."""

        async def mark() -> None:
            try:
                async with self._ready_gate:
                    await self._mark_ready(session_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the record stays not-ready; frames flow regardless
                log.warning(
                    "fleet_mark_ready_failed", session_id=session_id, error=str(exc) or type(exc).__name__
                )

        task = asyncio.create_task(mark(), name=f"ready:{session_id}")
        self._readying.add(task)
        task.add_done_callback(self._readying.discard)

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
                    self._ready_later(session_id)
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
