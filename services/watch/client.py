"""Viewer client: subscribes to a session's generated frames, optionally writes them to a video,
and reports FPS, glass-to-glass latency percentiles and per-stage / per-hop times from headers.

Fencing (docs/fleet.md): a frame whose ``Chameleon-Epoch`` is older than the newest epoch seen
comes from a worker that no longer owns the session; the client's epoch filter
(``shared.client.watch``) drops and counts it, so it is never shown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from nats.aio.client import Client as NATS

from runtime.media import decode_jpeg
from runtime.metrics import percentiles
from shared.client import Frame, Watch, watch
from shared.subjects import Channel, Subjects


@dataclass
class Watcher:
    """Collects a session's output frames. ``keep_frames`` keeps the JPEGs for video/sheets."""

    nc: NATS
    subjects: Subjects
    session_id: str
    keep_frames: bool = True
    channel: Channel = Channel.OUTPUT  # another per-session channel with frame headers (benchmarks)
    frames: list[Frame] = field(default_factory=list)
    _watch: Watch | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        subject = self.subjects.session(self.session_id, self.channel)
        self._watch = await watch(self.nc, subject, self._on_frame, keep_bytes=self.keep_frames)

    def _on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._arrived.set()

    @property
    def bad(self) -> int:
        """Frames without valid headers."""
        return self._watch.filter.bad if self._watch else 0

    @property
    def stale_epoch(self) -> int:
        """Frames dropped: from an owner older than the newest seen."""
        return self._watch.filter.stale_epoch if self._watch else 0

    async def wait_for_seq(self, seq: int, timeout_s: float) -> bool:
        """Wait until a frame with sequence >= ``seq`` arrived (earlier ones may be superseded);
        False when ``timeout_s`` passes with no frame arriving."""
        while not self.frames or self.frames[-1].meta.seq < seq:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except TimeoutError:
                return False
        return True

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()

    # -- reporting --------------------------------------------------------------------------------
    def summary(self) -> dict:
        f = self.frames
        lat = [(r.recv_ns - r.meta.capture_ns) / 1e6 for r in f]
        span_s = (f[-1].recv_ns - f[0].recv_ns) / 1e9 if len(f) > 1 else 0.0
        stages: dict[str, list[float]] = {}
        hops: dict[str, list[float]] = {}
        for r in f:
            for name, ms in r.meta.stage_ms().items():
                stages.setdefault(name, []).append(ms)
            for a, b, ms in r.meta.hop_ms():
                hops.setdefault(f"{a}->{b}", []).append(ms)
            if r.meta.trace:
                hops.setdefault(f"{r.meta.trace[-1].stage}->watch", []).append(
                    (r.recv_ns - r.meta.trace[-1].ns) / 1e6
                )
        return {
            "frames_out": len(f),
            "fps_out": round((len(f) - 1) / span_s, 2) if span_s > 0 else 0.0,
            "latency_ms": percentiles(lat),
            "stage_ms": {k: percentiles(v, (50, 95)) for k, v in sorted(stages.items())},
            "hop_ms": {k: percentiles(v, (50, 95)) for k, v in sorted(hops.items())},
            "stale_epoch_dropped": self.stale_epoch,
        }

    def write_video(self, path: str | Path, fps: float) -> int:
        """Write kept frames to ``path`` (mp4v); returns frames written."""
        writer = None
        written = 0
        try:
            for r in self.frames:
                img = decode_jpeg(r.jpeg)
                if img is None:
                    continue
                if writer is None:
                    h, w = img.shape[:2]
                    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    size = (w, h)
                if (img.shape[1], img.shape[0]) != size:
                    img = cv2.resize(img, size)
                writer.write(np.ascontiguousarray(img))
                written += 1
        finally:
            if writer is not None:
                writer.release()
        return written
