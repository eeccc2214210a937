"""Landmarks + masks → garment region, people count, status codes (synthetic)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.preprocess import conditioning as cond
from shared import body
from shared.body import LM

pytestmark = pytest.mark.unit

W, H = 640, 480
# an upright person facing the camera (their left is the image's right), in pixels
POSE_PX = {
    LM.NOSE: (320, 90),
    1: (326, 82),
    2: (330, 82),
    3: (334, 82),
    4: (314, 82),
    5: (310, 82),
    6: (306, 82),
    LM.LEFT_EAR: (342, 88),
    LM.RIGHT_EAR: (298, 88),
    LM.MOUTH_LEFT: (328, 108),
    LM.MOUTH_RIGHT: (312, 108),
    LM.LEFT_SHOULDER: (370, 160),
    LM.RIGHT_SHOULDER: (270, 160),
    LM.LEFT_ELBOW: (390, 240),
    LM.RIGHT_ELBOW: (250, 240),
    LM.LEFT_WRIST: (395, 310),
    LM.RIGHT_WRIST: (245, 310),
    17: (396, 325),
    18: (244, 325),
    19: (396, 325),
    20: (244, 325),
    21: (396, 325),
    22: (244, 325),
    LM.LEFT_HIP: (350, 310),
    LM.RIGHT_HIP: (290, 310),
    LM.LEFT_KNEE: (352, 390),
    LM.RIGHT_KNEE: (288, 390),
    LM.LEFT_ANKLE: (354, 465),
    LM.RIGHT_ANKLE: (286, 465),
    29: (354, 470),
    30: (286, 470),
    31: (360, 475),
    32: (280, 475),
}


def landmarks(dy: float = 0.0, visibility: float = 0.99) -> np.ndarray:
    lm = np.zeros((33, 4), np.float32)
    for i, (x, y) in POSE_PX.items():
        lm[i] = (x / W, (y + dy) / H, 0.0, visibility)
    return lm


def body_mask() -> np.ndarray:
    """A rough silhouette: head disc, torso, arms, legs."""
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (320, 95), 30, 255, -1)
    cv2.fillPoly(m, [np.array([(378, 150), (262, 150), (282, 320), (358, 320)], np.int32)], 255)
    for a, b in ((11, 13), (13, 15), (12, 14), (14, 16), (23, 25), (25, 27), (24, 26), (26, 28)):
        cv2.line(m, POSE_PX[a], POSE_PX[b], 255, 30)
    return m


def inside(mask: np.ndarray, xy: tuple[float, float]) -> bool:
    return bool(mask[int(xy[1]), int(xy[0])] > 0)


def test_top_covers_torso_and_upper_arms_not_head_forearms_or_legs() -> None:
    region = body.garment_region(landmarks(), W, H, "top", body_mask())
    assert region is not None and region.dtype == np.uint8 and set(np.unique(region)) <= {0, 255}
    for xy in ((320, 200), (320, 290), (300, 180), (345, 250), (380, 200), (260, 200)):
        assert inside(region, xy), xy
    for xy in (POSE_PX[LM.NOSE], (320, 115), (320, 70), (395, 300), (320, 420), (288, 400), (100, 100)):
        assert not inside(region, xy), xy


def test_region_stays_near_the_person_mask() -> None:
    mask = body_mask()
    region = body.garment_region(landmarks(), W, H, "top", mask)
    far = cv2.dilate(mask, np.ones((41, 41), np.uint8)) == 0
    assert not (region[far] > 0).any()
    free = body.garment_region(landmarks(), W, H, "top", None)
    assert free.sum() >= region.sum()


def test_dress_extends_to_the_knees_and_jacket_to_the_wrists() -> None:
    top = body.garment_region(landmarks(), W, H, "top", body_mask())
    dress = body.garment_region(landmarks(), W, H, "dress", body_mask())
    jacket = body.garment_region(landmarks(), W, H, "jacket", body_mask())
    assert inside(dress, (320, 380)) and not inside(top, (320, 380))  # between the legs, above knees
    assert inside(jacket, (393, 290)) and not inside(top, (393, 290))  # forearm
    assert not inside(dress, POSE_PX[LM.NOSE]) and not inside(jacket, POSE_PX[LM.NOSE])
    assert (top > 0).sum() < (dress > 0).sum() and (top > 0).sum() < (jacket > 0).sum()


def test_no_region_without_visible_shoulders_and_unknown_category_rejected() -> None:
    lm = landmarks()
    lm[LM.LEFT_SHOULDER, 3] = 0.1
    assert body.garment_region(lm, W, H, "top") is None
    assert body.garment_region(landmarks(dy=-400), W, H, "top") is None  # shoulders above the frame
    with pytest.raises(ValueError, match="category"):
        body.garment_region(landmarks(), W, H, "hat")


def test_upper_body_framing_extrapolates_hips_below_the_frame() -> None:
    lm = landmarks(dy=250)  # shoulders at y=410, hips far below the bottom edge
    region = body.garment_region(lm, W, H, "top")
    assert region is not None and inside(region, (320, 470))
    assert cond.assess(lm) == [cond.PARTIAL_PERSON]


def test_assess_codes() -> None:
    assert cond.assess(None) == [cond.NO_PERSON]
    assert cond.assess(landmarks()) == []
    lm = landmarks()
    lm[LM.RIGHT_SHOULDER, 3] = 0.0
    assert cond.assess(lm) == [cond.PARTIAL_PERSON, cond.NO_TORSO]


def test_masks_travel_as_small_bilevel_png() -> None:
    mask = body_mask()
    png = cond.encode_png(mask)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 4096
    back = cond.decode_png(png)
    assert back.shape == mask.shape and (back == mask).all()
    assert (cond.binary_mask(np.array([[0.2, 0.7]], np.float32)) == [[0, 255]]).all()


def test_people_counting() -> None:
    scene = np.zeros((H, W), np.uint8)
    cv2.rectangle(scene, (100, 100), (160, 400), 255, -1)  # tracked person
    cv2.rectangle(scene, (300, 150), (350, 400), 255, -1)  # somebody else
    cv2.rectangle(scene, (500, 100), (503, 103), 255, -1)  # speck
    assert cond.count_people(scene) == 2
    tracked = np.zeros_like(scene)
    cv2.rectangle(tracked, (100, 100), (160, 400), 255, -1)
    assert cond.count_other_people(scene, tracked) == 1
    # touching people are one component, but removing the tracked one reveals the other
    cv2.rectangle(scene, (160, 200), (300, 220), 255, -1)
    assert cond.count_people(scene) == 1
    assert cond.count_other_people(scene, tracked) == 1
    # a sliver the pose mask missed is part of the tracked person, not another one
    sliver = tracked.copy()
    cv2.rectangle(sliver, (160, 100), (175, 160), 255, -1)
    assert cond.count_other_people(sliver, tracked) == 0
