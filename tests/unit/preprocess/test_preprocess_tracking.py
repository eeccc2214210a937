"""Landmarks carried by optical flow between pose runs, and the cadence of pose runs (synthetic
frames with a known motion; the real-photo streams are in test_preprocess_mediapipe)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.preprocess.tracking import (
    SPEED_POINTS,
    Cadence,
    CadenceConfig,
    FlowTracker,
    bend_px,
    similarity,
    speed_px,
)

pytestmark = pytest.mark.unit

W, H = 640, 480


def texture(seed: int = 0) -> np.ndarray:
    """A frame with detail everywhere, so every point has something for flow to follow."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((H, W)).astype(np.float32), (0, 0), 2.0)
    grey = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def shifted(frame: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(frame, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def remember(flow: FlowTracker, frame: np.ndarray) -> None:
    flow.remember(flow.grey(frame), (frame.shape[1], frame.shape[0]))


def carry(flow: FlowTracker, frame: np.ndarray, lm: np.ndarray):  # type: ignore[no-untyped-def]
    return flow.carry(flow.grey(frame), (frame.shape[1], frame.shape[0]), lm, threshold=0.5)


def landmarks(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lm = np.zeros((33, 4), np.float32)
    lm[:, 0] = rng.uniform(0.2, 0.8, 33)
    lm[:, 1] = rng.uniform(0.2, 0.8, 33)
    lm[:, 3] = 1.0
    return lm


def test_the_cadence_follows_the_measured_speed() -> None:
    cadence = Cadence(CadenceConfig(max_interval=4, travel_px=8.0, fast_px=4.0))
    assert cadence.interval == 1  # unknown speed: pose on every frame
    cadence.observe(0.5)
    assert cadence.interval == 4  # still: as seldom as allowed
    cadence.observe(3.5)  # running estimate 2.0 px a frame: 8 px in 4 frames
    assert cadence.interval == 4
    cadence.observe(3.5)  # 2.75: 8 px in 2 frames
    assert cadence.interval == 2
    cadence.observe(8.0)  # fast: every frame
    assert cadence.interval == 1 and cadence.pose_due()
    cadence.reset()
    cadence.observe(0.1)
    assert not cadence.pose_due()
    for _ in range(3):
        cadence.carried()
    assert cadence.pose_due()  # the 4th frame after a pose run
    cadence.ran_pose()
    assert not cadence.pose_due()
    assert Cadence(CadenceConfig(max_interval=1)).interval == 1


def test_speed_is_the_median_travel_of_the_garment_points_per_frame() -> None:
    a = landmarks()
    b = a.copy()
    b[:, 0] += 6 / W  # 6 px to the right over 3 frames
    assert speed_px(a, b, W, H, frames=3) == pytest.approx(2.0, abs=1e-4)
    b[SPEED_POINTS[0], 1] += 0.5  # one wild point does not move the median
    assert speed_px(a, b, W, H, frames=3) == pytest.approx(2.0, abs=1e-4)


@pytest.mark.parametrize("flow_side", [320, 0])
def test_flow_carries_landmarks_by_the_frame_motion(flow_side: int) -> None:
    frame, lm = texture(), landmarks()
    lm[30, :2] = (1.2, 0.5)  # off the frame: moved by the similarity
    lm[31, 3] = 0.1  # not visible: moved by the similarity
    flow = FlowTracker(CadenceConfig(flow_side=flow_side))
    remember(flow, frame)
    carried = carry(flow, shifted(frame, 3.0, -2.0), lm)
    assert carried is not None and carried.followed >= 30
    moved = (carried.landmarks[:, :2] - lm[:, :2]) * (W, H)
    np.testing.assert_allclose(moved, np.tile([3.0, -2.0], (33, 1)), atol=0.35)
    assert carried.speed_px == pytest.approx(np.hypot(3, 2), abs=0.2)
    np.testing.assert_array_equal(carried.landmarks[:, 2:], lm[:, 2:])  # z, visibility kept


def test_flow_gives_up_where_it_cannot_vouch_for_a_garment_point() -> None:
    frame, lm = texture(), landmarks()
    flow = FlowTracker(CadenceConfig())
    assert carry(flow, frame, lm) is None  # nothing to start from
    nxt = shifted(frame, 2.0, 1.0)
    x, y = (lm[SPEED_POINTS[2], :2] * (W, H)).astype(int)
    nxt[y - 20 : y + 20, x - 20 : x + 20] = texture(seed=9)[y - 20 : y + 20, x - 20 : x + 20]  # covered
    remember(flow, frame)
    assert carry(flow, nxt, lm) is None
    remember(flow, frame)
    assert carry(flow, texture(seed=5), lm) is None  # another scene altogether
    remember(flow, frame)
    assert carry(flow, cv2.resize(frame, (320, 240)), lm) is None  # the size changed


def test_bending_is_what_the_body_similarity_does_not_explain() -> None:
    before = landmarks()
    after = before.copy()
    after[:, 0] += 10 / W  # the whole body moves 10 px: a similarity, no bend
    sim = similarity(before, after, W, H, 0.5)
    assert sim is not None and bend_px(before, after, sim, W, H, 0.5) < 0.01
    after[SPEED_POINTS[4], 1] -= 12 / H  # a wrist rises 12 px on its own
    sim = similarity(before, after, W, H, 0.5)
    assert sim is not None and bend_px(before, after, sim, W, H, 0.5) > 10
