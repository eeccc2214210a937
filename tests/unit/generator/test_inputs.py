"""Conditioning message → ``FrameInput``: every malformed part is a ``SchemaError``, never a crash."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtime.media import encode_jpeg
from services.generator.inputs import frame_input
from shared.schemas import Conditioning, SchemaError, pack_array

pytestmark = pytest.mark.unit


def png(mask: np.ndarray) -> bytes:
    return cv2.imencode(".png", mask)[1].tobytes()


def cond(**overrides: object) -> Conditioning:
    frame = np.full((48, 64, 3), 90, np.uint8)
    fields: dict[str, object] = {
        "session_id": "s",
        "seq": 3,
        "width": 64,
        "height": 48,
        "frame_jpeg": encode_jpeg(frame, 90),
        "person_found": True,
        "landmarks": pack_array(np.random.default_rng(0).random((33, 4), dtype=np.float32)),
        "person_mask_png": png(np.full((48, 64), 255, np.uint8)),
        "garment_mask_png": png(np.zeros((24, 32), np.uint8)),  # half size: resized to the frame
    }
    fields.update(overrides)
    return Conditioning(**fields)  # type: ignore[arg-type]


def test_a_message_decodes_into_frame_landmarks_and_frame_sized_masks() -> None:
    inp = frame_input(cond())
    assert inp.seq == 3 and inp.frame_bgr.shape == (48, 64, 3)
    assert inp.landmarks is not None and inp.landmarks.shape == (33, 4) and inp.landmarks.dtype == np.float32
    assert inp.person_mask is not None and inp.person_mask.shape == (48, 64)
    assert inp.garment_mask is not None and inp.garment_mask.shape == (48, 64)


def test_no_person_means_no_landmarks_and_absent_masks_stay_absent() -> None:
    inp = frame_input(cond(person_found=False, person_mask_png=None, garment_mask_png=None))
    assert inp.landmarks is None and inp.person_mask is None and inp.garment_mask is None


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"frame_jpeg": b"not a jpeg"}, "frame_jpeg"),
        ({"person_mask_png": b"not a png"}, "person_mask_png"),
        ({"landmarks": pack_array(np.zeros((17, 4), np.float32))}, "landmarks"),
    ],
)
def test_malformed_parts_are_schema_errors(overrides: dict, match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        frame_input(cond(**overrides))
