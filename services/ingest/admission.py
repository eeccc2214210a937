"""Admission: a session's first frame or ``start`` gives it an owner in every stateful stage, once,
for the whole pipeline (docs/fleet.md). Ingest's alone, so it lives beside ingest."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from runtime.fleet.records import Ownership, WorkerLease, place
from runtime.fleet.view import FleetView, assign, unassign
from runtime.logging import get_logger
from shared.errors import CodedError

log = get_logger("fleet")


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

    def has_owners(self, session_id: str) -> bool:
        """An owner record in every stage (alive or not): a session placed before."""
        return all(self.view.owner(stage, session_id) is not None for stage in self.stages)

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
