"""The benchmark and the attention diagnostic run end to end on the tiny config."""

from __future__ import annotations

import json

import pytest

from tools import inspect_attention
from tools.bench import engine as bench

pytestmark = pytest.mark.unit


def test_bench_prints_report_as_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--config",
        "tiny",
        "--json",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--swap-repeats",
        "1",
        "--history-frames",
        "10",
        "40",
        "--batch-sessions",
        "2",
        "--threads",
        "1",
    ]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "frames_per_s",
        "tokens_per_s",
        "engine_vs_bare_forward_ratio",
        "swap_ms",
        "cache_bytes_per_session",
        "batched_speedup",
        "config",
        "device",
        "dtype",
        "machine",
        "date",
    ):
        assert key in report, key
    assert set(report["swap_ms"]) >= {"h10", "h40", "ratio"}
    assert report["cache_bytes_constant_after_warmup"] is True
    assert report["frames_per_s"] > 0 and report["config"] == "tiny"


def test_bench_refuses_paper_on_small_cpu(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.os, "sysconf", lambda name: 4096 if "PAGE" in name else 1 << 20)
    assert bench.main(["--config", "paper", "--json"]) == 2
    assert "GPU" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


def test_inspect_attention_masses_sum_to_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect_attention.main(["--chunks", "5"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for row in report["layers"] + report["after_swap"]["layers"]:
        assert abs(sum(v for k, v in row.items() if k != "layer") - 1.0) < 1e-3
    after = report["after_swap"]["mean"]
    assert after["sink"] == 0.0 and after["window"] == 0.0  # history withdrawn
    assert report["mean"]["window"] > 0.0


def test_swap_eval_defaults_to_the_shipped_checkpoint() -> None:
    """Without ``--weights`` the eval must score the shipped student, never random weights."""
    from tools.training import evaluate

    assert evaluate.DEFAULT_WEIGHTS.is_file(), evaluate.DEFAULT_WEIGHTS
