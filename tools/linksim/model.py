"""When each chunk of a byte stream leaves and arrives over one direction of a simulated link
(pure: times in seconds, no sockets, no asyncio).

The link is a bottleneck queue drained at ``rate_kbps`` followed by a propagation delay: a chunk
leaves the queue once the chunks before it have been serialised, and arrives ``delay_ms`` (plus up
to ``jitter_ms``) later. Arrivals never overtake each other, as in one TCP stream, so jitter shows
as delay variation, not reordering. While the queue holds ``queue_bytes`` or more the proxy stops
reading, so the sender's own socket fills and its backpressure is real. A stall holds everything
(nothing leaves, nothing arrives) until it ends, as a Wi-Fi or cellular dropout does; what queued
meanwhile then arrives at once.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Direction:
    """One direction's shape; ``rate_kbps`` 0 is unlimited."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbps: float = 0.0
    queue_ms: float = 1000.0  # the bottleneck's buffer, as time at the capped rate (bufferbloat)

    @property
    def queue_bytes(self) -> int:
        """Bytes the bottleneck holds before the proxy stops reading (64 KB at least)."""
        if self.rate_kbps <= 0:
            return 1 << 20
        return max(64 * 1024, int(self.rate_kbps * 1000 / 8 * self.queue_ms / 1000))

    @property
    def chunk_bytes(self) -> int:
        """Read size: about 5 ms at the capped rate (a packet or a few), 64 KB when unlimited."""
        if self.rate_kbps <= 0:
            return 64 * 1024
        return max(1500, min(64 * 1024, int(self.rate_kbps * 1000 / 8 * 0.005)))


@dataclass(frozen=True)
class LinkSpec:
    """Both directions: ``up`` carries client to server, ``down`` server to client."""

    up: Direction = Direction()
    down: Direction = Direction()

    @classmethod
    def of(
        cls,
        rtt_ms: float = 0.0,
        jitter_ms: float = 0.0,
        uplink_kbps: float = 0.0,
        downlink_kbps: float = 0.0,
        queue_ms: float = 1000.0,
    ) -> LinkSpec:
        """A symmetric delay (half the round trip each way), jitter on each direction."""
        half = rtt_ms / 2
        return cls(
            up=Direction(half, jitter_ms, uplink_kbps, queue_ms),
            down=Direction(half, jitter_ms, downlink_kbps, queue_ms),
        )

    @property
    def is_null(self) -> bool:
        return self == LinkSpec()

    def describe(self) -> dict[str, float]:
        return {
            "rtt_ms": self.up.delay_ms + self.down.delay_ms,
            "jitter_ms": max(self.up.jitter_ms, self.down.jitter_ms),
            "uplink_kbps": self.up.rate_kbps,
            "downlink_kbps": self.down.rate_kbps,
        }


class Pipe:
    """One direction of the link, shared by every connection through it (one access link).

    ``send(now, n)`` books a chunk of ``n`` bytes read at ``now`` and returns when it leaves the
    bottleneck; ``arrival(conn, left)`` when it reaches the far end on connection ``conn``."""

    def __init__(self, shape: Direction, seed: int = 0) -> None:
        self.shape = shape
        self._free_at = 0.0  # when the bottleneck has serialised everything booked
        self._queued: deque[tuple[float, int]] = deque()  # (leaves at, bytes) still in the queue
        self._queued_bytes = 0
        self._last_arrival: dict[object, float] = {}
        self._stalls: list[tuple[float, float]] = []  # [start, end)
        self._random = random.Random(seed)
        self.bytes_sent = 0

    def reshape(self, shape: Direction) -> None:
        """A new shape from now on (the bench switches cases on one running proxy)."""
        self.shape = shape

    def stall(self, start: float, seconds: float) -> None:
        self._stalls.append((start, start + seconds))

    def stalled_until(self, t: float) -> float:
        """``t``, or the end of the stall ``t`` falls in (chained stalls included)."""
        moved = True
        while moved:
            moved = False
            for start, end in self._stalls:
                if start <= t < end:
                    t, moved = end, True
        return t

    def queued(self, now: float) -> int:
        """Bytes booked that have not left the bottleneck by ``now``."""
        while self._queued and self._queued[0][0] <= now:
            self._queued_bytes -= self._queued.popleft()[1]
        return self._queued_bytes

    def has_room(self, now: float) -> bool:
        return self.queued(now) < self.shape.queue_bytes

    def next_departure(self) -> float | None:
        """When the oldest queued chunk leaves (the reader may try again then)."""
        return self._queued[0][0] if self._queued else None

    def send(self, now: float, n: int) -> float:
        start = self.stalled_until(max(now, self._free_at))
        rate = self.shape.rate_kbps * 1000 / 8
        left = start + (n / rate if rate > 0 else 0.0)
        left = self.stalled_until(left)  # a stall that begins mid-chunk holds it too
        if rate > 0:
            self._free_at = left
        self._queued.append((left, n))
        self._queued_bytes += n
        self.bytes_sent += n
        return left

    def arrival(self, conn: object, left: float) -> float:
        jitter = self._random.uniform(0.0, self.shape.jitter_ms) if self.shape.jitter_ms > 0 else 0.0
        at = left + (self.shape.delay_ms + jitter) / 1000
        at = self.stalled_until(max(at, self._last_arrival.get(conn, 0.0)))
        self._last_arrival[conn] = at
        return at

    def forget(self, conn: object) -> None:
        self._last_arrival.pop(conn, None)

    def prune_stalls(self, now: float) -> None:
        self._stalls = [(s, e) for s, e in self._stalls if e > now]
