"""The body as the pipeline sees it: MediaPipe Pose landmark names and the regions computed from
them (head, garment region). Pure numpy + cv2.

Contract, not a service's internals: preprocess computes the garment region from these, and a
renderer needs the same head and region from the same landmarks, so both import them from here.
"""

from __future__ import annotations

from enum import IntEnum

import cv2
import numpy as np

GARMENT_CATEGORIES = ("top", "dress", "jacket")


def region_category(catalogue_category: str) -> str:
    """The body region a catalogue garment needs (``tee``, ``shirt``, ``top`` → ``top``): what
    preprocess publishes as ``garment_mask`` for a session wearing it."""
    return catalogue_category if catalogue_category in ("dress", "jacket") else "top"


class LM(IntEnum):
    """MediaPipe Pose landmark indices used here."""

    NOSE = 0
    LEFT_EAR = 7
    RIGHT_EAR = 8
    MOUTH_LEFT = 9
    MOUTH_RIGHT = 10
    LEFT_SHOULDER = 11
    RIGHT_SHOULDER = 12
    LEFT_ELBOW = 13
    RIGHT_ELBOW = 14
    LEFT_WRIST = 15
    RIGHT_WRIST = 16
    LEFT_HIP = 23
    RIGHT_HIP = 24
    LEFT_KNEE = 25
    RIGHT_KNEE = 26
    LEFT_ANKLE = 27
    RIGHT_ANKLE = 28


TORSO = (LM.LEFT_SHOULDER, LM.RIGHT_SHOULDER, LM.LEFT_HIP, LM.RIGHT_HIP)


def visible(landmarks: np.ndarray, idx: int, threshold: float, margin: float = 0.0) -> bool:
    """Landmark seen with enough confidence and inside the frame (± ``margin``, normalised)."""
    x, y, _, vis = landmarks[idx]
    return bool(vis >= threshold and -margin <= x <= 1 + margin and -margin <= y <= 1 + margin)


def _capsule(mask: np.ndarray, a: np.ndarray, b: np.ndarray, thickness: float) -> None:
    t = max(1, round(thickness))
    cv2.line(mask, _pt(a), _pt(b), 255, t, lineType=cv2.LINE_8)
    cv2.circle(mask, _pt(a), t // 2, 255, -1)
    cv2.circle(mask, _pt(b), t // 2, 255, -1)


def _pt(p: np.ndarray) -> tuple[int, int]:
    # clamp far-off extrapolated points so cv2's int conversion never overflows
    return int(np.clip(p[0], -1e5, 1e5)), int(np.clip(p[1], -1e5, 1e5))


def _poly(mask: np.ndarray, pts: list[np.ndarray]) -> None:
    arr = np.clip(np.array(pts, dtype=np.float64), -1e5, 1e5).round().astype(np.int32)
    cv2.fillPoly(mask, [arr], 255)


def _out(p: np.ndarray, centre: np.ndarray, dist: float) -> np.ndarray:
    """``p`` pushed ``dist`` pixels away from ``centre``."""
    d = p - centre
    n = float(np.hypot(*d))
    return p if n < 1e-6 else p + d / n * dist


def head_mask(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """An ellipse over the head (face, hair, ears), from the face landmarks."""
    px = landmarks[:, :2].astype(np.float64) * (width, height)
    mask = np.zeros((height, width), np.uint8)
    face = px[: LM.MOUTH_RIGHT + 1]
    ears = float(np.hypot(*(px[LM.LEFT_EAR] - px[LM.RIGHT_EAR])))
    shoulders = float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER])))
    size = max(ears, 0.45 * shoulders, 4.0)
    centre = face.mean(axis=0)
    mouth = (px[LM.MOUTH_LEFT] + px[LM.MOUTH_RIGHT]) / 2
    down = mouth - px[LM.NOSE]
    angle = float(np.degrees(np.arctan2(down[0], down[1]))) * -1 if np.hypot(*down) > 1e-6 else 0.0
    axes = (int(size * 0.75), int(size * 1.0))
    cv2.ellipse(mask, _pt(centre), axes, angle, 0, 360, 255, -1)
    # the chin sits about one nose-to-mouth distance below the mouth; cover it
    cv2.circle(mask, _pt(mouth + down * 1.2), int(size * 0.35), 255, -1)
    return mask


def garment_region(
    landmarks: np.ndarray,
    width: int,
    height: int,
    category: str = "top",
    person_mask: np.ndarray | None = None,
    threshold: float = 0.5,
) -> np.ndarray | None:
    """Where a garment of ``category`` may be drawn: uint8 HxW (0/255), None without shoulders.

    ``top``: torso from shoulders to just below the hips, and the upper arms to the elbows.
    ``jacket``: the torso a little longer and the whole arms down to the wrists.
    ``dress``: the top, plus a skirt flaring from the hips to below the knees.
    The body shape is kept within the dilated ``person_mask`` (when given) so background stays
    out; a dress's skirt is not (the space between the legs belongs to it). The head is removed.
    """
    if category not in GARMENT_CATEGORIES:
        raise ValueError(f"unknown garment category {category!r}; one of {GARMENT_CATEGORIES}")
    if not all(visible(landmarks, i, threshold, 0.1) for i in (LM.LEFT_SHOULDER, LM.RIGHT_SHOULDER)):
        return None
    px = landmarks[:, :2].astype(np.float64) * (width, height)
    ls, rs, lh, rh = (px[i] for i in TORSO)
    mid_s, mid_h = (ls + rs) / 2, (lh + rh) / 2
    shoulder_w = float(np.hypot(*(ls - rs)))
    torso_len = float(np.hypot(*(mid_h - mid_s)))
    s = max(shoulder_w, 0.5 * torso_len, 4.0)  # body scale in pixels
    down = (mid_h - mid_s) / torso_len if torso_len > 1e-6 else np.array([0.0, 1.0])

    body = np.zeros((height, width), np.uint8)
    hem = 0.25 if category == "jacket" else 0.08  # how far below the hip line the garment ends
    top_ls = _out(ls, mid_s, 0.12 * s) - down * 0.12 * s
    top_rs = _out(rs, mid_s, 0.12 * s) - down * 0.12 * s
    neck = mid_s - down * 0.15 * s
    bot_lh = _out(lh, mid_h, 0.12 * s) + down * hem * torso_len
    bot_rh = _out(rh, mid_h, 0.12 * s) + down * hem * torso_len
    _poly(body, [neck, top_ls, bot_lh, bot_rh, top_rs])
    arm = 0.34 * s
    for sh, el, wr in (
        (ls, px[LM.LEFT_ELBOW], px[LM.LEFT_WRIST]),
        (rs, px[LM.RIGHT_ELBOW], px[LM.RIGHT_WRIST]),
    ):
        _capsule(body, sh, el, arm)
        if category == "jacket":
            _capsule(body, el, wr, arm * 0.85)

    if person_mask is not None:
        k = max(3, int(0.12 * s) | 1)
        near = cv2.dilate(person_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        body &= near

    if category == "dress":
        lk, rk = px[LM.LEFT_KNEE], px[LM.RIGHT_KNEE]
        mid_k = (lk + rk) / 2
        leg = float(np.hypot(*(mid_k - mid_h))) or torso_len
        skirt = np.zeros_like(body)
        flare = 0.25 * s
        hem_l = _out(lk, mid_k, flare) + down * 0.2 * leg
        hem_r = _out(rk, mid_k, flare) + down * 0.2 * leg
        _poly(skirt, [_out(lh, mid_h, 0.12 * s), hem_l, hem_r, _out(rh, mid_h, 0.12 * s)])
        body |= skirt

    body[head_mask(landmarks, width, height) > 0] = 0
    return body
