"""A FashionChameleon client in Python, without the server: connect (with a session token and its
inbox prefix), publish camera frames with the documented headers, watch the output with the epoch
filter, start / swap / stop the session, list the garments (docs/frontends.md).

It imports nats-py, msgpack and numpy and the contract beside it, nothing else, so
``pip install fashion-chameleon`` is all a client needs; the services come with ``[serve]``.
``chameleon camera/watch/swap`` and ``examples/python_client.py`` are built on it, and the
services connect and publish frames through the same functions (``runtime.bus``).

    session = await Session.connect("nats://127.0.0.1:4222", "alice", token=token)
    await session.watch(show)  # show(frame): frame.meta, frame.jpeg
    await session.start("tee-red-solid", width=640, height=480, fps=15)
    paced = PacedSender(session.nc, fps=15)  # drop, never queue, when the link is full
    await session.publish(jpeg, seq=0, width=640, height=480, paced=paced)
    await session.swap("shirt-blue-checks")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import control
from shared.auth import EXPLAIN_TOKEN_PREFIX, NatsCredentials, explain_inbox_prefix
from shared.garment_client import GarmentClient
from shared.garment_schemas import GarmentRecord
from shared.headers import FrameMeta, HeaderError, now_ns
from shared.pacing import PacerConfig, ProbeToken, SendPacer
from shared.schemas import Control, Event, SchemaError
from shared.subjects import AUTH_EXPLAIN_SUBJECT, DEFAULT_PREFIX, Channel, Subjects

RECONNECT_BUFFER_BYTES = 256 * 1024  # small: control messages only, frames are never buffered
CAMERA_STAGE = "camera"


class NatsUnavailable(ConnectionError):
    """No NATS server of ``urls`` accepted a connection within the caller's bound."""

    def __init__(self, urls: list[str], waited_s: float) -> None:
        self.urls = urls
        self.waited_s = waited_s
        super().__init__(f"NATS at {','.join(urls)} unreachable after {waited_s:g} s")


class NatsRefused(NatsUnavailable):
    """The server answered but refused the credentials (wrong, expired or revoked).
    ``auth_error``: why, as the deployment's auth service says (empty when it could not be asked):
    the server itself tells a client no more than "Authorization Violation"."""

    def __init__(self, urls: list[str], reason: str, auth_error: str = "") -> None:
        why = f"{reason}: {auth_error}" if auth_error else reason
        ConnectionError.__init__(self, f"NATS at {','.join(urls)} refused the credentials ({why})")
        self.urls = urls
        self.waited_s = 0.0
        self.auth_error = auth_error


@dataclass(frozen=True)
class TokenVerdict:
    """What the deployment's auth service says of a token from this client's address:
    ``asked`` False when nobody could be asked (``note`` says why); ``auth_error`` the reason it is
    refused, empty when it would be admitted now."""

    asked: bool
    auth_error: str = ""
    note: str = ""

    @property
    def admitted(self) -> bool:
        return self.asked and not self.auth_error


async def explain_token(url: str, token: str, timeout_s: float = 3.0) -> TokenVerdict:
    """Ask the auth service why ``token`` would be refused (docs/security.md, "Why a connect was
    refused"): a connection of its own with ``explain:<nonce>`` as its token, which the auth
    service admits for ten seconds to the one request ``_CHAMELEON.auth.explain``."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    nonce = secrets.token_hex(8)
    nc = NATS()

    async def quiet(_exc: Exception) -> None:
        return None

    try:
        await asyncio.wait_for(
            nc.connect(
                servers=servers,
                name="explain",
                token=f"{EXPLAIN_TOKEN_PREFIX}{nonce}",
                inbox_prefix=explain_inbox_prefix(nonce),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=timeout_s,
                error_cb=quiet,
            ),
            timeout_s,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        return TokenVerdict(False, note=f"cannot ask the auth service ({str(exc) or type(exc).__name__})")
    try:
        reply = await nc.request(AUTH_EXPLAIN_SUBJECT, token.encode(), timeout=timeout_s)
        return TokenVerdict(True, str(json.loads(reply.data).get("auth_error") or ""))
    except nats.errors.NoRespondersError:
        return TokenVerdict(False, note="no auth service answers: this server does not check tokens")
    except Exception as exc:
        return TokenVerdict(False, note=f"the auth service did not answer ({str(exc) or type(exc).__name__})")
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


Callback = Callable[[], Awaitable[None]]


async def connect(
    url: str,
    name: str,
    *,
    credentials: NatsCredentials | None = None,
    give_up_after_s: float | None = None,
    nc: NATS | None = None,
    on_disconnected: Callback | None = None,
    on_reconnected: Callback | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
    on_closed: Callback | None = None,
) -> NATS:
    """Connect with unlimited reconnects across every server of ``url`` (comma-separated for a
    cluster) and a small reconnect buffer (frames are never replayed).

    Without ``give_up_after_s`` the first connect also retries forever (a service waits for its
    server); with it, connecting stops after that many seconds with ``NatsUnavailable``, and at
    the first refusal of the credentials with ``NatsRefused``: a command line never hangs on a
    server that is not there. ``credentials`` None: those of the environment
    (``CHAMELEON_NATS_USER``/``CHAMELEON_NATS_PASSWORD`` or ``CHAMELEON_TOKEN``; none: open mode).
    ``nc``: the client to connect, for callbacks that need it (default: a new one)."""
    credentials = NatsCredentials.from_env() if credentials is None else credentials
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"{name}: no NATS URL")
    nc = nc or NATS()
    connected = False
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def error(exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        if not connected and "authorization violation" in reason.lower() and not refused.done():
            refused.set_result(reason.removeprefix("nats: ").strip("'"))
        if on_error is not None:
            await on_error(exc)

    attempt = nc.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=5,
        pending_size=RECONNECT_BUFFER_BYTES,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        error_cb=error,
        closed_cb=on_closed,
        **credentials.connect_options(),
    )
    if give_up_after_s is None:
        await attempt
    else:
        connecting = asyncio.ensure_future(attempt)
        try:  # whichever comes first: connected, refused, or out of time
            await asyncio.wait(
                {connecting, refused}, timeout=give_up_after_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait({connecting})
        failure = None if connecting.cancelled() else connecting.exception()
        if connecting.cancelled() or failure is not None:
            with contextlib.suppress(Exception):
                await nc.close()
            if refused.done():
                why = await explain_token(url, credentials.token) if credentials.token else None
                raise NatsRefused(servers, refused.result(), why.auth_error if why else "") from failure
            if failure is None or isinstance(failure, (TimeoutError, OSError, nats.errors.NoServersError)):
                raise NatsUnavailable(servers, give_up_after_s) from failure
            raise failure
    connected = True
    return nc


# -- frames ---------------------------------------------------------------------------------------
async def frame_slot(start: float, index: int, period: float) -> int:
    """Wait for frame ``index`` of a schedule that began at ``start`` (``time.monotonic()``) with
    one frame every ``period`` seconds. Returns how many frames to skip: 0 when on time, and when
    more than one interval late the frames missed, so a client that fell behind skips ahead
    instead of bursting them."""
    delay = start + index * period - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
        return 0
    return int(-delay / period) if -delay > period else 0


async def publish_frame(nc: NATS, subject: str, payload: bytes, meta: FrameMeta) -> bool:
    """Publish a frame unless the connection is down (a frame is worthless once stale, and
    nats-py would replay it after a reconnect)."""
    if not nc.is_connected:
        return False
    await nc.publish(subject, payload, headers=meta.to_headers())
    return True


# nats-py cancels a timed-out flush's future, and a PONG that comes later then breaks its read loop:
# a probe never times out while connected (a reconnect forgets it, and resets the pacer)
PROBE_TIMEOUT_S = 3600.0


class PacedSender:
    """Frames go while the link has room for them, and are dropped, never queued, when it has
    not (``shared.pacing``: the bytes published but not yet acknowledged must fit a window; the
    acknowledgements are a PING at most every ``probe_ms``, never one per frame, which would cap
    the rate at a frame per round trip). docs/frontends.md says why and shows the figures.

        sender = PacedSender(nc, fps=15)
        if sender.admit(len(jpeg)):
            if await publish_frame(nc, subject, jpeg, meta):
                sender.sent(len(jpeg))
        ...
        await sender.close()
    """

    def __init__(self, nc: NATS, fps: float, config: PacerConfig | None = None) -> None:
        self.nc = nc
        self.pacer = SendPacer(config or PacerConfig(fps=fps or 15.0))
        self.dropped = 0  # frames the link had no room for
        self._connected = nc.is_connected
        self._tasks: set[asyncio.Task[None]] = set()

    def admit(self, nbytes: int) -> bool:
        """May a frame of ``nbytes`` go now? Counts it in ``dropped`` when not."""
        if self.nc.is_connected and not self._connected:
            self.pacer.reconnected()  # what was on its way went with the old connection
        self._connected = self.nc.is_connected
        self._maybe_probe()  # also when this frame does not go: what went gets acknowledged
        ok = self.pacer.admit(time.monotonic() * 1000, nbytes)
        self.dropped += not ok
        return ok

    def sent(self, nbytes: int) -> None:
        self.pacer.on_sent(nbytes)
        self._maybe_probe()

    def _maybe_probe(self) -> None:
        now = time.monotonic() * 1000
        if self.pacer.want_probe(now):
            task = asyncio.create_task(self._probe(self.pacer.probe_sent(now)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe(self, token: ProbeToken) -> None:
        # nats-py writes a PING straight to the socket, ahead of publishes still in its own buffer:
        # the PONG acknowledges only what had been written when the PING was
        written = self.pacer.sent - self.nc.pending_data_size
        token = dataclasses.replace(token, bytes=max(0, min(token.bytes, written)))
        with contextlib.suppress(Exception):  # disconnected: the reconnect resets the pacer
            await self.nc.flush(timeout=PROBE_TIMEOUT_S)
            self.pacer.on_ack(token, time.monotonic() * 1000)

    async def close(self) -> None:
        """After the last flush every probe has its answer (PONGs come in order); one that has
        none lost its connection, and cancelling it can no longer meet a late PONG."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()


def camera_frame(
    session_id: str, seq: int, width: int, height: int, capture_ns: int | None = None
) -> FrameMeta:
    """The headers of a camera frame: session, sequence, capture time (wall clock, the start of
    glass-to-glass latency), size, and the trace's first stamp ``camera.out``."""
    capture = now_ns() if capture_ns is None else capture_ns
    meta = FrameMeta(session_id=session_id, seq=seq, capture_ns=capture, width=width, height=height)
    return meta.stamp(CAMERA_STAGE, "out", capture)


@dataclass
class Frame:
    """A frame as a viewer received it."""

    meta: FrameMeta
    recv_ns: int
    jpeg: bytes


@dataclass
class EpochFilter:
    """What a viewer must do with a session's frames: parse the headers (a frame without valid
    ones is counted in ``bad``) and drop a frame whose ``Chameleon-Epoch`` is older than the
    newest seen: it comes from a worker that no longer owns the session (docs/fleet.md)."""

    epoch: int = 0  # the newest owner epoch seen
    stale_epoch: int = 0  # frames dropped as older
    bad: int = 0

    def take(self, msg: Msg, keep_bytes: bool = True) -> Frame | None:
        received = now_ns()
        try:
            meta = FrameMeta.from_headers(msg.headers)
        except HeaderError:
            self.bad += 1
            return None
        if meta.epoch < self.epoch:
            self.stale_epoch += 1
            return None
        self.epoch = meta.epoch
        return Frame(meta, received, bytes(msg.data) if keep_bytes else b"")


FrameCallback = Callable[[Frame], "Awaitable[None] | None"]


@dataclass
class Watch:
    """A live subscription to a session's frames through an ``EpochFilter``."""

    subscription: Subscription
    filter: EpochFilter = field(default_factory=EpochFilter)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.subscription.unsubscribe()


async def watch(nc: NATS, subject: str, on_frame: FrameCallback, keep_bytes: bool = True) -> Watch:
    """Subscribe to a frame subject; ``on_frame`` gets every frame the epoch filter lets through.
    Returns once the server has the subscription, so nothing published after it is missed."""
    epochs = EpochFilter()

    async def received(msg: Msg) -> None:
        frame = epochs.take(msg, keep_bytes)
        if frame is not None:
            result = on_frame(frame)
            if inspect.isawaitable(result):
                await result

    sub = await nc.subscribe(subject, cb=received)
    # twice: nats-py 2.16 can write a flush's PING ahead of a SUB still in its buffer, so one
    # round trip does not prove the server has the subscription (seen in the server's trace)
    await nc.flush()
    await nc.flush()
    return Watch(sub, epochs)


# -- a session ------------------------------------------------------------------------------------
@dataclass
class Session:
    """One session as its client sees it: camera in, frames and events out, control, garments.

    ``ensure_stream``: a control publish may create the control stream when none exists (an
    operator's credentials or an open server); a session token may only publish to it."""

    nc: NATS
    session_id: str
    subjects: Subjects = field(default_factory=Subjects)
    ensure_stream: bool = False
    timeout_s: float = control.PUBLISH_TIMEOUT_S  # a control publish, a garment request
    replicas: int = 1  # of the control stream, where this client creates it

    @classmethod
    async def connect(
        cls,
        url: str,
        session_id: str,
        *,
        token: str = "",
        credentials: NatsCredentials | None = None,
        prefix: str = DEFAULT_PREFIX,
        name: str = "",
        give_up_after_s: float | None = 5.0,
        timeout_s: float = control.PUBLISH_TIMEOUT_S,
    ) -> Session:
        """``token``: a session token (``chameleon session create``); without one, ``credentials``,
        else those of the environment."""
        creds = NatsCredentials(token=token) if token else credentials
        nc = await connect(
            url, name or f"client-{session_id}", credentials=creds, give_up_after_s=give_up_after_s
        )
        operator = not (creds or NatsCredentials.from_env()).token
        return cls(nc, session_id, Subjects(prefix), ensure_stream=operator, timeout_s=timeout_s)

    async def publish(
        self,
        jpeg: bytes,
        seq: int,
        width: int,
        height: int,
        capture_ns: int | None = None,
        paced: PacedSender | None = None,
    ) -> bool:
        """Publish one camera frame (JPEG); False when disconnected, or when ``paced`` says the
        link has no room for it (the frame is dropped, never queued)."""
        if paced is not None and not paced.admit(len(jpeg)):
            return False
        meta = camera_frame(self.session_id, seq, width, height, capture_ns)
        ok = await publish_frame(self.nc, self.subjects.camera(self.session_id), jpeg, meta)
        if ok and paced is not None:
            paced.sent(len(jpeg))
        return ok

    async def watch(
        self, on_frame: FrameCallback, channel: Channel = Channel.OUTPUT, keep_bytes: bool = True
    ) -> Watch:
        """The session's output frames (or another frame channel), epoch-filtered."""
        return await watch(self.nc, self.subjects.session(self.session_id, channel), on_frame, keep_bytes)

    async def events(self, on_event: Callable[[Event], Awaitable[None] | None]) -> Subscription:
        """The session's events (status, errors, ``swap_applied`` ...); undecodable ones are skipped."""

        async def received(msg: Msg) -> None:
            try:
                event = Event.decode(msg.data)
            except SchemaError:
                return
            result = on_event(event)
            if inspect.isawaitable(result):
                await result

        return await self.nc.subscribe(self.subjects.events(self.session_id), cb=received)

    async def send(self, message: Control) -> int:
        """Store a control message durably (JetStream); its stream sequence."""
        return await control.publish_control(
            self.nc,
            self.subjects,
            message,
            replicas=self.replicas,
            timeout_s=self.timeout_s,
            ensure_stream=self.ensure_stream,
        )

    async def start(
        self,
        garment_id: str | None = None,
        backend: str = "auto",
        width: int = 0,
        height: int = 0,
        fps: float = 0.0,
    ) -> Control:
        message = control.start(self.session_id, garment_id, backend, width, height, fps)
        await self.send(message)
        return message

    async def swap(self, garment_id: str, event_id: str | None = None) -> Control:
        """Change the garment; the answer is an event carrying ``event_id`` (``swap_applied``,
        ``swap_superseded`` or an error)."""
        message = control.swap(self.session_id, garment_id, event_id)
        await self.send(message)
        return message

    async def stop(self) -> Control:
        message = control.stop(self.session_id)
        await self.send(message)
        return message

    async def garments(self, category: str = "") -> list[GarmentRecord]:
        return await GarmentClient(self.nc, self.subjects, timeout_s=self.timeout_s).list(category)

    async def close(self) -> None:
        """Deliver what is pending, then disconnect."""
        with contextlib.suppress(Exception):
            await self.nc.drain()


__all__ = [
    "EpochFilter",
    "Frame",
    "NatsRefused",
    "NatsUnavailable",
    "Session",
    "TokenVerdict",
    "Watch",
    "camera_frame",
    "connect",
    "explain_token",
    "publish_frame",
    "watch",
]
