"""The arithmetic of ``chameleon bench fuzz`` (pure): metrics parsing, the accounting, the fps
ratio, the goals, and the message plan."""

from __future__ import annotations

import asyncio
import mmap
import os
from collections import Counter

import numpy as np
import pytest

from runtime.media import encode_jpeg
from shared.headers import H_CAPTURE_NS, now_ns
from tools.bench.fuzz import (
    ROUTE_WEIGHTS,
    Flood,
    Material,
    Probe,
    count_lines,
    delta,
    flood_goals,
    fps_between,
    goals,
    metric_by,
    metric_sum,
    parse_metrics,
    plan,
    ratio,
    unaccounted,
)

pytestmark = pytest.mark.unit


def test_the_flood_goals_can_fail() -> None:
    good = {
        "neighbour_fps_ratio": 0.95,
        "good_sessions_connected": 8,
        "good_sessions_tried": 8,
        "admitted": 64,
        "address_limit": 64,
    }
    assert all(flood_goals(good).values())
    for key, bad in (("neighbour_fps_ratio", 0.89), ("good_sessions_connected", 7), ("admitted", 65)):
        assert not all(flood_goals({**good, key: bad}).values()), key
    assert not all(flood_goals({**good, "good_sessions_tried": 0, "good_sessions_connected": 0}).values())


async def test_a_flood_attempt_reads_the_servers_answer() -> None:
    """The flood's raw client against a stand-in that answers like nats-server: PONG admits (the
    connection is held), -ERR 'Authorization Violation' refuses, anything else is a failure."""
    answers = iter([b"PONG\r\n", b"-ERR 'Authorization Violation'\r\n", b"-ERR 'Unknown'\r\n"])
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x"}\r\n')
        seen.append(await reader.readline())
        await reader.readline()  # PING
        writer.write(next(answers))
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    flood = Flood()
    try:
        for _ in range(3):
            await flood.attempt("127.0.0.1", port, "cht1.a.b", "127.0.0.1")
    finally:
        flood.release()
        server.close()
    assert (flood.attempts, flood.admitted, flood.refused, sum(flood.failed.values())) == (3, 1, 1, 1)
    assert b'"auth_token": "cht1.a.b"' in seen[0]


EXPOSITION = """\
# HELP chameleon_frames_rejected_total Frames rejected as invalid
# TYPE chameleon_frames_rejected_total counter
chameleon_frames_rejected_total{code="bad_frame",service="ingest"} 12.0
chameleon_frames_rejected_total{code="bad_headers",service="ingest"} 3.0
chameleon_frames_rejected_created{code="bad_frame",service="ingest"} 1.7e9
chameleon_frames_dropped_total{reason="superseded",service="ingest"} 5.0
chameleon_control_total{action="unknown",outcome="bad_control",service="generator"} 7.0
weird_total{text="a \\"quoted\\", b"} 1.0
chameleon_frames_in_total{service="ingest"} 40.0
"""


def test_parse_metrics_reads_names_labels_and_values() -> None:
    samples = parse_metrics(EXPOSITION)
    assert ("chameleon_frames_in_total", {"service": "ingest"}, 40.0) in samples
    assert metric_sum(samples, "chameleon_frames_rejected_total") == 15.0
    assert metric_sum(samples, "chameleon_frames_rejected_total", code="bad_frame") == 12.0
    assert metric_sum(samples, "chameleon_frames_rejected_total", code="nope") == 0.0
    assert metric_by(samples, "chameleon_control_total", "outcome") == {"bad_control": 7.0}
    assert metric_sum(samples, "weird_total") == 1.0  # a quoted comma in a label value


def test_delta_treats_absent_counters_as_zero_and_leaves_out_unchanged_ones() -> None:
    assert delta({"a": 5.0, "b": 2.0, "c": 1.0}, {"a": 3.0, "b": 2.0}) == {"a": 2.0, "c": 1.0}


def test_unaccounted_is_what_ended_nowhere_and_goes_negative_on_double_counting() -> None:
    assert unaccounted(100, 30, 5, 40, 25) == 0
    assert unaccounted(100, 30, 5, 40, 20) == 5
    assert unaccounted(100, 30, 5, 50, 25) == -10


def test_fps_counts_distinct_frames_in_the_window_only() -> None:
    s = 10**9
    arrivals = [(0, 0), (s // 2, 1), (s // 2, 1), (s, 2), (2 * s, 3), (3 * s, 4)]
    assert fps_between(arrivals, 0, 2 * s) == pytest.approx(1.5)  # seqs 0, 1, 2; a re-render once
    assert ratio(13.5, 15.0) == pytest.approx(0.9)
    assert ratio(15.0, 0.0) == 0.0  # no baseline: no claim
    with pytest.raises(ValueError):
        fps_between(arrivals, s, s)


def test_count_lines_counts_complete_lines() -> None:
    assert count_lines(b'{"a": 1}\n{"b": 2}\npartial') == 2
    assert count_lines(b"") == 0


def _report(**kw: float) -> dict:
    base = {"crashes": 0, "unaccounted": 0, "neighbour_fps_ratio": 0.9, "log_lines_per_message": 0.1}
    return {**base, **kw}


def test_goals_at_and_past_their_bounds() -> None:
    assert all(goals(_report()).values())
    assert not goals(_report(crashes=1))["no_crashes"]
    assert not goals(_report(unaccounted=1))["none_unaccounted"]
    assert not goals(_report(unaccounted=-1))["none_unaccounted"]  # double counting fails too
    assert not goals(_report(neighbour_fps_ratio=0.899))["neighbour_fps_ratio_ge_0_9"]
    assert not goals(_report(log_lines_per_message=0.1001))["log_lines_per_message_le_0_1"]


@pytest.fixture(scope="module")
def material() -> Material:
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    small = np.random.default_rng(1).integers(0, 255, (144, 176, 3), dtype=np.uint8)
    return Material("fuzz-1", "good-1", "chameleon", encode_jpeg(img), encode_jpeg(small), 640, 480)


def test_the_plan_is_reproducible_and_reaches_every_route(material: Material) -> None:
    a, b = plan(material, 2000, seed=5), plan(material, 2000, seed=5)
    assert [(p.route, p.family, p.subject) for p in a] == [(p.route, p.family, p.subject) for p in b]
    routes = Counter(p.route for p in a)
    assert {"camera", "control", "garments_get", "garments_list", "forbidden", "no_credentials"} <= set(
        routes
    )
    share = routes["camera"] / len(a)
    assert abs(share - ROUTE_WEIGHTS["camera"] / sum(ROUTE_WEIGHTS.values())) < 0.05
    assert max(len(p.payload) for p in a) < 2 * 1024 * 1024  # never a payload the server would close on
    assert all(p.subject.startswith(("chameleon.", "$")) for p in a if p.route == "forbidden")
    assert not any("fuzz-1." in p.subject and p.subject.endswith((".camera", ".control")) for p in a)


def test_frames_judged_on_payload_are_stamped_when_sent(material: Material) -> None:
    old = {H_CAPTURE_NS: "1", "Chameleon-Session": "fuzz-1"}
    fresh = Probe("camera", "random_bytes", b"x", old, fresh=True)
    before = now_ns()
    assert int(fresh.headers_now()[H_CAPTURE_NS]) >= before
    assert Probe("camera", "ancient_capture", b"x", old).headers_now() == old
    assert Probe("camera", "no_headers", b"x", None, fresh=True).headers_now() is None


# -- chameleon bench soak's arithmetic (tools/bench/soak.py), kept with the fuzz's: same issue ----------
def test_soak_reads_rss_and_its_growth() -> None:
    from tools.bench.common import rss_kib
    from tools.bench.soak import growth_ratio

    before = rss_kib(os.getpid())
    # 32 MiB of fresh pages, touched: an anonymous map of its own (numpy's allocator may hand back
    # heap memory earlier tests freed, still resident, and the RSS would not move)
    ballast = mmap.mmap(-1, 32 * 1024 * 1024)
    np.frombuffer(ballast, np.uint8)[::4096] = 1
    assert rss_kib(os.getpid()) - before > 30 * 1024
    ballast.close()
    assert growth_ratio(320.0, 336.0) == pytest.approx(1.05)
    assert growth_ratio(0.0, 10.0) == 0.0


def test_soak_windows_count_distinct_frames_and_empty_windows() -> None:
    from tools.bench.soak import slope, window_rates

    s = 10**9
    arrivals = [(t * s // 30, t) for t in range(30 * 25)]  # 30 fps for 25 s
    arrivals += [(5 * s, 150)]  # a re-render of seq 150
    assert window_rates(arrivals, 0, 45 * s, 10.0) == [30.0, 30.0, 15.0, 0.0]  # a silent one counts 0
    assert window_rates(arrivals, 0, 35 * s, 10.0) == [30.0, 30.0, 15.0]  # complete windows only
    assert slope([(0.0, 300.0), (1.0, 301.0), (2.0, 302.0)]) == pytest.approx(1.0)
    assert slope([(1.0, 5.0)]) == 0.0
