"""The demo through the real CLI, as a user runs it: its last line is the JSON summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_30_frames_json(tmp_path: Path, bus_photo) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "CHAMELEON_NATS_URL")}
    out = tmp_path / "demo.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "demo",
            "--frames",
            "30",
            "--json",
            "--out",
            str(out),
            "--logs",
            str(tmp_path / "logs"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("frames_in", "frames_out", "fps_out", "latency_ms", "dropped"):
        assert key in result, key
    assert result["frames_in"] == 30
    assert result["frames_out"] >= 25
    assert result["dropped"] == result["frames_in"] - result["frames_out"]
    assert set(result["latency_ms"]) == {"p50", "p95", "p99"}
    assert (
        0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] <= result["latency_ms"]["p99"] < 2000
    )
    assert result["fps_out"] > 5
    assert out.is_file() and out.stat().st_size > 10_000
    assert result["video_frames"] == result["frames_out"]
