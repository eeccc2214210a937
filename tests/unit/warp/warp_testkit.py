"""Helpers for the warp tests (imported by name, like the engine's testkit)."""

from __future__ import annotations

import cv2
import numpy as np

from services.generator.rendering import FrameInput
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
