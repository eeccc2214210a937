"""The one session interface every generator backend implements (warp, student, sim). Pure: no
bus, no asyncio.

A backend opens a ``Renderer`` per stream session. The session owns all per-stream state
(the student's KV cache, the warp renderer's temporal history and reference estimate) and maps a
swap onto the paper's three operations: refresh the garment, withdraw history, re-derive the
reference from the latest frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Garment:
    """A catalogue garment as a generator uses it (decoded from the garment service's reply)."""

    garment_id: str
    category: str  # top, tshirt, shirt, dress, jacket
    texture_bgra: np.ndarray  # canonical canvas, alpha = garment mask
    keypoints: dict[str, tuple[float, float, float]]  # name -> (x, y, confidence), canvas pixels
    colours: list[tuple[int, int, int]] = field(default_factory=list)  # dominant BGR, most first
    student_tensor: np.ndarray | None = None


@dataclass(frozen=True)
class FrameInput:
    """One frame with its conditioning from the preprocess service."""

    seq: int
    frame_bgr: np.ndarray
    landmarks: np.ndarray | None = None  # (33, 4) x, y, z, visibility; x/y normalised
    person_mask: np.ndarray | None = None  # uint8 0/255, frame size
    garment_mask: np.ndarray | None = None  # uint8 0/255: where the garment may be drawn


@dataclass(frozen=True)
class RenderedFrame:
    seq: int
    image_bgr: np.ndarray
    garment_id: str
    drawn_mask: np.ndarray | None = None  # where the garment was actually drawn (for metrics)


class Renderer(Protocol):
    garment_id: str
    # True when output comes in chunks (the student): a frame cannot be re-rendered on its own
    chunked: bool

    def render(self, frame: FrameInput) -> list[RenderedFrame]:
        """Render one input frame. A chunked backend may return nothing until its chunk is full,
        then several frames at once."""
        ...

    def swap(self, garment: Garment) -> Renderer:
        """Apply a garment change; returns the renderer that draws from now on, and every frame it
        renders after this call shows ``garment`` only.

        Must return at once and be safe while a frame of this renderer is being drawn on another
        thread (the swap never waits for the frame in flight). A frame-by-frame renderer returns a
        fresh renderer (refresh, withdraw and re-reference amount to that); a chunked one returns
        itself with the rescheduling queued for its next chunk boundary."""
        ...

    def flush(self) -> list[RenderedFrame]:
        """The session is ending (stop, idle, restart): return the frames still held back, so
        every frame given to ``render`` comes out exactly once. A frame-by-frame renderer holds
        none and returns []; a chunked one generates its incomplete chunk. Called only while no
        frame is drawing, and the renderer is closed after it."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def open(self, session_id: str, garment: Garment) -> Renderer:
        """Open a session; raises ``AtCapacity`` when this worker cannot take another."""
        ...

    def prepare(self, garment: Garment) -> None:
        """Precompute what every session of this worker needs for ``garment`` (shared, cached),
        so a later swap to it only switches; may do nothing."""
        ...

    def free_slots(self) -> int:
        """Sessions this backend can still open (the student: free KV caches in its pool). The
        worker's lease carries it, so the fleet never places a session where it cannot open."""
        ...


class AtCapacity(RuntimeError):
    """This worker has no room for another session (its cache pool is full)."""
