"""Pass-through generator stand-in: forwards ingested frames to the output subject unchanged.

Clearly NOT a generator: it exists so the foundation can be measured end to end before the
generator service lands, and it stays as the transport baseline of ``chameleon bench transport``.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runtime.bus import LatestFrameSlots
from runtime.events import EventPublisher
from runtime.service import ServiceContext
from runtime.settings import BaseSettings
from shared.client import publish_frame
from shared.headers import FrameMeta, HeaderError
from shared.subjects import Channel

STAGE = "passthrough"


class PassthroughHandlers:
    def __init__(self, ctx: ServiceContext, settings: BaseSettings) -> None:
        self.ctx = ctx
        self.events = EventPublisher(ctx.nc, ctx.subjects, STAGE)
        self.slots = LatestFrameSlots(self.on_frame, on_drop=lambda _sid: ctx.metrics.dropped("superseded"))
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.ctx.subscribe_frames(Channel.INGESTED, self.slots)

    async def stop(self) -> None:
        if self._sub:
            await self._sub.unsubscribe()
        await self.slots.close()

    async def on_frame(self, session_id: str, msg: Msg, t_in: int) -> None:
        """``t_in``: when the frame reached this process (its wait in the slot is stage time)."""
        self.ctx.metrics.frames_in.inc()
        try:
            meta = FrameMeta.from_headers(msg.headers)
        except HeaderError as exc:
            await self.events.error(session_id, "bad_headers", str(exc))
            return
        meta.stamp(STAGE, "in", t_in).stamp(STAGE, "out")
        if await publish_frame(self.ctx.nc, self.ctx.subjects.output(session_id), msg.data, meta):
            self.ctx.metrics.frames_out.inc()
            if meta.capture_ns:
                self.ctx.metrics.glass_to_glass.observe(max(0.0, (meta.trace[-1].ns - meta.capture_ns) / 1e9))
