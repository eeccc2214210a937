"""Quality measures for landmark streams, shared by the tests and the benchmark. Pure.

Streams come from ``services.camera.source.MotionCamera``: a camera moving over a still photo with
a known photo→frame affine per frame, so the person's true motion in the frame is known exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from services.camera.source import Motion, MotionCamera

# shoulders, elbows, wrists, hips, knees, ankles: the points the garment region is built from
BODY_POINTS = (11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def noisy_still_frames(
    photo: np.ndarray, n: int, width: int = 640, height: int = 480, sigma: float = 4.0, seed: int = 0
) -> Iterator[np.ndarray]:
    """A static camera with sensor noise: the person does not move, only the pixels flicker."""
    base = MotionCamera(photo, width, height, Motion.still()).frame(0).astype(np.int16)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        noise = rng.normal(0.0, sigma, base.shape).astype(np.int16)
        yield np.clip(base + noise, 0, 255).astype(np.uint8)


def _px(lm: np.ndarray, width: int, height: int, idx: Sequence[int]) -> np.ndarray:
    return lm[list(idx), :2].astype(np.float64) * (width, height)


def jitter_px(
    stream: Sequence[np.ndarray | None], width: int, height: int, idx: Sequence[int] = BODY_POINTS
) -> float:
    """Mean frame-to-frame displacement of the landmarks, in pixels (NaN with < 2 detections)."""
    steps = []
    for a, b in itertools.pairwise(stream):
        if a is not None and b is not None:
            d = _px(b, width, height, idx) - _px(a, width, height, idx)
            steps.append(np.hypot(d[:, 0], d[:, 1]).mean())
    return float(np.mean(steps)) if steps else float("nan")


def detect_rate(stream: Sequence[np.ndarray | None]) -> float:
    return sum(lm is not None for lm in stream) / max(1, len(stream))


def follow_error_px(
    stream: Sequence[np.ndarray | None],
    transforms: Sequence[np.ndarray],
    width: int,
    height: int,
    idx: Sequence[int] = (11, 12, 23, 24),
) -> tuple[float, float]:
    """How well landmarks follow a known camera motion: (median error, median motion) in pixels.

    Each detection is mapped back into photo coordinates, where the person stands still; the
    median over the stream is the reference, mapped forward with each frame's transform. The
    error is detection minus reference per frame; the motion is how far the reference itself moves
    from its mean position (what a tracker that ignored the motion would get wrong).
    """
    photo_pts = []
    for lm, m in zip(stream, transforms, strict=True):
        if lm is None:
            photo_pts.append(None)
            continue
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
        p = _px(lm, width, height, idx)
        photo_pts.append(p @ inv[:, :2].T + inv[:, 2])
    found = [p for p in photo_pts if p is not None]
    if not found:
        return float("nan"), float("nan")
    ref = np.median(np.stack(found), axis=0)
    errors, expected = [], []
    for lm, m in zip(stream, transforms, strict=True):
        exp = ref @ m[:, :2].T + m[:, 2]
        expected.append(exp)
        if lm is not None:
            d = _px(lm, width, height, idx) - exp
            errors.append(np.hypot(d[:, 0], d[:, 1]).mean())
    expected_arr = np.stack(expected)
    motion = np.hypot(*(expected_arr - expected_arr.mean(axis=0)).transpose(2, 0, 1)).mean(axis=1)
    return float(np.median(errors)), float(np.median(motion))
