"""One skeleton for every frame stage (ingest, preprocess, the generator).

A stage gives ``FrameStage`` its one ``process`` function; the skeleton does what every stage
does the same way around it: take each session's newest frame from a latest-frame-wins slot,
count it, parse and check its headers, record the hop from the previous stage, stamp
``<stage>.in``, and then publish what ``process`` returns with ``<stage>.out`` stamped, or turn a
rejection into an error event, a metric and a rate-limited log line, or count a drop. Why one
place: each of these was written three times and had started to differ (one stage counted a
reject in its metric, another did not).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runtime.bus import LatestFrameSlots, subscribe_frames
from runtime.events import EventPublisher
from runtime.logging import RateLimitedLog, get_logger
from runtime.service import ServiceContext
from shared.client import publish_frame
from shared.errors import CodedError
from shared.headers import FrameMeta, HeaderError
from shared.subjects import Channel

log = get_logger("stage")


@dataclass
class StageOutput:
    """One frame to publish: its payload and headers (``<stage>.out`` is stamped on publish)."""

    payload: bytes
    meta: FrameMeta


class FrameDropped(Exception):
    """A frame left out on purpose (stale, drawn with a garment swapped away meanwhile): counted
    under ``reason`` in ``chameleon_frames_dropped_total``, never reported as an error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Owner(Protocol):
    """What a stateful stage asks its fleet membership (``runtime.fleet.member.FleetMember``) per frame."""

    def may_publish(self, session_id: str) -> bool: ...
    def epoch(self, session_id: str) -> int: ...


# (session_id, msg, meta stamped "<stage>.in") -> frames to publish; raises CodedError to reject
Process = Callable[[str, Msg, FrameMeta], Awaitable[Sequence[StageOutput]]]


class FrameStage:
    """The frame path of one stage: ``inbound`` channel → ``process`` → ``outbound`` subject."""

    def __init__(
        self,
        ctx: ServiceContext,
        events: EventPublisher,
        inbound: Channel,
        outbound: Callable[[str], str],
        process: Process,
        *,
        idle_s: float,
        on_idle: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = ctx.name
        self.events = events
        self.inbound = inbound
        self.outbound = outbound
        self.process = process
        self._on_idle = on_idle
        self.owner: Owner | None = None  # set by a stateful stage: only the owner publishes
        self._served: dict[str, Subscription] = {}
        self._upstream_epoch: dict[str, int] = {}
        self._through: set[str] = set()  # sessions with a frame published since they last went idle
        self._lines = RateLimitedLog(log)  # per service: made-up session ids cost no line each
        self.slots = LatestFrameSlots(
            self.on_frame,
            idle_s=idle_s,
            on_drop=lambda sid: self.drop(sid, "superseded"),
            on_idle=self._idle,
        )

    async def start(self, all_sessions: bool = True) -> Subscription | None:
        """Take every session's frames (a stateless stage), or, with ``all_sessions=False``, only
        those of the sessions ``serve`` is called for (a stateful stage in the fleet)."""
        self.ctx.conn.listeners.append(self._on_connection)
        if not all_sessions:
            return None
        subject = self.ctx.subjects.all_sessions(self.inbound)
        return await subscribe_frames(
            self.ctx.nc, subject, self.ctx.subjects, self.slots, on_bad_subject=self.bad_subject
        )

    def _on_connection(self, connected: bool) -> None:
        if not connected and (stale := self.slots.clear()):
            self.ctx.metrics.frames_dropped.labels(self.name, "disconnected").inc(stale)

    async def serve(self, session_id: str) -> None:
        """Subscribe to one session's inbound frames (this worker owns it now)."""
        if session_id in self._served:
            return
        subject = self.ctx.subjects.session(session_id, self.inbound)
        self._served[session_id] = await subscribe_frames(self.ctx.nc, subject, self.ctx.subjects, self.slots)
        self.slots.open(session_id)

    async def unserve(self, session_id: str) -> None:
        """Stop taking a session's frames (it moved away or ended)."""
        sub = self._served.pop(session_id, None)
        self.slots.discard(session_id)
        self._upstream_epoch.pop(session_id, None)
        self._through.discard(session_id)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def close(self) -> None:
        for session_id in list(self._served):
            await self.unserve(session_id)
        await self.slots.close()

    @property
    def sessions(self) -> list[str]:
        """Sessions with a frame worker right now (a session goes after ``idle_s`` without frames)."""
        return self.slots.sessions

    async def on_frame(self, session_id: str, msg: Msg, t_in: int) -> None:
        """``t_in``: when the frame reached this process (its wait in the slot is stage time)."""
        self.ctx.stats[session_id].frames_in += 1
        self.ctx.metrics.frames_in.inc()
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            try:
                meta = FrameMeta.from_headers(msg.headers)
                if meta.session_id != session_id:
                    raise CodedError(
                        "session_mismatch", f"header session {meta.session_id!r} != subject session"
                    )
                if self.inbound is Channel.CAMERA:  # a camera owns nothing: an epoch it sent
                    meta.epoch = 0  # would fence its own later frames here and downstream
                if meta.epoch < self._upstream_epoch.get(session_id, 0):
                    raise FrameDropped("stale_epoch")  # from a replaced upstream owner
                self._upstream_epoch[session_id] = meta.epoch
                if meta.trace and meta.trace[-1].edge == "out":
                    self.ctx.metrics.hop_latency.observe((t_in - meta.trace[-1].ns) / 1e9)
                meta.stamp(self.name, "in", t_in)
            except HeaderError as exc:
                await self.reject(session_id, "bad_headers", str(exc))
                return
            except FrameDropped as exc:
                self.drop(session_id, exc.reason)
                return
            except CodedError as exc:
                await self.reject(session_id, exc.code, exc.message)
                return
            try:
                outputs = await self.process(session_id, msg, meta)
            except FrameDropped as exc:
                self.drop(session_id, exc.reason)
                return
            except CodedError as exc:
                await self.reject(session_id, exc.code, exc.message, seq=meta.seq, **exc.data)
                return
            await self.publish(session_id, outputs, t_in)

    async def publish(self, session_id: str, outputs: Sequence[StageOutput], t_in: int) -> list[StageOutput]:
        """Stamp ``<stage>.out`` and publish each output; a frame is dropped, not queued, while the
        connection is down. ``t_in`` is when the input that produced them arrived. Returns the
        outputs that went out."""
        stats = self.ctx.stats[session_id]
        published = []
        for out in outputs:
            if self.owner is not None:
                if not self.owner.may_publish(session_id):  # moved away, or our lease is lapsing
                    self.drop(session_id, "not_owner")
                    continue
                out.meta.epoch = self.owner.epoch(session_id)
            out.meta.stamp(self.name, "out")
            if not await publish_frame(self.ctx.nc, self.outbound(session_id), out.payload, out.meta):
                self.drop(session_id, "disconnected")
                continue
            published_ns = out.meta.trace[-1].ns
            spent_s = (published_ns - t_in) / 1e9
            if out.meta.capture_ns:
                self.ctx.metrics.glass_to_glass.observe(max(0.0, (published_ns - out.meta.capture_ns) / 1e9))
            self._through.add(session_id)
            stats.frames_out += 1
            stats.latency_ms.append(spent_s * 1e3)
            self.ctx.metrics.frames_out.inc()
            self.ctx.metrics.stage_latency.observe(spent_s)
            published.append(out)
        return published

    async def reject(self, session_id: str, code: str, message: str, **data: object) -> None:
        """A frame that cannot be used: counted, a metric by code, and a rate-limited error event
        (which also logs, rate-limited, bound to the session).

        A session none of whose frames has got through gets no summary line of its own: junk under
        a new session id per message would cost one per message. Its rejections are in the metric,
        its events and the error lines."""
        if session_id in self._through:
            self.ctx.stats[session_id].rejected += 1
        else:
            self.ctx.stats.forget(session_id)
        self.ctx.metrics.rejected(code)
        await self.events.error(session_id, code, message, **data)

    def bad_subject(self, subject: str) -> None:
        """A frame on a subject whose session token is no valid session id (too long, ``a$b``,
        ``*``, ``_svc``): there is no session to answer, so it is counted under
        ``bad_session_id`` and logged, rate-limited per service."""
        self.ctx.metrics.rejected("bad_session_id")
        self._lines.warning("bad_session_id", subject=subject[:120])

    def drop(self, session_id: str, reason: str) -> None:
        self.ctx.stats[session_id].dropped += 1
        self.ctx.metrics.dropped(reason)

    async def _idle(self, session_id: str) -> None:
        self._upstream_epoch.pop(session_id, None)
        self._through.discard(session_id)
        if self._on_idle is not None:
            await self._on_idle(session_id)
        self.ctx.stats.forget(session_id)
        self.events.forget(session_id)
