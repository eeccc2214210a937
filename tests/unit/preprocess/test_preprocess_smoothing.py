"""One Euro filter on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from services.preprocess.smoothing import LandmarkSmoother, OneEuroFilter, OneEuroParams

pytestmark = pytest.mark.unit

FPS = 30.0


def _run(f: OneEuroFilter, xs: np.ndarray) -> np.ndarray:
    return np.array([f(x, i / FPS) for i, x in enumerate(xs)])


def test_still_signal_jitter_is_cut_at_least_in_half() -> None:
    rng = np.random.default_rng(1)
    noisy = 100.0 + rng.normal(0, 1.0, (300, 33, 3))
    out = _run(OneEuroFilter(), noisy)
    raw_jitter = np.abs(np.diff(noisy[30:], axis=0)).mean()
    smooth_jitter = np.abs(np.diff(out[30:], axis=0)).mean()
    assert smooth_jitter <= 0.5 * raw_jitter


def test_fast_motion_has_little_lag() -> None:
    t = np.arange(120) / FPS
    ramp = (600.0 * t)[:, None]  # 600 px/s, 20 px per frame
    out = _run(OneEuroFilter(), ramp)
    lag = np.abs(out[30:] - ramp[30:]).max()
    assert lag < 0.25 * 20.0  # under a quarter of one frame's motion
    slow = _run(OneEuroFilter(OneEuroParams(beta=0.0)), ramp)
    assert np.abs(slow[30:] - ramp[30:]).max() > 4 * lag  # the speed term is what removes the lag


def test_restarts_on_gap_backwards_time_and_shape_change() -> None:
    f = OneEuroFilter(OneEuroParams(max_gap_s=0.5))
    f(np.zeros(3), 0.0)
    f(np.zeros(3), 0.033)
    assert np.allclose(f(np.full(3, 50.0), 2.0), 50.0)  # gap: no blending with the old value
    assert np.allclose(f(np.full(3, 7.0), 1.0), 7.0)  # time went backwards
    assert np.allclose(f(np.full(4, 3.0), 1.1), 3.0)  # another shape
    f.reset()
    assert not f.primed


def test_invalid_parameters_rejected() -> None:
    with pytest.raises(ValueError):
        OneEuroParams(min_cutoff_hz=0)
    with pytest.raises(ValueError):
        OneEuroParams(beta=-1)


def test_landmark_smoother_filters_xyz_passes_visibility_and_resets_on_loss() -> None:
    s = LandmarkSmoother()
    lm = np.zeros((33, 4), np.float32)
    lm[:, :2] = 0.5
    lm[:, 3] = 0.9
    s(lm, 0.0, 640, 480)
    moved = lm.copy()
    moved[:, 0] += 0.001  # sub-pixel jitter
    moved[:, 3] = 0.3
    out = s(moved, 1 / FPS, 640, 480)
    assert out is not None and out.dtype == np.float32 and out.shape == (33, 4)
    assert 0.5 < out[0, 0] < 0.5005  # pulled towards the previous position
    assert np.allclose(out[:, 3], 0.3)  # visibility is not smoothed
    assert s(None, 2 / FPS, 640, 480) is None
    far = lm.copy()
    far[:, 0] = 0.9
    out = s(far, 3 / FPS, 640, 480)
    assert np.allclose(out[:, 0], 0.9)  # a re-found person starts fresh
