"""Camera client: publishes JPEG frames of a source at a fixed FPS to a session's camera subject.

Frames are paced against an absolute schedule; when the source or the machine falls behind, the
client skips ahead instead of bursting (a real camera does not queue old frames either). When the
link cannot carry them, frames are dropped at the client rather than queued: a tick's frame goes
only while the bytes published but not yet acknowledged (a PING every ``probe_ms``, never one per
frame) fit the window of ``shared.pacing`` (docs/frontends.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np
from nats.aio.client import Client as NATS

from runtime.media import encode_jpeg
from shared.client import PacedSender, camera_frame, frame_slot, publish_frame
from shared.headers import now_ns
from shared.subjects import Subjects


@dataclass
class CameraReport:
    published: int = 0
    skipped: int = 0  # seqs not published: behind schedule, link full, or disconnected
    link_dropped: int = 0  # of those, the ticks whose frame the link had no room for
    first_capture_ns: int = 0
    last_capture_ns: int = 0


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
    sender = PacedSender(nc, fps)
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
            if period:  # behind by more than a frame: skip, do not burst
                missed = await frame_slot(start, seq - first_seq, period)
                report.skipped += missed
                seq += missed
            if not sender.admit(len(jpeg)):
                report.skipped += 1
                report.link_dropped += 1
                seq += 1
                continue
            capture = now_ns()
            if await publish_frame(nc, subject, jpeg, camera_frame(session_id, seq, w, h, capture)):
                sender.sent(len(jpeg))
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
        await sender.close()
    return report
