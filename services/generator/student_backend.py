"""The ``student`` backend: the causal video student with its KV cache (services/generator/engine)
behind the generator's session interface. Pure: no bus, no asyncio.

The student works in chunks: it collects ``pixel_frames_next_chunk`` conditioned input frames,
generates them in one step, and returns them together (chunk latency is the price of the paper's
few-step causal sampling). A swap runs the engine's three rescheduling operations at the next
chunk boundary; frames buffered but not yet generated are rendered with the new garment.

The student generates whole frames at its own small resolution (64x64 for ``tiny``); stretched to
the camera's size that is no person and no background, only the garment is worth showing. So only
the garment region is taken from it, feathered inward, and everything else is the camera frame,
bit for bit. At the session's end ``flush`` generates the incomplete chunk, so every frame comes out.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from services.generator.rendering import AtCapacity, FrameInput, Garment, RenderedFrame
from services.generator.settings import GeneratorSettings

PACKAGED_CHECKPOINTS = Path(__file__).parent / "checkpoints"
FEATHER_FRACTION = 1 / 96  # feather width over the frame's shorter side: 5 px at 480

# MediaPipe pose connections drawn into the skeleton channel (shoulders, arms, torso, legs).
_LIMBS = (
    (11, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
    (11, 23),
    (12, 24),
    (23, 24),
    (23, 25),
    (25, 27),
    (24, 26),
    (26, 28),
)


def checkpoint_path(settings: GeneratorSettings) -> Path | None:
    if settings.student_checkpoint:
        p = Path(settings.student_checkpoint)
        return p if p.is_file() else None
    p = PACKAGED_CHECKPOINTS / f"{settings.student_config}.safetensors"
    return p if p.is_file() else None


def student_available(settings: GeneratorSettings, require_cuda: bool) -> bool:
    if checkpoint_path(settings) is None:
        return False
    if not require_cuda:
        return True
    try:
        import torch
    except ImportError:  # installed without the [gpu] extra: the warp backend serves
        return False
    return bool(torch.cuda.is_available())


def conditioning_maps(frame: FrameInput, height: int, width: int, channels: int = 4) -> np.ndarray:
    """Per-frame conditioning at the student's resolution, (H, W, C) uint8:
    0 person mask, 1 garment region, 2 pose skeleton, 3 luminance of the garment-agnostic frame."""
    out = np.zeros((height, width, channels), np.uint8)

    def fit(m: np.ndarray | None) -> np.ndarray | None:
        return None if m is None else cv2.resize(m, (width, height), interpolation=cv2.INTER_AREA)

    person, region = fit(frame.person_mask), fit(frame.garment_mask)
    if person is not None and channels > 0:
        out[..., 0] = person
    if region is not None and channels > 1:
        out[..., 1] = region
    if frame.landmarks is not None and channels > 2:
        pts = (frame.landmarks[:, :2] * (width, height)).astype(np.int32)
        vis = frame.landmarks[:, 3] > 0.5
        skel = np.ascontiguousarray(out[..., 2])
        for a, b in _LIMBS:
            if vis[a] and vis[b]:
                cv2.line(skel, tuple(pts[a]), tuple(pts[b]), 255, max(1, width // 32))
        out[..., 2] = skel
    if channels > 3:
        grey = cv2.cvtColor(
            cv2.resize(frame.frame_bgr, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
        )
        if region is not None:
            grey = np.where(region > 0, 128, grey).astype(np.uint8)
        out[..., 3] = grey
    return out


def garment_rgb(garment: Garment) -> np.ndarray:
    """The garment texture composited on white, RGB (the student's image convention)."""
    tex = garment.texture_bgra.astype(np.float32)
    alpha = tex[..., 3:4] / 255.0
    bgr = tex[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return cv2.cvtColor(bgr.astype(np.uint8), cv2.COLOR_BGR2RGB)


def garment_alpha(region: np.ndarray) -> np.ndarray:
    """Weight of the generated frame, float32 in [0, 1] at the region's size: 1 deep inside the
    garment region, feathered down toward its edge, and exactly 0 outside it, so the background,
    face and arms stay the camera's own pixels."""
    h, w = region.shape[:2]
    r = max(1, round(min(h, w) * FEATHER_FRACTION))
    inside = region > 0
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    core = cv2.erode(inside.astype(np.uint8), disc)  # the blur below spreads it back to the edge
    alpha = cv2.GaussianBlur(core.astype(np.float32), (2 * r + 1, 2 * r + 1), 0)
    alpha[~inside] = 0.0
    return alpha


def composite(
    camera_bgr: np.ndarray, generated_bgr: np.ndarray, region: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The generated frame blended onto the camera frame inside ``region`` only: ``(output, drawn
    mask)``. Pixels outside the drawn mask are the camera's, bit-identical; without a region (no
    person found) the camera frame comes back as is and nothing is drawn."""
    if region is None:
        return camera_bgr, None
    h, w = camera_bgr.shape[:2]
    if region.shape[:2] != (h, w):
        region = cv2.resize(region, (w, h), interpolation=cv2.INTER_NEAREST)
    alpha = garment_alpha(region)
    drawn = alpha >= 0.5 / 255  # lighter than that rounds back to the camera pixel
    if not drawn.any():
        return camera_bgr, None
    out = camera_bgr.copy()
    cam = camera_bgr[drawn].astype(np.float32)
    blended = cam + alpha[drawn][:, None] * (generated_bgr[drawn].astype(np.float32) - cam) + 0.5
    out[drawn] = np.clip(blended, 0, 255).astype(np.uint8)
    return out, drawn.astype(np.uint8) * 255


class StudentRenderer:
    chunked = True

    def __init__(self, backend: StudentBackend, session_id: str, garment: Garment) -> None:
        from services.generator.engine.pool import AtCapacity as PoolFull

        try:
            self.session = backend.engine.open_session(seed=zlib.crc32(session_id.encode()))
        except PoolFull as exc:
            raise AtCapacity(str(exc)) from exc
        self.config = backend.engine.config
        self.garment = garment
        self.garment_id = garment.garment_id
        self.buffer: list[FrameInput] = []
        self._queued: Garment | None = None  # a swap waiting for the next chunk boundary

    def render(self, frame: FrameInput) -> list[RenderedFrame]:
        self._apply_queued()
        if not self.session.started:
            reference = cv2.cvtColor(frame.frame_bgr, cv2.COLOR_BGR2RGB)
            self.session.start(reference, garment_rgb(self.garment))
        self.buffer.append(frame)
        if len(self.buffer) < self.session.pixel_frames_next_chunk:
            return []
        return self._generate()

    def flush(self) -> list[RenderedFrame]:
        """The session is ending: generate the incomplete chunk now instead of dropping it
        (``Renderer.flush``). The chunk is padded with its last frame's conditioning and only the
        buffered frames come out. The padding enters the KV history, hence only at the end."""
        self._apply_queued()  # a swap queued after the last frame still shows on the buffered ones
        return self._generate() if self.buffer else []

    def _apply_queued(self) -> None:
        queued, self._queued = self._queued, None
        if queued is not None:
            self._reschedule(queued)

    def _generate(self) -> list[RenderedFrame]:
        """One chunk from the buffered frames, each composited onto its own camera frame."""
        garment_id = self.garment_id  # what this chunk is generated with, whatever is queued meanwhile
        cfg = self.config
        size = cfg.pixel_height, cfg.pixel_width
        cond = [conditioning_maps(f, *size, cfg.cond_channels) for f in self.buffer]
        cond += [cond[-1]] * (self.session.pixel_frames_next_chunk - len(cond))
        frames = self.session.step(np.stack(cond))
        out = []
        for inp, rgb in zip(self.buffer, frames[: len(self.buffer)], strict=True):
            h, w = inp.frame_bgr.shape[:2]
            bgr = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (w, h), interpolation=cv2.INTER_LINEAR)
            image, drawn = composite(inp.frame_bgr, bgr, inp.garment_mask)
            out.append(RenderedFrame(inp.seq, image, garment_id, drawn))
        self.buffer.clear()
        return out

    def swap(self, garment: Garment) -> StudentRenderer:
        """Queue refresh + withdraw + disentangle (engine ``swap``) for the next chunk boundary and
        return this renderer (``Renderer.swap``). Queued, not run: a chunk may be generating on
        another thread, and the KV cache must not change under it. Frames buffered but not yet
        generated are generated with the new garment."""
        self._queued = garment
        return self

    def _reschedule(self, garment: Garment) -> None:
        self.garment = garment
        self.garment_id = garment.garment_id
        if self.session.started:
            self.session.swap(garment_rgb(garment))

    def close(self) -> None:
        self.session.release()


class StudentBackend:
    name = "student"

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine

    @classmethod
    def from_settings(cls, settings: GeneratorSettings) -> StudentBackend:
        import torch

        from services.generator.engine.config import get_config
        from services.generator.engine.session import Engine

        device = settings.student_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        ckpt = checkpoint_path(settings)
        engine = Engine.build(
            get_config(settings.student_config),
            device=device,
            dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            max_sessions=settings.max_sessions,
            weights=str(ckpt) if ckpt else None,
        )
        return cls(engine)

    def free_slots(self) -> int:
        pool = self.engine.pool
        return pool.capacity - pool.in_use

    def prepare(self, garment: Garment) -> None:
        """Nothing yet: the garment latent is encoded at the swap (one image encode, ~ms)."""

    def open(self, session_id: str, garment: Garment) -> StudentRenderer:
        return StudentRenderer(self, session_id, garment)
