"""Real MediaPipe on real photos: the pose wrapper and the per-session pipeline (no bus)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtime.media import encode_jpeg
from services.camera.source import Motion, MotionCamera
from services.garments.catalogue import spec_by_id
from services.preprocess import conditioning as cond
from services.preprocess.pipeline import PreprocessConfig, SessionPreprocessor
from services.preprocess.pose import PoseConfig, PoseTracker
from services.preprocess.tracking import CadenceConfig
from shared.body import LM
from shared.errors import CodedError
from shared.masks import decode_rle
from shared.schemas import Conditioning, unpack_array
from tools.eval.figure import make_eval_clip
from tools.eval.preprocess import detect_rate, follow_error_px, jitter_px, noisy_still_frames

pytestmark = pytest.mark.unit

FRAME_MS = 1000 / 30


def _near_mask(mask: np.ndarray, xy: np.ndarray, radius: int = 3) -> bool:
    x, y = (int(v) for v in np.round(xy[:2]))
    h, w = mask.shape
    window = mask[max(0, y - radius) : min(h, y + radius + 1), max(0, x - radius) : min(w, x + radius + 1)]
    return bool(window.size and window.max() > 0)


@pytest.fixture(scope="module")
def bus_result(bus_photo: np.ndarray):
    pre = SessionPreprocessor("bus", PreprocessConfig())
    try:
        for i in range(3):
            result = pre.process(bus_photo, i, 1000 + i * FRAME_MS)
    finally:
        pre.close()
    return result


def test_full_body_photo_landmarks_lie_inside_the_person_mask(bus_result, bus_photo) -> None:
    msg = bus_result.conditioning
    h, w = bus_photo.shape[:2]
    assert msg.person_found and (msg.width, msg.height) == (w, h)
    lm = unpack_array(msg.landmarks)
    assert lm.shape == (33, 4) and lm.dtype == np.float32
    person = decode_rle(msg.person_mask_rle, w, h)
    assert person.shape == (h, w)
    for i in (LM.LEFT_SHOULDER, LM.RIGHT_SHOULDER, LM.LEFT_HIP, LM.RIGHT_HIP, LM.LEFT_ANKLE, LM.RIGHT_ANKLE):
        assert lm[i, 3] > 0.5, f"landmark {i.name} not visible"
        xy = lm[i, :2] * (w, h)
        assert 0 <= xy[0] < w and 0 <= xy[1] < h
        assert _near_mask(person, xy), f"{i.name} at {xy} outside the person mask"


def test_full_body_garment_region_covers_torso_and_excludes_face(bus_result, bus_photo) -> None:
    msg = bus_result.conditioning
    h, w = bus_photo.shape[:2]
    lm = unpack_array(msg.landmarks)
    region = decode_rle(msg.garment_mask_rle, w, h) > 0
    person = decode_rle(msg.person_mask_rle, w, h) > 0
    px = lm[:, :2] * (w, h)
    # the inner torso: the shoulder-hip quadrilateral shrunk towards its centre
    quad = px[[LM.LEFT_SHOULDER, LM.RIGHT_SHOULDER, LM.RIGHT_HIP, LM.LEFT_HIP]]
    inner = quad.mean(axis=0) + 0.8 * (quad - quad.mean(axis=0))
    torso = np.zeros((h, w), np.uint8)
    cv2.fillPoly(torso, [inner.round().astype(np.int32)], 1)
    torso = (torso > 0) & person
    assert torso.sum() > 500
    assert region[torso].mean() > 0.95
    for i in (LM.NOSE, 1, 4, LM.MOUTH_LEFT, LM.MOUTH_RIGHT, LM.LEFT_EAR, LM.RIGHT_EAR):
        assert not _near_mask(region.astype(np.uint8), px[i], radius=2), f"face point {i} in the region"


@pytest.fixture(scope="module")
def moving_streams(bus_photo: np.ndarray):
    """Raw and smoothed landmarks over a slow and a fast moving camera, plus the transforms."""
    out = {}
    for name, period, n in (("slow", 90.0, 60), ("fast", 15.0, 45)):
        cam = MotionCamera(bus_photo, 640, 480, Motion(period=period))
        pre = SessionPreprocessor(name)
        raw, smooth = [], []
        try:
            for i in range(n):
                r = pre.process(cam.frame(i), i, 1000 + i * FRAME_MS, frame_jpeg=b"-")
                raw.append(r.raw_landmarks)
                smooth.append(r.landmarks)
        finally:
            pre.close()
        out[name] = (raw, smooth, [cam.transform(i) for i in range(n)], pre.pose_runs)
    return out


def test_landmarks_follow_the_camera_motion(moving_streams) -> None:
    raw, smooth, transforms, pose_runs = moving_streams["slow"]
    assert pose_runs < 0.6 * len(raw)  # slow motion: flow carried the landmarks on most frames
    assert detect_rate(raw) >= 0.95
    err, motion = follow_error_px(smooth, transforms, 640, 480)
    assert motion > 10  # the camera really moves the person around
    assert err < 4.0 and err < 0.25 * motion


def test_smoothing_adds_no_lag_on_fast_motion(moving_streams) -> None:
    raw, smooth, transforms, pose_runs = moving_streams["fast"]
    assert pose_runs >= 0.9 * len(raw)  # fast motion: pose on (nearly) every frame
    raw_err, motion = follow_error_px(raw, transforms, 640, 480)
    smooth_err, _ = follow_error_px(smooth, transforms, 640, 480)
    assert motion > 10
    assert smooth_err <= raw_err + 2.0, (raw_err, smooth_err)


def _still_stream(photo: np.ndarray, config: PreprocessConfig) -> tuple[list, list, int]:
    pre = SessionPreprocessor("still", config)
    raw, smooth = [], []
    try:
        for i, frame in enumerate(noisy_still_frames(photo, 45)):
            r = pre.process(frame, i, 1000 + i * FRAME_MS, frame_jpeg=b"-")
            raw.append(r.raw_landmarks)
            smooth.append(r.landmarks)
    finally:
        pre.close()
    return raw, smooth, pre.pose_runs


def test_static_stream_jitter_is_at_most_half_of_mediapipe_on_every_frame(bus_photo) -> None:
    """The reference is MediaPipe's raw landmarks with pose on every frame; what is published
    (smoothed, pose every k-th frame, flow between) must shake at most half as much. Pose on
    every frame and smoothing alone must too."""
    raw, every_smoothed, runs = _still_stream(
        bus_photo, PreprocessConfig(cadence=CadenceConfig(max_interval=1))
    )
    assert runs == 45
    _, smoothed, runs_carried = _still_stream(bus_photo, PreprocessConfig())
    assert runs_carried < 0.5 * 45  # a still person: pose ran on fewer than half the frames
    raw_j = jitter_px(raw[5:], 640, 480)
    assert raw_j > 0.2  # the noise really shakes the raw landmarks
    for published in (every_smoothed, smoothed):
        assert jitter_px(published[5:], 640, 480) <= 0.5 * raw_j, (raw_j, jitter_px(published[5:], 640, 480))


def test_message_at_640x480_is_compact(bus_photo) -> None:
    cam = MotionCamera(bus_photo, 640, 480)
    pre = SessionPreprocessor("size", PreprocessConfig())
    try:
        for i in range(3):
            jpeg = encode_jpeg(cam.frame(i))
            result = pre.process_jpeg(jpeg, i, 1000 + i * FRAME_MS)
    finally:
        pre.close()
    msg = result.conditioning
    raw = msg.encode()
    assert msg.person_found and msg.garment_mask_rle
    assert len(raw) < 256 * 1024, len(raw)
    assert len(raw) - len(msg.frame_jpeg) < 8 * 1024  # masks + landmarks
    back = Conditioning.decode(raw)
    assert back.frame_jpeg == jpeg and back.seq == 2 and back.person_found


def test_several_people_are_reported(zidane_photo) -> None:
    frame = cv2.resize(zidane_photo, (640, 360))
    pre = SessionPreprocessor("two", PreprocessConfig(pose=PoseConfig(people_check_every=1)))
    try:
        result = pre.process(frame, 0, 1000)
    finally:
        pre.close()
    msg = result.conditioning
    assert msg.people >= 2
    assert cond.SEVERAL_PEOPLE in msg.note.split(",")


def test_defined_outcomes_for_empty_tiny_extreme_and_garbage_frames() -> None:
    pre = SessionPreprocessor("edge")
    try:
        blank = pre.process(np.full((480, 640, 3), 90, np.uint8), 0, 1000)
        assert not blank.conditioning.person_found and blank.codes == [cond.NO_PERSON]
        assert blank.conditioning.people == 0 and blank.conditioning.garment_mask_rle is None
        tiny = pre.process(np.zeros((12, 16, 3), np.uint8), 1, 1033)
        assert tiny.codes == ["frame_too_small"] and not tiny.conditioning.person_found
        assert tiny.conditioning.frame_jpeg  # the frame is still forwarded
        sliver = pre.process(np.zeros((40, 640, 3), np.uint8), 2, 1066)
        assert sliver.codes == ["bad_aspect"]
        with pytest.raises(CodedError) as err:
            pre.process_jpeg(b"\xff\xd8 not really a jpeg", 3, 1100)
        assert err.value.code == "bad_frame"
        after = pre.process(np.full((480, 640, 3), 90, np.uint8), 4, 1133)
        assert after.codes == [cond.NO_PERSON]  # still serving
    finally:
        pre.close()


def test_tracker_restarts_on_time_reversal_and_rebuilds_after_n_frames(bus_photo) -> None:
    frame = MotionCamera(bus_photo, 320, 240).frame(0)
    with PoseTracker(PoseConfig(recreate_after_frames=3, people_check_every=0)) as tracker:
        for i in range(4):
            out = tracker.process(frame, 1000 + i * FRAME_MS)
        assert tracker.rebuilds == 1 and tracker.frames == 1 and out.landmarks is not None
        tracker.process(frame, 500)  # a new stream on the same tracker
        assert tracker.rebuilds == 2
        assert out.scene_prob is None
        with pytest.raises(ValueError):
            tracker.process(frame[:, :, 0], 2000)
    assert not tracker.is_open


def test_a_large_frame_is_shrunk_for_mediapipe_and_its_masks_come_back_full_size(zidane_photo) -> None:
    """At 1280x720, MediaPipe's detector finds no one in zidane.jpg; on the frame shrunk to a
    640 px long side it finds the man on the right. The masks come back at the frame's size."""
    assert zidane_photo.shape[:2] == (720, 1280)
    with PoseTracker(PoseConfig(people_check_every=1)) as shrunk:
        out = shrunk.process(zidane_photo, 1000.0)
    assert out.landmarks is not None
    assert out.person_prob is not None and out.person_prob.shape == (720, 1280)
    assert out.scene_prob is not None and out.scene_prob.shape == (720, 1280)
    right = out.person_prob[:, 640:] > 0.5
    assert right.mean() > 2 * (out.person_prob[:, :640] > 0.5).mean()  # the man it tracks
    with PoseTracker(PoseConfig(people_check_every=0, max_side=0, retry_pad=0)) as full:
        assert full.process(zidane_photo, 1000.0).landmarks is None  # why it is shrunk


def test_a_person_the_detector_misses_is_found_zoomed_out(cameraman_photo) -> None:
    """MediaPipe's detector finds nobody in camera.png at webcam framing (a man bent over a
    tripod, filling the frame); on the frame padded by a quarter on every side it finds him, and
    keeps tracking."""
    frame = MotionCamera(cameraman_photo, 640, 480).frame(0)
    with PoseTracker(PoseConfig(people_check_every=0, retry_pad=0)) as plain:
        assert all(plain.process(frame, 1000 + i * FRAME_MS).landmarks is None for i in range(3))
    with PoseTracker(PoseConfig(people_check_every=0)) as tracker:
        outs = [tracker.process(frame, 1000 + i * FRAME_MS) for i in range(3)]
    assert all(o.landmarks is not None for o in outs) and tracker.wide_finds == 1  # then it tracks
    out = outs[-1]
    assert out.person_prob is not None and out.person_prob.shape == frame.shape[:2]
    h, w = frame.shape[:2]
    person = out.person_prob > 0.5
    nose = out.landmarks[LM.NOSE, :2] * (w, h)
    assert _near_mask(person, nose)  # mapped back onto the frame, not onto the padded one
    assert 0.35 * w < nose[0] < 0.6 * w and 0.2 * h < nose[1] < 0.4 * h  # at (0.48, 0.34)


def test_an_empty_scene_costs_one_graph_run_a_frame_after_a_while() -> None:
    blank = np.full((480, 640, 3), 90, np.uint8)
    with PoseTracker(PoseConfig(people_check_every=0, retry_alone_after=4)) as tracker:
        for i in range(10):
            assert tracker.process(blank, 1000 + i * FRAME_MS).landmarks is None
        assert tracker.graph_runs == 4 * 2 + 6  # both graphs, then one a frame, taking turns


def test_zoomed_out_landmarks_and_mask_land_where_the_plain_graph_puts_them() -> None:
    """On a frame both graphs see (the eval's drawn figure, one person), what the zoomed-out
    graph finds is mapped back onto the plain graph's landmarks and mask."""
    spec = spec_by_id("shirt-green-solid")
    frame = make_eval_clip("front", 1501, 2, spec, spec).inputs[-1].image
    h, w = frame.shape[:2]
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    with PoseTracker(PoseConfig(people_check_every=0)) as tracker:
        tracker.process(frame, 1000.0)  # builds the graphs
        plain = [tracker._plain(rgb) for _ in range(3)][-1]
        wide = [tracker._zoomed_out(rgb) for _ in range(3)][-1]
    assert plain[0] is not None and wide[0] is not None
    upper = slice(0, LM.LEFT_HIP)
    apart = np.linalg.norm((plain[0][upper, :2] - wide[0][upper, :2]) * (w, h), axis=1)
    assert np.median(apart) < 0.01 * h  # 2.3 px
    a, b = plain[1] > 0.5, wide[1] > 0.5
    assert wide[1].shape == (h, w) and (a & b).sum() / (a | b).sum() > 0.9  # 0.96


def test_the_cadence_is_scored_against_the_truth_the_known_camera_motion_gives(bus_photo) -> None:
    """``bench preprocess``'s truth for the cadence: each frame's masks mapped back onto the still
    photo through the camera's known transform. Pose on every frame agrees with that truth (the
    majority of its own masks there), a cadence of 1 in the sweep scores exactly as pose on every
    frame does, and a carry of 6 frames on a moving camera scores no better."""
    from tools.bench.preprocess import cadence_quality

    q = cadence_quality(bus_photo, frames=24, sweep=[(1, 8.0), (6, 8.0)])
    every = q["truth"]["every_frame"]
    assert every["person_iou"]["mean"] > 0.9 and every["garment_iou"]["mean"] > 0.8
    assert q["sweep"][0]["truth"] == every and q["sweep"][0]["pose_share"] == 1.0
    carried = q["sweep"][1]
    assert carried["pose_share"] < 0.5
    assert carried["truth"]["garment_iou"]["mean"] <= every["garment_iou"]["mean"] + 0.005
