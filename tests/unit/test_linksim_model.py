"""The link simulator's timing (``tools.linksim.model``, pure): serialisation at the cap, delay,
jitter without reordering, the bottleneck queue's limit, stalls."""

from __future__ import annotations

import pytest

from tools.linksim.model import Direction, LinkSpec, Pipe

pytestmark = pytest.mark.unit


def test_chunks_leave_at_the_capped_rate_and_arrive_a_delay_later() -> None:
    pipe = Pipe(Direction(delay_ms=50, rate_kbps=800))  # 100 kB/s
    left = [pipe.send(0.0, 10_000) for _ in range(3)]  # read together: queued behind each other
    assert left == pytest.approx([0.1, 0.2, 0.3])
    assert pipe.arrival("c", left[0]) == pytest.approx(0.15)
    assert pipe.queued(0.15) == 20_000 and pipe.queued(0.35) == 0
    assert pipe.send(1.0, 10_000) == pytest.approx(1.1)  # an idle link starts afresh


def test_an_unlimited_link_only_delays() -> None:
    pipe = Pipe(Direction(delay_ms=100))
    assert pipe.send(2.0, 1 << 20) == 2.0
    assert pipe.arrival("c", 2.0) == pytest.approx(2.1)


def test_jitter_varies_the_delay_but_never_reorders_a_connection() -> None:
    pipe = Pipe(Direction(delay_ms=20, jitter_ms=30), seed=3)
    arrivals = [pipe.arrival("c", pipe.send(i * 0.001, 100)) for i in range(200)]
    delays = [a - i * 0.001 for i, a in enumerate(arrivals)]
    assert arrivals == sorted(arrivals)
    assert min(delays) >= 0.020 and max(delays) <= 0.051 and max(delays) - min(delays) > 0.015


def test_the_reader_stops_when_the_bottleneck_queue_is_full() -> None:
    shape = Direction(rate_kbps=2000, queue_ms=500)  # 250 kB/s, 125 kB of buffer
    pipe = Pipe(shape)
    assert shape.queue_bytes == 125_000
    n = 0
    while pipe.has_room(0.0):
        pipe.send(0.0, 10_000)
        n += 1
    assert n == 13
    assert pipe.next_departure() == pytest.approx(0.04)
    assert pipe.has_room(0.05)  # one chunk left the queue


def test_a_stall_holds_departures_and_arrivals_until_it_ends() -> None:
    pipe = Pipe(Direction(delay_ms=50, rate_kbps=800))
    before = pipe.send(0.0, 10_000)  # leaves at 0.1, would arrive at 0.15
    pipe.stall(0.12, 2.0)
    assert pipe.arrival("c", before) == pytest.approx(2.12)
    during = pipe.send(0.5, 10_000)
    assert during == pytest.approx(2.22)  # serialised only once the stall is over
    assert pipe.arrival("c", during) == pytest.approx(2.27)
    assert pipe.stalled_until(1.0) == pytest.approx(2.12) and pipe.stalled_until(3.0) == 3.0


def test_a_link_spec_splits_the_round_trip_and_names_itself() -> None:
    spec = LinkSpec.of(rtt_ms=100, jitter_ms=5, uplink_kbps=2000)
    assert spec.up.delay_ms == spec.down.delay_ms == 50
    assert (spec.up.rate_kbps, spec.down.rate_kbps) == (2000, 0)
    assert spec.describe() == {"rtt_ms": 100, "jitter_ms": 5, "uplink_kbps": 2000, "downlink_kbps": 0}
    assert LinkSpec().is_null and not spec.is_null
