"""One session's preprocessing: JPEG in, ``Conditioning`` out. Pure: no bus, no asyncio.

A ``SessionPreprocessor`` owns everything that carries state between one stream's frames: the
MediaPipe tracker, the optical-flow tracker and the cadence between pose runs, the landmark
smoother and the last people count. It is driven by one thread at a time (the service's
per-session worker guarantees that) and must be ``close()``d.

Pose runs every k-th frame (``tracking.Cadence``: k from the measured motion, 1 when fast); on
the frames between, the landmarks are carried by optical flow (``tracking.FlowTracker``) and the
person mask is the last pose run's segmentation moved by the similarity the landmarks moved by.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from runtime.media import (
    GREY_SCALES,
    UndecodableImage,
    decode_grey,
    decode_image,
    encode_jpeg,
    jpeg_dimensions,
)
from services.preprocess import conditioning as cond
from services.preprocess.pose import PoseConfig, PoseTracker
from services.preprocess.settings import PreprocessSettings
from services.preprocess.smoothing import LandmarkSmoother, OneEuroParams
from services.preprocess.tracking import Cadence, CadenceConfig, FlowTracker, bend_px, similarity, speed_px
from shared import body
from shared.errors import CodedError
from shared.masks import encode_rle
from shared.schemas import Conditioning, pack_array

FRAME_TOO_SMALL = "frame_too_small"
BAD_ASPECT = "bad_aspect"
MASK_CODECS = ("rle", "png")


@dataclass(frozen=True)
class PreprocessConfig:
    pose: PoseConfig = field(default_factory=PoseConfig)
    cadence: CadenceConfig = field(default_factory=CadenceConfig)
    smoothing: OneEuroParams = field(default_factory=OneEuroParams)
    mask_codec: str = "rle"  # rle: Conditioning v2; png: v1, for generators of the previous release
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
        if self.mask_codec not in MASK_CODECS:
            raise ValueError(f"mask_codec {self.mask_codec!r} is not one of {MASK_CODECS}")

    @classmethod
    def from_settings(cls, s: PreprocessSettings) -> PreprocessConfig:
        return cls(
            pose=PoseConfig(
                min_detection_confidence=s.min_detection_confidence,
                min_tracking_confidence=s.min_tracking_confidence,
                recreate_after_frames=s.pose_recreate_frames,
                people_check_every=s.people_check_every,
                max_side=s.pose_max_side,
                retry_pad=s.pose_retry_pad,
            ),
            cadence=CadenceConfig(
                max_interval=s.pose_every_max, travel_px=s.pose_travel_px, fast_px=s.pose_fast_px
            ),
            mask_codec=s.mask_codec,
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
    raw_landmarks: np.ndarray | None = None  # before smoothing: MediaPipe's, or carried by flow
    landmarks: np.ndarray | None = None  # smoothed, as published
    timings_ms: dict[str, float] = field(default_factory=dict)
    posed: bool = False  # MediaPipe ran on this frame (else the landmarks were carried by flow)
    graph_runs: int = 0  # MediaPipe pose graph runs on this frame (2 when the zoomed-out retry ran)
    retry_found: bool = False  # only the zoomed-out retry found the person
    flow_missed: bool = False  # pose ran because flow could not vouch for carried landmarks


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
        self.flow = FlowTracker(self.config.cadence)
        self.cadence = Cadence(self.config.cadence)
        self.smoother = LandmarkSmoother(self.config.smoothing)
        self._others = 0  # people besides the tracked one, from the last full-frame check
        self.frames = 0
        self.pose_runs = 0
        self.flow_misses = 0  # frames flow could not carry, so pose ran on them after all
        self._measured: np.ndarray | None = None  # last frame's landmarks before smoothing
        self._smoothed: np.ndarray | None = None  # ... and after: what flow follows
        self._last_ts_ms: float | None = None
        # the last pose run: its landmarks, its segmentation (shrunk) and its frame number
        self._ref: tuple[np.ndarray, np.ndarray | None, int] | None = None

    def close(self) -> None:
        self.tracker.close()
        self._forget()

    def _forget(self) -> None:
        """Continuity is broken (a bad frame, no person): nothing is carried into the next frame."""
        self.smoother.reset()
        self.flow.reset()
        self.cadence.reset()
        self._measured = self._smoothed = None
        self._ref = None

    def process_jpeg(self, jpeg: bytes, seq: int, timestamp_ms: float, category: str = "") -> FrameResult:
        """One frame as it arrives. A frame pose skips is decoded only to a small grey copy for
        flow (its JPEG scaled in the DCT: about 60% of a full colour decode); every decode is
        strict, so a corrupt frame is ``bad_frame`` either way."""
        size = jpeg_dimensions(jpeg)
        frame = _Frame(self.flow, jpeg=jpeg, size=size) if size else _Frame(self.flow, jpeg=jpeg)
        return self._process(frame, seq, timestamp_ms, jpeg, category)

    def process(
        self,
        frame_bgr: np.ndarray,
        seq: int,
        timestamp_ms: float,
        frame_jpeg: bytes | None = None,
        category: str = "",
    ) -> FrameResult:
        """``category``: the region this session's garment needs; empty: the configured one."""
        if frame_jpeg is None:
            frame_jpeg = encode_jpeg(frame_bgr)
        return self._process(_Frame(self.flow, bgr=frame_bgr), seq, timestamp_ms, frame_jpeg, category)

    def _process(
        self, frame: _Frame, seq: int, timestamp_ms: float, frame_jpeg: bytes, category: str
    ) -> FrameResult:
        c = self.config
        category = category if category in body.GARMENT_CATEGORIES else c.garment_category
        w, h = frame.size
        size_code = check_size(w, h, c.min_frame_side, c.max_aspect)
        if size_code is not None:
            self._forget()  # continuity is broken either way
            return FrameResult(self._conditioning(seq, w, h, frame_jpeg, codes=[size_code]), [size_code])

        t0 = time.perf_counter()
        runs0, finds0, misses0 = self.tracker.graph_runs, self.tracker.wide_finds, self.flow_misses
        every = c.pose.people_check_every
        people_check = every > 0 and self.frames % every == 0
        forward = self._last_ts_ms is None or timestamp_ms > self._last_ts_ms
        self._last_ts_ms = timestamp_ms
        carried = self._carry(frame, w, h) if forward and not people_check else None
        scene_prob = person_mask = None
        if carried is not None:
            raw, sim = carried
            ref_prob = self._ref[1] if self._ref is not None else None
            if ref_prob is not None:
                person_mask = cond.moved_mask(ref_prob, sim, w, h, c.mask_threshold)
            posed = False
        else:
            out = self.tracker.process(frame.bgr(), timestamp_ms, people_check=people_check)
            if c.cadence.max_interval > 1:
                self.flow.remember(frame.grey(), frame.size)
            raw, scene_prob, posed = out.landmarks, out.scene_prob, True
            if out.person_prob is not None:
                person_mask = cond.binary_mask(out.person_prob, c.mask_threshold)
            self._pose_ran(out.landmarks, out.person_prob_small, w, h)
        t1 = time.perf_counter()
        landmarks = self.smoother(raw, timestamp_ms / 1e3, w, h)
        self._measured, self._smoothed = raw, landmarks
        codes = cond.assess(landmarks, c.visibility_threshold)

        if scene_prob is not None:
            scene = cond.binary_mask(scene_prob, c.mask_threshold)
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
        timings = {
            "decode": frame.decode_ms,
            "pose" if posed else "flow": (t1 - t0) * 1e3 - frame.decode_ms,
            "masks": (t2 - t1) * 1e3,
            "encode": (t3 - t2) * 1e3,
        }
        return FrameResult(
            msg,
            codes,
            raw,
            landmarks,
            timings,
            posed,
            graph_runs=self.tracker.graph_runs - runs0,
            retry_found=self.tracker.wide_finds > finds0,
            flow_missed=self.flow_misses > misses0,
        )

    def _carry(self, frame: _Frame, w: int, h: int) -> tuple[np.ndarray, np.ndarray] | None:
        """This frame's landmarks (before smoothing) carried by flow, and the similarity the body
        moved by since the last pose run; None when pose is due or flow cannot vouch for them."""
        if self._smoothed is None or self._measured is None or self._ref is None or self.cadence.pose_due():
            return None
        threshold = self.config.visibility_threshold
        carried = self.flow.carry(frame.grey(), frame.size, self._smoothed, threshold)
        sim = None
        if carried is not None:
            # the measurement moves as flow moved the smoothed points: the smoother sees one stream
            raw = self._measured.copy()
            raw[:, :2] += carried.landmarks[:, :2] - self._smoothed[:, :2]
            sim = similarity(self._ref[0], raw, w, h, threshold)
        if (
            carried is None
            or sim is None
            or bend_px(self._ref[0], raw, sim, w, h, threshold) > self.config.cadence.max_bend_px
        ):
            self.flow_misses += 1
            return None
        self.cadence.observe(carried.speed_px)
        self.cadence.carried()
        return raw, sim

    def _pose_ran(self, landmarks: np.ndarray | None, prob: np.ndarray | None, w: int, h: int) -> None:
        """Book-keeping after MediaPipe ran: the speed since the last run, and what the frames
        until the next one are carried from."""
        self.pose_runs += 1
        self.cadence.ran_pose()
        if landmarks is None:
            self._forget()
            return
        if self._ref is not None:
            self.cadence.observe(speed_px(self._ref[0], landmarks, w, h, self.frames - self._ref[2]))
        side = self.config.cadence.flow_side
        small = None
        if prob is not None:  # kept small and in uint8 for moving it onto the frames pose skips
            if side and max(prob.shape[:2]) > side:
                f = side / max(prob.shape[:2])
                size = (max(1, round(prob.shape[1] * f)), max(1, round(prob.shape[0] * f)))
                prob = cv2.resize(prob, size, interpolation=cv2.INTER_AREA)
            small = cv2.convertScaleAbs(prob, alpha=255.0)
        self._ref = (landmarks, small, self.frames)

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
            people=people,
            note=",".join(codes),
            **self._masks(person_mask, region),
        )

    def _masks(self, person: np.ndarray | None, region: np.ndarray | None) -> dict[str, bytes | None]:
        """The masks in the configured codec: run lengths (version 2) or PNG (version 1)."""
        if self.config.mask_codec == "png":
            encode, suffix = cond.encode_png, "png"
        else:
            encode, suffix = encode_rle, "rle"
        return {
            f"person_mask_{suffix}": encode(person) if person is not None else None,
            f"garment_mask_{suffix}": encode(region) if region is not None else None,
        }


class _Frame:
    """One frame, decoded only as far as needed: colour for MediaPipe, a small grey copy for flow
    (from the JPEG's own DCT scaling when the colour frame is not needed). Decoding is strict:
    a corrupt frame is ``bad_frame`` whichever decode meets it."""

    def __init__(
        self,
        flow: FlowTracker,
        *,
        jpeg: bytes | None = None,
        bgr: np.ndarray | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self._flow, self._jpeg, self._bgr, self._grey = flow, jpeg, bgr, None
        self.decode_ms = 0.0
        if bgr is None and size is None:  # no size in the JPEG's headers: decode it to know it
            bgr = self._bgr = self._decode(decode_image)
        self.size: tuple[int, int] = (bgr.shape[1], bgr.shape[0]) if bgr is not None else size  # type: ignore[assignment]

    def _decode(self, fn, *args):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(self._jpeg, *args)
        except UndecodableImage as exc:
            raise CodedError("bad_frame", str(exc)) from None
        finally:
            self.decode_ms += (time.perf_counter() - t0) * 1e3

    def bgr(self) -> np.ndarray:
        if self._bgr is None:
            bgr = self._decode(decode_image)
            if (bgr.shape[1], bgr.shape[0]) != self.size:
                raise CodedError(
                    "bad_frame", f"JPEG header says {self.size}, it decodes to {bgr.shape[1::-1]}"
                )
            self._bgr = bgr
        return self._bgr

    def grey(self) -> np.ndarray:
        """Grey at the flow tracker's size."""
        if self._grey is None:
            target = self._flow.flow_size(*self.size)
            if self._bgr is not None:
                self._grey = self._flow.grey(self._bgr)
            else:
                scale = max(s for s in GREY_SCALES if self.size[0] / s >= target[0] or s == 1)
                grey = self._decode(decode_grey, scale)
                if (grey.shape[1], grey.shape[0]) != target:
                    grey = cv2.resize(grey, target, interpolation=cv2.INTER_AREA)
                self._grey = grey
        return self._grey
