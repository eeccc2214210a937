"""Generator handlers: the only generator module that touches NATS.

- the fleet (``shared.fleet``): this worker serves only the sessions it owns (placed at session
  start, moved here on another worker's failure or drain); outputs carry its ownership epoch and
  stop the moment it no longer owns the session or its lease is lapsing;
- conditioning (owned sessions, latest-frame-wins) → the session's renderer → output frames, on
  the shared frame-stage skeleton (``shared.stage``);
- control (JetStream): one durable pull consumer per session, bound by whichever worker owns it,
  so a new owner resumes at the old one's acknowledgements and one session's consumer can never
  stop another's swaps. start / swap / stop apply in order, idempotent by event id, acknowledged
  only once in effect; swaps that queued up are coalesced (only the newest is rendered). What
  each does is decided in ``lifecycle`` (pure), this module fetches and publishes;
- durable session state (KV): the garment in effect survives a restart of this worker;
- garments through ``GarmentCache`` (fetched once per worker, prefetched in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram

from services.generator.backends import make_backend, resolve
from services.generator.downlink import OutputQuality
from services.generator.garment_cache import GarmentCache
from services.generator.inputs import frame_input
from services.generator.lifecycle import ServedSession, SessionTable, superseded
from services.generator.rendering import AtCapacity, Backend, FrameInput, Garment, RenderedFrame, Renderer
from services.generator.settings import GeneratorSettings
from shared import revocations
from shared.control import ensure_control_stream
from shared.errors import CodedError
from shared.events import EventPublisher
from shared.fleet import FleetMember, Ownership
from shared.garment_client import GarmentClient
from shared.headers import FrameMeta, now_ns
from shared.jetstream import key_value
from shared.logging import RateLimitedLog, get_logger
from shared.media import encode_jpeg
from shared.metrics import LATENCY_BUCKETS_S
from shared.schemas import Conditioning, Control, ReceiverReport, SchemaError, SessionState
from shared.service import ServiceContext
from shared.stage import FrameDropped, FrameStage, StageOutput
from shared.subjects import Channel, InvalidSessionId

log = get_logger("generator")
CONSUMER_INACTIVE_S = 24 * 3600  # a session's control consumer outlives idle gaps, like the stream
CONSUMER_CHECK_S = 2.0  # an idle control loop checks its consumer still exists this often
CONTROL_BATCH = 32
STATE_SAVE_DEADLINE_S = 15.0


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
        self.receiver_reports = Counter(
            "chameleon_receiver_reports_total",
            "Viewers' receiver reports by outcome (a changed output quality, kept, not ours, bad)",
            ["service", "outcome"],
            registry=ctx.metrics.registry,
        )
        self.output_quality: dict[str, OutputQuality] = {}  # per served session, from its viewer
        self._lines = RateLimitedLog(log, burst=3)  # per service: junk control costs no line each
        self._subs: list[Subscription] = []
        self._control_tasks: dict[str, asyncio.Task[None]] = {}
        self._control_failing: dict[str, float] = {}  # session -> since when (monotonic)
        self._background: set[asyncio.Task[None]] = set()
        self.fleet: FleetMember | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self.revocations: KeyValue | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        ctx = self.ctx
        self.js = ctx.nc.jetstream()
        await ensure_control_stream(self.js, ctx.subjects, self.settings.js_replicas)
        self.kv = await key_value(
            self.js,
            KeyValueConfig(
                bucket=ctx.subjects.session_bucket,
                history=1,
                storage=StorageType.FILE,
                replicas=self.settings.js_replicas,
            ),
        )
        try:  # where a stop is kept for the auth service: its history here is purged on stop
            self.revocations = await revocations.open_bucket(self.js, ctx.subjects, self.settings.js_replicas)
        except Exception as exc:  # an auth-less deployment may not allow it: stops still end sessions
            log.warning("revocations_not_kept", error=f"{type(exc).__name__}: {exc}")
        backend = resolve(self.settings.backend, self.settings)
        await self._backend(backend)  # warm before frames arrive
        self.garments.prefetch()
        self.fleet = FleetMember(
            self.js,
            ctx.subjects,
            ctx.name,
            self.settings.worker_name,
            self.settings.max_sessions,
            self.settings.lease_s,
            on_serve=self._serve,
            on_unserve=self._unserve,
            backend=backend,
            free_slots=self.backends[backend].free_slots,
            replicas=self.settings.js_replicas,
        )
        self.stage.owner = self.fleet
        feedback = ctx.subjects.all_sessions(Channel.FEEDBACK)
        self._subs.append(await ctx.nc.subscribe(feedback, cb=self.on_receiver_report))
        await self.stage.start(all_sessions=False)
        await self.fleet.start()

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.drain()  # hand the sessions over before this worker goes
        await self.garments.close()
        for task in list(self._control_tasks.values()):
            task.cancel()
        if self._control_tasks:
            await asyncio.wait(list(self._control_tasks.values()), timeout=2.0)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.stage.close()
        for served in self.table:
            self.table.close(served.session_id)
        if self.fleet is not None:
            await self.fleet.close()

    def health(self) -> dict:
        """Unhealthy when the lease is lapsing or a session's control consumer has been failing
        for a few seconds (swaps would be lost silently otherwise)."""
        now = time.monotonic()
        stuck = sorted(sid for sid, since in self._control_failing.items() if now - since > 3.0)
        healthy = self.fleet is not None and self.fleet.healthy and not stuck
        return {
            "sessions": len(self.table),
            "garments_cached": len(self.garments),
            "worker_id": self.fleet.worker_id if self.fleet else "",
            "owned": len(self.fleet.serving) if self.fleet else 0,
            "control_failing": stuck,
            "status": "ok" if healthy else "unhealthy",
        }

    # -- fleet ------------------------------------------------------------------------------------
    async def _serve(self, session_id: str, record: Ownership) -> None:
        """This worker owns the session now: its frames, and its control consumer where the last
        owner left it (unacknowledged swaps come back, the acknowledged ones do not)."""
        await self.stage.serve(session_id)
        if session_id not in self._control_tasks:
            self._control_tasks[session_id] = asyncio.create_task(
                self._control_loop(session_id), name=f"control:{session_id}"
            )
        log.info("session_assigned", session_id=session_id, epoch=record.epoch, reason=record.reason)

    async def _unserve(self, session_id: str, reason: str) -> None:
        task = self._control_tasks.pop(session_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # wait without swallowing a cancellation of our own (asyncio.wait never raises it)
            await asyncio.wait([task], timeout=2.0)
        self._control_failing.pop(session_id, None)
        await self.stage.unserve(session_id)
        async with self._lock(session_id):
            await self._end(session_id, reason, announce=False)
        log.info("session_unassigned", session_id=session_id, reason=reason)

    # -- control ----------------------------------------------------------------------------------
    async def _control_loop(self, session_id: str) -> None:
        """Consume one session's control subject for as long as this worker owns it. A consumer
        that disappears (deleted by hand, lost with a node) is noticed and created again; until
        then ``/healthz`` says unhealthy."""
        assert self.js is not None
        subjects = self.ctx.subjects
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            while True:
                try:
                    psub = await self.js.pull_subscribe(
                        subjects.control(session_id),
                        durable=subjects.control_consumer(self.settings.control_durable, session_id),
                        stream=subjects.control_stream,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=self.settings.control_ack_wait_s,
                            max_deliver=5,
                            inactive_threshold=CONSUMER_INACTIVE_S,
                        ),
                    )
                    self._control_failing.pop(session_id, None)
                    await self._consume(session_id, psub)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # disconnected, consumer deleted, node lost …: bind again
                    self._control_failing.setdefault(session_id, time.monotonic())
                    log.warning("control_consumer_failed", error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(0.5)

    async def _consume(self, session_id: str, psub) -> None:  # type: ignore[no-untyped-def]
        idle_since = time.monotonic()
        while True:
            try:
                # wait for one; then take whatever else is already queued, to coalesce swaps
                msgs = await psub.fetch(batch=1, timeout=1.0)
            except TimeoutError:
                if time.monotonic() - idle_since > CONSUMER_CHECK_S:
                    await psub.consumer_info()  # raises NotFoundError when the consumer is gone
                    idle_since = time.monotonic()
                continue
            pending = msgs[-1].metadata.num_pending if msgs[-1].metadata else 0
            if pending:
                with contextlib.suppress(TimeoutError):
                    msgs += await psub.fetch(batch=min(pending, CONTROL_BATCH), timeout=0.5)
            await self._apply_batch(session_id, msgs)
            idle_since = time.monotonic()

    async def _apply_batch(self, session_id: str, msgs: list[Msg]) -> None:
        """Apply in stream order; a swap followed by a newer one is acknowledged unrendered."""
        controls: list[Control | None] = []
        for msg in msgs:
            try:
                controls.append(Control.decode(msg.data))
            except SchemaError:
                controls.append(None)
        skip = superseded(controls)
        for i, msg in enumerate(msgs):
            control = controls[i]
            if i in skip and control is not None:
                await self._supersede(session_id, control, skip[i])
                with contextlib.suppress(Exception):
                    await msg.ack()
                continue
            await self.on_control(msg)

    async def _supersede(self, session_id: str, control: Control, newer: str) -> None:
        served = self.table.get(session_id)
        if served is not None:
            served.remember_event(control.event_id)
        await self._answer_superseded(session_id, control.event_id, control.garment_id or "", newer)

    async def _answer_superseded(self, session_id: str, event_id: str, garment_id: str, newer: str) -> None:
        """Every swap gets an answer: this one was overtaken by ``newer`` before it was shown."""
        self.control_total.labels(self.ctx.name, "swap", "superseded").inc()
        await self.events.emit(
            "status",
            session_id,
            "swap_superseded",
            "a newer swap arrived before this one was shown",
            event_id=event_id,
            garment_id=garment_id,
            superseded_by=newer,
        )

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
                # answered one per message (the event below); logged a few lines per second per code
                self._lines.warning(
                    "control_rejected", key=code, code=code, error=str(exc), event_id=event_id
                )
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
        if SessionTable.is_stale_swap(control, served, state):
            in_effect = served.garment.garment_id if served else state.garment_id if state else ""
            await self._supersede(sid, control, newer=f"the newer swap to {in_effect}")
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
        stale, replaced = SessionTable.swap(served, control, garment, renderer, received_ns, started_ns)
        if stale is not None:
            stale.close()
        if replaced is not None:  # applied but never shown: this swap overtook it
            await self._answer_superseded(sid, replaced.event_id, replaced.garment_id, control.event_id)
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
        await self._keep_stop(sid, received_ns / 1e9)
        with contextlib.suppress(Exception):
            assert self.kv is not None
            await self.kv.delete(sid)
        # a stopped session leaves no control history: a later session with the same id starts
        # from nothing instead of replaying this one's start, swaps and stop
        task = asyncio.create_task(self._forget_control(sid), name=f"forget:{sid}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return False

    async def _keep_stop(self, sid: str, at: float) -> None:
        """Keep the stop in the revocation bucket before the session's control history (the stop
        included) is purged: the auth service reads stops from the bucket as well as from the
        stream, so one published while no auth service ran still revokes the session's tokens."""
        if self.revocations is None:
            return
        try:
            await revocations.keep(self.revocations, sid, at)
        except Exception as exc:
            self._lines.warning("revocation_not_kept", session_id=sid, error=f"{type(exc).__name__}: {exc}")

    async def _forget_control(self, sid: str) -> None:
        assert self.js is not None and self.fleet is not None
        await asyncio.sleep(0)  # let the stop's acknowledgement go first
        await self.fleet.release(sid)  # ends the control loop (this task is not part of it)
        subjects = self.ctx.subjects
        with contextlib.suppress(Exception):
            await self.js.purge_stream(subjects.control_stream, subject=subjects.control(sid))
        with contextlib.suppress(NotFoundError, Exception):
            await self.js.delete_consumer(
                subjects.control_stream, subjects.control_consumer(self.settings.control_durable, sid)
            )

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

    async def on_receiver_report(self, msg: Msg) -> None:
        """A viewer's receiver report fits its session's output quality (``downlink``); only the
        owner of the session keeps one, every other worker ignores it."""
        try:
            report = ReceiverReport.decode(msg.data)
            if report.session_id != self.ctx.subjects.session_of(msg.subject):
                raise SchemaError("receiver_report session_id differs from its subject")
        except (SchemaError, InvalidSessionId) as exc:
            self.receiver_reports.labels(self.ctx.name, "bad").inc()
            self._lines.warning("receiver_report_rejected", key="bad_report", error=str(exc))
            return
        sid = report.session_id
        if self.table.get(sid) is None:
            self.receiver_reports.labels(self.ctx.name, "not_served").inc()
            return
        fit = self.output_quality.get(sid)
        if fit is None:
            fit = self.output_quality[sid] = OutputQuality(
                self.settings.out_jpeg_quality, self.settings.out_min_jpeg_quality
            )
        changed = fit.on_report(report)
        self.receiver_reports.labels(self.ctx.name, "changed" if changed else "kept").inc()
        if changed:
            log.info("output_quality", session_id=sid, quality=fit.quality, queue_ms=report.queue_ms)

    def _out_quality(self, session_id: str) -> int:
        fit = self.output_quality.get(session_id)
        return fit.quality if fit is not None else self.settings.out_jpeg_quality

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
            quality = self._out_quality(served.session_id)
            rendered = await asyncio.to_thread(self._draw, renderer, inp, quality)
        finally:
            served.in_flight.remove(renderer)
        if served.renderer is not renderer:
            if renderer not in served.in_flight:
                renderer.close()
            return None
        return rendered

    def _draw(self, renderer: Renderer, inp: FrameInput, quality: int) -> list[tuple[RenderedFrame, bytes]]:
        """Render and encode in ONE worker-thread trip: each trip is a wake-up of the event loop
        and of a pool thread, which on a busy machine costs more than the JPEG itself."""
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
            await self.events.emit(
                "swap_applied", session_id, "swap_applied", epoch=out.meta.epoch, **applied
            )
            # answered: a later owner must not answer it again (off the frame path)
            task = asyncio.create_task(self._save_state_quietly(served))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def on_idle(self, session_id: str) -> None:
        """No frames for ``session_idle_s``: the camera went away. The renderer and cache go, the
        slot is given back to the fleet; the stored state stays, so the session resumes with its
        garment when frames come back (ingest admits it again)."""
        async with self._lock(session_id):
            await self._end(session_id, "idle")
        self.locks.pop(session_id, None)
        if self.fleet is not None:
            await self.fleet.release(session_id)

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
        garment = await self._resumed_garment(sid, state)
        backend = self._backend_name(state.backend if state else "")
        served = self._open(sid, garment, backend, state)
        if state is None or garment.garment_id != state.garment_id:
            await self._save_state(served, None)
        await self.events.emit(
            "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
        )
        return served

    async def _resumed_garment(self, sid: str, state: SessionState | None) -> Garment:
        """The stored garment, or the default one when the stored one no longer exists (taken out
        of the catalogue): the session renders on, with a ``garment_fallback`` status event,
        instead of answering every frame with ``unknown_garment`` and showing nothing."""
        default = self.settings.default_garment
        if state is None or not state.garment_id or state.garment_id == default:
            return await self.garments.get(default)
        try:
            return await self.garments.get(state.garment_id)
        except CodedError as exc:
            if exc.code != "unknown_garment":
                raise  # the garment service is down or failing: not a reason to forget the garment
        garment = await self.garments.get(default)
        await self.events.status(
            sid,
            "garment_fallback",
            f"stored garment {state.garment_id!r} does not exist; showing {garment.garment_id!r}",
            requested=state.garment_id,
            garment_id=garment.garment_id,
        )
        return garment

    async def _end(self, sid: str, reason: str, announce: bool = True) -> None:
        """Stop serving a session here; ``announce`` tells its viewers (not when it only moved)."""
        if (ending := self.table.get(sid)) is not None:
            await self._flush(ending)
        served = self.table.close(sid)
        self.output_quality.pop(sid, None)
        if served is None:
            return
        self.ctx.stats.forget(sid)
        self.events.forget(sid)
        self.ctx.metrics.active_sessions.set(len(self.table))
        if announce:
            await self.events.emit("session_ended", sid, reason, frames=served.frames_rendered)

    async def _flush(self, served: ServedSession) -> None:
        """Publish what the renderer still holds (the student's incomplete chunk) before its
        session ends, so every frame it took comes out once. Not while a frame is drawing: that
        thread owns the renderer, and its chunk is dropped with the session as before."""
        renderer = served.renderer
        if renderer is None or served.in_flight:
            return
        t_in, quality = now_ns(), self._out_quality(served.session_id)
        try:
            rendered = await asyncio.to_thread(
                lambda: [(f, encode_jpeg(f.image_bgr, quality)) for f in renderer.flush()]
            )
        except Exception as exc:  # the session ends regardless; its held-back frames are lost
            log.warning("flush_failed", session_id=served.session_id, error=str(exc))
            return
        await self.stage.publish(served.session_id, self._outputs(served, rendered), t_in)

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

    async def _save_state_quietly(self, served: ServedSession) -> None:
        try:
            await self._save_state(served, None)
        except Exception as exc:  # the next change stores it again
            log.warning("session_state_not_saved", session_id=served.session_id, error=str(exc))

    async def _save_state(self, served: ServedSession, control: Control | None) -> None:
        """Store the session's state; a put that times out (the bucket's leader lost, a new one
        being elected: seconds) is tried again for up to ``STATE_SAVE_DEADLINE_S``. The control
        event is acknowledged only after this, so a crash before it means redelivery."""
        assert self.kv is not None
        state = SessionTable.state_of(served, control).encode()
        deadline = time.monotonic() + STATE_SAVE_DEADLINE_S
        while True:
            try:
                await self.kv.put(served.session_id, state)
                return
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                nats.js.errors.ServiceUnavailableError,
            ):  # the bucket has no leader right now
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
