"""Helpers for the warp tests (imported by name, like the engine's testkit)."""

from __future__ import annotations

import cv2
import numpy as np

from services.generator.rendering import FrameInput
from services.generator.warp import region
from shared.body import LM


def inner_torso(frame: FrameInput, shrink: float = 0.8) -> np.ndarray:
    """bool HxW: the shoulder-hip quadrilateral shrunk towards its centre, inside the person."""
    h, w = frame.frame_bgr.shape[:2]
    px = frame.landmarks[:, :2] * (w, h)
    quad = px[[LM.LEFT_SHOULDER, LM.RIGHT_SHOULDER, LM.RIGHT_HIP, LM.LEFT_HIP]]
    inner = quad.mean(axis=0) + shrink * (quad - quad.mean(axis=0))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [inner.round().astype(np.int32)], 1)
    return (mask > 0) & (frame.person_mask > 0)


def synthetic_body(h: int = 240, w: int = 200) -> region.Body:
    """A front-facing body in a 200x240 ROI, hands at the hips: for the region rules on drawn
    masks."""
    px = np.zeros((33, 2))
    px[LM.LEFT_SHOULDER], px[LM.RIGHT_SHOULDER] = (140, 60), (60, 60)
    px[LM.LEFT_HIP], px[LM.RIGHT_HIP] = (130, 180), (70, 180)
    px[[15, 17, 19, 21]] = [(150, 150), (155, 165), (150, 168), (145, 165)]  # image-right hand
    px[[16, 18, 20, 22]] = [(50, 150), (45, 165), (50, 168), (55, 165)]  # image-left hand
    return region.body_in_roi(px)
