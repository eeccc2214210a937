"""The demo's quality report (``harness.demo_metrics``) on real images (issue #16, part 4): a stream
whose output no longer shows the camera's scene (the whole frame generated at 64x64 and stretched)
must not be scored as a clean swap; ghosting is reported as not applicable, with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.demo_metrics import RESEMBLES_INPUT_MIN_DB, demo_quality, not_applicable
from runtime.media import encode_jpeg
from shared.headers import FrameMeta
from shared.schemas import Conditioning, Event

pytestmark = pytest.mark.unit
RED, BLUE = (0, 0, 255), (255, 0, 0)
COLOURS = {"tee-red": [RED], "shirt-blue": [BLUE]}
SWAP_AT = 2


@dataclass
class Out:
    meta: FrameMeta
    jpeg: bytes


def region(shape: tuple[int, ...]) -> np.ndarray:
    """A torso-sized garment region in the middle of the frame."""
    h, w = shape[:2]
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3 : h // 2, w // 3 : 2 * w // 3] = 255
    return mask


def stream(photo: np.ndarray, whole_frame_at: int = 0) -> tuple[list[Out], dict[int, Conditioning]]:
    """Six frames of ``photo``; the output paints the garment region red, then blue from frame
    ``SWAP_AT`` on. With ``whole_frame_at`` the whole output is squeezed to that size and
    stretched back, as the student did before it composited onto the camera frame."""
    h, w = photo.shape[:2]
    mask = region(photo.shape)
    png = cv2.imencode(".png", mask)[1].tobytes()
    person = np.zeros((h, w), np.uint8)
    person[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255  # the person holds the garment region
    person_png = cv2.imencode(".png", person)[1].tobytes()
    outputs, conds = [], {}
    for seq in range(6):
        garment = "tee-red" if seq < SWAP_AT else "shirt-blue"
        out = photo.copy()
        out[mask > 0] = COLOURS[garment][0]
        if whole_frame_at:
            small = cv2.resize(out, (whole_frame_at, whole_frame_at), interpolation=cv2.INTER_AREA)
            out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        outputs.append(Out(FrameMeta("s", seq, 1, w, h, garment_id=garment), encode_jpeg(out, 95)))
        conds[seq] = Conditioning(
            "s", seq, w, h, encode_jpeg(photo, 95), True, person_mask_png=person_png, garment_mask_png=png
        )
    return outputs, conds


def swap_applied() -> Event:
    data = {"event_id": "e1", "garment_id": "shirt-blue", "first_seq": SWAP_AT, "latency_ms": 9.0}
    return Event("swap_applied", "s", "generator", "swap_applied", "", 1, data)


def test_the_camera_scene_with_a_garment_drawn_resembles_its_input_and_is_measured(
    bus_photo: np.ndarray, tmp_path: Path
) -> None:
    outputs, conds = stream(bus_photo)
    sheet = tmp_path / "sheet.png"
    result = demo_quality(outputs, conds.get, [swap_applied()], COLOURS, str(sheet))
    assert result["psnr_outside_garment_db"] > 35  # JPEG re-encoding only
    assert result["resembles_input"] is True and result["metrics_not_applicable"] is None
    assert result["swaps_measured"] == 1 and result["ghost_ratio_2f"] == 0.0
    assert sheet.is_file()


def test_a_whole_frame_stretched_from_64x64_does_not_resemble_its_input_and_is_not_scored(
    bus_photo: np.ndarray, tmp_path: Path
) -> None:
    outputs, conds = stream(bus_photo, whole_frame_at=64)
    sheet = tmp_path / "sheet.png"
    result = demo_quality(outputs, conds.get, [swap_applied()], COLOURS, str(sheet))
    assert result["psnr_outside_garment_db"] < RESEMBLES_INPUT_MIN_DB
    assert result["resembles_input"] is False
    assert "does not resemble its input" in result["metrics_not_applicable"]
    assert result["ghost_ratio_2f"] is None and result["ghost_ratio_2f_mean"] is None
    assert result["swaps_measured"] == 0 and result["swap_details"] == []
    assert [u["reason"] for u in result["swaps_unmeasured"]] == [result["metrics_not_applicable"]]
    assert sheet.is_file(), "the sheet is how a reader sees what the output looks like"


def test_resembles_input_threshold_and_nothing_compared() -> None:
    assert not_applicable(RESEMBLES_INPUT_MIN_DB) is None
    assert not_applicable(RESEMBLES_INPUT_MIN_DB - 0.1) is not None
    assert not_applicable(None) is None  # nothing compared: no claim either way
    result = demo_quality([], lambda seq: None, [], COLOURS)
    assert result["psnr_outside_garment_db"] is None and result["resembles_input"] is None


def test_background_psnr_sees_the_scene_only(bus_photo: np.ndarray) -> None:
    """Repainting the person beyond the garment region (a sleeve to the wrist) costs PSNR outside
    the garment region but not outside the person; touching the scene costs both."""
    outputs, conds = stream(bus_photo)
    h, w = bus_photo.shape[:2]
    sleeve = [
        Out(o.meta, encode_jpeg(_paint(o.jpeg, (slice(h // 2, 2 * h // 3), slice(w // 3, w // 2))), 95))
        for o in outputs
    ]
    result = demo_quality(sleeve, conds.get, [], COLOURS)
    assert result["psnr_background_db"] > 35 > result["psnr_outside_garment_db"]
    scene = [Out(o.meta, encode_jpeg(_paint(o.jpeg, (slice(0, h // 8), slice(0, w))), 95)) for o in outputs]
    result = demo_quality(scene, conds.get, [], COLOURS)
    assert result["psnr_background_db"] < 30 and result["psnr_outside_garment_db"] < 30


def _paint(jpeg: bytes, where: tuple[slice, slice]) -> np.ndarray:
    frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    frame[where] = (0, 255, 0)
    return frame
