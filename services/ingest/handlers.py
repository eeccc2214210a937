"""Ingest handlers: the only ingest module that touches NATS.

camera frames (all sessions) → validate → normalise → ingested frames. Bad frames become error
events on that session; stale frames (older than the deadline) are dropped and counted.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.ingest.settings import IngestSettings
from services.ingest.validate import FrameRejected, Limits, process_frame
from shared.bus import LatestFrameSlots, publish_frame
from shared.events import EventPublisher
from shared.headers import FrameMeta, HeaderError, now_ns
from shared.logging import get_logger
from shared.schemas import Control, SchemaError
from shared.service import ServiceContext
from shared.subjects import Channel

log = get_logger("ingest")
STAGE = "ingest"


class IngestHandlers:
    def __init__(self, ctx: ServiceContext, settings: IngestSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.limits = Limits(
            settings.max_frame_bytes, settings.max_input_pixels, settings.min_input_side, settings.max_aspect
        )
        self.events = EventPublisher(ctx.nc, ctx.subjects, STAGE)
        self.resolution: dict[str, tuple[int, int]] = {}
        self.slots = LatestFrameSlots(
            self.on_frame,
            idle_s=settings.session_idle_s,
            on_drop=lambda sid: self._count_drop(sid, "superseded"),
            on_idle=self.on_idle,
        )
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        ctx = self.ctx
        self._subs.append(await ctx.subscribe_frames(Channel.CAMERA, self.slots))
        self._subs.append(
            await ctx.nc.subscribe(ctx.subjects.all_sessions(Channel.CONTROL), cb=self.on_control)
        )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await self.slots.close()

    def health(self) -> dict:
        return {"sessions": len(self.slots.sessions)}

    # -- handlers ---------------------------------------------------------------------------------
    async def on_control(self, msg: Msg) -> None:
        """Track each session's requested output resolution (other actions are not ours)."""
        try:
            control = Control.decode(msg.data)
        except SchemaError:
            return  # the generator owns control errors; ingest only reads resolutions
        if control.action == "start" and control.width and control.height:
            self.resolution[control.session_id] = (control.width, control.height)
        elif control.action == "stop":
            self.resolution.pop(control.session_id, None)

    async def on_frame(self, session_id: str, msg: Msg, t_in: int) -> None:
        """``t_in``: when the frame reached this process (its wait in the slot is stage time)."""
        stats = self.ctx.stats[session_id]
        stats.frames_in += 1
        self.ctx.metrics.frames_in.inc()
        self.ctx.metrics.active_sessions.set(len(self.slots.sessions))
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            try:
                meta = FrameMeta.from_headers(msg.headers)
                if meta.session_id != session_id:
                    raise FrameRejected(
                        "session_mismatch", f"header session {meta.session_id!r} != subject session"
                    )
            except (HeaderError, FrameRejected) as exc:
                await self._reject(session_id, getattr(exc, "code", "bad_headers"), str(exc))
                return
            age_ms = (now_ns() - meta.capture_ns) / 1e6  # a wait in the slot counts too
            if age_ms > self.settings.deadline_ms:
                self._count_drop(session_id, "stale")
                return
            if meta.trace and meta.trace[-1].edge == "out":
                self.ctx.metrics.hop_latency.observe((t_in - meta.trace[-1].ns) / 1e9)
            meta.stamp(STAGE, "in", t_in)
            box_w, box_h = self.resolution.get(
                session_id, (self.settings.out_width, self.settings.out_height)
            )
            try:
                norm = await asyncio.to_thread(
                    process_frame, bytes(msg.data), self.limits, box_w, box_h, self.settings.jpeg_quality
                )
            except FrameRejected as exc:
                await self._reject(session_id, exc.code, str(exc), seq=meta.seq)
                return
            meta.width, meta.height = norm.width, norm.height
            meta.stamp(STAGE, "out")
            if await publish_frame(self.ctx.nc, self.ctx.subjects.ingested(session_id), norm.jpeg, meta):
                stats.frames_out += 1
                stats.latency_ms.append((meta.trace[-1].ns - t_in) / 1e6)
                self.ctx.metrics.frames_out.inc()
                self.ctx.metrics.stage_latency.observe((meta.trace[-1].ns - t_in) / 1e9)
            else:
                self._count_drop(session_id, "disconnected")

    async def on_idle(self, session_id: str) -> None:
        self.ctx.stats.forget(session_id)
        self.events.forget(session_id)
        self.ctx.metrics.active_sessions.set(len(self.slots.sessions))
        log.info("session_idle", session_id=session_id)

    # -- helpers ----------------------------------------------------------------------------------
    async def _reject(self, session_id: str, code: str, message: str, **data: object) -> None:
        self.ctx.stats[session_id].rejected += 1
        self.ctx.metrics.rejected(code)
        await self.events.error(session_id, code, message, **data)

    def _count_drop(self, session_id: str, reason: str) -> None:
        self.ctx.stats[session_id].dropped += 1
        self.ctx.metrics.dropped(reason)
