"""Landmarks + masks → generator-ready conditioning. Pure: no bus, no asyncio.

The garment region is where the generator may draw the new garment: a body-shaped area built from
the landmarks (torso polygon + limb capsules, sized by the shoulder width), kept near the person
(intersected with the dilated person mask), minus the head.
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.body import LM, visible

# status codes that go into ``Conditioning.note`` (comma-separated) and into status events
NO_PERSON = "no_person"
PARTIAL_PERSON = "partial_person"
NO_TORSO = "no_torso"
SEVERAL_PEOPLE = "several_people"


# -- masks ----------------------------------------------------------------------------------------
def binary_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probability map → uint8 mask (0 / 255)."""
    return np.where(prob > threshold, np.uint8(255), np.uint8(0))


def _components(mask: np.ndarray, min_area_px: float) -> int:
    _, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return int(np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area_px))


def count_people(mask: np.ndarray, min_area_frac: float = 0.004) -> int:
    """Connected components of a person mask at least ``min_area_frac`` of the frame."""
    return _components(mask, min_area_frac * mask.shape[0] * mask.shape[1])


def count_other_people(
    scene_mask: np.ndarray,
    person_mask: np.ndarray | None,
    min_area_frac: float = 0.004,
    min_ratio: float = 0.2,
) -> int:
    """People in a full-frame mask besides the tracked person.

    Touching people merge into one component of the scene mask, so the tracked person (dilated, to
    swallow edge slivers) is removed first and what remains is counted after a small opening. A
    remainder smaller than ``min_ratio`` of the tracked person is a piece of that person the pose
    mask missed (a stretched arm, loose clothes), not somebody else.
    """
    h, w = scene_mask.shape[:2]
    rest = scene_mask > 0
    if person_mask is not None:
        k = max(3, (min(h, w) // 40) | 1)
        grown = cv2.dilate(person_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        rest &= grown == 0
    rest_u8 = rest.astype(np.uint8)
    k = max(3, (min(h, w) // 100) | 1)
    rest_u8 = cv2.morphologyEx(rest_u8, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    min_area = min_area_frac * h * w
    if person_mask is not None:
        min_area = max(min_area, min_ratio * cv2.countNonZero(person_mask))
    return _components(rest_u8, min_area)


def encode_png(mask: np.ndarray) -> bytes:
    """A 0/255 uint8 mask → 1-bit greyscale PNG (any decoder reads it back as 0/255 greyscale).

    Bilevel packs 8 pixels per byte before zlib: about 1 KB and 0.7 ms at 640x480, against 4 ms
    for an 8-bit PNG of the same mask.
    """
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError("not a PNG mask")
    return img


# -- landmarks ------------------------------------------------------------------------------------
def assess(landmarks: np.ndarray | None, threshold: float = 0.5) -> list[str]:
    """Status codes for one pose: [] when the whole torso is seen."""
    if landmarks is None:
        return [NO_PERSON]
    shoulders = all(visible(landmarks, i, threshold, 0.02) for i in (LM.LEFT_SHOULDER, LM.RIGHT_SHOULDER))
    if not shoulders:
        return [PARTIAL_PERSON, NO_TORSO]
    hips = all(visible(landmarks, i, threshold, 0.02) for i in (LM.LEFT_HIP, LM.RIGHT_HIP))
    return [] if hips else [PARTIAL_PERSON]
