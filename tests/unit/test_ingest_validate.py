"""Ingest validation and normalisation on real image bytes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.ingest.validate import FrameRejected, Limits, process_frame
from shared.media import decode_jpeg, encode_jpeg

pytestmark = pytest.mark.unit
LIMITS = Limits(max_frame_bytes=500_000, max_input_pixels=2000 * 2000, min_input_side=16, max_aspect=4.0)


def _jpeg(w: int, h: int) -> bytes:
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(w, h) // 3, (0, 200, 255), -1)
    return encode_jpeg(img)


def test_resizes_to_fit_box_keeping_aspect() -> None:
    out = process_frame(_jpeg(1280, 720), LIMITS, 640, 480, 85)
    assert (out.width, out.height) == (640, 360)
    img = decode_jpeg(out.jpeg)
    assert img is not None and img.shape == (360, 640, 3)


def test_portrait_input_fits_height() -> None:
    out = process_frame(_jpeg(810, 1080), LIMITS, 640, 480, 85)
    assert (out.width, out.height) == (360, 480)


def test_a_fitting_jpeg_passes_through_unchanged() -> None:
    data = _jpeg(640, 480)
    out = process_frame(data, LIMITS, 640, 480, 85)
    assert out.jpeg == data and (out.width, out.height) == (640, 480)
    odd = _jpeg(641, 480)  # fits the box only after the even-size rule: re-encoded
    assert process_frame(odd, LIMITS, 640, 480, 85).jpeg != odd


def test_png_is_accepted() -> None:
    _, png = cv2.imencode(".png", np.full((100, 120, 3), 80, np.uint8))
    assert process_frame(png.tobytes(), LIMITS, 640, 480, 85).width > 0


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "empty_frame"),
        (b"definitely not a jpeg", "bad_frame"),
        (b"\xff\xd8\xff" + b"\x00" * 100, "bad_frame"),
        (b"x" * 600_000, "frame_too_large"),
        (_jpeg(8, 8), "frame_too_small"),
        (_jpeg(400, 40), "bad_aspect"),
        (_jpeg(2400, 1800), "frame_too_large"),
    ],
)
def test_garbage_is_rejected_with_a_code(payload: bytes, code: str) -> None:
    with pytest.raises(FrameRejected) as info:
        process_frame(payload, LIMITS, 640, 480, 85)
    assert info.value.code == code
