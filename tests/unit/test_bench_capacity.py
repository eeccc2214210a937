"""The capacity bench's arithmetic (``tools.bench.capacity``): CPU seconds -> ms per frame -> cores
per session -> cores per 1,000 users -> cost, and whole sessions per GPU. The cost per user in
docs/benchmarks.md rests on these, so each step is checked on numbers worked out by hand."""

from __future__ import annotations

import argparse
import os
import time

import pytest

from tools.bench import capacity as cap

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


def _window(total: float, generator: float) -> dict:
    rest = total - generator
    by_stage = {"ingest": rest / 2, "preprocess": rest / 2, "generator": generator, "garments": 0.0}
    return {"cpu_core_per_session": {"total": total, "by_stage": by_stage}, "cpu_ms_per_frame": {}}


def test_summary_costs_every_path_from_the_measured_figures() -> None:
    args = argparse.Namespace(
        fps=15.0, cpu_core_price_per_hour=0.04, gpu_price_per_hour=2.5, image=None, seconds=20.0
    )
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
