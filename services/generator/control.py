"""The generator's control plane: one durable JetStream pull consumer per owned session, bound by
whichever worker owns it, so a new owner resumes at the old one's acknowledgements and one
session's consumer can never stop another's swaps.

start / swap / stop apply in stream order, idempotent by event id, and are acknowledged only once
in effect (the state stored). Swaps that queued up are coalesced: only the newest is rendered,
the older ones are answered ``swap_superseded``, as is a swap redelivered after a newer one took
effect. Every message gets exactly one answer; an invalid one an error event. What each action
does to a session is decided in ``lifecycle`` (pure); this module fetches and answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter

from runtime.events import EventPublisher
from runtime.logging import RateLimitedLog, get_logger
from runtime.service import ServiceContext
from services.generator.lifecycle import ServedSession, superseded
from services.generator.rendering import Renderer
from services.generator.sessions import Sessions
from services.generator.settings import GeneratorSettings
from services.generator.state import SessionStore
from shared.control import read_control
from shared.errors import CodedError
from shared.headers import now_ns
from shared.schemas import Control, SchemaError
from shared.subjects import InvalidSessionId

log = get_logger("generator")
CONSUMER_INACTIVE_S = 24 * 3600  # a session's control consumer outlives idle gaps, like the stream
CONSUMER_CHECK_S = 2.0  # an idle control loop checks its consumer still exists this often
CONTROL_BATCH = 32
FAILING_UNHEALTHY_S = 3.0

Rerender = Callable[[ServedSession], Awaitable[None]]
Release = Callable[[str], Awaitable[None]]


class SessionControl:
    def __init__(
        self,
        ctx: ServiceContext,
        settings: GeneratorSettings,
        sessions: Sessions,
        events: EventPublisher,
        rerender: Rerender,
        release: Release,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.sessions = sessions
        self.events = events
        self._rerender = rerender
        self._release = release
        self.js: JetStreamContext | None = None  # set at start
        self.total = Counter(
            "chameleon_control_total",
            "Control events by action and outcome",
            ["service", "action", "outcome"],
            registry=ctx.metrics.registry,
        )
        self._lines = RateLimitedLog(log, burst=3)  # per service: junk control costs no line each
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failing: dict[str, float] = {}  # session -> since when its consumer fails (monotonic)
        self._background: set[asyncio.Task[None]] = set()

    # -- one consumer per owned session -----------------------------------------------------------
    def follow(self, session_id: str) -> None:
        """This worker owns the session now: consume its control where the last owner left it
        (unacknowledged swaps come back, the acknowledged ones do not)."""
        if session_id not in self._tasks:
            self._tasks[session_id] = asyncio.create_task(
                self._loop(session_id), name=f"control:{session_id}"
            )

    async def unfollow(self, session_id: str) -> None:
        task = self._tasks.pop(session_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # wait without swallowing a cancellation of our own (asyncio.wait never raises it)
            await asyncio.wait([task], timeout=2.0)
        self._failing.pop(session_id, None)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=2.0)

    def failing(self) -> list[str]:
        """Sessions whose consumer has been failing for a few seconds (swaps would be lost silently)."""
        now = time.monotonic()
        return sorted(sid for sid, since in self._failing.items() if now - since > FAILING_UNHEALTHY_S)

    async def _loop(self, session_id: str) -> None:
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
                    self._failing.pop(session_id, None)
                    try:
                        await self._consume(psub)
                    finally:
                        await _unsubscribe(psub)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # disconnected, consumer deleted, node lost …: bind again
                    self._failing.setdefault(session_id, time.monotonic())
                    log.warning("control_consumer_failed", error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(0.5)

    async def _consume(self, psub) -> None:  # type: ignore[no-untyped-def]
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
            await self.apply_batch(msgs)
            idle_since = time.monotonic()

    async def forget(self, sid: str) -> None:
        """A stopped session leaves no control history: a later session with the same id starts
        from nothing instead of replaying this one's start, swaps and stop."""
        assert self.js is not None
        await asyncio.sleep(0)  # let the stop's acknowledgement go first
        await self._release(sid)  # gives the session up: its control loop ends (not this task)
        subjects = self.ctx.subjects
        with contextlib.suppress(Exception):
            await self.js.purge_stream(subjects.control_stream, subject=subjects.control(sid))
        with contextlib.suppress(Exception):
            await self.js.delete_consumer(
                subjects.control_stream, subjects.control_consumer(self.settings.control_durable, sid)
            )

    # -- messages ---------------------------------------------------------------------------------
    async def apply_batch(self, msgs: list[Msg]) -> None:
        """Apply in stream order, each message read once; a swap followed by a newer one is
        acknowledged unrendered and answered ``swap_superseded``."""
        read = [self._read(msg) for msg in msgs]
        skip = superseded([r if isinstance(r, Control) else None for r in read])
        for i, (msg, control) in enumerate(zip(msgs, read, strict=True)):
            if i in skip and isinstance(control, Control):
                served = self.sessions.table.get(control.session_id)
                if served is not None:
                    served.remember_event(control.event_id)
                await self.answer_superseded(
                    control.session_id, control.event_id, control.garment_id, skip[i]
                )
                with contextlib.suppress(Exception):
                    await msg.ack()
                continue
            await self._apply(msg, control)

    async def on_message(self, msg: Msg) -> None:
        """One control message on its own (no batch)."""
        await self._apply(msg, self._read(msg))

    def _read(self, msg: Msg) -> Control | Exception:
        try:
            return read_control(self.ctx.subjects, msg.subject, msg.data)
        except (InvalidSessionId, SchemaError, CodedError) as exc:
            return exc

    async def _apply(self, msg: Msg, control: Control | Exception) -> None:
        """Apply one control message, answer what went wrong, and acknowledge it: applied,
        duplicate or permanently invalid, it must not come back."""
        if isinstance(control, InvalidSessionId):  # no session to answer: the subject itself is bad
            await msg.term()
            return
        session_id = self.ctx.subjects.session_of(msg.subject)
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            action, event_id = "unknown", ""
            try:
                if isinstance(control, Exception):
                    raise control
                event_id, action = control.event_id, control.action
                received = now_ns()
                # the lock orders control against a session's lifecycle, never against a frame
                # being drawn: a swap does not wait for the frame in flight
                apply = {"start": self._start, "swap": self._swap, "stop": self._stop}[control.action]
                async with self.sessions.lock(session_id):
                    duplicate = await apply(control, received)
                self.total.labels(self.ctx.name, action, "duplicate" if duplicate else "applied").inc()
            except (SchemaError, CodedError) as exc:
                code = exc.code if isinstance(exc, CodedError) else "bad_control"
                if isinstance(exc, CodedError):
                    event_id, action = exc.data.get("event_id", event_id), exc.data.get("action", action)
                self.total.labels(self.ctx.name, action, code).inc()
                # answered one per message (the event below); logged a few lines per second per code
                self._lines.warning(
                    "control_rejected", key=code, code=code, error=str(exc), event_id=event_id
                )
                # every control message gets its own answer: not rate-limited like frame errors
                await self.events.emit("error", session_id, code, str(exc), event_id=event_id, action=action)
            except Exception as exc:  # never lose the consumer over one message
                log.exception("control_failed")
                self.total.labels(self.ctx.name, action, "internal").inc()
                await self.events.emit(
                    "error", session_id, "internal", f"control failed: {exc}", event_id=event_id
                )
            with contextlib.suppress(Exception):
                await msg.ack()

    async def answer_superseded(
        self, session_id: str, event_id: str, garment_id: str | None, newer: str
    ) -> None:
        """Every swap gets an answer: this one was overtaken by ``newer`` before it was shown."""
        self.total.labels(self.ctx.name, "swap", "superseded").inc()
        await self.events.emit(
            "status",
            session_id,
            "swap_superseded",
            "a newer swap arrived before this one was shown",
            event_id=event_id,
            garment_id=garment_id or "",
            superseded_by=newer,
        )

    # -- the actions: each returns True for an event already applied --------------------------------
    async def _start(self, control: Control, received_ns: int) -> bool:
        sid, sessions = control.session_id, self.sessions
        known = await sessions.known(sid)
        if known is not None and known.is_duplicate(control.event_id):
            return True
        garment = await sessions.garments.get(control.garment_id or self.settings.default_garment)
        backend = sessions.backend_name(control.backend)
        served = known if isinstance(known, ServedSession) else None
        if served is not None:
            await sessions.end(sid, "restarted")
        state = None if known is None or served is not None else known.state
        served = sessions.open(sid, garment, backend, state, previous=served)
        served.remember_event(control.event_id)
        await self._store.save(served)
        await self.events.emit(
            "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
        )
        return False

    async def _swap(self, control: Control, received_ns: int) -> bool:
        """The one swap path: the renderer's own ``swap`` (a fresh renderer, or the student's
        rescheduling queued for its next chunk), the newest frame drawn again at once, and the
        garment in effect stored."""
        started_ns = now_ns()
        sid, sessions = control.session_id, self.sessions
        known = await sessions.known(sid)
        if known is None:
            raise CodedError("unknown_session", f"no session {sid!r}: send start or frames first")
        if known.is_duplicate(control.event_id):
            return True
        if known.is_stale_swap(control):  # redelivered after a newer swap took effect
            in_effect = known.garment.garment_id if isinstance(known, ServedSession) else known.garment_id
            if isinstance(known, ServedSession):
                known.remember_event(control.event_id)
            await self.answer_superseded(
                sid, control.event_id, control.garment_id, f"the newer swap to {in_effect}"
            )
            return True
        garment = await sessions.garments.get(control.garment_id or "")
        renderer: Renderer | None = None
        if isinstance(known, ServedSession):
            served = known
            if served.renderer is not None:
                renderer = await asyncio.to_thread(served.renderer.swap, garment)
        else:  # known but not served here (restart, idle): in effect from its next frame
            served = sessions.open(sid, garment, sessions.backend_name(known.state.backend), known.state)
        stale, replaced = served.swap(control, garment, renderer, received_ns, started_ns)
        if stale is not None:
            stale.close()
        if replaced is not None:  # applied but never shown: this swap overtook it
            await self.answer_superseded(sid, replaced.event_id, replaced.garment_id, control.event_id)
        await self._rerender(served)  # first: the shopper sees the swap before we persist it
        await self._store.save(served)
        return False

    async def _stop(self, control: Control, received_ns: int) -> bool:
        sid = control.session_id
        known = await self.sessions.known(sid)
        if known is not None and known.is_duplicate(control.event_id):
            return True
        await self.sessions.end(sid, "stopped")
        store = self._store
        await store.keep_stop(sid, received_ns / 1e9)
        await store.forget(sid)
        task = asyncio.create_task(self.forget(sid), name=f"forget:{sid}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return False

    @property
    def _store(self) -> SessionStore:
        assert self.sessions.store is not None
        return self.sessions.store


async def _unsubscribe(psub) -> None:  # type: ignore[no-untyped-def]
    """Let a pull subscription go at once, its queue with it. Never leave one to the connection's
    drain: nats-py's ``fetch`` takes expired pulls' status messages off the queue without marking
    them done, so draining it waits for ever (the drain timeout, then a traceback on stderr)."""
    with contextlib.suppress(Exception):
        await psub.unsubscribe()
