"""The capacity bench's arithmetic (``tools.bench.capacity``): CPU seconds -> ms per frame -> cores
per session -> cores per 1,000 users -> cost, and whole sessions per GPU. The cost per user in
docs/benchmarks.md rests on these, so each step is checked on numbers worked out by hand."""

from __future__ import annotations

import argparse
import os
import time

import pytest

from tools.bench import capacity as cap
from tools.bench import capacity_sessions as sessions

pytestmark = pytest.mark.unit


def test_cpu_seconds_to_cost_per_1000_users() -> None:
    ms = cap.ms_per_frame(cpu_s=3.0, frames=300)  # 3 s of CPU over 300 frames
    assert ms == pytest.approx(10.0)
    cores = cap.cores_per_session(ms, fps=15)  # 10 ms x 15 frames/s = 0.15 s of CPU per second
    assert cores == pytest.approx(0.15)
    assert cap.cores_per_users(cores) == pytest.approx(150.0)
    assert cap.cpu_cost_per_hour(150.0, core_price_per_hour=0.04) == pytest.approx(6.0)


def test_no_frames_out_is_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError):
        cap.ms_per_frame(1.0, 0)


def test_stage_figures_divide_each_stage_by_the_frames_out() -> None:
    before = {"ingest": 10.0, "preprocess": 20.0, "generator": 5.0, "garments": 1.0}
    after = {"ingest": 10.3, "preprocess": 31.0, "generator": 9.5, "garments": 1.0}
    fig = cap.stage_figures(before, after, frames=300, fps=15)
    assert fig["cpu_ms_per_frame"] == pytest.approx(
        {"ingest": 1.0, "preprocess": 36.667, "generator": 15.0, "garments": 0.0, "total": 52.667},
        abs=1e-3,
    )
    assert fig["cpu_core_per_session"]["by_stage"] == pytest.approx(
        {"ingest": 0.015, "preprocess": 0.55, "generator": 0.225, "garments": 0.0}, abs=1e-4
    )
    assert fig["cpu_core_per_session"]["total"] == pytest.approx(0.79, abs=1e-4)


def test_a_gpu_session_is_never_split() -> None:
    assert cap.sessions_per_device(25.614, 15) == 1  # the paper config on an H100
    assert cap.devices_for(1000, 1) == 1000
    assert cap.sessions_per_device(626.0, 15) == 41
    assert cap.devices_for(1000, 41) == 25  # 24 devices hold 984: the 25th is needed
    assert cap.sessions_per_device(14.9, 15) == 0
    assert cap.devices_for(1000, 0) is None  # cannot serve one session in real time


def test_process_cpu_time_reads_user_plus_system_of_this_process() -> None:
    """Same kernel counters as ``os.times``: a wrong field would be far off."""
    end = time.process_time() + 0.1
    while time.process_time() < end:  # burn some CPU so the figure is not zero
        pass
    t = os.times()
    assert cap.process_cpu_s(os.getpid()) == pytest.approx(t.user + t.system, abs=0.05)


def test_a_stage_run_as_several_workers_counts_the_cpu_of_each() -> None:
    """Two generator workers: the stage's CPU is both processes', not the first one's (this
    process stands for both: a second live process would burn CPU of its own while read)."""
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    me = os.getpid()
    one = cap.cpu_snapshot({"generator": [me]})["generator"]
    both = cap.cpu_snapshot({"generator": [me, me], "ingest": [me]})
    assert both["generator"] == pytest.approx(2 * one, abs=0.05)
    assert both["ingest"] == pytest.approx(one, abs=0.05)


def test_the_box_holds_what_its_best_worker_count_held() -> None:
    runs = {1: {"sessions_per_box": 5, "steps": []}, 2: {"sessions_per_box": 6, "steps": []}}
    best = cap.best_workers(runs)
    assert best["sessions_per_box"] == 6 and best["workers"] == 2
    assert set(best["by_workers"]) == {"1", "2"}
    tie = cap.best_workers({1: {"sessions_per_box": 5}, 2: {"sessions_per_box": 5}})
    assert tie["workers"] == 1  # as many sessions with fewer processes
    assert "by_workers" not in cap.best_workers({2: {"sessions_per_box": 4}})


def _window(total: float, generator: float) -> dict:
    rest = total - generator
    by_stage = {"ingest": rest / 2, "preprocess": rest / 2, "generator": generator, "garments": 0.0}
    return {"cpu_core_per_session": {"total": total, "by_stage": by_stage}, "cpu_ms_per_frame": {}}


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        fps=15.0,
        cpu_core_price_per_hour=0.04,
        gpu_price_per_hour=2.5,
        box_price_per_hour=0.08,
        image=None,
        seconds=20.0,
    )


def test_summary_costs_every_path_from_the_measured_figures() -> None:
    args = _args()
    measured = {
        "demo": _window(0.8, 0.2),  # 0.6 cores around the renderer
        "closeup": _window(1.0, 0.4),
        "sim": _window(0.7, 0.1),  # the generator without rendering: 0.1 cores
        "idle": {},
    }
    tiny = {"threads": 2, "frames_per_s": 600.0}  # 2 cores x 15 / 600 = 0.05 cores per session
    report = cap.summarise(measured, tiny, args)
    costs = report["cost_per_1000_users_per_hour"]
    assert costs["warp_cpu"] == pytest.approx(800 * 0.04)
    assert costs["warp_cpu_closeup"] == pytest.approx(1000 * 0.04)
    # student: its engine + the data path (0.6) + the generator without rendering (0.1)
    assert report["student_cpu_cores_per_session_besides_engine"] == pytest.approx(0.7)
    assert costs["student_tiny_cpu"] == pytest.approx((0.05 + 0.7) * 1000 * 0.04)
    assert costs["student_paper_h100"] == pytest.approx(1000 * 2.5 + 0.7 * 1000 * 0.04)
    assert report["cores_per_1000_users"] == pytest.approx(800.0)
    assert report["sessions_per_core"] == pytest.approx(1.25)
    assert report["student"]["paper"]["source"] == "docs/benchmarks.md, H100, 2026-11-27"
    assert any("0.04 $/core-hour" in a and "2.5 $/GPU-hour" in a for a in report["assumptions"])


def test_the_measured_sessions_per_box_price_the_warp_path_in_whole_boxes() -> None:
    measured = {"demo": _window(0.3, 0.1), "closeup": _window(0.4, 0.2), "idle": {}}
    measured["demo"].update(pose_floor_ms=10.0, cpu_per_frame_over_pose_floor=1.25)
    measured["sessions_max"] = {"sessions_per_box": 7, "steps": []}
    report = cap.summarise(measured, None, _args())
    rows = report["cost_table"]["rows"]
    assert rows["warp_measured_sessions"]["boxes"] == 143  # 142 boxes hold 994: a 143rd is needed
    assert report["cost_per_1000_users_per_hour"]["warp_cpu"] == pytest.approx(143 * 0.08)
    assert report["cost_per_1000_users_per_hour"]["warp_cpu_from_one_session"] == pytest.approx(300 * 0.04)
    # a managed GPU at one stream each: 1,000 GPUs, and the data path (0.2 cores) on CPU besides
    assert rows["one_stream_per_gpu"]["per_hour"] == pytest.approx(1000 * 2.5 + 200 * 0.04)
    assert rows["one_stream_per_gpu"]["per_user_hour"] == pytest.approx(2.508)
    assert all(p["source"] for k, p in report["cost_table"]["prices"].items() if k != "note")
    assert report["cpu_per_frame_over_pose_floor"]["demo"] == 1.25
    none_held = {**measured, "sessions_max": {"sessions_per_box": 0, "steps": []}}
    assert "warp_measured_sessions" not in cap.summarise(none_held, None, _args())["cost_table"]["rows"]


def test_frames_per_second_are_counted_by_the_cameras_schedule() -> None:
    seqs = list(range(100, 145))  # 3 s of a 15 fps camera from seq 100
    assert sessions.window_fps(seqs, 100, 15.0, 3) == [15, 15, 15]
    lost = seqs[:20] + seqs[25:]  # five frames of the second second never shown
    assert sessions.window_fps(lost, 100, 15.0, 3) == [15, 10, 15]
    assert sessions.window_fps([99, 145, 120, 120], 100, 15.0, 3) == [0, 1, 0]  # outside; once
    assert sessions.window_fps(list(range(0, 30)), 0, 7.5, 4) == [8, 7, 8, 7]  # 7.5 a second


def test_the_largest_n_is_the_last_of_an_unbroken_run_that_held() -> None:
    assert sessions.step_holds(14.5, 150.0, 14.5, 150.0)
    assert not sessions.step_holds(14.4, 80.0, 14.5, 150.0)
    assert not sessions.step_holds(15.0, 150.1, 14.5, 150.0)
    steps = [{"sessions": n, "held": held} for n, held in ((1, True), (2, True), (3, False), (4, True))]
    assert sessions.largest_held(steps) == 2
    assert sessions.largest_held([{"sessions": 1, "held": False}]) == 0
