"""Generator handlers: the only generator module that touches NATS.

- conditioning (all sessions, latest-frame-wins) → the session's renderer → output frames, on the
  shared frame-stage skeleton (``shared.stage``);
- the control stream (JetStream, durable pull consumer): start / swap / stop, applied in order,
  idempotent by event id, acknowledged only once the change is in effect in the renderer; what
  each does is decided in ``lifecycle`` (pure), this module fetches and publishes;
- durable session state (KV): the garment in effect survives a restart of this worker;
- garments through ``GarmentCache`` (fetched once per worker, prefetched in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram

from services.generator.backends import make_backend, resolve
from services.generator.garment_cache import GarmentCache
from services.generator.inputs import frame_input
from services.generator.lifecycle import ServedSession, SessionTable
from services.generator.rendering import AtCapacity, Backend, FrameInput, Garment, RenderedFrame, Renderer
from services.generator.settings import GeneratorSettings
from shared.control import ensure_control_stream
from shared.errors import CodedError
from shared.events import EventPublisher
from shared.garment_client import GarmentClient
from shared.headers import FrameMeta, now_ns
from shared.jetstream import key_value
from shared.logging import get_logger
from shared.media import encode_jpeg
from shared.metrics import LATENCY_BUCKETS_S
from shared.schemas import Conditioning, Control, SchemaError, SessionState
from shared.service import ServiceContext
from shared.stage import FrameDropped, FrameStage, StageOutput
from shared.subjects import Channel, InvalidSessionId

log = get_logger("generator")


def _log_unexpected_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("control_loop_died", error=repr(task.exception()))


class GeneratorHandlers:
    def __init__(self, ctx: ServiceContext, settings: GeneratorSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.events = EventPublisher(ctx.nc, ctx.subjects, ctx.name)
        self.backends: dict[str, Backend] = {}
        self.table = SessionTable(settings.max_sessions)
        self.garments = GarmentCache(
            GarmentClient(ctx.nc, ctx.subjects, timeout_s=settings.garment_timeout_s),
            settings.garment_cache_size,
            prepare=self._prepare,
        )
        self.locks: dict[str, asyncio.Lock] = {}
        self.stage = FrameStage(
            ctx,
            self.events,
            Channel.CONDITIONING,
            ctx.subjects.output,
            self.process,
            idle_s=settings.session_idle_s,
            on_idle=self.on_idle,
            on_published=self.on_published,
        )
        self.swap_latency = Histogram(
            "chameleon_swap_latency_seconds",
            "Swap published → first output frame with the new garment",
            ["service"],
            buckets=LATENCY_BUCKETS_S,
            registry=ctx.metrics.registry,
        ).labels(ctx.name)
        self.control_total = Counter(
            "chameleon_control_total",
            "Control events by action and outcome",
            ["service", "action", "outcome"],
            registry=ctx.metrics.registry,
        )
        self._subs: list[Subscription] = []
        self._control_task: asyncio.Task[None] | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        ctx = self.ctx
        self.js = ctx.nc.jetstream()
        await ensure_control_stream(self.js, ctx.subjects)
        self.kv = await key_value(
            self.js, KeyValueConfig(bucket=ctx.subjects.session_bucket, history=1, storage=StorageType.FILE)
        )
        psub = await self.js.pull_subscribe(
            ctx.subjects.all_sessions(Channel.CONTROL),
            durable=self.settings.control_durable,
            stream=ctx.subjects.control_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
                ack_wait=self.settings.control_ack_wait_s,
                max_deliver=5,
            ),
        )
        await self._backend(resolve(self.settings.backend, self.settings))  # warm before frames arrive
        self.garments.prefetch()
        self._control_task = asyncio.create_task(self._control_loop(psub), name="control")
        self._control_task.add_done_callback(_log_unexpected_end)
        self._subs.append(await self.stage.start())

    async def stop(self) -> None:
        await self.garments.close()
        if self._control_task:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._control_task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.stage.close()
        for served in self.table:
            self.table.close(served.session_id)

    def health(self) -> dict:
        return {"sessions": len(self.table), "garments_cached": len(self.garments)}

    # -- control ----------------------------------------------------------------------------------
    async def _control_loop(self, psub) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                # one at a time: a larger batch can hold the first swap back until it fills
                msgs = await psub.fetch(batch=1, timeout=1.0)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected, consumer being recreated …: retry
                log.warning("control_fetch_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:  # in stream order: swaps apply in the order they were published
                await self.on_control(msg)

    async def on_control(self, msg: Msg) -> None:
        try:
            session_id = self.ctx.subjects.session_of(msg.subject)
        except InvalidSessionId:
            await msg.term()
            return
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            action, event_id = "unknown", ""
            try:
                control = Control.decode(msg.data)
                event_id, action = control.event_id, control.action
                if control.session_id != session_id:
                    raise CodedError("session_mismatch", "control session_id differs from its subject")
                received = now_ns()
                apply: dict[str, Callable[[Control, int], Awaitable[bool]]] = {
                    "start": self._start,
                    "swap": self._swap,
                    "stop": self._stop,
                }
                # the lock orders control against a session's lifecycle, never against a frame
                # being drawn: a swap does not wait for the frame in flight
                async with self._lock(session_id):
                    duplicate = await apply[control.action](control, received)
                self.control_total.labels(
                    self.ctx.name, action, "duplicate" if duplicate else "applied"
                ).inc()
            except (SchemaError, CodedError) as exc:
                code = exc.code if isinstance(exc, CodedError) else "bad_control"
                self.control_total.labels(self.ctx.name, action, code).inc()
                log.warning("control_rejected", code=code, error=str(exc), event_id=event_id)
                # every control message gets its own answer: not rate-limited like frame errors
                await self.events.emit("error", session_id, code, str(exc), event_id=event_id, action=action)
            except Exception as exc:  # never lose the consumer over one message
                log.exception("control_failed")
                self.control_total.labels(self.ctx.name, action, "internal").inc()
                await self.events.emit(
                    "error", session_id, "internal", f"control failed: {exc}", event_id=event_id
                )
            # applied, duplicate or permanently invalid: acknowledge so it is not redelivered
            with contextlib.suppress(Exception):
                await msg.ack()

    async def _start(self, control: Control, received_ns: int) -> bool:
        sid = control.session_id
        served = self.table.get(sid)
        state = None if served is not None else await self._load_state(sid)
        if SessionTable.is_duplicate(control.event_id, served, state):
            return True
        garment = await self.garments.get(control.garment_id or self.settings.default_garment)
        backend = self._backend_name(control.backend)
        if served is not None:
            await self._end(sid, "restarted")
        served = self._open(sid, garment, backend, state, previous=served)
        served.remember_event(control.event_id)
        await self._save_state(served, control)
        await self.events.emit(
            "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
        )
        return False

    async def _swap(self, control: Control, received_ns: int) -> bool:
        """The one swap path: the renderer's own ``swap`` (a fresh renderer, or the student's
        rescheduling queued for its next chunk), the newest frame drawn again at once, and the
        garment in effect stored."""
        started_ns = now_ns()
        sid = control.session_id
        served = self.table.get(sid)
        state = None if served is not None else await self._load_state(sid)
        if SessionTable.is_duplicate(control.event_id, served, state):
            return True
        if served is None and state is None:
            raise CodedError("unknown_session", f"no session {sid!r}: send start or frames first")
        garment = await self.garments.get(control.garment_id or "")
        renderer: Renderer | None = None
        if served is None:  # known but not running here (restart, idle): in effect from its next frame
            assert state is not None
            served = self._open(sid, garment, self._backend_name(state.backend), state)
        elif served.renderer is not None:
            renderer = await asyncio.to_thread(served.renderer.swap, garment)
        stale = SessionTable.swap(served, control, garment, renderer, received_ns, started_ns)
        if stale is not None:
            stale.close()
        await self._rerender_latest(served)  # first: the shopper sees the swap before we persist it
        await self._save_state(served, control)
        return False

    async def _stop(self, control: Control, received_ns: int) -> bool:
        sid = control.session_id
        served = self.table.get(sid)
        state = None if served is not None else await self._load_state(sid)
        if SessionTable.is_duplicate(control.event_id, served, state):
            return True
        await self._end(sid, "stopped")
        with contextlib.suppress(Exception):
            assert self.kv is not None
            await self.kv.delete(sid)
        return False

    async def _rerender_latest(self, served: ServedSession) -> None:
        """Show the swap now: draw the newest input frame again with the new garment instead of
        waiting up to a frame interval for the next one (the output repeats that frame's seq)."""
        renderer = served.renderer
        latest = served.take_latest() if renderer is not None and not renderer.chunked else None
        if renderer is None or latest is None:
            return
        inp, meta = latest
        t_in = now_ns()
        served.remember_meta(meta.stamp(self.ctx.name, "in", t_in))
        rendered = await self._draw_for(served, renderer, inp)
        if rendered is not None:
            await self.stage.publish(served.session_id, self._outputs(served, rendered), t_in)

    # -- frames -----------------------------------------------------------------------------------
    async def process(self, session_id: str, msg: Msg, meta: FrameMeta) -> list[StageOutput]:
        try:
            cond = Conditioning.decode(msg.data)
            if cond.session_id != session_id:
                raise SchemaError("conditioning session_id differs from its subject")
            inp = await asyncio.to_thread(frame_input, cond)
        except SchemaError as exc:
            raise CodedError("bad_conditioning", str(exc)) from None
        async with self._lock(session_id):
            served = self.table.get(session_id) or await self._implicit_start(session_id)
            if served.renderer is None:
                try:
                    backend = await self._backend(served.backend)
                    served.renderer = await asyncio.to_thread(backend.open, session_id, served.garment)
                except AtCapacity as exc:
                    self.table.forget(session_id)
                    raise CodedError("at_capacity", str(exc)) from None
            arrived = meta.copy()
            arrived.trace.pop()  # as it came in: a re-render stamps its own arrival
            served.keep_latest(inp, arrived)
            served.remember_meta(meta)
            renderer = served.renderer
        rendered = await self._draw_for(served, renderer, inp)
        if rendered is None:  # swapped or stopped while drawing: this frame shows the old garment
            raise FrameDropped("swapped")
        return self._outputs(served, rendered)

    async def _draw_for(
        self, served: ServedSession, renderer: Renderer, inp: FrameInput
    ) -> list[tuple[RenderedFrame, bytes]] | None:
        """Draw off the loop; None when the renderer was replaced meanwhile (then it is closed)."""
        served.in_flight.append(renderer)
        try:
            rendered = await asyncio.to_thread(self._draw, renderer, inp)
        finally:
            served.in_flight.remove(renderer)
        if served.renderer is not renderer:
            if renderer not in served.in_flight:
                renderer.close()
            return None
        return rendered

    def _draw(self, renderer: Renderer, inp: FrameInput) -> list[tuple[RenderedFrame, bytes]]:
        """Render and encode in ONE worker-thread trip: each trip is a wake-up of the event loop
        and of a pool thread, which on a busy machine costs more than the JPEG itself."""
        quality = self.settings.out_jpeg_quality
        return [(frame, encode_jpeg(frame.image_bgr, quality)) for frame in renderer.render(inp)]

    def _outputs(
        self, served: ServedSession, rendered: list[tuple[RenderedFrame, bytes]]
    ) -> list[StageOutput]:
        """Rendered frames matched back to their inputs' headers (a chunk brings several)."""
        outputs = []
        for frame, jpeg in rendered:
            meta = served.take_meta(frame.seq)
            if meta is None:
                continue
            meta.garment_id = frame.garment_id
            meta.width, meta.height = frame.image_bgr.shape[1], frame.image_bgr.shape[0]
            outputs.append(StageOutput(jpeg, meta, note=frame))
        return outputs

    async def on_published(self, session_id: str, out: StageOutput) -> None:
        served = self.table.get(session_id)
        if served is None or not isinstance(out.note, RenderedFrame):
            return
        applied = served.frame_published(out.note.garment_id, out.note.seq, out.meta.trace[-1].ns)
        if applied is not None:
            self.swap_latency.observe(float(applied["latency_ms"]) / 1e3)  # type: ignore[arg-type]
            await self.events.emit("swap_applied", session_id, "swap_applied", **applied)

    async def on_idle(self, session_id: str) -> None:
        async with self._lock(session_id):
            await self._end(session_id, "idle")
        self.locks.pop(session_id, None)

    # -- sessions ---------------------------------------------------------------------------------
    async def _backend(self, name: str) -> Backend:
        """The worker's backend ``name``, built once (off the loop: a model build takes seconds)."""
        backend = self.backends.get(name)
        if backend is None:
            backend = self.backends[name] = await asyncio.to_thread(make_backend, name, self.settings)
        return backend

    def _prepare(self, garment: Garment) -> None:
        for backend in list(self.backends.values()):
            backend.prepare(garment)

    def _backend_name(self, requested: str) -> str:
        try:
            return resolve(requested or self.settings.backend, self.settings)
        except ValueError as exc:
            raise CodedError("bad_backend", str(exc)) from None

    def _open(
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

    async def _implicit_start(self, sid: str) -> ServedSession:
        """A session that starts with frames alone: its stored state (after a restart) or the
        default garment and backend."""
        state = await self._load_state(sid)
        garment = await self.garments.get(state.garment_id if state else self.settings.default_garment)
        backend = self._backend_name(state.backend if state else "")
        served = self._open(sid, garment, backend, state)
        if state is None:
            await self._save_state(served, None)
        await self.events.emit(
            "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
        )
        return served

    async def _end(self, sid: str, reason: str) -> None:
        served = self.table.close(sid)
        if served is None:
            return
        self.ctx.stats.forget(sid)
        self.events.forget(sid)
        self.ctx.metrics.active_sessions.set(len(self.table))
        await self.events.emit("session_ended", sid, reason, frames=served.frames_rendered)

    def _lock(self, sid: str) -> asyncio.Lock:
        lock = self.locks.get(sid)
        if lock is None:
            lock = self.locks[sid] = asyncio.Lock()
        return lock

    # -- durable state ------------------------------------------------------------------------------
    async def _load_state(self, sid: str) -> SessionState | None:
        assert self.kv is not None
        try:
            entry = await self.kv.get(sid)
        except KeyNotFoundError:
            return None
        except Exception as exc:
            log.warning("session_state_unavailable", error=str(exc))
            return None
        if not entry.value:
            return None
        try:
            return SessionState.decode(entry.value)
        except SchemaError as exc:
            log.warning("session_state_corrupt", error=str(exc))
            return None

    async def _save_state(self, served: ServedSession, control: Control | None) -> None:
        assert self.kv is not None
        await self.kv.put(served.session_id, SessionTable.state_of(served, control).encode())
