"""`chameleon bench warp`: one JSON line with both renderers per framing, timed on the same frames
(the goal itself, p50 per frame, is read from a real run: docs/benchmarks.md, not asserted here)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.unit


def test_bench_warp_reports_both_renderers_on_the_same_frames(capsys) -> None:
    from tools.bench import warp

    assert warp.main(["--framing", "closeup", "--frames", "4", "--renders", "4"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    closeup = report["framings"]["closeup"]
    assert closeup["frames_with_person"] == 4
    for name in ("current", "legacy"):
        assert closeup[name]["render_ms"]["p50"] > 0
        assert closeup[name]["drawn_fraction_mean"] > 0.05  # a person filling the frame is dressed
    assert closeup["current_over_legacy_p50"] == pytest.approx(
        closeup["current"]["render_ms"]["p50"] / closeup["legacy"]["render_ms"]["p50"], rel=0.01
    )
    assert report["machine"] and report["date"]
