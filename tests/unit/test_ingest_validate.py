"""Ingest validation and normalisation on real image bytes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtime.media import decode_jpeg, encode_jpeg, jpeg_dimensions
from services.ingest.validate import Limits, process_frame, session_box
from shared.errors import CodedError
from tools.samples import garbage_scan, with_sof_size

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
    with pytest.raises(CodedError) as info:
        process_frame(payload, LIMITS, 640, 480, 85)
    assert info.value.code == code


def test_jpeg_dimensions_reads_headers_of_complete_jpegs_only() -> None:
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    base = cv2.imencode(".jpg", img)[1].tobytes()
    progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    grey = cv2.imencode(".jpg", img[..., 0])[1].tobytes()
    for data in (base, progressive, grey, base + b"\0\0"):
        assert jpeg_dimensions(data) == (64, 48)
    for bad in (b"", b"\xff\xd8", base[:-50], base[:200] + base[-2:], b"\xff\xd8\xff" + b"\0" * 100):
        assert jpeg_dimensions(bad) is None
    png = cv2.imencode(".png", img)[1].tobytes()
    assert jpeg_dimensions(png) is None


def test_size_limits_apply_to_header_checked_jpegs() -> None:
    big = _jpeg(640, 480)
    with pytest.raises(CodedError) as exc:
        process_frame(big, Limits(10**7, 640 * 480 - 1, 16, 4.0), 640, 480, 85)
    assert exc.value.code == "frame_too_large"
    # A JPEG cut after its scan began is not passed through: it is decoded, and a truncated file
    # either decodes (libjpeg fills the rest) into a re-encoded frame or is rejected.
    cut = big[: len(big) // 2]
    try:
        out = process_frame(cut, LIMITS, 640, 480, 85)
    except CodedError as rejected:
        assert rejected.code == "bad_frame"
    else:
        assert out.jpeg != cut and jpeg_dimensions(out.jpeg) == (640, 480)


def test_a_jpeg_whose_data_does_not_match_its_header_is_a_bad_frame_without_stderr(capfd) -> None:
    """Issue #13: a header claiming 640x480 over 176x144 data, or over garbage, passed ingest's
    header-only check, and libjpeg printed a raw warning for it in every stage that decoded it."""
    lying = with_sof_size(_jpeg(176, 144), 640, 480)
    for payload in (lying, garbage_scan(_jpeg(640, 480))):
        assert jpeg_dimensions(payload) == (640, 480)  # structurally a complete 640x480 JPEG
        with pytest.raises(CodedError) as info:
            process_frame(payload, LIMITS, 640, 480, 85)  # fits the box: the fast path
        assert info.value.code == "bad_frame" and "corrupt image data" in info.value.message
        with pytest.raises(CodedError):
            process_frame(payload, LIMITS, 320, 240, 85)  # needs a resize: the full decode
    assert capfd.readouterr().err == ""


def test_a_jpeg_of_another_size_than_its_frame_headers_declare_is_a_bad_frame() -> None:
    data = _jpeg(640, 480)
    with pytest.raises(CodedError) as info:
        process_frame(data, LIMITS, 640, 480, 85, declared=(176, 144))
    assert info.value.code == "bad_frame" and "176x144" in info.value.message
    assert process_frame(data, LIMITS, 640, 480, 85, declared=(640, 480)).jpeg == data
    assert process_frame(data, LIMITS, 640, 480, 85, declared=(0, 0)).jpeg == data  # not declared


def test_a_session_box_is_capped() -> None:
    """Issue #13: a start asking for 4096x4096 made small frames 13 MP downstream."""
    assert session_box(4096, 4096, (1280, 720), 16) == (1280, 720)
    assert session_box(640, 480, (1280, 720), 16) == (640, 480)
    assert session_box(2, 2, (1280, 720), 16) == (16, 16)
    w, h = session_box(4096, 4096, (1280, 720), 16)
    assert (process_frame(_jpeg(176, 144), LIMITS, w, h, 85).height) == 720
