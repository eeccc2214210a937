"""Ingest handlers: the only ingest module that touches NATS.

camera frames (all sessions) → validate → normalise → ingested frames, on the shared frame-stage
skeleton (``shared.stage``). What is ingest's own: the session's requested resolution (from
``start`` on the control subject), the deadline for stale frames, and the validation itself.
"""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.ingest.settings import IngestSettings
from services.ingest.validate import Limits, process_frame
from shared.events import EventPublisher
from shared.headers import FrameMeta, now_ns
from shared.logging import get_logger
from shared.schemas import Control, SchemaError
from shared.service import ServiceContext
from shared.stage import FrameDropped, FrameStage, StageOutput
from shared.subjects import Channel

log = get_logger("ingest")


class IngestHandlers:
    def __init__(self, ctx: ServiceContext, settings: IngestSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.limits = Limits(
            settings.max_frame_bytes, settings.max_input_pixels, settings.min_input_side, settings.max_aspect
        )
        self.events = EventPublisher(ctx.nc, ctx.subjects, ctx.name)
        self.resolution: dict[str, tuple[int, int]] = {}
        self.stage = FrameStage(
            ctx,
            self.events,
            Channel.CAMERA,
            ctx.subjects.ingested,
            self.process,
            idle_s=settings.session_idle_s,
            on_idle=self.on_idle,
        )
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        ctx = self.ctx
        self._subs.append(await self.stage.start())
        self._subs.append(
            await ctx.nc.subscribe(ctx.subjects.all_sessions(Channel.CONTROL), cb=self.on_control)
        )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await self.stage.close()

    def health(self) -> dict:
        return {"sessions": len(self.stage.sessions)}

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

    async def process(self, session_id: str, msg: Msg, meta: FrameMeta) -> list[StageOutput]:
        """Drop a stale frame, else validate and fit it to the session's resolution."""
        self.ctx.metrics.active_sessions.set(len(self.stage.sessions))
        if (now_ns() - meta.capture_ns) / 1e6 > self.settings.deadline_ms:  # a wait in the slot counts
            raise FrameDropped("stale")
        box_w, box_h = self.resolution.get(session_id, (self.settings.out_width, self.settings.out_height))
        norm = await asyncio.to_thread(
            process_frame, bytes(msg.data), self.limits, box_w, box_h, self.settings.jpeg_quality
        )
        meta.width, meta.height = norm.width, norm.height
        return [StageOutput(norm.jpeg, meta)]

    async def on_idle(self, session_id: str) -> None:
        self.ctx.metrics.active_sessions.set(len(self.stage.sessions))
        log.info("session_idle", session_id=session_id)
