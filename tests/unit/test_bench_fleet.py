"""The fleet benches' arithmetic (``tools.bench.failover``, ``tools.bench.load``): outage gaps,
lost swaps, stale epochs and the garment check from recorded timelines; frame rates, placement
spread and CPU per session-second from counts. docs/benchmarks.md quotes what these compute, so
each is checked on timelines worked out by hand."""

from __future__ import annotations

import msgpack
import pytest

from shared.schemas import Event
from tools.bench import failover as fo
from tools.bench import load

pytestmark = pytest.mark.unit
S = 1_000_000_000  # ns per second


# -- failover -------------------------------------------------------------------------------------------
def test_resume_is_the_largest_gap_that_ends_after_the_kill() -> None:
    # frames every 0.1 s, the kill at 1.05 s, nothing until 2.3 s, then every 0.1 s again
    times = [int(t * S) for t in (0.8, 0.9, 1.0, 2.3, 2.4, 2.5)]
    assert fo.largest_gap_s(times, kill_ns=int(1.05 * S)) == pytest.approx(1.3)
    assert fo.first_after_s(times, int(1.05 * S)) == pytest.approx(1.25)


def test_a_gap_before_the_kill_does_not_count_but_a_later_stall_does() -> None:
    times = [int(t * S) for t in (0.0, 3.0, 3.1, 3.2, 3.3, 5.3, 5.4)]
    assert fo.largest_gap_s(times, kill_ns=int(3.15 * S)) == pytest.approx(2.0)


def test_no_frame_after_the_kill_is_no_resume() -> None:
    assert fo.largest_gap_s([S, 2 * S], kill_ns=3 * S) is None
    assert fo.first_after_s([S, 2 * S], 3 * S) is None


def test_without_frames_before_the_kill_the_gap_counts_from_the_kill() -> None:
    assert fo.largest_gap_s([int(1.5 * S), int(1.6 * S)], kill_ns=S) == pytest.approx(0.5)


def test_first_new_epoch_is_the_first_frame_of_an_owner_newer_than_before_the_kill() -> None:
    frames = [(int(0.9 * S), 7), (int(1.2 * S), 7), (int(2.0 * S), 9), (int(2.1 * S), 9)]
    assert fo.first_new_epoch_s(frames, kill_ns=S) == pytest.approx(1.0)
    assert fo.first_new_epoch_s(frames[:2], kill_ns=S) is None  # the owner never changed


def test_a_swap_is_lost_unless_applied_or_superseded() -> None:
    sent = ["a", "b", "c", "d", "e"]
    answers = {
        "a": ["swap_applied"],
        "b": ["swap_superseded"],
        "c": ["error"],  # refused: the shopper did not get the garment
        "e": ["status", "swap_applied"],
    }
    assert fo.lost_swaps(sent, answers) == ["c", "d"]


def test_stale_epochs_count_frames_below_one_already_seen() -> None:
    assert fo.stale_epochs([5, 5, 7, 5, 7, 6, 9]) == 2
    assert fo.stale_epochs([]) == 0
    assert fo.stale_epochs([1, 2, 2, 3]) == 0


def test_the_garment_check_needs_frames_and_every_one_to_match() -> None:
    assert fo.garment_matches(["tee", "tee", "tee"], "tee")
    assert not fo.garment_matches(["shirt", "tee", "tee"], "tee")
    assert not fo.garment_matches([], "tee")
    assert not fo.garment_matches(["tee"], None)


def test_a_superseded_swap_is_read_as_such_whether_kind_or_code_says_so() -> None:
    assert fo.answer_of("status", "swap_superseded") == "swap_superseded"
    assert fo.answer_of("swap_superseded", "swap_superseded") == "swap_superseded"
    assert fo.answer_of("swap_applied", "swap_applied") == "swap_applied"
    assert fo.answer_of("error", "unknown_garment") == "error"


def test_an_event_the_schema_refuses_is_still_read_and_flagged() -> None:
    good = Event("swap_applied", "s1", "generator", "swap_applied", "", 1, {"event_id": "e1"}).encode()
    assert fo.event_answer(good) == ("swap_applied", "swap_applied", "e1", True)
    refused = msgpack.packb(
        {
            "type": "event",
            "v": 1,
            "kind": "swap_superseded",
            "session_id": "s1",
            "service": "generator",
            "code": "swap_superseded",
            "message": "",
            "ts_ns": 1,
            "data": {"event_id": "e2"},
        }
    )
    assert fo.event_answer(refused) == ("swap_superseded", "swap_superseded", "e2", False)
    assert fo.event_answer(b"\xc1") == ("", "", "", False)


# -- load -----------------------------------------------------------------------------------------------
def test_fps_counts_distinct_frames_in_the_window_and_a_starved_session_as_zero() -> None:
    arrivals = {
        "a": [(int(t * S), seq) for seq, t in enumerate((0.5, 1.0, 1.5, 2.0, 2.5, 3.5))],
        "b": [(S, 0), (int(1.1 * S), 0), (int(1.2 * S), 1)],  # seq 0 twice (a re-render): once
    }
    fps = load.fps_by_session(arrivals, ["a", "b", "c"], start_ns=S, end_ns=3 * S)
    assert fps == pytest.approx({"a": 2.0, "b": 1.0, "c": 0.0})  # a: 1.0, 1.5, 2.0, 2.5 in [1, 3)
    with pytest.raises(ValueError):
        load.fps_by_session(arrivals, ["a"], start_ns=S, end_ns=S)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert load.nearest_rank(values, 5) == 1.0
    assert load.nearest_rank(values, 50) == 10.0
    assert load.nearest_rank(values, 99) == 20.0
    assert load.nearest_rank([], 50) == 0.0


def test_placement_spread_counts_live_workers_without_sessions() -> None:
    spread = load.placement_spread({"g1": 4, "g2": 3}, ["g1", "g2", "g3"])
    assert (spread["max_per_worker"], spread["min_per_worker"]) == (4, 0)
    assert spread["per_worker"] == {"g1": 4, "g2": 3, "g3": 0}


def test_cpu_per_session_second() -> None:
    # 8 s of CPU serving 32 sessions for 20 s: 8000 ms / 640 session-seconds
    assert load.cpu_ms_per_session_s(8.0, sessions=32, seconds=20.0) == pytest.approx(12.5)
    with pytest.raises(ValueError):
        load.cpu_ms_per_session_s(1.0, sessions=0, seconds=20.0)


def test_goals_judge_rate_spread_rejections_and_starvation() -> None:
    report = {
        "fps_out": {"p05": 14.2},
        "placement": {"max_per_worker": 4, "min_per_worker": 4},
        "rejected_at_capacity": 4,
        "rejected_other": {},
        "admitted_starved": 0,
    }
    assert all(load.goals(report, fps=15.0, extra_asked=4).values())
    starved = {**report, "admitted_starved": 1, "fps_out": {"p05": 0.0}}
    verdict = load.goals(starved, fps=15.0, extra_asked=4)
    assert not verdict["none_admitted_and_starved"] and not verdict["fps_out_p05_ge_0_9_fps"]
    assert not load.goals({**report, "rejected_at_capacity": 3}, 15.0, 4)["extra_rejected_at_capacity"]


def test_the_fps_goal_is_a_ratio_that_fails_at_low_rates_too() -> None:
    """At 1 fps, "p05 >= fps - 1" held at 0.47 fps; 0.9 x fps does not."""
    report = {
        "fps_out": {"p05": 0.47},
        "placement": {"max_per_worker": 1, "min_per_worker": 1},
        "rejected_at_capacity": 0,
        "rejected_other": {},
        "admitted_starved": 0,
    }
    assert not load.goals(report, fps=1.0, extra_asked=0)["fps_out_p05_ge_0_9_fps"]
    assert load.goals({**report, "fps_out": {"p05": 0.9}}, fps=1.0, extra_asked=0)["fps_out_p05_ge_0_9_fps"]


def test_failover_figures_resume_stale_frames_and_their_goals() -> None:
    kill = 10 * S
    frames = {
        "a": [(9 * S, 5), (int(11.5 * S), 7), (12 * S, 7)],  # resumed 1.5 s after the kill
        "b": [(9 * S, 5), (int(10.5 * S), 5)],  # only the old owner's epoch after the kill: never
        "c": [(9 * S, 8), (int(10.2 * S), 9), (int(10.4 * S), 8)],  # a frame of an older owner after
    }
    resumed = load.resume_times(frames, {"a": 5, "b": 5}, kill)
    assert resumed == {"a": pytest.approx(1.5), "b": None}
    assert load.stale_frames(frames) == 1
    assert load.per_thousand(3.0, 2000) == pytest.approx(1.5)
    failover = {
        "orphaned": 2,
        "not_resumed": 0,
        "resume_s": {"p95": 2.9},
        "lost_swaps": 0,
        "swaps_sent": 2,
        "stale_frames": 0,
    }
    report = {
        "fps_out": {"p05": 1.0},
        "placement": {"max_per_worker": 1, "min_per_worker": 1},
        "rejected_at_capacity": 0,
        "rejected_other": {},
        "admitted_starved": 0,
        "failover": failover,
        "placement_ms": {"p95": 120.0, "placed": 20, "refused": 0},
    }
    assert all(load.goals(report, 1.0, 0).values())
    for key, bad in (("not_resumed", 1), ("lost_swaps", 1), ("stale_frames", 1), ("resume_s", {"p95": 3.1})):
        assert not all(load.goals({**report, "failover": {**failover, key: bad}}, 1.0, 0).values()), key
    slow = {**report, "placement_ms": {"p95": 151.0, "placed": 20, "refused": 0}}
    assert not load.goals(slow, 1.0, 0)["placement_p95_le_150_ms"]
