"""Per-session bookkeeping of one generator worker. Pure: no bus, no asyncio.

A ``ServedSession`` holds the session's renderer (which owns the KV cache or warp history), the
garment in effect, the swap being measured, and the input metadata the renderer's (possibly
chunked) output must be matched back to.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from services.generator.rendering import FrameInput, Garment, Renderer
from shared.headers import FrameMeta

APPLIED_EVENTS_KEPT = 64
PENDING_META_KEPT = 64


@dataclass
class PendingSwap:
    """A swap applied to the renderer whose first output frame has not been published yet."""

    event_id: str
    garment_id: str
    published_ns: int
    applied_ns: int
    received_ns: int = 0  # the control message reached this worker
    locked_ns: int = 0  # the session's in-flight frame finished and the swap could start


@dataclass
class ServedSession:
    session_id: str
    garment: Garment
    backend: str
    epoch: int = 0
    renderer: Renderer | None = None
    rendering: Renderer | None = None  # the renderer of the frame in flight, if any
    pending_swap: PendingSwap | None = None
    applied_events: list[str] = field(default_factory=list)
    metas: OrderedDict[int, FrameMeta] = field(default_factory=OrderedDict)
    frames_rendered: int = 0
    # the newest input and its metadata as it arrived (before this stage's stamps): a swap
    # re-renders it at once, so the new garment shows without waiting for the next camera frame
    last_input: FrameInput | None = None
    last_meta: FrameMeta | None = None

    def remember_event(self, event_id: str) -> None:
        self.applied_events.append(event_id)
        del self.applied_events[:-APPLIED_EVENTS_KEPT]

    def remember_meta(self, meta: FrameMeta) -> None:
        self.metas[meta.seq] = meta
        while len(self.metas) > PENDING_META_KEPT:
            self.metas.popitem(last=False)

    def keep_latest(self, inp: FrameInput, meta: FrameMeta) -> None:
        self.last_input = inp
        self.last_meta = FrameMeta(
            meta.session_id,
            meta.seq,
            meta.capture_ns,
            meta.width,
            meta.height,
            list(meta.trace),
            meta.garment_id,
        )

    def take_meta(self, seq: int) -> FrameMeta | None:
        return self.metas.pop(seq, None)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
