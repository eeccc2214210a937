"""``sim``: a stand-in for a GPU renderer in load tests (``chameleon bench load``). Pure: no bus,
no asyncio.

Each render blocks its worker thread for a fixed service time, as a GPU call does, and returns a
tiny solid image in the garment's first dominant colour: the load test then measures the fleet
(routing, leases, back-pressure, swaps) at a known per-frame cost, not JPEG encoding or warping.
Never chosen by ``auto``.
"""

from __future__ import annotations

import time

import numpy as np

from services.generator.rendering import AtCapacity, FrameInput, Garment, RenderedFrame

OUT_WIDTH, OUT_HEIGHT = 64, 48  # small, so encoding and the bus cost next to nothing
NEUTRAL_BGR = (128, 128, 128)  # a garment without dominant colours


class SimRenderer:
    """One session: sleeps ``service_ms`` per frame and returns one small frame per input."""

    chunked = False

    def __init__(
        self, session_id: str, garment: Garment, service_ms: float, backend: SimBackend | None = None
    ) -> None:
        self.session_id = session_id
        self.garment = garment
        self.garment_id = garment.garment_id
        self.service_ms = service_ms
        self.closed = False
        self._backend = backend
        self._image = np.empty((OUT_HEIGHT, OUT_WIDTH, 3), np.uint8)
        self._image[:] = garment.colours[0] if garment.colours else NEUTRAL_BGR

    def render(self, frame: FrameInput) -> list[RenderedFrame]:
        """``time.sleep`` on purpose: render runs on a worker thread and should hold it the way a
        blocking GPU call does, without taking a CPU core the load test wants to measure."""
        if self.service_ms > 0:
            time.sleep(self.service_ms / 1000.0)
        return [RenderedFrame(frame.seq, self._image.copy(), self.garment_id)]

    def swap(self, garment: Garment) -> SimRenderer:
        """A fresh renderer, as the warp backend does, so a frame in flight keeps the old one."""
        if self._backend is not None:
            return self._backend.open(self.session_id, garment)
        return SimRenderer(self.session_id, garment, self.service_ms)

    def flush(self) -> list[RenderedFrame]:
        """Nothing held back: every ``render`` returned its frame (``Renderer.flush``)."""
        return []

    def close(self) -> None:
        self.closed = True


class SimBackend:
    """``Backend`` of simulated renderers: ``max_sessions`` slots, like a GPU's cache pool."""

    name = "sim"

    def __init__(self, service_ms: float = 40.0, max_sessions: int = 8) -> None:
        if service_ms < 0:
            raise ValueError(f"sim service time must be >= 0 ms, got {service_ms}")
        self.service_ms = service_ms
        self.max_sessions = max_sessions
        self._open: dict[str, SimRenderer] = {}

    def prepare(self, garment: Garment) -> None:
        """Nothing to precompute."""

    def free_slots(self) -> int:
        return self.max_sessions - sum(1 for r in self._open.values() if not r.closed)

    def open(self, session_id: str, garment: Garment) -> SimRenderer:
        self._open = {k: v for k, v in self._open.items() if not v.closed}
        if session_id not in self._open and len(self._open) >= self.max_sessions:
            raise AtCapacity(f"sim backend has {len(self._open)} sessions open")
        renderer = SimRenderer(session_id, garment, self.service_ms, backend=self)
        self._open[session_id] = renderer
        return renderer
