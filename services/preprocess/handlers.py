"""Preprocess handlers: the only preprocess module that touches NATS.

ingested frames (all sessions, latest-frame-wins per session) → the session's own
``SessionPreprocessor`` on a worker thread → ``Conditioning`` on the session's cond subject with
the frame's headers (stamped ``preprocess.in``/``.out``). Per-session state is created on the first
frame and closed when the session stops (control ``stop``) or goes idle, so memory follows the
number of live sessions, not the number ever seen.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.preprocess import conditioning as cond
from services.preprocess.pipeline import FrameError, FrameResult, PreprocessConfig, SessionPreprocessor
from services.preprocess.settings import PreprocessSettings
from shared.bus import LatestFrameSlots, publish_frame
from shared.events import EventPublisher
from shared.headers import FrameMeta, HeaderError
from shared.logging import get_logger
from shared.schemas import Control, SchemaError
from shared.service import ServiceContext
from shared.subjects import Channel

log = get_logger("preprocess")
STAGE = "preprocess"
POSE_CODES = (cond.NO_PERSON, cond.PARTIAL_PERSON, cond.NO_TORSO, cond.SEVERAL_PEOPLE)
STATUS_TEXT = {
    cond.NO_PERSON: "no person in the frame",
    cond.PARTIAL_PERSON: "only part of the person is in the frame",
    cond.NO_TORSO: "shoulders not visible: no garment region",
    cond.SEVERAL_PEOPLE: "several people in the frame; conditioning follows one of them",
}


@dataclass
class _OpenPreprocessor:
    pre: SessionPreprocessor
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    status: frozenset[str] = frozenset()
    inflight: asyncio.Future[FrameResult] | None = None  # the frame a worker thread is running


class PreprocessHandlers:
    def __init__(self, ctx: ServiceContext, settings: PreprocessSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.config = PreprocessConfig.from_settings(settings)
        self.events = EventPublisher(ctx.nc, ctx.subjects, STAGE)
        self.sessions: dict[str, _OpenPreprocessor] = {}
        self.reclaimed = 0
        self._executor = ThreadPoolExecutor(max(1, settings.pose_workers), thread_name_prefix="preprocess")
        self.slots = LatestFrameSlots(
            self.on_frame,
            idle_s=settings.session_idle_s,
            on_drop=lambda sid: self._count_drop(sid, "superseded"),
            on_idle=self.on_idle,
        )
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        ctx = self.ctx
        self._subs.append(await ctx.subscribe_frames(Channel.INGESTED, self.slots))
        self._subs.append(
            await ctx.nc.subscribe(ctx.subjects.all_sessions(Channel.CONTROL), cb=self.on_control)
        )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await self.slots.close()
        for sid in list(self.sessions):
            await self._close_session(sid, "shutdown")
        self._executor.shutdown(wait=True)

    def health(self) -> dict:
        return {"sessions": len(self.sessions), "sessions_reclaimed": self.reclaimed}

    # -- handlers ---------------------------------------------------------------------------------
    async def on_control(self, msg: Msg) -> None:
        """A stopped session gives its MediaPipe graph back at once (not after the idle timeout)."""
        try:
            control = Control.decode(msg.data)
        except SchemaError:
            return  # the generator owns control errors
        if control.action == "stop":
            await self._close_session(control.session_id, "stopped")

    async def on_frame(self, session_id: str, msg: Msg, t_in: int) -> None:
        """``t_in``: when the frame reached this process (its wait in the slot is stage time)."""
        stats = self.ctx.stats[session_id]
        stats.frames_in += 1
        self.ctx.metrics.frames_in.inc()
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            try:
                meta = FrameMeta.from_headers(msg.headers)
            except HeaderError as exc:
                await self._reject(session_id, "bad_headers", str(exc))
                return
            if meta.session_id != session_id:
                await self._reject(
                    session_id, "session_mismatch", f"header session {meta.session_id!r} != subject session"
                )
                return
            if meta.trace and meta.trace[-1].edge == "out":
                self.ctx.metrics.hop_latency.observe((t_in - meta.trace[-1].ns) / 1e9)
            meta.stamp(STAGE, "in", t_in)
            try:
                result = await self._process(session_id, bytes(msg.data), meta)
            except FrameError as exc:
                await self._reject(session_id, exc.code, str(exc), seq=meta.seq)
                return
            except Exception as exc:  # MediaPipe failed: start this session's graph afresh
                log.exception("preprocess_failed", seq=meta.seq)
                reason = f"{type(exc).__name__}: {exc}"
                await self._reject(session_id, "preprocess_failed", reason, seq=meta.seq)
                await self._close_session(session_id, "failed")
                return
            if result is None:
                return
            await self._report(session_id, result, meta.seq)
            meta.width, meta.height = result.conditioning.width, result.conditioning.height
            meta.stamp(STAGE, "out")
            payload = result.conditioning.encode()
            if await publish_frame(self.ctx.nc, self.ctx.subjects.conditioning(session_id), payload, meta):
                spent_ms = (meta.trace[-1].ns - t_in) / 1e6
                stats.frames_out += 1
                stats.latency_ms.append(spent_ms)
                self.ctx.metrics.frames_out.inc()
                self.ctx.metrics.stage_latency.observe(spent_ms / 1e3)
            else:
                self._count_drop(session_id, "disconnected")

    async def on_idle(self, session_id: str) -> None:
        await self._close_session(session_id, "idle")
        self.ctx.stats.forget(session_id)
        self.events.forget(session_id)

    # -- sessions ---------------------------------------------------------------------------------
    async def _process(self, session_id: str, jpeg: bytes, meta: FrameMeta) -> FrameResult | None:
        loop = asyncio.get_running_loop()
        while True:
            session = self.sessions.get(session_id)
            if session is None:
                if len(self.sessions) >= self.settings.max_sessions:
                    await self._reject(
                        session_id,
                        "at_capacity",
                        f"preprocess serves at most {self.settings.max_sessions} sessions",
                    )
                    return None
                session = self.sessions[session_id] = _OpenPreprocessor(
                    SessionPreprocessor(session_id, self.config)
                )
                self.ctx.metrics.active_sessions.set(len(self.sessions))
                log.info("session_opened")
            async with session.lock:
                if session.closed:  # stopped while this frame waited: open a fresh one
                    continue
                session.inflight = loop.run_in_executor(
                    self._executor, session.pre.process_jpeg, jpeg, meta.seq, meta.capture_ns / 1e6
                )
                # shielded: a cancelled worker (shutdown) must not leave the thread running unseen
                return await asyncio.shield(session.inflight)

    async def _close_session(self, session_id: str, reason: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        async with session.lock:  # never close a graph a worker thread is running
            session.closed = True
            if session.inflight is not None and not session.inflight.done():
                await asyncio.wait([session.inflight])
                if not session.inflight.cancelled():
                    session.inflight.exception()  # retrieved: its frame is dropped on shutdown
            frames = session.pre.frames
            await asyncio.get_running_loop().run_in_executor(self._executor, session.pre.close)
        self.reclaimed += 1
        self.ctx.metrics.active_sessions.set(len(self.sessions))
        log.info("session_closed", session_id=session_id, reason=reason, frames=frames)

    # -- events -----------------------------------------------------------------------------------
    async def _report(self, session_id: str, result: FrameResult, seq: int) -> None:
        """Size problems are errors (rate-limited); pose states are status events on change."""
        size_codes = [c for c in result.codes if c not in POSE_CODES]
        if size_codes:
            w, h = result.conditioning.width, result.conditioning.height
            for code in size_codes:
                await self.events.error(session_id, code, f"frame {w}x{h} forwarded without a pose", seq=seq)
            return
        session = self.sessions.get(session_id)
        if session is None:
            return
        status = frozenset(c for c in result.codes if c in POSE_CODES)
        if status == session.status:
            return
        appeared = sorted(status - session.status)
        session.status = status
        for code in appeared:
            await self.events.status(
                session_id, code, STATUS_TEXT[code], seq=seq, people=result.conditioning.people
            )
        if not status:
            await self.events.status(session_id, "person_ok", "whole torso in view", seq=seq)

    async def _reject(self, session_id: str, code: str, message: str, **data: object) -> None:
        self.ctx.stats[session_id].rejected += 1
        self.ctx.metrics.rejected(code)
        await self.events.error(session_id, code, message, **data)

    def _count_drop(self, session_id: str, reason: str) -> None:
        self.ctx.stats[session_id].dropped += 1
        self.ctx.metrics.dropped(reason)
