"""NATS helpers every service uses: connect with reconnect callbacks, latest-frame-wins frame
subscriptions, and publish helpers that never replay stale frames.

Why latest-frame-wins: nats-py buffers up to 512k messages per subscription before it drops
anything, so a slow stage would fall minutes behind a camera. Frame subscriptions get small
pending limits, and each session gets a one-slot buffer: a new frame replaces the unprocessed one
(counted as dropped) and the stage always works on the freshest frame.

Why no replay: while disconnected nats-py queues outgoing publishes and flushes them on
reconnect. For frames that would be a burst of stale video, so ``shared.client.publish_frame`` drops
frames while the connection is down, and the slots are cleared on disconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runtime.logging import get_logger
from shared import client
from shared.auth import NatsCredentials
from shared.schemas import Event
from shared.subjects import Subjects

log = get_logger("bus")

FRAME_PENDING_MSGS = 64
FRAME_PENDING_BYTES = 32 * 1024 * 1024


@dataclass
class ConnectionState:
    """Observed connection state; services export it as a metric and in /healthz."""

    connected: bool = False
    reconnects: int = 0
    disconnects: int = 0
    listeners: list[Callable[[bool], None]] = field(default_factory=list)

    def set(self, connected: bool) -> None:
        self.connected = connected
        for cb in self.listeners:
            cb(connected)


async def connect(
    url: str,
    name: str,
    state: ConnectionState | None = None,
    give_up_after_s: float | None = None,
    *,
    credentials: NatsCredentials | None = None,
) -> NATS:
    """``shared.client.connect`` (reconnects forever, a bounded first connect when asked,
    credentials from the environment by default) with every change of state logged and kept in
    ``state``."""
    state = state or ConnectionState()
    nc = NATS()
    attempts = 0
    connected_once = False

    async def disconnected() -> None:
        state.disconnects += 1
        state.set(False)
        if nc.is_closed or nc.is_draining:  # our own shutdown, not a failure
            log.debug("nats_disconnected", client=name)
        else:
            log.warning("nats_disconnected", client=name)

    async def reconnected() -> None:
        state.reconnects += 1
        state.set(True)
        log.info(
            "nats_reconnected", client=name, url=str(nc.connected_url.netloc if nc.connected_url else "")
        )

    async def error(exc: Exception) -> None:
        nonlocal attempts
        reason = str(exc) or type(exc).__name__
        if state.connected or state.disconnects:
            log.warning("nats_error", client=name, error=reason)
            return
        # Still connecting for the first time: the retry is expected, one line says so. A bounded
        # caller reports the outcome itself (NatsUnavailable), so its retries stay at debug.
        attempts += 1
        quiet = give_up_after_s is not None or attempts > 1
        (log.debug if quiet else log.warning)("nats_connect_retry", client=name, error=reason)

    async def closed() -> None:
        state.set(False)
        (log.info if connected_once else log.debug)("nats_closed", client=name)

    await client.connect(
        url,
        name,
        credentials=credentials,
        give_up_after_s=give_up_after_s,
        nc=nc,
        on_disconnected=disconnected,
        on_reconnected=reconnected,
        on_error=error,
        on_closed=closed,
    )
    connected_once = True
    state.set(True)
    return nc


async def publish_event(nc: NATS, subjects: Subjects, event: Event) -> None:
    """Publish a structured event on the session's events subject; never raises."""
    try:
        if nc.is_connected:
            await nc.publish(subjects.events(event.session_id), event.encode())
    except Exception as exc:  # an event must never take a handler down
        log.warning("event_publish_failed", error=str(exc), code=event.code)


# (session_id, msg, received_ns): received_ns is when the frame reached this process, so a stage's
# "in" stamp separates transport (hop) from waiting in the slot (stage time).
FrameHandler = Callable[[str, Msg, int], Awaitable[None]]


class LatestFrameSlots:
    """One-slot, latest-frame-wins buffer per session, with one worker task per session.

    ``offer`` is called from the NATS callback and never blocks. Each session's worker awaits its
    slot and runs ``handler(session_id, msg)``; frames that arrive while it runs overwrite each
    other, and all but the newest are counted in ``dropped``. Sessions are independent: a slow
    or failing session never delays another. A worker ends after ``idle_s`` without frames.
    """

    def __init__(
        self,
        handler: FrameHandler,
        idle_s: float = 30.0,
        on_drop: Callable[[str], None] | None = None,
        on_idle: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._handler = handler
        self._idle_s = idle_s
        self._on_drop = on_drop
        self._on_idle = on_idle
        self._slots: dict[str, tuple[Msg, int] | None] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.dropped: dict[str, int] = {}
        self._discarded: set[str] = set()
        self._closed = False

    @property
    def sessions(self) -> list[str]:
        return list(self._tasks)

    def offer(self, session_id: str, msg: Msg) -> None:
        if self._closed or session_id in self._discarded:
            return
        if self._slots.get(session_id) is not None:
            self.dropped[session_id] = self.dropped.get(session_id, 0) + 1
            if self._on_drop:
                self._on_drop(session_id)
        self._slots[session_id] = (msg, time.time_ns())
        wake = self._wakeups.get(session_id)
        if wake is None:
            wake = self._wakeups[session_id] = asyncio.Event()
        wake.set()
        if session_id not in self._tasks:
            self._tasks[session_id] = asyncio.get_running_loop().create_task(
                self._worker(session_id), name=f"frames:{session_id}"
            )

    def open(self, session_id: str) -> None:
        """Start a session's worker before its first frame: a session given to this process that
        never sends a frame still ends after ``idle_s`` (its slot is freed, ``on_idle`` runs)."""
        self._discarded.discard(session_id)
        if self._closed or session_id in self._tasks:
            return
        self._wakeups.setdefault(session_id, asyncio.Event())
        self._tasks[session_id] = asyncio.get_running_loop().create_task(
            self._worker(session_id), name=f"frames:{session_id}"
        )

    def discard(self, session_id: str) -> None:
        """Stop taking a session's frames (it moved to another worker): the frame waiting is
        dropped, the one being handled finishes, then the worker ends without ``on_idle``."""
        self._discarded.add(session_id)
        if self._slots.get(session_id) is not None:
            self._slots[session_id] = None
        wake = self._wakeups.get(session_id)
        if wake is not None:
            wake.set()

    def clear(self) -> int:
        """Forget every buffered frame (after a disconnect they are stale). Returns how many."""
        n = 0
        for sid, slot in self._slots.items():
            if slot is not None:
                n += 1
                self.dropped[sid] = self.dropped.get(sid, 0) + 1
                self._slots[sid] = None
        return n

    async def _worker(self, session_id: str) -> None:
        wake = self._wakeups[session_id]
        try:
            while not self._closed and session_id not in self._discarded:
                try:
                    await asyncio.wait_for(wake.wait(), timeout=self._idle_s)
                except TimeoutError:
                    if self._slots.get(session_id) is None:
                        break
                wake.clear()
                slot = self._slots.get(session_id)
                self._slots[session_id] = None
                if slot is None:
                    continue
                try:
                    await self._handler(session_id, *slot)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the handler reports its own errors; never kill the worker
                    log.exception("frame_handler_failed", session_id=session_id)
        finally:
            self._tasks.pop(session_id, None)
            self._wakeups.pop(session_id, None)
            self._slots.pop(session_id, None)
        if session_id in self._discarded:
            self._discarded.discard(session_id)
            return
        if self._on_idle and not self._closed:
            await self._on_idle(session_id)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:  # asyncio.wait: a cancellation of the caller itself is never swallowed
            await asyncio.wait(tasks)


async def subscribe_frames(
    nc: NATS,
    subject: str,
    subjects: Subjects,
    slots: LatestFrameSlots,
    on_bad_subject: Callable[[str], None] | None = None,
) -> Subscription:
    """Subscribe to a per-session frame wildcard with small pending limits, feeding ``slots``."""

    async def cb(msg: Msg) -> None:
        try:
            session_id = subjects.session_of(msg.subject)
        except ValueError:
            if on_bad_subject:
                on_bad_subject(msg.subject)
            return
        slots.offer(session_id, msg)

    return await nc.subscribe(
        subject,
        cb=cb,
        pending_msgs_limit=FRAME_PENDING_MSGS,
        pending_bytes_limit=FRAME_PENDING_BYTES,
    )
