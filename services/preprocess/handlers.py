"""Preprocess handlers: the only preprocess module that touches NATS.

ingested frames (all sessions, latest-frame-wins per session) → the session's own
``SessionPreprocessor`` on a worker thread → ``Conditioning`` on the session's cond subject with
the frame's headers (stamped ``preprocess.in``/``.out`` by the shared frame-stage skeleton,
``runtime.stage``). A worker takes only the sessions the fleet gives it (``runtime.fleet``: placed at
session start, moved on failure or drain) and publishes them with its ownership epoch. Per-session
state is created on the first
frame and closed when the session stops (control ``stop``) or goes idle, so memory follows the
number of live sessions, not the number ever seen.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter

from runtime.events import EventPublisher
from runtime.fleet.member import FleetMember
from runtime.fleet.records import Ownership
from runtime.logging import RateLimitedLog, get_logger
from runtime.lru import LRU
from runtime.service import ServiceContext
from runtime.stage import FrameStage, StageOutput
from services.preprocess import conditioning as cond
from services.preprocess.pipeline import FrameResult, PreprocessConfig, SessionPreprocessor
from services.preprocess.settings import PreprocessSettings
from shared.body import region_category
from shared.control import control_for
from shared.errors import CodedError
from shared.garment_client import GarmentClient
from shared.headers import FrameMeta
from shared.subjects import Channel

log = get_logger("preprocess")
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
        self.events = EventPublisher(ctx.nc, ctx.subjects, ctx.name)
        self._failures = RateLimitedLog(log)  # a traceback per service per second, not per frame
        self.sessions: dict[str, _OpenPreprocessor] = {}
        self.reclaimed = 0
        # each session's garment (from every start/swap on the control subject, whoever owns the
        # session, so a new owner knows it) and each garment's catalogue category: the garment
        # region a session gets is the one its own garment needs
        self._garment_of: LRU[str, str] = LRU(4096)
        self._category_of: dict[str, str] = {}
        self._catalogue_read_at = float("-inf")
        self._catalogue_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max(1, settings.pose_workers), thread_name_prefix="preprocess")
        # what each frame cost in MediaPipe: the CPU per session rests on these shares (issue 24)
        registry = ctx.metrics.registry
        self._landmarks = Counter(
            "chameleon_preprocess_landmarks_total",
            "Frames by where their landmarks came from: a pose run, or the last ones carried by flow",
            ["service", "how"],
            registry=registry,
        )
        self._graph_runs = Counter(
            "chameleon_pose_graph_runs_total",
            "MediaPipe pose graph runs (a frame the zoomed-out retry ran on counts two)",
            ["service"],
            registry=registry,
        ).labels(ctx.name)
        self._retry_finds = Counter(
            "chameleon_pose_retry_finds_total",
            "Times the zoomed-out retry found a person the plain graph had lost (CHAMELEON_POSE_RETRY_PAD)",
            ["service"],
            registry=registry,
        ).labels(ctx.name)
        self._flow_misses = Counter(
            "chameleon_preprocess_flow_misses_total",
            "Frames pose ran on because flow could not vouch for the carried landmarks",
            ["service"],
            registry=registry,
        ).labels(ctx.name)
        self.stage = FrameStage(
            ctx,
            self.events,
            Channel.INGESTED,
            ctx.subjects.conditioning,
            self.process,
            idle_s=settings.session_idle_s,
            on_idle=self.on_idle,
        )
        self._subs: list[Subscription] = []
        self.fleet = FleetMember.of_worker(
            ctx.nc.jetstream(), ctx.subjects, ctx.name, settings, self._serve, self._unserve
        )
        self.stage.owner = self.fleet

    async def start(self) -> None:
        ctx = self.ctx
        await self.stage.start(all_sessions=False)
        self._subs.append(
            await ctx.nc.subscribe(ctx.subjects.all_sessions(Channel.CONTROL), cb=self.on_control)
        )
        await self.fleet.start()
        self._in_background(self._read_catalogue())

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.fleet.drain()  # hand the sessions over before this worker goes
        for sub in self._subs:
            await sub.unsubscribe()
        await self.stage.close()
        for sid in list(self.sessions):
            await self._close_session(sid, "shutdown")
        await self.fleet.close()
        self._executor.shutdown(wait=True)

    def health(self) -> dict:
        return {
            "sessions": len(self.sessions),
            "sessions_reclaimed": self.reclaimed,
            "worker_id": self.fleet.worker_id,
            "owned": len(self.fleet.serving),
            "status": "ok" if self.fleet.healthy else "unhealthy",
        }

    # -- fleet ------------------------------------------------------------------------------------
    async def _serve(self, session_id: str, record: Ownership) -> None:
        await self.stage.serve(session_id)
        log.info("session_assigned", session_id=session_id, epoch=record.epoch, reason=record.reason)

    async def _unserve(self, session_id: str, reason: str) -> None:
        await self.stage.unserve(session_id)
        await self._close_session(session_id, reason)

    # -- handlers ---------------------------------------------------------------------------------
    async def on_control(self, msg: Msg) -> None:
        """A stopped session gives its MediaPipe graph back at once (not after the idle timeout)."""
        control = control_for(self.ctx.subjects, msg.subject, msg.data)
        if control is None:
            return  # the generator answers invalid control (a stop naming another session closes nothing)
        if control.action in ("start", "swap") and control.garment_id:
            self._garment_of.put(control.session_id, control.garment_id)
            if control.garment_id not in self._category_of:
                self._in_background(self._read_catalogue())
        if control.action == "stop" and control.session_id in self.fleet.serving:
            await self._close_session(control.session_id, "stopped")
            await self.fleet.release(control.session_id)

    def _in_background(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_catalogue(self, min_interval_s: float = 5.0) -> None:
        """Garment id → category from the garment service's list; at most every few seconds (an
        unknown garment id asks again), and a failure leaves the configured region in use."""
        async with self._catalogue_lock:
            if time.monotonic() - self._catalogue_read_at < min_interval_s:
                return
            self._catalogue_read_at = time.monotonic()
            try:
                records = await GarmentClient(self.ctx.nc, self.ctx.subjects, timeout_s=2.0).list()
            except Exception as exc:
                self._failures.warning(
                    "catalogue_unavailable", key="catalogue", error=f"{type(exc).__name__}: {exc}"
                )
                return
            self._category_of = {r.garment_id: r.category for r in records}

    def category(self, session_id: str) -> str:
        """The garment region ``session_id`` needs; empty (the configured one) when its garment or
        that garment's category is not known yet."""
        garment = self._garment_of.get(session_id)
        catalogue = self._category_of.get(garment) if garment else None
        return region_category(catalogue) if catalogue else ""

    async def process(self, session_id: str, msg: Msg, meta: FrameMeta) -> list[StageOutput]:
        """Pose + segmentation on this session's own graph → one ``Conditioning`` message."""
        try:
            result = await self._process(session_id, bytes(msg.data), meta)
        except CodedError:
            raise
        except Exception as exc:  # MediaPipe failed: start this session's graph afresh
            self._failures.exception("preprocess_failed", seq=meta.seq)
            await self._close_session(session_id, "failed")
            raise CodedError("preprocess_failed", f"{type(exc).__name__}: {exc}") from None
        self._count(result)
        await self._report(session_id, result, meta.seq)
        meta.width, meta.height = result.conditioning.width, result.conditioning.height
        return [StageOutput(result.conditioning.encode(), meta)]

    def _count(self, result: FrameResult) -> None:
        if result.posed:
            self._landmarks.labels(self.ctx.name, "pose").inc()
        elif result.landmarks is not None:
            self._landmarks.labels(self.ctx.name, "flow").inc()
        if result.graph_runs:
            self._graph_runs.inc(result.graph_runs)
        if result.retry_found:
            self._retry_finds.inc()
        if result.flow_missed:
            self._flow_misses.inc()

    async def on_idle(self, session_id: str) -> None:
        """No frames for ``session_idle_s``: the camera went away; free the graph and the slot."""
        await self._close_session(session_id, "idle")
        await self.fleet.release(session_id)

    # -- sessions ---------------------------------------------------------------------------------
    async def _process(self, session_id: str, jpeg: bytes, meta: FrameMeta) -> FrameResult:
        loop = asyncio.get_running_loop()
        while True:
            session = self.sessions.get(session_id)
            if session is None:
                if len(self.sessions) >= self.settings.max_sessions:
                    raise CodedError(
                        "at_capacity", f"preprocess serves at most {self.settings.max_sessions} sessions"
                    )
                session = self.sessions[session_id] = _OpenPreprocessor(
                    SessionPreprocessor(session_id, self.config)
                )
                self.ctx.metrics.active_sessions.set(len(self.sessions))
                log.info("session_opened")
            async with session.lock:
                if session.closed:  # stopped while this frame waited: open a fresh one
                    continue
                session.inflight = loop.run_in_executor(
                    self._executor,
                    session.pre.process_jpeg,
                    jpeg,
                    meta.seq,
                    meta.capture_ns / 1e6,
                    self.category(session_id),
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
