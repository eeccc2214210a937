"""Preprocess settings (``CHAMELEON_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.settings import BaseSettings


@dataclass(frozen=True)
class PreprocessSettings(BaseSettings):
    # -- sessions --------------------------------------------------------------------------------
    session_idle_s: float = 5.0  # a session without frames this long loses its graph and its slot
    max_sessions: int = 8  # frames of further sessions get an ``at_capacity`` error
    pose_workers: int = 2  # threads running MediaPipe (one session never uses two at once)
    pose_recreate_frames: int = 20000  # rebuild a session's graph after this many frames (leaks)
    # -- input limits ------------------------------------------------------------------------------
    min_frame_side: int = 32  # smaller frames are forwarded without a pose (``frame_too_small``)
    max_aspect: float = 4.0  # more extreme frames are forwarded without a pose (``bad_aspect``)
    # -- detection ---------------------------------------------------------------------------------
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    visibility_threshold: float = 0.5  # a landmark below this counts as not seen
    mask_threshold: float = 0.5  # segmentation probability above which a pixel is person
    min_person_area: float = 0.004  # mask components smaller than this fraction are not people
    people_check_every: int = 30  # full-frame segmentation for counting people every N frames; 0: off
    pose_max_side: int = 640  # MediaPipe runs on frames shrunk to this long side; 0: full size
    pose_retry_pad: float = 0.25  # nobody found: try again zoomed out by this border; 0: off
    # -- pose cadence (landmarks carried by optical flow between pose runs) ------------------------
    pose_every_max: int = 6  # pose at least every N frames; 1: on every frame
    pose_travel_px: float = 8.0  # landmarks may travel about this far between two pose runs
    pose_fast_px: float = 4.0  # at this speed (pixels per frame) or faster, pose runs on every frame
    # -- smoothing (One Euro, landmark coordinates in pixels) --------------------------------------
    smooth_min_cutoff_hz: float = 0.5
    smooth_beta: float = 0.14
    smooth_d_cutoff_hz: float = 1.0
    # -- output ----------------------------------------------------------------------------------
    garment_category: str = "top"  # top | dress | jacket: the region the generator may repaint
    mask_codec: str = "rle"  # rle: Conditioning v2 run lengths; png: v1, read by the previous release
