"""One session's preprocessing: JPEG in, ``Conditioning`` out. Pure: no bus, no asyncio.

A ``SessionPreprocessor`` owns everything that carries state between one stream's frames: the
MediaPipe tracker, the landmark smoother and the last people count. It is driven by one thread at
a time (the service's per-session worker guarantees that) and must be ``close()``d.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.media import UndecodableImage, decode_image, encode_jpeg
from services.preprocess import conditioning as cond
from services.preprocess.pose import PoseConfig, PoseTracker
from services.preprocess.settings import PreprocessSettings
from services.preprocess.smoothing import LandmarkSmoother, OneEuroParams
from shared import body
from shared.errors import CodedError
from shared.schemas import Conditioning, pack_array

FRAME_TOO_SMALL = "frame_too_small"
BAD_ASPECT = "bad_aspect"


@dataclass(frozen=True)
class PreprocessConfig:
    pose: PoseConfig = field(default_factory=PoseConfig)
    smoothing: OneEuroParams = field(default_factory=OneEuroParams)
    garment_category: str = "top"
    visibility_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_person_area: float = 0.004
    min_frame_side: int = 32
    max_aspect: float = 4.0

    def __post_init__(self) -> None:
        if self.garment_category not in body.GARMENT_CATEGORIES:
            raise ValueError(
                f"garment_category {self.garment_category!r} is not one of {body.GARMENT_CATEGORIES}"
            )

    @classmethod
    def from_settings(cls, s: PreprocessSettings) -> PreprocessConfig:
        return cls(
            pose=PoseConfig(
                min_detection_confidence=s.min_detection_confidence,
                min_tracking_confidence=s.min_tracking_confidence,
                recreate_after_frames=s.pose_recreate_frames,
                people_check_every=s.people_check_every,
                max_side=s.pose_max_side,
            ),
            smoothing=OneEuroParams(s.smooth_min_cutoff_hz, s.smooth_beta, s.smooth_d_cutoff_hz),
            garment_category=s.garment_category,
            visibility_threshold=s.visibility_threshold,
            mask_threshold=s.mask_threshold,
            min_person_area=s.min_person_area,
            min_frame_side=s.min_frame_side,
            max_aspect=s.max_aspect,
        )


@dataclass
class FrameResult:
    """A frame's conditioning, its status codes, and where the time went."""

    conditioning: Conditioning
    codes: list[str]
    raw_landmarks: np.ndarray | None = None  # before smoothing (benchmarks, tests)
    landmarks: np.ndarray | None = None  # smoothed, as published
    timings_ms: dict[str, float] = field(default_factory=dict)


def check_size(width: int, height: int, min_side: int, max_aspect: float) -> str | None:
    """A status code when a frame is too small or too elongated to look for a body in."""
    if min(width, height) < min_side:
        return FRAME_TOO_SMALL
    if max(width, height) / max(1, min(width, height)) > max_aspect:
        return BAD_ASPECT
    return None


class SessionPreprocessor:
    """Pose → smoothing → masks → ``Conditioning`` for one session's frames."""

    def __init__(self, session_id: str, config: PreprocessConfig | None = None) -> None:
        self.session_id = session_id
        self.config = config or PreprocessConfig()
        self.tracker = PoseTracker(self.config.pose)
        self.smoother = LandmarkSmoother(self.config.smoothing)
        self._others = 0  # people besides the tracked one, from the last full-frame check
        self.frames = 0

    def close(self) -> None:
        self.tracker.close()
        self.smoother.reset()

    def process_jpeg(self, jpeg: bytes, seq: int, timestamp_ms: float, category: str = "") -> FrameResult:
        t0 = time.perf_counter()
        try:  # quietly: libjpeg's warning about a corrupt frame becomes the error, not a stderr line
            frame = decode_image(jpeg)
        except UndecodableImage as exc:
            raise CodedError("bad_frame", str(exc)) from None
        result = self.process(frame, seq, timestamp_ms, frame_jpeg=jpeg, category=category)
        result.timings_ms["decode"] = (time.perf_counter() - t0) * 1e3 - sum(result.timings_ms.values())
        return result

    def process(
        self,
        frame_bgr: np.ndarray,
        seq: int,
        timestamp_ms: float,
        frame_jpeg: bytes | None = None,
        category: str = "",
    ) -> FrameResult:
        """``category``: the region this session's garment needs; empty: the configured one."""
        c = self.config
        category = category if category in body.GARMENT_CATEGORIES else c.garment_category
        h, w = frame_bgr.shape[:2]
        if frame_jpeg is None:
            frame_jpeg = encode_jpeg(frame_bgr)
        size_code = check_size(w, h, c.min_frame_side, c.max_aspect)
        if size_code is not None:
            self.smoother.reset()  # continuity is broken either way
            return FrameResult(self._conditioning(seq, w, h, frame_jpeg, codes=[size_code]), [size_code])

        t0 = time.perf_counter()
        out = self.tracker.process(frame_bgr, timestamp_ms)
        t1 = time.perf_counter()
        landmarks = self.smoother(out.landmarks, timestamp_ms / 1e3, w, h)
        codes = cond.assess(landmarks, c.visibility_threshold)

        person_mask = None
        if out.person_prob is not None:
            person_mask = cond.binary_mask(out.person_prob, c.mask_threshold)
        if out.scene_prob is not None:
            scene = cond.binary_mask(out.scene_prob, c.mask_threshold)
            self._others = cond.count_other_people(scene, person_mask, c.min_person_area)
        people = (1 if landmarks is not None else 0) + self._others
        if people > 1:
            codes.append(cond.SEVERAL_PEOPLE)

        region = None
        if landmarks is not None:
            region = body.garment_region(landmarks, w, h, category, person_mask, c.visibility_threshold)
            if region is not None and not region.any():
                region = None
        t2 = time.perf_counter()
        msg = self._conditioning(seq, w, h, frame_jpeg, landmarks, person_mask, region, people, codes)
        t3 = time.perf_counter()
        self.frames += 1
        timings = {"pose": (t1 - t0) * 1e3, "masks": (t2 - t1) * 1e3, "encode": (t3 - t2) * 1e3}
        return FrameResult(msg, codes, out.landmarks, landmarks, timings)

    def _conditioning(
        self,
        seq: int,
        width: int,
        height: int,
        frame_jpeg: bytes,
        landmarks: np.ndarray | None = None,
        person_mask: np.ndarray | None = None,
        region: np.ndarray | None = None,
        people: int = 0,
        codes: Sequence[str] = (),
    ) -> Conditioning:
        """The one message a frame gets, with whatever was found in it."""
        return Conditioning(
            session_id=self.session_id,
            seq=seq,
            width=width,
            height=height,
            frame_jpeg=frame_jpeg,
            person_found=landmarks is not None,
            landmarks=pack_array(landmarks) if landmarks is not None else None,
            person_mask_png=cond.encode_png(person_mask) if person_mask is not None else None,
            garment_mask_png=cond.encode_png(region) if region is not None else None,
            people=people,
            note=",".join(codes),
        )
