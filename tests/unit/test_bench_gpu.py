"""The GPU check's bench (`tools.bench.gpu`): its arithmetic, and every section's CPU smoke path."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from services.generator.engine import PAPER, TINY
from tools.bench import gpu
from tools.bench.gpu import GpuCheckSettings, pixel_diff_by_window, run_check, sessions_meeting, summarize

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here on one torch thread (tests/conftest.py)."""


def test_sessions_meeting_counts_the_target_itself() -> None:
    rows = {
        "1": {"fps": 40.0},
        "2": {"fps": 15.0},  # exactly the target: meets it
        "4": {"fps": 14.99},
        "8": {"skipped": "budget"},
    }
    assert sessions_meeting(rows, "fps", 15.0) == 2
    assert sessions_meeting(rows, "fps", 50.0) == 0


def test_pixel_diff_by_window_by_hand() -> None:
    a = np.zeros((100, 2, 2, 3), np.uint8)
    b = a.copy()
    b[49] = 7  # last frame of window 0
    b[50, 0, 0, 0] = 255  # first frame of window 1
    rows = pixel_diff_by_window(a, b, [(0, 50), (50, 100)])
    assert rows[0] == {"frames": [0, 50], "max_abs": 7, "mean_abs": 0.14}
    assert rows[1] == {"frames": [50, 100], "max_abs": 255, "mean_abs": round(255 / 600, 4)}


def test_fewer_blocks_keep_the_paper_shape() -> None:
    fewer = gpu.PAPER_FEWER_BLOCKS
    assert fewer.num_layers == 10 and fewer.name == "paper-10blocks"
    assert fewer.size_differences(PAPER) == {"num_layers": (10, 30)}
    assert gpu.PAPER_DRIFT_BLOCKS.tokens_per_frame == PAPER.tokens_per_frame == 880


def test_cpu_smoke_runs_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench_gpu.json"
    assert gpu.main(["--smoke", "--json", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == report
    assert report["device"] == "cpu" and report["engine"]["frames_per_s"] > 0
    rows = report["throughput"]["tiny-1blocks"]["by_sessions"]
    assert set(rows) == {"1", "2"} and all(r["batched_fps_per_session"] > 0 for r in rows.values())
    drift = report["bf16_drift"]
    assert drift["weights_match"] is True and drift["config"] == "tiny-1blocks"
    assert [w["frames"] for w in drift["pixel_diff_by_window"]] == [[0, 12], [12, 21]]
    assert len(drift["latent_rel_diff_by_chunk"]) == 2  # 9 + 12 frames
    compiled = report["compile"]["tiny-1blocks"]["default"]
    assert compiled["backend"] == "eager" and compiled["max_abs_diff_vs_eager_first_step"] == 0.0
    assert compiled["speedup_vs_eager"] > 0 and compiled["cudagraph_skips"] == 0
    assert set(report["compile"]["tiny-1blocks"]["eager_step_ms"]) == {"before", "after"}
    assert _errors(report) == []


def _errors(node: object, path: str = "") -> list[str]:
    """Paths of every ``error`` or ``skipped`` entry in a report."""
    if not isinstance(node, dict):
        return []
    found = [f"{path}.{k}" for k in node if k in ("error", "skipped")]
    return found + [e for k, v in node.items() for e in _errors(v, f"{path}.{k}")]


def test_a_spent_budget_skips_with_the_reason() -> None:
    report = run_check(dataclasses.replace(GpuCheckSettings.cpu_smoke(), budget_s=0.0))
    assert report["engine"]["skipped"].startswith("budget")
    assert report["throughput"]["tiny-1blocks"]["skipped"].startswith("budget")
    assert report["compile"]["tiny-1blocks"]["skipped"].startswith("budget")


def test_a_failing_section_is_recorded_and_the_next_one_runs() -> None:
    settings = dataclasses.replace(
        GpuCheckSettings.cpu_smoke(),
        dtype="float64",  # not a serving dtype: the throughput section fails on it
        sections=("throughput", "bf16_drift"),
        throughput_configs=(TINY,),
        drift_frames=9,
        drift_window=9,
    )
    report = run_check(settings)
    assert report["throughput"]["tiny"]["error"].startswith("KeyError")
    assert report["bf16_drift"]["frames"] == 9 and "error" not in report["bf16_drift"]


def test_a_mode_that_fails_to_compile_keeps_the_eager_numbers() -> None:
    settings = dataclasses.replace(
        GpuCheckSettings.cpu_smoke(), sections=("compile",), compile_backend="no-such-backend"
    )
    result = run_check(settings)["compile"]["tiny-1blocks"]
    assert "no-such-backend" in result["default"]["error"]
    assert result["eager_step_ms"]["after"] > 0 and result["helps"] is False


def test_summary_merges_exit_codes_logs_and_the_bench(tmp_path: Path) -> None:
    (tmp_path / "gpu_test.log").write_text("..\n1 passed in 3.1s\n")
    (tmp_path / "train.log").write_text("started\n")
    (tmp_path / "bench_gpu.json").write_text(json.dumps({"bench": "gpu", "seconds": 1.0}))
    summary = summarize(tmp_path, {"gpu_test": 0, "train": 124, "bench": 0}, seconds=12.0)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["ok"] is False and summary["seconds"] == 12.0
    assert summary["parts"]["gpu_test"] == {"rc": 0, "ok": True, "last_line": "1 passed in 3.1s"}
    assert summary["parts"]["train"]["timed_out"] is True
    assert summary["parts"]["bench"]["last_line"] is None and summary["bench"]["bench"] == "gpu"


def test_gpu_check_timeouts_fit_in_six_minutes() -> None:
    """One device command may run 10 minutes; the check's timeouts (and each part's grace to die
    after its TERM) must sum to under 6, and nothing may run without one."""
    script = (Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh").read_text()
    lines = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    commands = [ln for ln in lines if re.match(r"(python3|nvidia-smi|timeout)\b", ln)]
    limits = [re.match(r"timeout -k (\d+) (\d+) ", ln) for ln in commands]
    assert all(limits) and len(limits) == 5, commands
    assert sum(int(m.group(1)) + int(m.group(2)) for m in limits if m) < 360
