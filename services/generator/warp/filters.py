"""Image filters the renderer's layers share. Pure cv2."""

from __future__ import annotations

import cv2
import numpy as np

MAX_SIGMA = 3.0  # px: a wider Gaussian runs on a smaller copy


def gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``sigma`` pixels whose cost does not grow with ``sigma``: a wide one
    (a neighbourhood's mean colour on a close-up, tens of pixels) runs on a copy shrunk until it
    is at most ``MAX_SIGMA`` there, and comes back to size bilinearly. What it feeds is smooth at
    that scale anyway, and a 130-pixel kernel was a millisecond or more per call."""
    h, w = img.shape[:2]
    d = int(sigma // MAX_SIGMA)
    if d < 2 or min(h, w) < 4 * d:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    small = cv2.resize(img, (max(1, w // d), max(1, h // d)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / d)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
