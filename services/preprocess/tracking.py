"""Landmarks between pose runs: carried by sparse optical flow, and how often pose must run.
Pure: no bus, no asyncio.

MediaPipe's pose graph is most of a session's CPU (docs/benchmarks.md, "Capacity and cost"), and
a shopper in front of a webcam moves a few pixels a frame. So pose runs every k-th frame; on the
frames between, the previous frame's smoothed landmarks are followed into the new frame by
pyramidal Lucas-Kanade on a grey copy (Bouguet's pyramidal LK, as in OpenCV), checked forward and
back: a point whose round trip misses by more than ``max_fb_error_px`` is not trusted. Points that
cannot be followed (off the frame, not visible) move with the similarity transform fitted to those
that can. Pose runs on this very frame instead when flow cannot vouch for the result: too few
points followed, a visible garment point (shoulder, elbow, wrist, hip) lost, or the body bending
(a garment point more than ``max_bend_px`` away from where the similarity since the last pose run
puts it: an arm rising; the person mask, moved by that similarity, would not follow it).

k follows the measured motion (``Cadence``): landmarks may travel about ``travel_px`` between two
pose runs, so a still shopper gets pose every ``max_interval`` frames and fast motion every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

N_LANDMARKS = 33
# the points a speed is measured on: shoulders, elbows, wrists, hips (what the garment follows)
SPEED_POINTS = (11, 12, 13, 14, 15, 16, 23, 24)


@dataclass(frozen=True)
class CadenceConfig:
    max_interval: int = 6  # pose at least every N frames; 1: on every frame (no flow at all)
    travel_px: float = 8.0  # landmarks may travel about this far (frame pixels) between pose runs
    fast_px: float = 4.0  # at or above this speed (pixels per frame) pose runs on every frame
    min_points: int = 8  # fewer landmarks followed than this: pose runs on this frame
    max_fb_error_px: float = 1.0  # forward-backward error (flow pixels) above which a point is lost
    max_fit_error_px: float = 3.0  # median distance of followed points from the fitted similarity
    max_bend_px: float = 3.0  # a garment point this far off the body's similarity since the last pose
    flow_side: int = 320  # LK runs on a grey copy shrunk to this long side; 0: full size
    window: int = 15  # LK window (flow pixels)
    levels: int = 2  # LK pyramid levels above the base
    speed_weight: float = 0.5  # weight of the newest speed sample in the running estimate

    def __post_init__(self) -> None:
        if self.max_interval < 1 or self.travel_px <= 0 or self.fast_px <= 0 or self.min_points < 3:
            raise ValueError(f"invalid cadence {self}")
        if not 0 < self.speed_weight <= 1:
            raise ValueError("speed_weight must be within (0, 1]")


class Cadence:
    """How many frames may pass between pose runs, from the landmarks' measured speed."""

    def __init__(self, config: CadenceConfig) -> None:
        self.config = config
        self.speed_px: float | None = None  # running estimate, pixels per frame; None: unknown
        self.since_pose = 0  # frames carried by flow since the last pose run

    def reset(self) -> None:
        self.speed_px = None
        self.since_pose = 0

    def observe(self, speed_px: float) -> None:
        if not math.isfinite(speed_px):
            return
        w = self.config.speed_weight
        self.speed_px = speed_px if self.speed_px is None else w * speed_px + (1 - w) * self.speed_px

    @property
    def interval(self) -> int:
        """Frames from one pose run to the next: 1 while the speed is unknown or fast."""
        c = self.config
        if self.speed_px is None or self.speed_px >= c.fast_px:
            return 1
        return max(1, min(c.max_interval, int(c.travel_px / max(self.speed_px, 1e-3))))

    def pose_due(self) -> bool:
        return self.since_pose + 1 >= self.interval

    def ran_pose(self) -> None:
        self.since_pose = 0

    def carried(self) -> None:
        self.since_pose += 1


def speed_px(before: np.ndarray, after: np.ndarray, width: int, height: int, frames: int = 1) -> float:
    """Median travel per frame of the garment's points between two landmark sets (pixels)."""
    idx = list(SPEED_POINTS)
    d = (after[idx, :2] - before[idx, :2]).astype(np.float64) * (width, height)
    return float(np.median(np.hypot(d[:, 0], d[:, 1]))) / max(1, frames)


@dataclass
class Carried:
    """A frame's landmarks moved from the previous frame: ``landmarks`` (33, 4) normalised like
    MediaPipe's, ``followed`` how many were followed by flow, ``speed_px`` their median travel."""

    landmarks: np.ndarray
    followed: int
    speed_px: float


class FlowTracker:
    """Follows landmarks from one frame to the next (one stream: never share an instance)."""

    def __init__(self, config: CadenceConfig) -> None:
        self.config = config
        self._prev: np.ndarray | None = None  # grey copy of the previous frame, flow size
        self._size: tuple[int, int] | None = None  # (width, height) of the frames

    def reset(self) -> None:
        self._prev = None
        self._size = None

    def flow_size(self, width: int, height: int) -> tuple[int, int]:
        """The size flow works at for frames of ``width`` x ``height``: shrunk to ``flow_side``."""
        side = self.config.flow_side
        if side and max(width, height) > side:
            f = side / max(width, height)
            return max(1, round(width * f)), max(1, round(height * f))
        return width, height

    def grey(self, frame_bgr: np.ndarray) -> np.ndarray:
        """A colour frame as flow sees it: grey, at ``flow_size``."""
        h, w = frame_bgr.shape[:2]
        size = self.flow_size(w, h)
        if size != (w, h):
            frame_bgr = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)

    def remember(self, grey: np.ndarray, size: tuple[int, int]) -> None:
        """Keep this frame (grey at ``flow_size``; ``size`` the frame's) for the next ``carry``."""
        self._prev, self._size = grey, size

    def carry(
        self, grey: np.ndarray, size: tuple[int, int], landmarks: np.ndarray, threshold: float
    ) -> Carried | None:
        """``landmarks`` (the previous frame's, normalised) moved into this frame, ``grey`` (at
        ``flow_size``; ``size`` the frame's (width, height)); None when they cannot be followed
        well enough (then pose must run on this frame). The frame is remembered either way."""
        c = self.config
        w = size[0]
        prev, prev_size = self._prev, self._size
        self._prev, self._size = grey, size
        if prev is None or prev_size != size or prev.shape != grey.shape:
            return None
        gh, gw = grey.shape[:2]
        pts = landmarks[:, :2].astype(np.float64) * (gw, gh)
        seen = (
            (landmarks[:, 3] >= threshold)
            & (pts[:, 0] >= 0)
            & (pts[:, 0] < gw)
            & (pts[:, 1] >= 0)
            & (pts[:, 1] < gh)
        )
        if int(seen.sum()) < c.min_points:
            return None
        p0 = pts[seen].astype(np.float32).reshape(-1, 1, 2)
        lk = {"winSize": (c.window, c.window), "maxLevel": c.levels}
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, grey, p0, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(grey, prev, p1, None, **lk)
        fb = np.hypot(*(back - p0).reshape(-1, 2).T)
        good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb <= c.max_fb_error_px)
        if int(good.sum()) < c.min_points:
            return None
        lost = np.zeros(N_LANDMARKS, bool)
        lost[np.flatnonzero(seen)[~good]] = True
        if lost[list(SPEED_POINTS)].any():
            return None  # a garment point flow cannot vouch for
        src, dst = p0.reshape(-1, 2)[good], p1.reshape(-1, 2)[good]
        sim, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
        if sim is None:
            return None
        fitted = src @ sim[:, :2].T + sim[:, 2]
        if float(np.median(np.hypot(*(fitted - dst).T))) > c.max_fit_error_px:
            return None  # the followed points disagree: not one body moving, ask MediaPipe
        moved = pts @ sim[:, :2].T + sim[:, 2]  # every point moves with the body...
        idx = np.flatnonzero(seen)[good]
        moved[idx] = dst  # ...and the followed ones where flow found them
        out = landmarks.astype(np.float32, copy=True)
        out[:, :2] = moved / (gw, gh)
        travel = np.hypot(*(dst - src).T) * (w / gw)
        return Carried(out, int(good.sum()), float(np.median(travel)))


def bend_px(
    before: np.ndarray, after: np.ndarray, sim: np.ndarray, width: int, height: int, threshold: float
) -> float:
    """How far the visible garment points of ``after`` are from ``before`` moved by ``sim`` (the
    body's similarity), in frame pixels, at most: the part of the motion no similarity explains."""
    idx = [i for i in SPEED_POINTS if before[i, 3] >= threshold and after[i, 3] >= threshold]
    if not idx:
        return 0.0
    src = before[idx, :2].astype(np.float64) * (width, height)
    dst = after[idx, :2].astype(np.float64) * (width, height)
    d = src @ sim[:, :2].T + sim[:, 2] - dst
    return float(np.hypot(d[:, 0], d[:, 1]).max())


def similarity(
    before: np.ndarray, after: np.ndarray, width: int, height: int, threshold: float
) -> np.ndarray | None:
    """The 2x3 similarity (rotation, uniform scale, shift; frame pixels) that takes the visible
    landmarks ``before`` to ``after``; None when too few are visible in both."""
    seen = (before[:, 3] >= threshold) & (after[:, 3] >= threshold)
    if int(seen.sum()) < 3:
        return None
    src = before[seen, :2].astype(np.float64) * (width, height)
    dst = after[seen, :2].astype(np.float64) * (width, height)
    sim, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    return sim
