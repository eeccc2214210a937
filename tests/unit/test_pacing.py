"""The camera clients' send pacing (``shared.pacing``) over a simulated link: frames ticked at the
fps asked, admitted by the acknowledged-bytes window, queued at a bottleneck, delayed each way;
probes ride the same queue and come back as acknowledgements."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from shared.pacing import PacerConfig, SendPacer, WindowedExtreme

pytestmark = pytest.mark.unit


@dataclass
class Run:
    pacer: SendPacer
    delivered: list[tuple[float, float]] = field(default_factory=list)  # (captured, arrived)

    def tail(self, seconds: float, end_ms: float) -> list[float]:
        return sorted(a - c for c, a in self.delivered if c >= end_ms - seconds * 1000)


def simulate(
    rtt_ms: float,
    cap_kbps: float = 0,
    seconds: float = 20,
    fps: float = 15,
    frame_bytes: int = 40_000,
    stall: tuple[float, float] | None = None,
) -> Run:
    pacer = SendPacer(PacerConfig(fps=fps))
    run = Run(pacer)
    queue: deque[list] = deque()  # [bytes left, captured_at | None, token | None]
    transit: deque[tuple[float, list]] = deque()
    pongs: deque[tuple[float, object]] = deque()
    per_ms = cap_kbps * 1000 / 8 / 1000 if cap_kbps else float("inf")
    period = 1000 / fps
    next_tick = 0.0
    for now in range(int(seconds * 1000)):
        if not (stall and stall[0] <= now < stall[1]):
            budget = per_ms
            while queue and budget > 0:
                take = min(budget, queue[0][0])
                queue[0][0] -= take
                budget -= take
                if queue[0][0] <= 0:
                    transit.append((now + rtt_ms / 2, queue.popleft()))
            while transit and transit[0][0] <= now:
                item = transit.popleft()[1]
                if item[1] is not None:
                    run.delivered.append((item[1], now))
                else:
                    pongs.append((now + rtt_ms / 2, item[2]))
            while pongs and pongs[0][0] <= now:
                pacer.on_ack(pongs.popleft()[1], now)
        if now >= next_tick:
            next_tick += period
            if pacer.want_probe(now):
                queue.append([6, None, pacer.probe_sent(now)])
            if pacer.admit(now, frame_bytes):
                pacer.on_sent(frame_bytes)
                queue.append([frame_bytes, now, None])
            if pacer.want_probe(now):
                queue.append([6, None, pacer.probe_sent(now)])
    return run


@pytest.mark.parametrize("rtt_ms", [0, 100, 200, 300])
def test_the_frame_rate_does_not_fall_with_the_round_trip(rtt_ms: float) -> None:
    run = simulate(rtt_ms)
    lat = run.tail(10, 20_000)
    assert len(lat) / 10 >= 14.5, f"{len(lat) / 10} fps at {rtt_ms} ms"
    assert lat[-1] <= rtt_ms / 2 + 5  # nothing waits on an open link
    assert run.pacer.frames_dropped <= 5  # only before the first acknowledgements


def test_probes_follow_the_probe_interval_not_the_frames() -> None:
    pacer = SendPacer(PacerConfig(fps=30, probe_ms=100))
    probes, now = 0, 0.0
    while now < 10_000:
        pacer.on_sent(10_000)
        if pacer.want_probe(now):
            pacer.on_ack(pacer.probe_sent(now), now + 1)
            probes += 1
        now += 1000 / 30
    assert 60 <= probes <= 101  # 300 frames


def test_a_slow_uplink_drops_frames_at_the_sender_instead_of_queueing_them() -> None:
    run = simulate(60, cap_kbps=2000, seconds=40)  # 40 kB frames at 15 fps need 4.8 Mbit/s
    lat = run.tail(20, 40_000)
    assert 5 <= len(lat) / 20 <= 6.5  # what 250 kB/s carries of 40 kB frames
    assert lat[-1] < 600, f"the queue stays short: {lat[-1]} ms"
    assert run.pacer.frames_dropped > 200
    assert run.pacer.link_capacity(40_000) == pytest.approx(250_000, rel=0.1)


def test_a_stall_drops_the_ticks_it_blocks_and_sends_again_right_after() -> None:
    run = simulate(100, seconds=12, stall=(5000, 7000))
    after = [(c, a) for c, a in run.delivered if a >= 7000]
    first_fresh = next(a for c, a in after if c >= 7000)
    assert first_fresh - 7000 < 400
    assert sum(1 for c, a in after if a - c > 1000) <= 4  # the window's worth, no more
    assert run.pacer.frames_dropped >= 20
    lat = run.tail(3, 12_000)
    assert len(lat) / 3 >= 14.5


def test_a_reconnect_forgets_what_was_in_flight_and_old_probes() -> None:
    pacer = SendPacer()
    pacer.on_sent(500_000)
    old = pacer.probe_sent(0)
    assert not pacer.admit(1, 80_000)
    pacer.reconnected()
    assert pacer.in_flight == 0
    assert not pacer.on_ack(old, 10)
    assert pacer.acked == 0
    assert pacer.admit(11, 80_000)


def test_windowed_extremes_expire() -> None:
    m = WindowedExtreme(1000, keep_max=True)
    m.add(0, 5)
    m.add(500, 3)
    assert m.value(900) == 5
    assert m.value(1200) == 3
    assert m.value(2000) is None
