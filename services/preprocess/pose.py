"""MediaPipe wrapper: one pose tracker per video stream. Pure: no bus, no asyncio.

Uses the legacy ``mediapipe.solutions.pose`` graph with ``model_complexity=1`` (the only pose
landmark model inside the 0.10.21 wheel: complexity 0 and 2 download theirs at run time, which we
forbid) in tracking mode, so after the first detection each frame only runs the landmark model on
the previous frame's region. Tracking state belongs to ONE stream: never share an instance.

MediaPipe's own landmark smoothing is turned off; ``smoothing.LandmarkSmoother`` does it with real
capture timestamps (the legacy graph assumes 30 fps). The graph is rebuilt every
``recreate_after_frames`` frames because long-running graphs grow in memory.

Zoomed out when lost: the pose detector misses a person who fills the frame from head to feet or
stands close (on the eval's figure, 2 of 8 frames of a clip and sometimes every frame). When the
graph finds nobody, a second graph sees the same frame padded by ``retry_pad`` of its size on every
side (black, as MediaPipe fills a region past the frame's edge), and whichever graph found the
person keeps tracking them, with their landmarks and mask mapped back onto the frame: asking the
plain graph again while the other tracks cost eval render 0.006 IoU (the switch moves the
landmarks), and a failed detection costs about 7 ms. Tracking on the zoomed-out frame costs
1.5-2.5 ms more a run. On a scene that stays empty, the two graphs take turns after
``retry_alone_after`` frames, so an empty room costs one detection a frame, not two.

Counting people: the pose segmentation mask covers only the tracked person's region, so every
``people_check_every`` frames a full-frame selfie-segmentation graph (also shipped in the wheel)
gives a scene mask whose connected components the conditioning step counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

N_LANDMARKS = 33


@dataclass(frozen=True)
class PoseConfig:
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    recreate_after_frames: int = 20000
    people_check_every: int = 30  # 0: never run the full-frame segmentation
    max_side: int = 640  # larger frames are shrunk to this long side for MediaPipe; 0: never
    retry_pad: float = 0.25  # the zoomed-out retry's border, a share of each side; 0: no retry
    retry_alone_after: int = 30  # empty frames after which the two graphs take turns


@dataclass
class PoseOutput:
    """One frame's raw MediaPipe result.

    ``landmarks``: (33, 4) float32 ``(x, y, z, visibility)`` in normalised image coordinates, None
    when no person was found. ``person_prob_small``: float32 person probability of the tracked
    person at the size MediaPipe saw (the frame shrunk to ``max_side``), None without a person;
    ``person_prob`` is the same at the frame's size. ``scene_prob``: HxW float32 full-frame person
    probability, only on frames where the people check ran.
    """

    landmarks: np.ndarray | None
    person_prob_small: np.ndarray | None
    scene_prob: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)  # the frame's (width, height)

    @property
    def person_prob(self) -> np.ndarray | None:
        if self.person_prob_small is None:
            return None
        return _full_size(self.person_prob_small, *self.size)


class PoseTracker:
    """Pose + segmentation for one video stream, in tracking mode."""

    def __init__(self, config: PoseConfig | None = None) -> None:
        self.config = config or PoseConfig()
        self.frames = 0  # frames since the graph was (re)built
        self.frames_total = 0
        self.rebuilds = 0
        self._last_ts_ms: float | None = None
        self._pose = None
        self._wide = None  # the zoomed-out graph, built when first needed
        self._scene = None
        self._active = "plain"  # the graph that found the person last
        self._empty = 0  # frames in a row where neither graph found anyone
        self.wide_finds = 0  # frames the zoomed-out graph found a person the plain one had not
        self.graph_runs = 0  # pose graph runs, both graphs counted

    # -- lifecycle ---------------------------------------------------------------------------------
    def _build(self) -> None:
        self._pose = self._graph()
        self.frames = 0

    def _graph(self):  # type: ignore[no-untyped-def]
        from mediapipe.python.solutions import pose as mp_pose  # heavy: import when first needed

        c = self.config
        return mp_pose.Pose(
            static_image_mode=False,
            model_complexity=1,
            smooth_landmarks=False,
            enable_segmentation=True,
            smooth_segmentation=True,
            min_detection_confidence=c.min_detection_confidence,
            min_tracking_confidence=c.min_tracking_confidence,
        )

    def _build_scene(self) -> None:
        from mediapipe.python.solutions import selfie_segmentation

        self._scene = selfie_segmentation.SelfieSegmentation(model_selection=1)

    def restart(self) -> None:
        """Forget tracking state (a new stream, or time went backwards)."""
        self._close_graphs()
        self.rebuilds += 1
        self._last_ts_ms = None

    def close(self) -> None:
        self._close_graphs()
        self._last_ts_ms = None

    def _close_graphs(self) -> None:
        for graph in (self._pose, self._wide, self._scene):
            if graph is not None:
                graph.close()
        self._pose = self._wide = self._scene = None
        self._active, self._empty = "plain", 0

    @property
    def is_open(self) -> bool:
        return self._pose is not None

    def __enter__(self) -> PoseTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work --------------------------------------------------------------------------------------
    def process(
        self, frame_bgr: np.ndarray, timestamp_ms: float, people_check: bool | None = None
    ) -> PoseOutput:
        """Run pose (and, every N frames, scene segmentation) on one BGR uint8 frame.

        Timestamps must increase; a frame older than the previous one means a new stream, so the
        tracker restarts instead of tracking across the discontinuity. ``people_check``: run the
        scene segmentation on this frame or not; None: every ``people_check_every`` runs.
        """
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
        if self._last_ts_ms is not None and timestamp_ms <= self._last_ts_ms:
            self.restart()
        if self._pose is not None and self.frames >= self.config.recreate_after_frames:
            self.restart()
        if self._pose is None:
            self._build()
        self._last_ts_ms = timestamp_ms
        h, w = frame_bgr.shape[:2]
        small = frame_bgr
        limit = self.config.max_side
        if limit and max(h, w) > limit:
            # MediaPipe's models see 224-256 px anyway; a full HD frame only costs conversion and a
            # full-size mask, and on some (zidane.jpg at 1280x720) its detector finds no one
            f = limit / max(h, w)
            small = cv2.resize(
                frame_bgr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
            )
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        landmarks, person = self._find(rgb)
        scene = None
        every = self.config.people_check_every
        if people_check is None:
            people_check = every > 0 and self.frames % every == 0
        if people_check:
            if self._scene is None:
                self._build_scene()
            scene = _full_size(np.asarray(self._scene.process(rgb).segmentation_mask, dtype=np.float32), w, h)
        self.frames += 1
        self.frames_total += 1
        return PoseOutput(landmarks, person, scene, (w, h))

    def _find(self, rgb: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Landmarks and mask from the graph tracking the person, else from the other one."""
        c = self.config
        if c.retry_pad <= 0:
            return self._plain(rgb)
        order = ["plain", "wide"] if self._active == "plain" else ["wide", "plain"]
        if self._empty >= c.retry_alone_after:  # an empty scene: one graph a frame
            order = order[self._empty % 2 :][:1]
        for name in order:
            landmarks, person = self._plain(rgb) if name == "plain" else self._zoomed_out(rgb)
            if landmarks is not None:
                if name == "wide" and self._active == "plain":
                    self.wide_finds += 1
                self._active, self._empty = name, 0
                return landmarks, person
        self._empty += 1
        return None, None

    def _plain(self, rgb: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        self.graph_runs += 1
        return _read(self._pose.process(rgb))

    def _zoomed_out(self, rgb: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The frame padded on every side, and what was found mapped back onto the frame."""
        if self._wide is None:
            self._wide = self._graph()
        h, w = rgb.shape[:2]
        px, py = round(w * self.config.retry_pad), round(h * self.config.retry_pad)
        padded = cv2.copyMakeBorder(rgb, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        self.graph_runs += 1
        landmarks, person = _read(self._wide.process(padded))
        if landmarks is None:
            return None, None
        wp, hp = w + 2 * px, h + 2 * py
        landmarks[:, 0] = (landmarks[:, 0] * wp - px) / w
        landmarks[:, 1] = (landmarks[:, 1] * hp - py) / h
        landmarks[:, 2] *= wp / w  # z is on the x axis's scale
        if person is not None:
            person = np.ascontiguousarray(person[py : py + h, px : px + w])
        return landmarks, person


def _read(result) -> tuple[np.ndarray | None, np.ndarray | None]:  # type: ignore[no-untyped-def]
    if result.pose_landmarks is None:
        return None, None
    landmarks = np.array(
        [(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark], dtype=np.float32
    )
    mask = result.segmentation_mask
    return landmarks, (None if mask is None else np.asarray(mask, dtype=np.float32))


def _full_size(prob: np.ndarray, w: int, h: int) -> np.ndarray:
    """A probability map computed on the shrunk frame, back at the frame's size (landmarks are
    normalised and need nothing)."""
    if prob.shape[:2] == (h, w):
        return prob
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
