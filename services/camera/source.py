"""Frame sources for the camera client: a video file, a webcam, or a moving camera over a still
photo. The moving camera gives tests a moving real person with a KNOWN transform per frame.
Pure: no bus, no asyncio."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Motion:
    """Smooth camera motion over a still photo (amplitudes; periods in frames)."""

    pan_px: float = 24.0
    zoom: float = 0.10
    rotate_deg: float = 3.0
    brightness: float = 0.08
    period: float = 90.0

    @staticmethod
    def still() -> Motion:
        return Motion(pan_px=0.0, zoom=0.0, rotate_deg=0.0, brightness=0.0)


class MotionCamera:
    """Renders frame ``i`` as the photo seen through a smoothly moving camera.

    ``transform(i)`` is the 2x3 affine matrix from photo pixels to frame pixels, so a test can map
    ground truth (or detected landmarks) between the two.
    """

    def __init__(
        self, photo: np.ndarray, width: int = 640, height: int = 480, motion: Motion | None = None
    ) -> None:
        self.photo = photo
        self.width = width
        self.height = height
        self.motion = motion or Motion()
        ph, pw = photo.shape[:2]
        self._base_scale = min(width / pw, height / ph)
        self._backdrop = _backdrop(photo, width, height)

    def transform(self, i: int) -> np.ndarray:
        m = self.motion
        phase = 2 * math.pi * i / m.period
        zoom = 1.0 + m.zoom * 0.5 * (1 - math.cos(phase))
        angle = m.rotate_deg * math.sin(phase * 0.7)
        dx = m.pan_px * math.sin(phase)
        dy = 0.5 * m.pan_px * math.sin(phase * 1.3)
        ph, pw = self.photo.shape[:2]
        s = self._base_scale * zoom
        rot = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, s)
        rot[0, 2] += self.width / 2 - pw / 2 + dx
        rot[1, 2] += self.height / 2 - ph / 2 + dy
        return rot

    def frame(self, i: int) -> np.ndarray:
        """The photo as the camera sees it at frame ``i``. Where the photo does not reach (its
        aspect differs from the frame's), a blurred, darkened backdrop fills in: mirrored borders
        would duplicate the person, and a hard black edge is not what a camera sees."""
        m, size = self.transform(i), (self.width, self.height)
        out = self._backdrop.copy()
        cv2.warpAffine(
            self.photo, m, size, dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT
        )
        gain = 1.0 + self.motion.brightness * math.sin(2 * math.pi * i / (self.motion.period * 1.7))
        if gain != 1.0:
            out = cv2.convertScaleAbs(out, alpha=gain, beta=0)
        return out

    def frames(self, n: int | None = None) -> Iterator[np.ndarray]:
        i = 0
        while n is None or i < n:
            yield self.frame(i)
            i += 1


def _backdrop(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo scaled to cover the frame, blurred beyond recognition and darkened."""
    ph, pw = photo.shape[:2]
    s = max(width / pw, height / ph)
    big = cv2.resize(
        photo, (max(width, round(pw * s)), max(height, round(ph * s))), interpolation=cv2.INTER_AREA
    )
    y0, x0 = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
    crop = big[y0 : y0 + height, x0 : x0 + width]
    small = cv2.resize(crop, (max(1, width // 16), max(1, height // 16)), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR), (0, 0), 9)
    return (blurred.astype(np.float32) * 0.55).astype(np.uint8)


class SourceError(ValueError):
    """A frame source that cannot be opened: a missing or unreadable video, no such webcam."""


def _opened(cap: cv2.VideoCapture, what: str) -> cv2.VideoCapture:
    if not cap.isOpened():
        cap.release()
        raise SourceError(what)
    return cap


def video_frames(path: str, loop: bool = False) -> Iterator[np.ndarray]:
    """Frames of a video file (optionally looping). The file is opened here, not at the first
    frame, so a missing one is a ``SourceError`` before anything connects."""
    first = _opened(cv2.VideoCapture(path), f"cannot open video {path}")

    def frames() -> Iterator[np.ndarray]:
        cap = first
        while True:
            got = False
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                got = True
                yield frame
            cap.release()
            if not loop or not got:
                return
            cap = _opened(cv2.VideoCapture(path), f"cannot open video {path}")

    return frames()


def webcam_frames(index: int) -> Iterator[np.ndarray]:
    """Frames of webcam ``index``, opened here: no such camera is a ``SourceError`` at once."""
    previous = cv2.setLogLevel(0)  # silent: OpenCV's own lines about a missing device
    try:
        cap = _opened(cv2.VideoCapture(index), f"cannot open webcam {index} (is a camera connected?)")
    finally:
        cv2.setLogLevel(previous)

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield frame
        finally:
            cap.release()

    return frames()
