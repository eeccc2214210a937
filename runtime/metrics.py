"""Observability every service follows: Prometheus metrics, a health endpoint, and one summary
log line per session per interval (never one per frame).

Each service owns its own ``CollectorRegistry`` so several services can share a process (tests,
benchmarks) without colliding metric names. Every registry also carries the process's own
figures (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds``
…, from prometheus_client's ``ProcessCollector``): what an on-call engineer looks at first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from runtime.logging import get_logger

log = get_logger("metrics")

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
# capture to a stage's publish: the stream's whole latency so far, tens to hundreds of ms
GLASS_TO_GLASS_BUCKETS_S = (
    0.02,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
)
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"


def process_registry() -> CollectorRegistry:
    """A registry that already holds this process's resource metrics (RSS, CPU seconds, open
    fds, start time; the Python version): every service's starts from it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class ServiceMetrics:
    """The standard metric set. Session labels are bounded by the services' idle reclaim."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = process_registry()
        r = self.registry
        self.stage_latency = Histogram(
            "chameleon_stage_latency_seconds",
            "Time a frame spends inside this stage",
            ["service"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        ).labels(service)
        self.hop_latency = Histogram(
            "chameleon_hop_latency_seconds",
            "Transport time from the previous stage to this one",
            ["service"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        ).labels(service)
        self.glass_to_glass = Histogram(
            "chameleon_glass_to_glass_seconds",
            "Camera capture (Chameleon-Capture-Ns) to this stage's publish of the frame; the "
            "generator's is the stream's glass-to-glass up to delivery (clocks: NTP across hosts)",
            ["service"],
            buckets=GLASS_TO_GLASS_BUCKETS_S,
            registry=r,
        ).labels(service)
        self.frames_in = Counter(
            "chameleon_frames_in_total", "Frames received", ["service"], registry=r
        ).labels(service)
        self.frames_out = Counter(
            "chameleon_frames_out_total", "Frames published", ["service"], registry=r
        ).labels(service)
        self.frames_dropped = Counter(
            "chameleon_frames_dropped_total",
            "Frames dropped (superseded, stale, disconnected)",
            ["service", "reason"],
            registry=r,
        )
        self.frames_rejected = Counter(
            "chameleon_frames_rejected_total",
            "Frames rejected as invalid",
            ["service", "code"],
            registry=r,
        )
        self.active_sessions = Gauge(
            "chameleon_active_sessions", "Sessions with live state", ["service"], registry=r
        ).labels(service)
        self.nats_connected = Gauge(
            "chameleon_nats_connected", "1 while connected to NATS", ["service"], registry=r
        ).labels(service)

    def dropped(self, reason: str) -> None:
        self.frames_dropped.labels(self.service, reason).inc()

    def rejected(self, code: str) -> None:
        self.frames_rejected.labels(self.service, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class SessionCounters:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    rejected: int = 0
    latency_ms: list[float] = field(default_factory=list)

    def snapshot_and_reset(self) -> dict[str, float | int]:
        lat = sorted(self.latency_ms)
        out: dict[str, float | int] = {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "rejected": self.rejected,
        }
        if lat:
            out["stage_ms_p50"] = round(lat[len(lat) // 2], 2)
            out["stage_ms_max"] = round(lat[-1], 2)
        self.frames_in = self.frames_out = self.dropped = self.rejected = 0
        self.latency_ms.clear()
        return out


class SessionStats:
    """Per-session counters, logged as one summary line per active session per interval."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionCounters] = {}

    def __getitem__(self, session_id: str) -> SessionCounters:
        c = self.sessions.get(session_id)
        if c is None:
            c = self.sessions[session_id] = SessionCounters()
        return c

    def forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def log_summaries(self) -> None:
        for sid, c in list(self.sessions.items()):
            if c.frames_in or c.frames_out or c.dropped or c.rejected:
                log.info("session_summary", session_id=sid, **c.snapshot_and_reset())

    async def summary_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.log_summaries()


class HealthServer:
    """Minimal HTTP endpoint: ``/metrics`` (Prometheus text) and ``/healthz`` (JSON, 503 when
    unhealthy). Plain asyncio so it adds no thread and no dependency."""

    def __init__(self, metrics: ServiceMetrics, health: Callable[[], dict], host: str, port: int) -> None:
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode(errors="replace").split()
            path = (parts[1] if len(parts) > 1 else "/").split("?", 1)[0]
            if path == METRICS_PATH:  # exactly: /metricsXYZ is no metrics endpoint
                status, ctype, body = 200, "text/plain; version=0.0.4", self.metrics.render()
            elif path == HEALTH_PATH:
                h = self.health()
                status = 200 if h.get("status") == "ok" else 503
                ctype, body = "application/json", json.dumps(h).encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles as ``{"p50": ..}``; empty input gives NaN-free zeros."""
    if not values:
        return {f"p{q}": 0.0 for q in qs}
    ordered = sorted(values)
    out = {}
    for q in qs:
        k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
        out[f"p{q}"] = round(ordered[k], 3)
    return out
