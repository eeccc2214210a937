"""Generator handlers: the only generator module that touches NATS.

- conditioning (all sessions, latest-frame-wins) → the session's renderer → output frames;
- the control stream (JetStream, durable pull consumer): start / swap / stop, applied in order,
  idempotent by event id, acknowledged only once the change is in effect in the renderer;
- durable session state (KV): the garment in effect survives a restart of this worker;
- garments from the garment service, decoded once per worker (LRU).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram

from services.generator.backends import garment_from_asset, make_backend, resolve
from services.generator.inputs import GarmentLRU, frame_input
from services.generator.rendering import AtCapacity, Backend, FrameInput, Garment, RenderedFrame, Renderer
from services.generator.sessions import PendingSwap, ServedSession
from services.generator.settings import GeneratorSettings
from shared.bus import LatestFrameSlots, publish_frame
from shared.control import ensure_control_stream
from shared.events import EventPublisher
from shared.garment_client import GarmentClient, GarmentError
from shared.headers import FrameMeta, HeaderError, now_ns
from shared.logging import get_logger
from shared.media import encode_jpeg
from shared.metrics import LATENCY_BUCKETS_S
from shared.schemas import Conditioning, Control, SchemaError, SessionState
from shared.service import ServiceContext
from shared.subjects import Channel, InvalidSessionId

log = get_logger("generator")
STAGE = "generator"


def _log_unexpected_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("control_loop_died", error=repr(task.exception()))


class ControlRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GeneratorHandlers:
    def __init__(self, ctx: ServiceContext, settings: GeneratorSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.events = EventPublisher(ctx.nc, ctx.subjects, STAGE)
        self.garment_client = GarmentClient(ctx.nc, ctx.subjects, timeout_s=settings.garment_timeout_s)
        self.garments = GarmentLRU(settings.garment_cache_size)
        self.backends: dict[str, Backend] = {}
        self.sessions: dict[str, ServedSession] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.slots = LatestFrameSlots(
            self.on_frame,
            idle_s=settings.session_idle_s,
            on_drop=lambda _sid: ctx.metrics.dropped("superseded"),
            on_idle=self.on_idle,
        )
        self.swap_latency = Histogram(
            "chameleon_swap_latency_seconds",
            "Swap published → first output frame with the new garment",
            ["service"],
            buckets=LATENCY_BUCKETS_S,
            registry=ctx.metrics.registry,
        ).labels(STAGE)
        self.control_total = Counter(
            "chameleon_control_total",
            "Control events by action and outcome",
            ["service", "action", "outcome"],
            registry=ctx.metrics.registry,
        )
        self._subs: list[Subscription] = []
        self._control_task: asyncio.Task[None] | None = None
        self._prefetch_task: asyncio.Task[None] | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        ctx = self.ctx
        self.js = ctx.nc.jetstream()
        await ensure_control_stream(self.js, ctx.subjects)
        self.kv = await self._session_bucket()
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
        self._schedule_prefetch()
        self._control_task = asyncio.create_task(self._control_loop(psub), name="control")
        self._control_task.add_done_callback(_log_unexpected_end)
        self._subs.append(await ctx.subscribe_frames(Channel.CONDITIONING, self.slots))

    async def _session_bucket(self) -> KeyValue:
        assert self.js is not None
        name = self.ctx.subjects.session_bucket
        try:
            return await self.js.key_value(name)
        except BucketNotFoundError:
            from nats.js.api import KeyValueConfig, StorageType

            return await self.js.create_key_value(
                KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE)
            )

    def _schedule_prefetch(self) -> None:
        """(Re)fill the garment cache in the background: at start, and when a session starts
        (the catalogue may have grown since)."""
        if self._prefetch_task is None or self._prefetch_task.done():
            self._prefetch_task = asyncio.create_task(self._prefetch_garments(), name="prefetch")

    async def _prefetch_garments(self) -> None:
        """Decode the catalogue into this worker's cache in the background, so a swap never
        waits for a fetch (up to the cache size; a missing garment service only delays this)."""
        for attempt in range(30):
            try:
                records = await self.garment_client.list()
                break
            except GarmentError:
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
        else:
            return
        for record in records[: self.garments.capacity]:
            with contextlib.suppress(ControlRejected):
                await self._garment(record.garment_id)
        log.info("garments_prefetched", count=len(self.garments))

    async def stop(self) -> None:
        if self._prefetch_task:
            self._prefetch_task.cancel()
        if self._control_task:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._control_task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.slots.close()
        for s in list(self.sessions.values()):
            s.close()
        self.sessions.clear()

    def health(self) -> dict:
        return {"sessions": len(self.sessions), "garments_cached": len(self.garments)}

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
                event_id = control.event_id
                action = control.action
                if control.session_id != session_id:
                    raise ControlRejected("session_mismatch", "control session_id differs from its subject")
                received = now_ns()
                live = self.sessions.get(session_id)
                if control.action == "swap" and live and live.renderer and not live.renderer.chunked:
                    duplicate = await self._swap_now(live, control, received)
                else:
                    async with self._lock(session_id):
                        duplicate = await self._apply(control, received)
                self.control_total.labels(STAGE, action, "duplicate" if duplicate else "applied").inc()
            except (SchemaError, ControlRejected) as exc:
                code = getattr(exc, "code", "bad_control")
                self.control_total.labels(STAGE, action, code).inc()
                log.warning("control_rejected", code=code, error=str(exc), event_id=event_id)
                # every control message gets its own answer: not rate-limited like frame errors
                await self.events.emit("error", session_id, code, str(exc), event_id=event_id, action=action)
            except Exception as exc:  # never lose the consumer over one message
                log.exception("control_failed")
                self.control_total.labels(STAGE, action, "internal").inc()
                await self.events.emit(
                    "error", session_id, "internal", f"control failed: {exc}", event_id=event_id
                )
            # applied, duplicate or permanently invalid: acknowledge so it is not redelivered
            with contextlib.suppress(Exception):
                await msg.ack()

    async def _apply(self, control: Control, received_ns: int = 0) -> bool:
        """Apply one control event; returns True when it was a duplicate."""
        locked_ns = now_ns()
        sid = control.session_id
        live = self.sessions.get(sid)
        # a live session carries its applied event ids; only a session not running here needs KV
        state = None if live is not None else await self._load_state(sid)
        seen = (live.applied_events if live else []) + (state.applied_events if state else [])
        if control.event_id in seen:
            return True
        if control.action == "stop":
            await self._end_session(sid, "stopped")
            with contextlib.suppress(Exception):
                assert self.kv is not None
                await self.kv.delete(sid)
            return False
        if control.action == "start":
            garment = await self._garment(control.garment_id or self.settings.default_garment)
            backend = self._backend_name(control.backend)
            previous = live
            if previous:
                await self._end_session(sid, "restarted")
            live = self._new_session(sid, garment, backend, state)
            if previous:  # a restart keeps the session's idempotency memory and epoch
                live.applied_events, live.epoch = list(previous.applied_events), previous.epoch
            live.remember_event(control.event_id)
            await self._save_state(live, control)
            await self.events.emit(
                "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
            )
            return False
        # swap
        if live is None and state is None:
            raise ControlRejected("unknown_session", f"no session {sid!r}: send start or frames first")
        garment = await self._garment(control.garment_id or "")
        if live is None:  # known but not running here (restart, idle): in effect from its next frame
            assert state is not None
            live = self._new_session(sid, garment, self._backend_name(state.backend), state)
        elif live.renderer is not None:
            await asyncio.to_thread(live.renderer.swap, garment)
        live.garment = garment
        live.pending_swap = PendingSwap(
            control.event_id, garment.garment_id, control.published_ns, now_ns(), received_ns, locked_ns
        )
        live.remember_event(control.event_id)
        await self._rerender_latest(live)  # first: the shopper sees the swap before we persist it
        await self._save_state(live, control)
        return False

    async def _swap_now(self, live: ServedSession, control: Control, received_ns: int) -> bool:
        """A swap on a frame-by-frame renderer, without waiting for the frame in flight.

        Refresh, withdraw and re-reference amount to a fresh renderer on the new garment (its
        per-garment data is already prepared and shared), so one is opened, the newest frame is
        rendered with it at once, and it replaces the old one. A frame the old renderer is still
        drawing is dropped when it finishes (``on_frame``): no old-garment frame follows."""
        if control.event_id in live.applied_events:
            return True
        started = now_ns()
        garment = await self._garment(control.garment_id or "")
        backend = await self._backend(live.backend)
        fresh = await asyncio.to_thread(backend.open, live.session_id, garment)
        if self.sessions.get(live.session_id) is not live:  # the session ended meanwhile
            fresh.close()
            return False
        stale, live.renderer = live.renderer, fresh
        if stale is not None and stale is not live.rendering:
            stale.close()
        live.garment = garment
        live.pending_swap = PendingSwap(
            control.event_id, garment.garment_id, control.published_ns, now_ns(), received_ns, started
        )
        live.remember_event(control.event_id)
        await self._rerender_latest(live)
        await self._save_state(live, control)
        return False

    async def _rerender_latest(self, live: ServedSession) -> None:
        """Show the swap now: render the newest input frame again with the new garment instead of
        waiting up to a frame interval for the next one (the output repeats that frame's seq)."""
        renderer, inp, meta = live.renderer, live.last_input, live.last_meta
        if renderer is None or inp is None or meta is None or renderer.chunked:
            return
        t_in = now_ns()
        live.remember_meta(meta.stamp(STAGE, "in", t_in))
        live.last_meta = None  # once: the next camera frame brings a fresh one
        for frame, jpeg in await asyncio.to_thread(self._draw, renderer, inp):
            await self._publish(live, frame, jpeg, t_in)

    # -- frames -----------------------------------------------------------------------------------
    async def on_frame(self, session_id: str, msg: Msg, t_in: int) -> None:
        """``t_in``: when the frame reached this process (its wait in the slot is stage time)."""
        self.ctx.metrics.frames_in.inc()
        stats = self.ctx.stats[session_id]
        stats.frames_in += 1
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            try:
                meta = FrameMeta.from_headers(msg.headers)
                cond = Conditioning.decode(msg.data)
                if cond.session_id != session_id:
                    raise SchemaError("conditioning session_id differs from its subject")
            except (HeaderError, SchemaError) as exc:
                stats.rejected += 1
                self.ctx.metrics.rejected("bad_conditioning")
                await self.events.error(session_id, "bad_conditioning", str(exc))
                return
            if meta.trace and meta.trace[-1].edge == "out":
                self.ctx.metrics.hop_latency.observe((t_in - meta.trace[-1].ns) / 1e9)
            async with self._lock(session_id):
                live = self.sessions.get(session_id) or await self._implicit_start(session_id)
                if live is None:
                    return
                try:
                    inp = await asyncio.to_thread(frame_input, cond)
                except SchemaError as exc:
                    stats.rejected += 1
                    await self.events.error(session_id, "bad_conditioning", str(exc))
                    return
                if live.renderer is None:
                    try:
                        backend = await self._backend(live.backend)
                        live.renderer = await asyncio.to_thread(backend.open, session_id, live.garment)
                    except AtCapacity as exc:
                        self.sessions.pop(session_id, None)
                        await self.events.error(session_id, "at_capacity", str(exc))
                        return
                live.keep_latest(inp, meta)
                live.remember_meta(meta.stamp(STAGE, "in", t_in))
                renderer = live.rendering = live.renderer
                try:
                    rendered = await asyncio.to_thread(self._draw, renderer, inp)
                finally:
                    live.rendering = None
                if live.renderer is not renderer:  # swapped while drawing: this shows the old garment
                    renderer.close()
                    self.ctx.metrics.dropped("swapped")
                    return
                for frame, jpeg in rendered:
                    await self._publish(live, frame, jpeg, t_in)

    def _draw(self, renderer: Renderer, inp: FrameInput) -> list[tuple[RenderedFrame, bytes]]:
        """Render and encode in ONE worker-thread trip: each trip is a wake-up of the event loop
        and of a pool thread, which on a busy machine costs more than the JPEG itself."""
        quality = self.settings.out_jpeg_quality
        return [(frame, encode_jpeg(frame.image_bgr, quality)) for frame in renderer.render(inp)]

    async def _publish(self, live: ServedSession, frame: RenderedFrame, jpeg: bytes, t_in: int) -> None:
        meta = live.take_meta(frame.seq)
        if meta is None:
            return
        meta.garment_id = frame.garment_id
        meta.width, meta.height = frame.image_bgr.shape[1], frame.image_bgr.shape[0]
        meta.stamp(STAGE, "out")
        sid = live.session_id
        if not await publish_frame(self.ctx.nc, self.ctx.subjects.output(sid), jpeg, meta):
            self.ctx.metrics.dropped("disconnected")
            return
        live.frames_rendered += 1
        stats = self.ctx.stats[sid]
        stats.frames_out += 1
        stats.latency_ms.append((meta.trace[-1].ns - t_in) / 1e6)
        self.ctx.metrics.frames_out.inc()
        self.ctx.metrics.stage_latency.observe((meta.trace[-1].ns - t_in) / 1e9)
        pending = live.pending_swap
        if pending is not None and frame.garment_id == pending.garment_id:
            live.pending_swap = None
            latency_ms = (meta.trace[-1].ns - pending.published_ns) / 1e6
            self.swap_latency.observe(latency_ms / 1e3)
            await self.events.emit(
                "swap_applied",
                sid,
                "swap_applied",
                event_id=pending.event_id,
                garment_id=pending.garment_id,
                latency_ms=round(latency_ms, 2),
                first_seq=frame.seq,
                apply_ms=round((pending.applied_ns - pending.published_ns) / 1e6, 2),
                delivery_ms=round((pending.received_ns - pending.published_ns) / 1e6, 2),
                wait_ms=round((pending.locked_ns - pending.received_ns) / 1e6, 2),
            )

    async def on_idle(self, session_id: str) -> None:
        async with self._lock(session_id):
            await self._end_session(session_id, "idle")
        self.locks.pop(session_id, None)

    # -- sessions ---------------------------------------------------------------------------------
    async def _backend(self, name: str) -> Backend:
        """The worker's backend ``name``, built once (off the loop: a model build takes seconds)."""
        backend = self.backends.get(name)
        if backend is None:
            backend = self.backends[name] = await asyncio.to_thread(make_backend, name, self.settings)
        return backend

    def _backend_name(self, requested: str) -> str:
        try:
            return resolve(requested or self.settings.backend, self.settings)
        except ValueError as exc:
            raise ControlRejected("bad_backend", str(exc)) from None

    def _new_session(
        self, sid: str, garment: Garment, backend: str, state: SessionState | None
    ) -> ServedSession:
        if len(self.sessions) >= self.settings.max_sessions and sid not in self.sessions:
            raise ControlRejected(
                "at_capacity", f"this worker runs {len(self.sessions)} sessions, its maximum"
            )
        live = ServedSession(sid, garment, backend, epoch=(state.epoch if state else 0))
        if state:
            live.applied_events = list(state.applied_events)
        self.sessions[sid] = live
        self.ctx.metrics.active_sessions.set(len(self.sessions))
        self._schedule_prefetch()
        return live

    async def _implicit_start(self, sid: str) -> ServedSession | None:
        """A session that starts with frames alone: its stored state (after a restart) or the
        default garment and backend."""
        state = await self._load_state(sid)
        try:
            garment = await self._garment(state.garment_id if state else self.settings.default_garment)
            backend = self._backend_name(state.backend if state else "")
            live = self._new_session(sid, garment, backend, state)
        except ControlRejected as exc:
            await self.events.error(sid, exc.code, str(exc))
            return None
        if state is None:
            await self._save_state(live, None)
        await self.events.emit(
            "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
        )
        return live

    async def _end_session(self, sid: str, reason: str) -> None:
        live = self.sessions.pop(sid, None)
        if live is None:
            return
        live.close()
        self.ctx.stats.forget(sid)
        self.events.forget(sid)
        self.ctx.metrics.active_sessions.set(len(self.sessions))
        await self.events.emit("session_ended", sid, reason, frames=live.frames_rendered)

    async def _garment(self, garment_id: str) -> Garment:
        cached = self.garments.get(garment_id)
        if cached is not None:
            return cached
        try:
            asset = await self.garment_client.get(garment_id)
        except GarmentError as exc:
            code = "unknown_garment" if exc.code in ("unknown_garment", "bad_id") else f"garment_{exc.code}"
            raise ControlRejected(code, f"garment {garment_id!r}: {exc.message}") from None
        garment = await asyncio.to_thread(self._decode_and_prepare, asset)
        self.garments.put(garment)
        return garment

    def _decode_and_prepare(self, asset) -> Garment:  # type: ignore[no-untyped-def]
        garment = garment_from_asset(asset)
        for backend in list(self.backends.values()):
            backend.prepare(garment)
        return garment

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

    async def _save_state(self, live: ServedSession, control: Control | None) -> None:
        assert self.kv is not None
        live.epoch += 1
        state = SessionState(
            session_id=live.session_id,
            garment_id=live.garment.garment_id,
            backend=live.backend,
            width=control.width if control else 0,
            height=control.height if control else 0,
            fps=control.fps if control else 0.0,
            epoch=live.epoch,
            applied_events=live.applied_events,
            updated_ns=time.time_ns(),
        )
        await self.kv.put(live.session_id, state.encode())
