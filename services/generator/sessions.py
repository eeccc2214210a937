"""The sessions one generator worker serves, and what opens and ends them: the session table, the
backends they render with (each built once), the garments (``GarmentCache``) and a lock per
session that orders control against its lifecycle (never against a frame being drawn).

A session opens on a ``start``, on a swap for a stored session this worker does not serve yet, or
implicitly on its first frame (its stored garment, or the default one); it ends on ``stop``, idle,
a move to another worker, or shutdown, after its renderer's held-back frames are published."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from runtime.events import EventPublisher
from runtime.service import ServiceContext
from services.generator.backends import make_backend, resolve
from services.generator.garment_cache import GarmentCache
from services.generator.lifecycle import ServedSession, SessionTable, StoredSession
from services.generator.rendering import Backend, Garment
from services.generator.settings import GeneratorSettings
from services.generator.state import SessionStore
from shared.errors import CodedError
from shared.garment_client import GarmentClient
from shared.schemas import SessionState

Flush = Callable[[ServedSession], Awaitable[None]]


class Sessions:
    def __init__(
        self,
        ctx: ServiceContext,
        settings: GeneratorSettings,
        events: EventPublisher,
        flush: Flush,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.events = events
        self.table = SessionTable(settings.max_sessions)
        self.backends: dict[str, Backend] = {}
        self.garments = GarmentCache(
            GarmentClient(ctx.nc, ctx.subjects, timeout_s=settings.garment_timeout_s),
            settings.garment_cache_size,
            prepare=self._prepare,
        )
        self.store: SessionStore | None = None  # opened at start (JetStream)
        self._flush = flush
        self._locks: dict[str, asyncio.Lock] = {}

    # -- backends ---------------------------------------------------------------------------------
    async def backend(self, name: str) -> Backend:
        """The worker's backend ``name``, built once (off the loop: a model build takes seconds)."""
        backend = self.backends.get(name)
        if backend is None:
            backend = self.backends[name] = await asyncio.to_thread(make_backend, name, self.settings)
        return backend

    def backend_name(self, requested: str) -> str:
        try:
            return resolve(requested or self.settings.backend, self.settings)
        except ValueError as exc:
            raise CodedError("bad_backend", str(exc)) from None

    def _prepare(self, garment: Garment) -> None:
        for backend in list(self.backends.values()):
            backend.prepare(garment)

    # -- sessions ---------------------------------------------------------------------------------
    def lock(self, sid: str) -> asyncio.Lock:
        lock = self._locks.get(sid)
        if lock is None:
            lock = self._locks[sid] = asyncio.Lock()
        return lock

    def forget_lock(self, sid: str) -> None:
        self._locks.pop(sid, None)

    async def known(self, sid: str) -> ServedSession | StoredSession | None:
        """The session as this worker serves it, else as stored, else None."""
        served = self.table.get(sid)
        if served is not None:
            return served
        assert self.store is not None
        return await self.store.load(sid)

    def open(
        self,
        sid: str,
        garment: Garment,
        backend: str,
        state: SessionState | None,
        previous: ServedSession | None = None,
    ) -> ServedSession:
        served = self.table.open(sid, garment, backend, state, previous)
        self.ctx.metrics.active_sessions.set(len(self.table))
        self.garments.prefetch()
        return served

    async def implicit_start(self, sid: str) -> ServedSession:
        """A session that starts with frames alone: its stored state (after a restart) or the
        default garment and backend."""
        assert self.store is not None
        stored = await self.store.load(sid)
        state = stored.state if stored else None
        garment = await self._resumed_garment(sid, state)
        backend = self.backend_name(state.backend if state else "")
        served = self.open(sid, garment, backend, state)
        if state is None or garment.garment_id != state.garment_id:
            await self.store.save(served)
        await self.events.emit(
            "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
        )
        return served

    async def _resumed_garment(self, sid: str, state: SessionState | None) -> Garment:
        """The stored garment, or the default one when the stored one no longer exists (taken out
        of the catalogue): the session renders on, with a ``garment_fallback`` status event,
        instead of answering every frame with ``unknown_garment`` and showing nothing."""
        default = self.settings.default_garment
        if state is None or not state.garment_id or state.garment_id == default:
            return await self.garments.get(default)
        try:
            return await self.garments.get(state.garment_id)
        except CodedError as exc:
            if exc.code != "unknown_garment":
                raise  # the garment service is down or failing: not a reason to forget the garment
        garment = await self.garments.get(default)
        await self.events.status(
            sid,
            "garment_fallback",
            f"stored garment {state.garment_id!r} does not exist; showing {garment.garment_id!r}",
            requested=state.garment_id,
            garment_id=garment.garment_id,
        )
        return garment

    async def end(self, sid: str, reason: str, announce: bool = True) -> None:
        """Stop serving a session here; ``announce`` tells its viewers (not when it only moved)."""
        if (ending := self.table.get(sid)) is not None:
            await self._flush(ending)
        served = self.table.close(sid)
        if served is None:
            return
        self.ctx.stats.forget(sid)
        self.events.forget(sid)
        self.ctx.metrics.active_sessions.set(len(self.table))
        if announce:
            await self.events.emit("session_ended", sid, reason, frames=served.frames_rendered)

    def close(self) -> None:
        for served in self.table:
            self.table.close(served.session_id)
