"""How many camera bytes a client may have on their way (pure: times in ms, sizes in bytes).

The Python twin of the page's ``SendPacer`` (``web/src/pacing.js``; docs/frontends.md says why):
frames are ticked at the fps asked, and a tick's frame is sent only while the bytes published but
not yet acknowledged stay within a round trip (plus the probes' lag and a small allowance) of
what the frames need, or of what the link carried when it was the bottleneck, whichever is less;
otherwise it is dropped, never queued. Acknowledgements come from a probe (a NATS PING, i.e.
``flush()``) at most every ``probe_ms``, whatever the frame rate: a PONG says the server has
read everything published before its PING. Waiting for each frame's PONG instead caps the rate at
one frame per round trip (5 fps at 200 ms).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


class WindowedExtreme:
    """The max (or min) of timestamped samples over the last ``window_ms`` (a monotone deque)."""

    def __init__(self, window_ms: float, keep_max: bool) -> None:
        self.window_ms = window_ms
        self.keep_max = keep_max
        self._samples: deque[tuple[float, float]] = deque()

    def _better(self, a: float, b: float) -> bool:
        return a >= b if self.keep_max else a <= b

    def add(self, at: float, value: float) -> None:
        while self._samples and not self._better(self._samples[-1][1], value):
            self._samples.pop()
        self._samples.append((at, value))
        self._expire(at)

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] <= now - self.window_ms:
            self._samples.popleft()

    def value(self, now: float) -> float | None:
        self._expire(now)
        return self._samples[0][1] if self._samples else None

    def reset(self) -> None:
        self._samples.clear()


@dataclass(frozen=True)
class ProbeToken:
    """What a probe covered: sent at ``at`` behind ``bytes`` published on connection ``generation``."""

    at: float
    bytes: int
    generation: int


@dataclass(frozen=True)
class PacerConfig:
    fps: float = 15.0
    min_window: int = 24 * 1024
    start_window: int = 128 * 1024  # slow start's first window: about two frames of the largest size
    max_rtt_ms: float = 1000.0  # a path's own round trip beyond this is a queue that never drained
    drain_every_ms: float = 8000.0  # no probe near the path's round trip this long: let the queue drain
    probe_ms: float = 100.0
    allowance_ms: float = 100.0  # queueing allowed beyond the round trip (1.5 frames at 15 fps)
    queued_ms: float = 40.0  # probes this far above the path's round trip: the link is the bottleneck
    rate_window_ms: float = 2000.0
    capacity_window_ms: float = 10_000.0
    rtt_window_ms: float = 10_000.0
    max_probes: int = 32
    outage_ms: float = 1000.0  # a probe this late waited out a stall, or crossed a slow link


class SendPacer:
    """Admission of camera frames by acknowledged bytes; see the module docstring."""

    def __init__(self, config: PacerConfig | None = None) -> None:
        self.config = config or PacerConfig()
        c = self.config
        self._rates = WindowedExtreme(c.rate_window_ms, keep_max=True)  # delivered bytes/s
        self._capacity = WindowedExtreme(c.capacity_window_ms, keep_max=True)  # … while queued
        self._rtts = WindowedExtreme(c.rtt_window_ms, keep_max=False)  # probe round trips
        self.generation = 0
        self.frames_sent = 0
        self.frames_dropped = 0  # ticks whose frame the window refused
        self.bytes_total = 0
        self.reset()

    def reset(self) -> None:
        """A new connection: what was on its way is gone, the new path is measured afresh."""
        self.sent = 0
        self.acked = 0
        self.probes = 0
        self._last_probe_at = float("-inf")
        self._last_probe_bytes = 0
        self._acks: deque[tuple[float, int]] = deque()
        self.srtt: float | None = None
        self._clean_at: float | None = None
        self.draining = False
        self._last_ack: tuple[float, bool] | None = None  # (at, far late)
        self._start_window = float(self.config.start_window)
        self._rates.reset()
        self._capacity.reset()
        self._rtts.reset()

    def reconnected(self) -> None:
        self.generation += 1
        self.reset()

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked

    def rate(self, now: float) -> float | None:
        return self._rates.value(now)

    def link_capacity(self, now: float) -> float | None:
        return self._capacity.value(now)

    def rtt_min(self, now: float) -> float | None:
        return self._rtts.value(now)

    def queue_ms(self, now: float) -> float:
        low = self.rtt_min(now)
        return 0.0 if self.srtt is None or low is None else max(0.0, self.srtt - low)

    def window(self, now: float, frame_bytes: int) -> float:
        """Bytes allowed on their way when frames weigh ``frame_bytes`` (slow start until the link
        has been seen to be the bottleneck)."""
        c = self.config
        low = self.rtt_min(now)
        if low is None:
            return max(c.min_window, self._start_window)
        rtt = min(low, c.max_rtt_ms)
        need = c.fps * frame_bytes
        cap = self.link_capacity(now)
        bps = need if cap is None else min(cap, need)
        w = bps * (rtt + 2 * c.probe_ms + c.allowance_ms) / 1000
        return max(c.min_window, min(w, self._start_window))

    def admit(self, now: float, frame_bytes: int) -> bool:
        """May a frame of about ``frame_bytes`` go now? Nothing on its way: always. A refusal
        counts as a dropped frame. Every ``drain_every_ms`` without a clean probe, nothing goes
        until all is acknowledged, so a standing queue never passes for the path itself."""
        if self._clean_at is not None and now - self._clean_at > self.config.drain_every_ms:
            self.draining = True
        if self.draining and self.in_flight == 0:
            self.draining = False
            self._clean_at = now
        if not self.draining and (
            self.in_flight == 0 or self.in_flight + frame_bytes <= self.window(now, frame_bytes)
        ):
            return True
        self.frames_dropped += 1
        return False

    def on_sent(self, nbytes: int) -> None:
        self.sent += nbytes
        self.bytes_total += nbytes
        self.frames_sent += 1

    def want_probe(self, now: float) -> bool:
        """New bytes since the last probe and ``probe_ms`` passed; or the first, with nothing ahead."""
        if self.rtt_min(now) is None and self.probes == 0:
            return True
        return (
            self.sent > self._last_probe_bytes
            and now - self._last_probe_at >= self.config.probe_ms
            and self.probes < self.config.max_probes
        )

    def probe_sent(self, now: float) -> ProbeToken:
        self._last_probe_at = now
        self._last_probe_bytes = self.sent
        self.probes += 1
        return ProbeToken(now, self.sent, self.generation)

    def on_ack(self, token: ProbeToken, now: float) -> bool:
        """A probe's PONG; whether it measured the link. A probe far later than the path's round
        trip waited out a stall, or crossed a slow link: it counts once the next probe, answered
        at least 250 ms later, is as late (a stall's probes come back together)."""
        if token.generation != self.generation:
            return False
        self.probes = max(0, self.probes - 1)
        self.acked = max(self.acked, token.bytes)
        rtt = max(0.1, now - token.at)
        low = self.rtt_min(now)
        slow = low is not None and rtt > low + self.config.outage_ms
        previous, self._last_ack = self._last_ack, (now, slow)
        if slow and not (previous is not None and previous[1] and now - previous[0] >= 250):
            self._acks = deque([(now, self.acked)])
            return False
        if low is None or rtt <= 1.2 * low + 5:
            self._clean_at = now
            if self._capacity.value(now) is None:
                self._start_window = min(self._start_window * 2, float(1 << 30))
        self._rtts.add(now, rtt)
        self.srtt = rtt if self.srtt is None else 0.75 * self.srtt + 0.25 * rtt
        self._acks.append((now, self.acked))
        while len(self._acks) > 1 and self._acks[1][0] <= now - 250:
            self._acks.popleft()
        at, nbytes = self._acks[0]
        if now - at >= 250:
            rate = (self.acked - nbytes) * 1000 / (now - at)
            self._rates.add(now, rate)
            if self.queue_ms(now) > self.config.queued_ms:
                self._capacity.add(now, rate)
        return True
