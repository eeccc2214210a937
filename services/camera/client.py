"""Camera client: publishes JPEG frames of a source at a fixed FPS to a session's camera subject.

Frames are paced against an absolute schedule; when the source or the machine falls behind, the
client skips ahead instead of bursting (a real camera does not queue old frames either). When the
link cannot carry them, frames are dropped at the client rather than queued: a tick's frame goes
only while the bytes published but not yet acknowledged (a PING every ``probe_ms``, never one per
frame) fit the window of ``shared.pacing`` (docs/frontends.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np
from nats.aio.client import Client as NATS

from shared.bus import publish_frame
from shared.headers import FrameMeta, now_ns
from shared.media import encode_jpeg
from shared.pacing import PacerConfig, ProbeToken, SendPacer
from shared.subjects import Subjects

STAGE = "camera"
# nats-py cancels a timed-out flush's future, and a PONG that comes later then breaks its read loop:
# a probe never times out while connected (a reconnect forgets it, and resets the pacer)
PROBE_TIMEOUT_S = 3600.0


@dataclass
class CameraReport:
    published: int = 0
    skipped: int = 0  # seqs not published: behind schedule, link full, or disconnected
    link_dropped: int = 0  # of those, the ticks whose frame the link had no room for
    first_capture_ns: int = 0
    last_capture_ns: int = 0


class _Acks:
    """The pacer's probes: a flush (PING/PONG) at most every ``probe_ms``, answered in the background."""

    def __init__(self, nc: NATS, pacer: SendPacer) -> None:
        self.nc, self.pacer = nc, pacer
        self.tasks: set[asyncio.Task[None]] = set()

    def maybe_probe(self) -> None:
        now = time.monotonic() * 1000
        if self.pacer.want_probe(now):
            task = asyncio.create_task(self._probe(self.pacer.probe_sent(now)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _probe(self, token: ProbeToken) -> None:
        # nats-py writes a PING straight to the socket, ahead of publishes still in its own buffer:
        # the PONG acknowledges only what had been written when the PING was
        written = self.pacer.sent - self.nc.pending_data_size
        token = dataclasses.replace(token, bytes=max(0, min(token.bytes, written)))
        with contextlib.suppress(Exception):  # disconnected: the reconnect resets the pacer
            await self.nc.flush(timeout=PROBE_TIMEOUT_S)
            self.pacer.on_ack(token, time.monotonic() * 1000)

    async def close(self) -> None:
        """After the last flush every probe has its answer (PONGs come in order); one that has
        none lost its connection, and cancelling it can no longer meet a late PONG."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
        for task in list(self.tasks):
            task.cancel()


def _next_jpeg(frames: Iterator[np.ndarray], quality: int) -> tuple[bytes, int, int] | None:
    frame = next(frames, None)
    if frame is None:
        return None
    h, w = frame.shape[:2]
    return encode_jpeg(frame, quality), w, h


async def run_camera(
    nc: NATS,
    subjects: Subjects,
    session_id: str,
    frames: Iterator[np.ndarray],
    fps: float = 15.0,
    max_frames: int | None = None,
    quality: int = 85,
    stop: asyncio.Event | None = None,
    on_published: Callable[[int], Awaitable[None]] | None = None,
    first_seq: int = 0,
) -> CameraReport:
    """Publish up to ``max_frames`` frames; ``on_published(seq)`` runs after each (demo swaps)."""
    report = CameraReport()
    subject = subjects.camera(session_id)
    period = 1.0 / fps if fps > 0 else 0.0
    pacer = SendPacer(PacerConfig(fps=fps or 15.0))
    acks = _Acks(nc, pacer)
    connected = nc.is_connected
    start = time.monotonic()
    seq = first_seq
    try:
        while max_frames is None or seq - first_seq < max_frames:
            if stop is not None and stop.is_set():
                break
            item = await asyncio.to_thread(_next_jpeg, frames, quality)
            if item is None:
                break
            jpeg, w, h = item
            if period:
                due = start + (seq - first_seq) * period
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif -delay > period:  # behind by more than a frame: skip, do not burst
                    missed = int(-delay / period)
                    report.skipped += missed
                    seq += missed
            if nc.is_connected and not connected:
                pacer.reconnected()  # what was on its way went with the old connection
            connected = nc.is_connected
            acks.maybe_probe()  # also when this frame does not go: what went gets acknowledged
            if not pacer.admit(time.monotonic() * 1000, len(jpeg)):
                report.skipped += 1
                report.link_dropped += 1
                seq += 1
                continue
            capture = now_ns()
            meta = FrameMeta(session_id=session_id, seq=seq, capture_ns=capture, width=w, height=h)
            meta.stamp(STAGE, "out", capture)
            if await publish_frame(nc, subject, jpeg, meta):
                pacer.on_sent(len(jpeg))
                acks.maybe_probe()
                report.published += 1
                report.first_capture_ns = report.first_capture_ns or capture
                report.last_capture_ns = capture
                if on_published is not None:
                    await on_published(seq)
            else:
                report.skipped += 1
            seq += 1
        await nc.flush()
    finally:
        await acks.close()
    return report
