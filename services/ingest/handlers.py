"""Ingest handlers: the only ingest module that touches NATS.

camera frames (all sessions) → validate → normalise → ingested frames, on the shared frame-stage
skeleton (``runtime.stage``). What is ingest's own: admission (a session's first frame or its
``start`` places it in the fleet, once, for the whole pipeline; frames of a session no worker
took are dropped here, before any decode), the session's requested resolution (from ``start``),
the deadline for stale frames, and the validation itself.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runtime.events import EventPublisher
from runtime.fleet.view import FleetView, open_view
from runtime.logging import RateLimitedLog, get_logger
from runtime.service import ServiceContext
from runtime.stage import FrameDropped, FrameStage, StageOutput
from services.ingest.admission import Admission
from services.ingest.settings import IngestSettings
from services.ingest.validate import Limits, process_frame, session_box
from shared.control import control_for
from shared.errors import CodedError
from shared.headers import FrameMeta, now_ns
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
        self.max_box = (
            max(settings.max_session_width, settings.out_width),
            max(settings.max_session_height, settings.out_height),
        )
        self._lines = RateLimitedLog(log, burst=3)  # per service: junk under new ids costs no line each
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
        self.stages = [s.strip() for s in settings.admit_stages.split(",") if s.strip()]
        self.view: FleetView | None = None
        self.admission: Admission | None = None
        self._refused: dict[str, float] = {}  # session -> monotonic time it may try again
        self._readmitting: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        ctx = self.ctx
        if self.stages:
            self.view = await open_view(ctx.nc.jetstream(), ctx.subjects, self.settings.js_replicas)
            self.admission = Admission(self.view, self.stages, self.settings.admit_retry_s)
        self._subs.append(await self.stage.start())
        self._subs.append(
            await ctx.nc.subscribe(ctx.subjects.all_sessions(Channel.CONTROL), cb=self.on_control)
        )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for task in list(self._background):
            task.cancel()
        await self.stage.close()
        if self.view is not None:
            await self.view.close()

    def health(self) -> dict:
        return {"sessions": len(self.stage.sessions), "admit_stages": self.stages}

    # -- admission --------------------------------------------------------------------------------
    async def admit(self, session_id: str) -> None:
        """Place the session in every stage that needs an owner, once; raises ``CodedError``
        (``at_capacity`` with ``retry_after_s``) and, until that time, drops its frames unread."""
        if self.admission is None or self.admission.admitted(session_id):
            return
        if self.admission.has_owners(session_id):
            # placed before and its owners look gone, or the registry is between leaders (a NATS
            # node lost: seconds): its frames go on to the owners on record while it is placed
            # again in the background; a frame must never wait on an election
            self._readmit_in_background(session_id)
            return
        self._check_refused(session_id)
        await self._admit_now(session_id)

    async def _admit_now(self, session_id: str) -> None:
        assert self.admission is not None
        try:
            placed = await self.admission.admit(session_id)
        except CodedError:
            self._refused[session_id] = time.monotonic() + self.settings.admit_retry_s
            raise
        self._refused.pop(session_id, None)
        log.info(
            "session_admitted", session_id=session_id, owners={s: o.worker_id for s, o in placed.items()}
        )

    def _readmit_in_background(self, session_id: str) -> None:
        """One re-admission at a time per session, at most one per ``admit_retry_s``; a refusal
        is answered on the session's events as at its start."""
        until = self._refused.get(session_id)
        if session_id in self._readmitting or (until is not None and time.monotonic() < until):
            return

        async def readmit() -> None:
            try:
                await self._admit_now(session_id)
            except CodedError as exc:
                await self.stage.reject(session_id, exc.code, exc.message, **exc.data)
            finally:
                self._readmitting.discard(session_id)

        self._readmitting.add(session_id)
        task = asyncio.create_task(readmit(), name=f"readmit:{session_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _check_refused(self, session_id: str) -> None:
        until = self._refused.get(session_id)
        if until is not None and time.monotonic() < until:
            raise FrameDropped("not_admitted")

    async def _admit_on_start(self, session_id: str) -> None:
        try:
            await self.admit(session_id)
        except CodedError as exc:
            await self.stage.reject(session_id, exc.code, exc.message, **exc.data)
        except FrameDropped:
            pass

    # -- handlers ---------------------------------------------------------------------------------
    async def on_control(self, msg: Msg) -> None:
        """Track each session's requested output resolution (other actions are not ours)."""
        control = control_for(self.ctx.subjects, msg.subject, msg.data)
        if control is None:
            return  # the generator answers invalid control; ingest only reads resolutions
        if control.action == "start":
            if control.width and control.height:
                await self._set_resolution(control.session_id, control.width, control.height)
            if self.admission is not None:  # an owner ready before the first frame arrives
                task = asyncio.create_task(self._admit_on_start(control.session_id))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        elif control.action == "stop":
            self.resolution.pop(control.session_id, None)
            self._refused.pop(control.session_id, None)

    async def _set_resolution(self, session_id: str, width: int, height: int) -> None:
        """The session's box from its start, capped at what this deployment is configured for."""
        box = session_box(width, height, self.max_box, self.settings.min_input_side)
        self.resolution[session_id] = box
        if box != (width, height):
            await self.events.status(
                session_id,
                "resolution_capped",
                f"start asked for {width}x{height}; frames are fitted into {box[0]}x{box[1]}",
                requested=[width, height],
                applied=list(box),
            )

    async def process(self, session_id: str, msg: Msg, meta: FrameMeta) -> list[StageOutput]:
        """Refuse a capture time in the future, drop a refused session's or a stale frame unread,
        validate and fit it, and admit the session (its first valid frame)."""
        self.ctx.metrics.active_sessions.set(len(self.stage.sessions))
        ahead_ms = (meta.capture_ns - now_ns()) / 1e6
        if ahead_ms > self.settings.max_clock_skew_ms:  # latency would come out negative
            raise CodedError(
                "clock_skew",
                f"capture time {ahead_ms:.0f} ms in the future (at most {self.settings.max_clock_skew_ms:.0f}"
                " ms allowed): is the camera's clock synced?",
            )
        self._check_refused(session_id)  # a refused session's frames are dropped unread
        if (now_ns() - meta.capture_ns) / 1e6 > self.settings.deadline_ms:  # a wait in the slot counts
            raise FrameDropped("stale")
        box_w, box_h = self.resolution.get(session_id, (self.settings.out_width, self.settings.out_height))
        norm = await asyncio.to_thread(
            process_frame,
            bytes(msg.data),
            self.limits,
            box_w,
            box_h,
            self.settings.jpeg_quality,
            (meta.width, meta.height),
        )
        # placed only once a frame proved valid: junk under fresh session ids never takes a slot
        await self.admit(session_id)
        meta.width, meta.height = norm.width, norm.height
        return [StageOutput(norm.jpeg, meta)]

    async def on_idle(self, session_id: str) -> None:
        self._refused.pop(session_id, None)
        self.ctx.metrics.active_sessions.set(len(self.stage.sessions))
        self._lines.info("session_idle", session_id=session_id)
