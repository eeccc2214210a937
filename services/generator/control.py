"""The generator's control plane: one JetStream consumer per worker on every session's control
subject, and, for each session this worker comes to own, the session's control read from the
stream after the last message its state says was applied.

Why not a durable consumer per session (the first design): each is server state of its own (on a
cluster a Raft group per consumer), each needs its own pull loop, and nats-server refuses the
1,001st consumer of one stream (``maximum consumers limit reached``): sessions beyond a thousand
got no control at all (docs/fleet.md, "Control at ten thousand sessions"). Here a worker holds one
consumer whatever its sessions; control is human-paced, so every worker seeing every session's
control messages (and skipping those of sessions it does not own) costs little; the stream and
each session's stored ``control_seq`` are what make control durable, not a consumer's acks.

Per session the messages apply in stream order, idempotent by event id, each answered: those
read from the stream when the session is taken (a failover, a restart, a placement) arrive as one
batch, as do those that queued while this worker was busy. Swaps that queued up are coalesced:
only the newest is rendered, the older ones are answered ``swap_superseded``, as is a swap that
arrives after a newer one took effect. What each action does to a session is decided in
``lifecycle`` (pure); this module reads, orders and answers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
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
from shared.subjects import Channel, InvalidSessionId

log = get_logger("generator")
CONSUMER_INACTIVE_S = 60.0  # a worker's consumer outlives a restart of that worker, not its retirement
CONSUMER_CHECK_S = 2.0  # an idle control loop checks its consumer still exists this often
CONTROL_BATCH = 256
FETCH_TIMEOUT_S = 1.0
FAILING_UNHEALTHY_S = 3.0
CATCH_UP_WAIT_S = 2.0  # the longest a taken session's first frame waits for its stored control

Rerender = Callable[[ServedSession], Awaitable[None]]
# what an action returns: whether it was a duplicate, and what to store once the lock is let go
Applied = tuple[bool, Callable[[], Awaitable[None]] | None]
Release = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ControlMessage:
    """One control message as stored: its subject, payload and stream sequence (0: not from the
    stream, say a test's)."""

    subject: str
    data: bytes
    seq: int = 0


class Follower:
    """One owned session's control: its place in the stream, and a wake-up for each message the
    consumer delivered for it since it was last read."""

    def __init__(self) -> None:
        self.cursor = 0  # the stream sequence of the last message applied
        self.woken: asyncio.Queue[int] = asyncio.Queue()  # delivered sequences: read the stream again
        self.task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()  # what the stream held when it was taken is applied


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
        self.worker_id = ""  # set at start: names this worker's consumer
        self.total = Counter(
            "chameleon_control_total",
            "Control events by action and outcome",
            ["service", "action", "outcome"],
            registry=ctx.metrics.registry,
        )
        self._lines = RateLimitedLog(log, burst=3)  # per service: junk control costs no line each
        self._following: dict[str, Follower] = {}
        self._consumer_task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None  # when this worker's consumer began failing
        self._background: set[asyncio.Task[None]] = set()

    # -- one consumer per worker -------------------------------------------------------------------
    def start(self, js: JetStreamContext, worker_id: str) -> None:
        self.js, self.worker_id = js, worker_id
        self._consumer_task = asyncio.create_task(self._consume_all(), name="control:consumer")

    def follow(self, session_id: str) -> None:
        """This worker owns the session now: read its control from the stream after the last
        message its stored state says was applied, then take it as it arrives."""
        if session_id in self._following:
            return
        follower = self._following[session_id] = Follower()
        follower.task = asyncio.create_task(
            self._session_loop(session_id, follower), name=f"control:{session_id}"
        )

    async def caught_up(self, session_id: str) -> None:
        """Until the control the session had when this worker took it is applied (bounded): its
        first frames here wait in their slot rather than show a garment a queued swap replaces."""
        follower = self._following.get(session_id)
        if follower is None or follower.caught_up.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(follower.caught_up.wait(), CATCH_UP_WAIT_S)

    async def unfollow(self, session_id: str) -> None:
        follower = self._following.pop(session_id, None)
        task = follower.task if follower is not None else None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # wait without swallowing a cancellation of our own (asyncio.wait never raises it)
            await asyncio.wait([task], timeout=2.0)

    async def close(self) -> None:
        tasks = [f.task for f in self._following.values() if f.task is not None]
        if self._consumer_task is not None:
            tasks.append(self._consumer_task)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    def failing(self) -> list[str]:
        """The sessions whose control this worker cannot read, once its consumer has been failing
        for a few seconds (swaps would wait silently otherwise)."""
        since = self._failing_since
        if since is None or time.monotonic() - since <= FAILING_UNHEALTHY_S:
            return []
        return sorted(self._following)

    async def _consume_all(self) -> None:
        """Bind this worker's consumer of every control subject and route what it delivers to the
        sessions this worker follows; others' messages are only acknowledged. A consumer lost (a
        node, deleted by hand) is made again, and every followed session then reads from the
        stream what it may have missed meanwhile."""
        assert self.js is not None
        subjects = self.ctx.subjects
        bound_before = False
        generation = 0  # a consumer that cannot be bound (its one node lost) is replaced by a new name
        while True:
            name = self.worker_id if not generation else f"{self.worker_id}-g{generation}"
            try:
                psub = await self.js.pull_subscribe(
                    subjects.all_sessions(Channel.CONTROL),
                    durable=subjects.control_consumer(self.settings.control_durable, name),
                    stream=subjects.control_stream,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.NEW,
                        ack_wait=self.settings.control_ack_wait_s,
                        max_ack_pending=-1,
                        inactive_threshold=CONSUMER_INACTIVE_S,
                        num_replicas=1,  # only this worker reads it, and nothing is lost with it
                        mem_storage=True,
                    ),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no JetStream yet (an election), its node gone: a new one
                self._failing_since = self._failing_since or time.monotonic()
                self._lines.warning("control_consumer_failed", error=str(exc) or type(exc).__name__)
                generation += 1
                await asyncio.sleep(0.5)
                continue
            self._failing_since = None
            if bound_before:  # what arrived while there was no consumer is in the stream
                for follower in self._following.values():
                    follower.woken.put_nowait(0)
            bound_before = True
            try:
                await self._route(psub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failing_since = self._failing_since or time.monotonic()
                self._lines.warning("control_consumer_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)
            finally:
                await _unsubscribe(psub)

    async def _route(self, psub) -> None:  # type: ignore[no-untyped-def]
        idle_since = time.monotonic()
        while True:
            try:
                msgs = await psub.fetch(batch=CONTROL_BATCH, timeout=FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                if time.monotonic() - idle_since > CONSUMER_CHECK_S:
                    await psub.consumer_info()  # raises NotFoundError when the consumer is gone
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            for msg in msgs:
                try:
                    session_id = self.ctx.subjects.session_of(msg.subject)
                except InvalidSessionId:
                    session_id = ""
                follower = self._following.get(session_id)
                if follower is not None:  # what the message says is read from the stream, in order
                    follower.woken.put_nowait(msg.metadata.sequence.stream if msg.metadata else 0)
                elif not session_id:  # no session to answer: the subject itself is bad
                    with contextlib.suppress(Exception):
                        await self.on_message(ControlMessage(msg.subject, msg.data))
            await _ack_all(msgs)

    async def _session_loop(self, session_id: str, follower: Follower) -> None:
        """One owned session: its control read from the stream after the stored ``control_seq``,
        then again each time the consumer delivers one of its messages. The stream, not the
        delivery, says what and in which order: a delivery lost with a node, or redelivered after
        a later one, cannot reorder or skip anything (the message is read in its place)."""
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            try:
                known = await self.sessions.known(session_id)
                follower.cursor = known.control_seq if known is not None else 0
                await self._read_stream(session_id, follower)
            finally:
                follower.caught_up.set()
            while True:
                newest = await follower.woken.get()
                while not follower.woken.empty():
                    newest = max(newest, follower.woken.get_nowait())
                if newest and newest <= follower.cursor:
                    continue  # already read in its place (the stream read ran ahead of delivery)
                try:
                    await self._read_stream(session_id, follower)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never lose the session's control over one bad read
                    log.exception("control_read_failed")

    async def _read_stream(self, session_id: str, follower: Follower) -> None:
        """Every stored control message of the session after ``follower.cursor``, applied as one
        batch (so swaps that queued while no worker served it are coalesced). Retried while the
        stream is unavailable (a leader election)."""
        assert self.js is not None
        subjects = self.ctx.subjects
        stored: list[ControlMessage] = []
        seq = follower.cursor
        while True:
            try:
                raw = await self.js.get_msg(
                    subjects.control_stream, seq=seq + 1, subject=subjects.control(session_id), next=True
                )
            except NotFoundError:
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # between leaders: the stored control waits, it is not lost
                self._lines.warning("control_read_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if not raw.seq or raw.seq <= seq:
                break
            seq = raw.seq
            stored.append(
                ControlMessage(raw.subject or subjects.control(session_id), raw.data or b"", raw.seq)
            )
        if stored:
            await self._apply_ordered(session_id, follower, stored)

    async def _apply_ordered(self, session_id: str, follower: Follower, msgs: list[ControlMessage]) -> None:
        await self.apply_batch(msgs)
        follower.cursor = max(follower.cursor, msgs[-1].seq)
        served = self.sessions.table.get(session_id)
        if served is not None and served.control_seq < follower.cursor:
            served.control_seq = follower.cursor  # kept with the next state saved

    async def forget(self, sid: str) -> None:
        """A stopped session leaves no control history: a later session with the same id starts
        from nothing instead of replaying this one's start, swaps and stop."""
        assert self.js is not None
        await asyncio.sleep(0)  # let the stop's answer go first
        await self._release(sid)  # gives the session up: its control loop ends (not this task)
        subjects = self.ctx.subjects
        with contextlib.suppress(Exception):
            await self.js.purge_stream(subjects.control_stream, subject=subjects.control(sid))

    # -- messages ---------------------------------------------------------------------------------
    async def apply_batch(self, msgs: list[ControlMessage]) -> None:
        """Apply in stream order, each message read once; a swap followed by a newer one is
        not rendered and is answered ``swap_superseded``."""
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
                continue
            await self._apply(msg, control)

    async def on_message(self, msg: ControlMessage) -> None:
        """One control message on its own (no batch)."""
        await self._apply(msg, self._read(msg))

    def _read(self, msg: ControlMessage) -> Control | Exception:
        try:
            return read_control(self.ctx.subjects, msg.subject, msg.data)
        except (InvalidSessionId, SchemaError, CodedError) as exc:
            return exc

    async def _apply(self, msg: ControlMessage, control: Control | Exception) -> None:
        """Apply one control message and answer what went wrong: applied, duplicate or
        permanently invalid, each gets at most one answer."""
        if isinstance(control, InvalidSessionId):  # no session to answer: the subject itself is bad
            self.total.labels(self.ctx.name, "unknown", "bad_session_id").inc()
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
                    duplicate, persist = await apply(control, received, msg.seq)
                if persist is not None:  # stored outside the session's lock: a bucket between
                    await persist()  # leaders (seconds) must never hold back the session's frames
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

    # -- the actions: each returns (already applied?, what to store after the lock) -----------------
    async def _start(self, control: Control, received_ns: int, seq: int = 0) -> Applied:
        sid, sessions = control.session_id, self.sessions
        known = await sessions.known(sid)
        if known is not None and known.is_duplicate(control.event_id):
            return True, None
        garment = await sessions.garments.get(control.garment_id or self.settings.default_garment)
        backend = sessions.backend_name(control.backend)
        served = known if isinstance(known, ServedSession) else None
        if served is not None:
            await sessions.end(sid, "restarted")
        state = None if known is None or served is not None else known.state
        served = sessions.open(sid, garment, backend, state, previous=served)
        served.remember_event(control.event_id)
        served.control_seq = max(served.control_seq, seq)
        await self.events.emit(
            "session_started", sid, "started", garment_id=garment.garment_id, backend=backend
        )
        return False, functools.partial(self._store.save, served)

    async def _swap(self, control: Control, received_ns: int, seq: int = 0) -> Applied:
        """The one swap path: the renderer's own ``swap`` (a fresh renderer, or the student's
        rescheduling queued for its next chunk), the newest frame drawn again at once, and the
        garment in effect stored."""
        started_ns = now_ns()
        sid, sessions = control.session_id, self.sessions
        known = await sessions.known(sid)
        if known is None:
            raise CodedError("unknown_session", f"no session {sid!r}: send start or frames first")
        if known.is_duplicate(control.event_id):
            return True, None
        if known.is_stale_swap(control):  # redelivered after a newer swap took effect
            in_effect = known.garment.garment_id if isinstance(known, ServedSession) else known.garment_id
            if isinstance(known, ServedSession):
                known.remember_event(control.event_id)
            await self.answer_superseded(
                sid, control.event_id, control.garment_id, f"the newer swap to {in_effect}"
            )
            return True, None
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
        served.control_seq = max(served.control_seq, seq)
        await self._rerender(served)  # first: the shopper sees the swap before we persist it
        return False, functools.partial(self._store.save, served)

    async def _stop(self, control: Control, received_ns: int, seq: int = 0) -> Applied:
        sid = control.session_id
        known = await self.sessions.known(sid)
        if known is not None and known.is_duplicate(control.event_id):
            return True, None
        await self.sessions.end(sid, "stopped")

        async def persist() -> None:
            store = self._store
            await store.keep_stop(sid, received_ns / 1e9)
            await store.forget(sid)
            task = asyncio.create_task(self.forget(sid), name=f"forget:{sid}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        return False, persist

    @property
    def _store(self) -> SessionStore:
        assert self.sessions.store is not None
        return self.sessions.store


async def _ack_all(msgs) -> None:  # type: ignore[no-untyped-def]
    """Acknowledge what was routed: the stream, not this consumer, keeps it for a new owner."""
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.ack()


async def _unsubscribe(psub) -> None:  # type: ignore[no-untyped-def]
    """Let a pull subscription go at once, its queue with it. Never leave one to the connection's
    drain: nats-py's ``fetch`` takes expired pulls' status messages off the queue without marking
    them done, so draining it waits for ever (the drain timeout, then a traceback on stderr)."""
    with contextlib.suppress(Exception):
        await psub.unsubscribe()
