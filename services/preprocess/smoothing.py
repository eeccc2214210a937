"""One Euro filter for landmark streams. Pure: no bus, no asyncio.

Casiez, Roussel, Vogel, "1€ Filter: A Simple Speed-based Low-pass Filter for Noisy Input in
Interactive Systems" (CHI 2012). The cutoff frequency rises with the signal's speed: a still
person gets a heavy low-pass (no jitter), a fast one almost none (no lag). Timestamps are real
capture times, so irregular frame intervals (dropped frames) are handled correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroParams:
    min_cutoff_hz: float = 0.5  # cutoff at zero speed: lower = steadier still poses
    beta: float = 0.14  # cutoff growth per unit/s of speed: higher = less lag when moving
    d_cutoff_hz: float = 1.0  # cutoff of the speed estimate itself
    max_gap_s: float = 1.0  # a longer gap between samples restarts the filter

    def __post_init__(self) -> None:
        if self.min_cutoff_hz <= 0 or self.d_cutoff_hz <= 0 or self.beta < 0 or self.max_gap_s <= 0:
            raise ValueError(f"invalid One Euro parameters {self}")


def _alpha(cutoff_hz: np.ndarray | float, dt_s: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class OneEuroFilter:
    """Element-wise One Euro filter over arrays of a fixed shape (e.g. 33 landmarks x 3 coords).

    ``__call__(x, t_s)`` returns the filtered array. A sample with a non-increasing timestamp or
    after a gap longer than ``max_gap_s`` restarts the filter (returns ``x`` unchanged).
    """

    def __init__(self, params: OneEuroParams | None = None) -> None:
        self.params = params or OneEuroParams()
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    @property
    def primed(self) -> bool:
        return self._x is not None

    def __call__(self, x: np.ndarray, t_s: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        p = self.params
        if (
            self._x is None
            or self._t is None
            or self._x.shape != x.shape
            or t_s <= self._t
            or t_s - self._t > p.max_gap_s
        ):
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t_s
            return x.copy()
        dt = t_s - self._t
        dx = (x - self._x) / dt
        a_d = _alpha(p.d_cutoff_hz, dt)
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        cutoff = p.min_cutoff_hz + p.beta * np.abs(self._dx)
        a = _alpha(cutoff, dt)
        self._x = a * x + (1.0 - a) * self._x
        self._t = t_s
        return self._x.copy()


class LandmarkSmoother:
    """Smooths (N, 4) landmarks ``(x, y, z, visibility)`` in normalised coordinates.

    x and y are filtered in pixels (so ``beta`` means the same at any resolution), z in the same
    scale as x (MediaPipe's convention), visibility is passed through. ``None`` (no person)
    restarts the filter so a re-detected person is never blended with where the last one was.
    """

    def __init__(self, params: OneEuroParams | None = None) -> None:
        self._filter = OneEuroFilter(params)
        self._size: tuple[int, int] | None = None

    def reset(self) -> None:
        self._filter.reset()

    def __call__(
        self, landmarks: np.ndarray | None, t_s: float, width: int, height: int
    ) -> np.ndarray | None:
        if landmarks is None:
            self._filter.reset()
            return None
        if self._size != (width, height):
            self._filter.reset()
            self._size = (width, height)
        scale = np.array([width, height, width], dtype=np.float64)
        xyz = self._filter(landmarks[:, :3].astype(np.float64) * scale, t_s) / scale
        out = landmarks.astype(np.float32, copy=True)
        out[:, :3] = xyz
        return out
