"""``chameleon bench browser``'s arithmetic over the page's draw log (pure): fps and latency in a
window, a stall's recovery and stale frames, and issue 28's goals against loopback."""

from __future__ import annotations

import pytest

from tools.bench.browser import case_name, goals, stall_metrics, window_metrics
from tools.linksim.model import LinkSpec

pytestmark = pytest.mark.unit


def steady(t0: float, t1: float, fps: float, latency: float) -> list[list[float]]:
    step = 1000 / fps
    return [[t0 + i * step, latency] for i in range(int((t1 - t0) / step))]


def test_window_metrics_count_only_the_window_and_split_it_in_thirds() -> None:
    log = steady(0, 3000, 15, 80) + steady(3000, 6000, 15, 80) + steady(6000, 9000, 15, 400)
    m = window_metrics(log, 3000, 9000)
    assert m["fps_displayed"] == pytest.approx(15, abs=0.2)
    assert m["latency_ms"]["p50"] in (80, 400) and m["latency_ms"]["p95"] == 400
    assert m["latency_p95_first_last_third_ms"] == [80, 400]  # a backlog that grew


def test_a_stall_is_timed_to_the_first_usual_frame_and_stale_ones_are_counted() -> None:
    log = steady(0, 4000, 15, 150)
    log += [[6050, 2100], [6080, 1900]]  # queued across the stall, shown late
    log += steady(6300, 8000, 15, 160)
    s = stall_metrics(log, stall_start_ms=4000, stall_s=2.0, before_p95_ms=150)
    assert s["recovery_ms"] == 300
    assert s["stale_frames_shown"] == 2
    assert s["frames_drawn_during_stall"] == 0
    assert stall_metrics(steady(0, 4000, 15, 150), 4000, 2.0, 150)["recovery_ms"] is None


def test_goals_are_judged_against_loopback_of_the_same_run() -> None:
    loop = {"fps_displayed": 15.0, "latency_ms": {"p50": 50, "p95": 100}}
    cases = {
        "loopback": loop,
        "rtt_100": {"fps_displayed": 14.2, "latency_ms": {"p50": 150, "p95": 215}},
        "rtt_200": {"fps_displayed": 12.9, "latency_ms": {"p50": 250, "p95": 300}},
        "uplink_2000": {
            "fps_displayed": 13,
            "latency_ms": {"p50": 140, "p95": 290},
            "latency_p95_first_last_third_ms": [250, 310],
        },
        "rtt_100_stall_2s": {"stall": {"recovery_ms": 300, "stale_frames_shown": 1}},
    }
    g = goals(cases)
    assert g["rtt_100.fps_displayed"]["met"] and not g["rtt_100.latency_p95_ms"]["met"]  # 215 > 210
    assert not g["rtt_200.fps_displayed"]["met"]
    assert g["uplink_2000.latency_p95_ms"]["met"] and not g["uplink_2000.latency_p95_last_third_ms"]["met"]
    assert g["rtt_100_stall_2s.recovery_ms"]["met"] and not g["rtt_100_stall_2s.stale_frames_shown"]["met"]
    assert goals({"rtt_100": cases["rtt_100"]}) == {}  # nothing to compare with


def test_case_names_are_the_ones_goals_use() -> None:
    assert case_name(LinkSpec()) == "loopback"
    assert case_name(LinkSpec.of(rtt_ms=100)) == "rtt_100"
    assert case_name(LinkSpec.of(uplink_kbps=2000)) == "uplink_2000"
    assert case_name(LinkSpec.of(rtt_ms=100), stall_s=2) == "rtt_100_stall_2s"
