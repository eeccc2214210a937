"""Generator handlers: the wiring, and the frames.

- the fleet (``runtime.fleet``): this worker serves only the sessions it owns; outputs carry its
  ownership epoch and stop the moment it no longer owns a session or its lease is lapsing;
- frames: conditioning (owned sessions, latest-frame-wins) → the session's renderer → output
  frames, on the frame-stage skeleton (``runtime.stage``); a swap re-renders the newest frame, and
  an ending session publishes what its renderer held back. All three go out through ``publish``,
  which also answers ``swap_applied`` with the first frame a swap shows.

Each of the rest has its module: ``control`` (the worker's JetStream consumer of every session's
control, and each owned session's control read from the stream; start, swap, stop), ``sessions``
(the served sessions, their backends and garments), ``state`` (the stored state, kept stops),
``lifecycle`` (every decision, pure), ``drawing`` (render and encode off the loop), ``downlink``
(the viewer's receiver reports).
"""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from prometheus_client import Histogram

from runtime.events import EventPublisher
from runtime.fleet.member import FleetMember
from runtime.fleet.records import Ownership
from runtime.jetstream import control_stream
from runtime.logging import get_logger
from runtime.metrics import LATENCY_BUCKETS_S
from runtime.service import ServiceContext
from runtime.stage import FrameDropped, FrameStage, StageOutput
from services.generator.backends import resolve
from services.generator.control import SessionControl
from services.generator.downlink import Downlinks
from services.generator.drawing import Rendered, draw, held_back
from services.generator.inputs import frame_input
from services.generator.lifecycle import ServedSession
from services.generator.rendering import AtCapacity, RenderedFrame
from services.generator.sessions import Sessions
from services.generator.settings import GeneratorSettings
from services.generator.state import SessionStore
from shared.errors import CodedError
from shared.headers import FrameMeta, now_ns
from shared.schemas import Conditioning, SchemaError
from shared.subjects import Channel

log = get_logger("generator")
JS_TIMEOUT_S = 2.0


class GeneratorHandlers:
    def __init__(self, ctx: ServiceContext, settings: GeneratorSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.events = EventPublisher(ctx.nc, ctx.subjects, ctx.name)
        self.sessions = Sessions(ctx, settings, self.events, flush=self.flush)
        self.control = SessionControl(
            ctx, settings, self.sessions, self.events, rerender=self.rerender, release=self.release
        )
        self.stage = FrameStage(
            ctx,
            self.events,
            Channel.CONDITIONING,
            ctx.subjects.output,
            self.process,
            idle_s=settings.session_idle_s,
            on_idle=self.on_idle,
        )
        self.swap_latency = Histogram(
            "chameleon_swap_latency_seconds",
            "Swap published → first output frame with the new garment",
            ["service"],
            buckets=LATENCY_BUCKETS_S,
            registry=ctx.metrics.registry,
        ).labels(ctx.name)
        self.downlinks = Downlinks(
            ctx.name,
            ctx.subjects,
            self.sessions.table,
            settings.out_jpeg_quality,
            settings.out_min_jpeg_quality,
            ctx.metrics.registry,
        )
        self.fleet: FleetMember | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        ctx, settings = self.ctx, self.settings
        # 2 s per JetStream request: during an election a quick retry beats a 5 s wait
        js = self.control.js = ctx.nc.jetstream(timeout=JS_TIMEOUT_S)
        await control_stream(js, ctx.subjects, settings.js_replicas)
        self.sessions.store = await SessionStore.open(js, ctx.subjects, settings.js_replicas)
        backend = resolve(settings.backend, settings)
        await self.sessions.backend(backend)  # warm before frames arrive
        self.sessions.garments.prefetch()
        self.fleet = FleetMember.of_worker(
            js,
            ctx.subjects,
            ctx.name,
            settings,
            self._serve,
            self._unserve,
            backend=backend,
            free_slots=self.sessions.backends[backend].free_slots,
        )
        self.stage.owner = self.fleet
        self.control.start(js, self.fleet.worker_id)
        await ctx.nc.subscribe(ctx.subjects.all_sessions(Channel.FEEDBACK), cb=self.on_receiver_report)
        await self.stage.start(all_sessions=False)
        await self.fleet.start()

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.drain()  # hand the sessions over before this worker goes
        await self.sessions.garments.close()
        await self.control.close()
        await self.stage.close()
        self.sessions.close()
        if self.fleet is not None:
            await self.fleet.close()

    def health(self) -> dict:
        """Unhealthy when the lease is lapsing or a session's control consumer has been failing
        for a few seconds (swaps would be lost silently otherwise)."""
        stuck = self.control.failing()
        healthy = self.fleet is not None and self.fleet.healthy and not stuck
        return {
            "sessions": len(self.sessions.table),
            "garments_cached": len(self.sessions.garments),
            "worker_id": self.fleet.worker_id if self.fleet else "",
            "owned": len(self.fleet.serving) if self.fleet else 0,
            "control_failing": stuck,
            "status": "ok" if healthy else "unhealthy",
        }

    # -- fleet ------------------------------------------------------------------------------------
    async def _serve(self, session_id: str, record: Ownership) -> None:
        """This worker owns the session now: its frames, and its control."""
        await self.stage.serve(session_id)
        self.control.follow(session_id)
        log.info("session_assigned", session_id=session_id, epoch=record.epoch, reason=record.reason)

    async def _unserve(self, session_id: str, reason: str) -> None:
        await self.control.unfollow(session_id)
        await self.stage.unserve(session_id)
        async with self.sessions.lock(session_id):
            await self.sessions.end(session_id, reason, announce=False)
        log.info("session_unassigned", session_id=session_id, reason=reason)

    async def release(self, session_id: str) -> None:
        """Give the session back to the fleet (stop, idle): the next start places it anew."""
        if self.fleet is not None:
            await self.fleet.release(session_id)

    async def on_idle(self, session_id: str) -> None:
        """No frames for ``session_idle_s``: the camera went away. The renderer and cache go, the
        slot is given back to the fleet; the stored state stays, so the session resumes with its
        garment when frames come back (ingest admits it again)."""
        async with self.sessions.lock(session_id):
            await self.sessions.end(session_id, "idle")
        self.sessions.forget_lock(session_id)
        await self.release(session_id)

    # -- frames -----------------------------------------------------------------------------------
    async def process(self, session_id: str, msg: Msg, meta: FrameMeta) -> list[StageOutput]:
        """Draw one conditioning frame and publish what it brings (``publish``); the skeleton gets
        nothing back to publish itself."""
        t_in = meta.trace[-1].ns  # stamped ``<stage>.in`` by the skeleton
        try:
            cond = Conditioning.decode(msg.data)
            if cond.session_id != session_id:
                raise SchemaError("conditioning session_id differs from its subject")
            inp = await asyncio.to_thread(frame_input, cond)
        except SchemaError as exc:
            raise CodedError("bad_conditioning", str(exc)) from None
        sessions = self.sessions
        await self.control.caught_up(session_id)  # a swap stored before this worker took it comes first
        async with sessions.lock(session_id):
            served = sessions.table.get(session_id) or await sessions.implicit_start(session_id)
            if served.renderer is None:
                try:
                    backend = await sessions.backend(served.backend)
                    served.renderer = await asyncio.to_thread(backend.open, session_id, served.garment)
                except AtCapacity as exc:
                    sessions.table.forget(session_id)
                    raise CodedError("at_capacity", str(exc)) from None
            arrived = meta.copy()
            arrived.trace.pop()  # as it came in: a re-render stamps its own arrival
            served.keep_latest(inp, arrived)
            served.remember_meta(meta)
            renderer = served.renderer
        rendered = await draw(served, renderer, inp, self.downlinks.quality(served))
        if rendered is None:  # swapped or stopped while drawing: this frame shows the old garment
            raise FrameDropped("swapped")
        await self.publish(served, rendered, t_in)
        return []

    async def rerender(self, served: ServedSession) -> None:
        """Show a swap now: draw the newest input frame again with the new garment instead of
        waiting up to a frame interval for the next one (the output repeats that frame's seq)."""
        renderer = served.renderer
        latest = served.take_latest() if renderer is not None and not renderer.chunked else None
        if renderer is None or latest is None:
            return
        inp, meta = latest
        t_in = now_ns()
        served.remember_meta(meta.stamp(self.ctx.name, "in", t_in))
        rendered = await draw(served, renderer, inp, self.downlinks.quality(served))
        if rendered is not None:
            await self.publish(served, rendered, t_in)

    async def flush(self, served: ServedSession) -> None:
        """Publish what the renderer still holds before its session ends (``drawing.held_back``),
        so every frame it took comes out once."""
        t_in = now_ns()
        rendered = await held_back(served, self.downlinks.quality(served))
        if rendered:
            await self.publish(served, rendered, t_in)

    async def publish(self, served: ServedSession, rendered: Rendered, t_in: int) -> None:
        """The one way out for rendered frames: matched back to their inputs' headers (a chunk
        brings several), published by the stage, and the swap they show answered ``swap_applied``
        with the first of them."""
        outputs: list[tuple[RenderedFrame, StageOutput]] = []
        for frame, jpeg in rendered:
            meta = served.take_meta(frame.seq)
            if meta is None:
                continue
            meta.garment_id = frame.garment_id
            meta.width, meta.height = frame.image_bgr.shape[1], frame.image_bgr.shape[0]
            outputs.append((frame, StageOutput(jpeg, meta)))
        published = await self.stage.publish(served.session_id, [out for _, out in outputs], t_in)
        shown = {id(out) for out in published}
        for frame, out in outputs:
            if id(out) not in shown:
                continue
            applied = served.frame_published(frame.garment_id, frame.seq, out.meta.trace[-1].ns)
            if applied is None:
                continue
            self.swap_latency.observe(float(applied["latency_ms"]) / 1e3)  # type: ignore[arg-type]
            await self.events.emit(
                "swap_applied", served.session_id, "swap_applied", epoch=out.meta.epoch, **applied
            )
            # answered: a later owner must not answer it again (stored off the frame path)
            assert self.sessions.store is not None
            task = asyncio.create_task(self.sessions.store.save_quietly(served))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # -- the viewer's downlink ------------------------------------------------------------------
    async def on_receiver_report(self, msg: Msg) -> None:
        """A viewer's receiver report fits its session's output quality (``downlink``)."""
        self.downlinks.take(msg.subject, msg.data)
