"""Issue #13, hostile input, the pure parts: the per-service log rate limiter, the quiet and strict
JPEG decode, and the demo's swap counts."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from structlog.testing import capture_logs

from harness.demo_metrics import demo_quality
from runtime.logging import RateLimitedLog, get_logger
from runtime.media import UndecodableImage, decode_image, decode_jpeg, encode_jpeg
from shared.headers import FrameMeta
from shared.schemas import Event
from tools.samples import with_sof_size

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_limited_log_writes_a_few_lines_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    lines = RateLimitedLog(get_logger("t"), interval_s=1.0, burst=2, clock=clock)
    with capture_logs() as logs:
        written = [lines.warning("session_error", key="bad_frame", n=i) for i in range(500)]
        lines.warning("session_error", key="bad_headers")  # another code has its own budget
        clock.t += 1.0
        lines.warning("session_error", key="bad_frame", n=500)
    assert sum(written) == 2
    assert [(e["n"], e["lines_suppressed"]) for e in logs if e.get("n") is not None] == [
        (0, 0),
        (1, 0),
        (500, 498),  # the next line says how many were left out
    ]
    assert len(logs) == 4 and all(e["log_level"] == "warning" for e in logs)


def test_decode_refuses_a_lying_jpeg_and_prints_nothing(capfd) -> None:
    img = np.random.default_rng(0).integers(0, 255, (144, 176, 3), dtype=np.uint8)
    lying = with_sof_size(encode_jpeg(img), 640, 480)
    for reduced in (False, True):
        with pytest.raises(UndecodableImage, match="premature end of data segment"):
            decode_image(lying, reduced=reduced)
    assert decode_jpeg(lying) is None
    with pytest.raises(UndecodableImage, match="not a decodable"):
        decode_image(b"\xff\xd8 not a jpeg")
    # harmless warnings (extra bytes before EOI: common from webcams) leave the image usable
    good = encode_jpeg(img)
    assert decode_image(good[:-2] + b"\x12\x34" + good[-2:]).shape == (144, 176, 3)
    assert capfd.readouterr().err == ""


def test_what_other_threads_write_to_stderr_during_a_decode_is_passed_on(capfd) -> None:
    """The decode captures file descriptor 2: a log line another thread writes meanwhile must
    still reach stderr, and must not make a good frame look corrupt."""
    good = encode_jpeg(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            os.write(2, b'{"event": "from_another_thread"}\n')

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        for _ in range(50):
            assert decode_image(good).shape == (480, 640, 3)
    finally:
        stop.set()
        thread.join()
    err = capfd.readouterr().err.splitlines()
    assert err and set(err) == {'{"event": "from_another_thread"}'}


@dataclass
class Out:
    meta: FrameMeta
    jpeg: bytes


def test_demo_reports_every_applied_swap_as_measured_or_not_with_the_reason() -> None:
    """Issue #13: ``swaps`` counted 4 while ``swap_details`` listed 3, with nothing saying why."""
    jpeg = encode_jpeg(np.zeros((48, 64, 3), np.uint8))
    outputs = [Out(FrameMeta("s", i, 1, 64, 48, garment_id="a" if i < 2 else "b"), jpeg) for i in range(6)]

    def applied(first_seq: int, garment: str) -> Event:
        data = {"event_id": f"e{first_seq}", "garment_id": garment, "first_seq": first_seq, "latency_ms": 9.0}
        return Event("swap_applied", "s", "generator", "swap_applied", "", 1, data)

    swaps = [applied(2, "b"), applied(5, "c")]
    result = demo_quality(outputs, lambda seq: None, swaps, {"a": [], "b": [], "c": []})
    assert result["swaps_measured"] == len(result["swap_details"]) == 0
    assert [(u["event_id"], u["reason"]) for u in result["swaps_unmeasured"]] == [
        ("e2", "no garment region in output frame 4"),
        ("e5", "no output frame two after the swap"),
    ]
    assert result["swaps_measured"] + len(result["swaps_unmeasured"]) == len(swaps)
