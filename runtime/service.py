"""The lifecycle every service ``main.py`` delegates to.

Settings → logging → an ``AsyncExitStack`` that owns the NATS connection, the health/metrics
endpoint, the summary-log task and the handlers → wait for SIGTERM/SIGINT (or a test's stop event)
→ stop handlers → ``drain()`` the connection so in-flight messages are delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from runtime.bus import ConnectionState, LatestFrameSlots, connect, subscribe_frames
from runtime.logging import RateLimitedLog, configure_logging, get_logger
from runtime.metrics import HealthServer, ServiceMetrics, SessionStats
from runtime.settings import BaseSettings
from shared.subjects import Channel, Subjects

log = get_logger("service")


@dataclass
class ServiceContext:
    """What a handler object gets: the bus and the observability it reports to."""

    name: str
    nc: NATS
    subjects: Subjects
    metrics: ServiceMetrics
    stats: SessionStats
    conn: ConnectionState

    async def subscribe_frames(self, channel: Channel, slots: LatestFrameSlots) -> Subscription:
        """Every session's frames on ``channel`` into ``slots`` (latest-frame-wins), whose
        buffered frames are dropped, and counted, when the connection goes down: after a
        reconnect they would be stale."""

        def on_connection(connected: bool) -> None:
            if not connected and (stale := slots.clear()):
                self.metrics.frames_dropped.labels(self.name, "disconnected").inc(stale)

        self.conn.listeners.append(on_connection)
        return await subscribe_frames(self.nc, self.subjects.all_sessions(channel), self.subjects, slots)


EXIT_HUNG = 70  # the watchdog's exit status: unhealthy or stuck for too long


class Watchdog:
    """A process's own hang detection, for a supervisor that restarts what exits but not what
    hangs (compose's ``restart:`` policy, unlike ``chameleon up``).

    A task on the event loop records every second whether the service is healthy; a thread checks
    that record. Unhealthy for ``limit_s`` (NATS gone, a handler reporting trouble), or no record
    at all for ``limit_s`` (the event loop stuck in a call), calls ``on_hung``: by default the
    process exits with ``EXIT_HUNG`` at once, so it is restarted instead of serving nobody."""

    def __init__(
        self,
        limit_s: float,
        healthy: Callable[[], bool],
        on_hung: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_s = limit_s
        self.healthy = healthy
        self.on_hung = on_hung or self._exit
        self.clock = clock
        self.last_beat = self.last_ok = clock()
        self.fired = False

    def beat(self) -> None:
        """On the event loop: the loop runs, and whether the service is healthy."""
        now = self.clock()
        self.last_beat = now
        if self.healthy():
            self.last_ok = now

    def check(self) -> str | None:
        """From the watching thread: why the process is hung, or None."""
        now = self.clock()
        if now - self.last_beat > self.limit_s:
            return f"event loop stuck for {now - self.last_beat:.1f} s"
        if now - self.last_ok > self.limit_s:
            return f"unhealthy for {now - self.last_ok:.1f} s"
        return None

    async def run(self, interval_s: float = 1.0) -> None:
        threading.Thread(target=self._watch, args=(interval_s,), name="watchdog", daemon=True).start()
        while not self.fired:
            self.beat()
            await asyncio.sleep(interval_s)

    def _watch(self, interval_s: float) -> None:
        while not self.fired:
            time.sleep(interval_s / 2)
            reason = self.check()
            if reason:
                self.fired = True
                self.on_hung(reason)

    def stop(self) -> None:
        """Shutting down: a drain may take a while, and is not a hang."""
        self.fired = True

    @staticmethod
    def _exit(reason: str) -> None:
        log.error("watchdog_exit", reason=reason, exit_code=EXIT_HUNG)
        sys.stderr.flush()
        os._exit(EXIT_HUNG)


class Handlers(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


HandlerFactory = Callable[[ServiceContext], Handlers]


async def run_service(
    name: str,
    settings: BaseSettings,
    make_handlers: HandlerFactory,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run one service until ``stop`` is set or the process gets SIGTERM/SIGINT."""
    if not settings.nats_url:
        raise ValueError(f"{name}: no NATS URL (set NATS_URL or CHAMELEON_NATS_URL)")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    metrics = ServiceMetrics(name)
    conn = ConnectionState()
    conn.listeners.append(lambda up: metrics.nats_connected.set(1 if up else 0))
    stats = SessionStats()
    timings: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        nc = await connect(settings.nats_url, name, conn)
        stack.push_async_callback(_drain, nc, settings.drain_timeout_s, timings)
        ctx = ServiceContext(name, nc, Subjects(settings.subject_prefix), metrics, stats, conn)
        handlers = make_handlers(ctx)

        def health() -> dict:
            extra = getattr(handlers, "health", None)
            info = {"service": name, "nats_connected": conn.connected}
            if callable(extra):
                info.update(extra())
            info["status"] = "ok" if conn.connected and info.get("status", "ok") == "ok" else "unhealthy"
            return info

        if settings.metrics_port:
            server = HealthServer(metrics, health, settings.metrics_host, settings.metrics_port)
            port = await server.start()
            stack.push_async_callback(server.stop)
            log.info("health_endpoint", port=port)
        summary = asyncio.create_task(stats.summary_loop(settings.summary_interval_s))
        stack.callback(summary.cancel)
        await handlers.start()
        stack.push_async_callback(_timed, "handlers_s", handlers.stop, timings)
        if settings.watchdog_s > 0:  # from here on: start-up time is the supervisor's start period
            watchdog = Watchdog(settings.watchdog_s, lambda: health()["status"] == "ok")
            watching = asyncio.create_task(watchdog.run())
            stack.callback(watching.cancel)
            stack.callback(watchdog.stop)
        await nc.flush()
        log.info("service_started", nats=settings.nats_url)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("service_stopping")
        stats.log_summaries()
    # how long each step of the stop took: a step that waits for a timeout shows here
    log.info("service_stopped", **{k: round(v, 3) for k, v in timings.items()})
    for sig in installed:
        loop.remove_signal_handler(sig)


async def _timed(key: str, step: Callable[[], Awaitable[None]], timings: dict[str, float]) -> None:
    started = time.monotonic()
    try:
        await step()
    finally:
        timings[key] = time.monotonic() - started


async def _drain(nc: NATS, timeout_s: float, timings: dict[str, float] | None = None) -> None:
    """Deliver what is in flight, then close; bounded. A drain that runs out of time is closed
    and says so in one line (never asyncio's "exception was never retrieved" on stderr)."""
    if nc.is_closed:
        return
    started = time.monotonic()
    # Subscriptions read by pulling (JetStream pull consumers, ``next_msg``) have nobody left to
    # read them now, and nats-py's ``fetch`` takes messages off their queue without marking them
    # done, so a drain would wait on them for ever: they go first, their queues with them.
    for sub in list(nc._subs.values()):
        if sub._cb is None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    draining = asyncio.ensure_future(nc.drain())
    done, _ = await asyncio.wait({draining}, timeout=timeout_s)
    if not done:
        stuck = [sub.subject for sub in nc._subs.values() if sub._pending_queue._unfinished_tasks]
        log.warning("drain_timed_out", timeout_s=timeout_s, subscriptions_waited_on=stuck[:5])
        draining.cancel()
        await asyncio.wait({draining})
    if draining.done() and not draining.cancelled():
        draining.exception()  # retrieved: a drain that failed is closed below, not printed
    with contextlib.suppress(Exception):
        await nc.close()
    if timings is not None:
        timings["drain_s"] = time.monotonic() - started


def apply_niceness(increment: int) -> int:
    """Lower this process's CPU priority by ``increment`` (never raise it); returns the niceness.

    On a machine the services share, a long CPU-bound call (preprocess: ~30 ms of MediaPipe per
    frame) makes every short stage that wakes up behind it wait; a positive niceness lets the
    short ones (ingest, the generator's render, a swap) run first while the bulk stage still gets
    every idle cycle. In containers with their own CPU quota it is unnecessary.
    """
    if increment <= 0:
        return os.nice(0)
    try:
        return os.nice(min(increment, 19))
    except OSError as exc:  # e.g. a sandbox that forbids it: run at the normal priority
        get_logger("service").warning("niceness_unchanged", increment=increment, error=str(exc))
        return os.nice(0)


def cap_blas_threads() -> None:
    """One OpenBLAS thread in this process. OpenBLAS's default pool (a thread per core, spinning
    after each call) turned the warp renderer's small linear algebra into a second busy core. An
    explicit OPENBLAS_NUM_THREADS, which OpenBLAS read as it loaded, wins. Called where a process
    starts (a service, the CLI), never at import."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    import numpy  # noqa: F401  (loads OpenBLAS: a limit reaches loaded libraries only)
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


class _LineWriter(io.TextIOBase):
    """``sys.stderr`` once file descriptor 2 is captured: text to the original stderr, written a
    whole line at a time. ``print`` writes a line's text and its newline in two calls, and two
    threads (the event loop, the native-output reader) must not interleave them."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = threading.local()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        buffered = getattr(self._pending, "text", "") + text
        lines, newline, rest = buffered.rpartition("\n")
        self._pending.text = rest
        if newline:
            data = (lines + newline).encode("utf-8", "replace")
            with self._lock:
                while data:
                    data = data[os.write(self._fd, data) :]
        return len(text)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)


def capture_native_stderr(service: str) -> None:
    """Turn what native libraries print to file descriptor 2 into JSON log lines.

    MediaPipe, TFLite and absl write lines such as ``INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU.`` and ``W0000 00:00:... inference_feedback_manager.cc...`` straight to fd 2
    whenever a session's graph is built: not JSON, not rate-limited. Here fd 2 becomes a pipe that
    a daemon thread reads, each line becoming a ``native_output`` line (a few per second, the rest
    counted in ``lines_suppressed``), while this process's own log lines go to a duplicate of the
    original stderr. A decode that captures fd 2 for itself (``runtime.media``) still does."""
    try:
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:  # no stderr at all: nothing to capture
        return
    sys.stderr.flush()
    sys.stderr = _LineWriter(original)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def forward() -> None:
        structlog.contextvars.bind_contextvars(service=service)  # a thread starts without it
        lines = RateLimitedLog(get_logger("native"), interval_s=1.0, burst=5)
        with open(read_fd, "rb") as pipe:
            for raw in pipe:
                text = raw.decode("utf-8", "replace").strip()
                if text:
                    lines.info("native_output", text=text[:500])

    threading.Thread(target=forward, name="native-stderr", daemon=True).start()


def service_main(name: str, settings: BaseSettings, make_handlers: HandlerFactory) -> None:
    """Entry point body for ``python -m services.<name>.main``."""
    configure_logging(settings.log_level, settings.log_json, service=name)
    capture_native_stderr(name)
    import cv2

    # Several services share the machine; OpenCV's default (a thread per core in every process)
    # oversubscribes it and turns into latency, so each process gets CHAMELEON_CV_THREADS.
    cv2.setNumThreads(max(0, settings.cv_threads))
    cap_blas_threads()
    apply_niceness(settings.nice)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_service(name, settings, make_handlers))


@contextlib.asynccontextmanager
async def serve_in_task(name: str, settings: BaseSettings, make_handlers: HandlerFactory):
    """Run a service inside the current event loop (tests, benchmarks); yields its handlers.

    The real lifecycle runs (connect, subscribe, drain); only the process boundary is missing.
    """
    stop, ready = asyncio.Event(), asyncio.Event()
    made: list[Handlers] = []

    def factory(ctx: ServiceContext) -> Handlers:
        made.append(make_handlers(ctx))
        return made[0]

    task = asyncio.create_task(run_service(name, settings, factory, stop=stop, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises the start-up error
        raise RuntimeError(f"{name} stopped before it was ready")
    try:
        yield made[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
