"""Viewer client: subscribes to a session's generated frames, optionally writes them to a video,
and reports FPS, glass-to-glass latency percentiles and per-stage / per-hop times from headers.

Fencing (docs/fleet.md): a frame whose ``Chameleon-Epoch`` is older than the newest epoch seen
comes from a worker that no longer owns the session; it is dropped and counted, never shown."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runtime.media import decode_jpeg
from runtime.metrics import percentiles
from shared.headers import FrameMeta, HeaderError, now_ns
from shared.subjects import Channel, Subjects


@dataclass
class Received:
    meta: FrameMeta
    recv_ns: int
    jpeg: bytes


@dataclass
class Watcher:
    """Collects a session's output frames. ``keep_frames`` keeps the JPEGs for video/sheets."""

    nc: NATS
    subjects: Subjects
    session_id: str
    keep_frames: bool = True
    channel: Channel = Channel.OUTPUT  # another per-session channel with frame headers (benchmarks)
    frames: list[Received] = field(default_factory=list)
    bad: int = 0
    stale_epoch: int = 0  # frames dropped: from an owner older than the newest seen
    epoch: int = 0  # the newest owner epoch seen
    _sub: Subscription | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        subject = self.subjects.session(self.session_id, self.channel)
        self._sub = await self.nc.subscribe(subject, cb=self._on_msg)
        # twice: nats-py 2.16 can write a flush's PING ahead of a SUB still in its buffer, so one
        # round trip does not prove the server has the subscription (seen in the server's trace)
        await self.nc.flush()
        await self.nc.flush()

    async def _on_msg(self, msg: Msg) -> None:
        t = now_ns()
        try:
            meta = FrameMeta.from_headers(msg.headers)
        except HeaderError:
            self.bad += 1
            return
        if meta.epoch < self.epoch:
            self.stale_epoch += 1
            return
        self.epoch = meta.epoch
        self.frames.append(Received(meta, t, bytes(msg.data) if self.keep_frames else b""))
        self._arrived.set()

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
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

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
