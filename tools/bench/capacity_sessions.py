"""Sessions per box, measured (``chameleon bench capacity --sessions-max``): 1, 2, 3 ... real warp
sessions at once on one stack (real MediaPipe, real renderer), each a camera moving over the
sample photo at 640x480 and 15 fps, until one step misses the real-time bar; the largest N that
held is the answer. Nothing is derived from a single session's CPU time.

A step streams N sessions together (their clocks staggered across one frame interval, as
independent shoppers' would be), waits until every one has output and then ``WARMUP_S`` more, and
measures ``seconds``: per session, the frames that came out per second of the camera's schedule
(``fps`` consecutive sequence numbers from the first frame captured in the window; a frame shown
at all counts, one superseded, lost, or skipped by a late camera does not; counting by capture
time instead would call a camera tick a few ms late a lost frame), and every shown frame's
glass-to-glass latency (capture to arrival here). The step holds when the p05
over all sessions' windows is at least ``min_fps`` and the latency p95 at most ``max_g2g_ms``.

The camera frames are JPEG-encoded once, before any step (the encoder runs on a shopper's device,
not on the box), so this process only publishes and receives; its CPU is reported, not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.metrics import percentiles

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from shared.subjects import Subjects

WARMUP_S = 2.0
START_TIMEOUT_S = 60.0
DRAIN_S = 2.0  # after the window: frames captured in it that are still on their way


# -- the arithmetic (pure) ----------------------------------------------------------------------------
def window_fps(shown_seqs: list[int], first_seq: int, fps: float, seconds: int) -> list[int]:
    """Frames shown per second of the camera's schedule: of the sequence numbers from
    ``first_seq`` on, how many of each second's ``fps`` were shown, for ``seconds`` seconds."""
    counts = [0] * seconds
    for seq in set(shown_seqs):
        k = math.floor((seq - first_seq) / fps)
        if 0 <= k < seconds:
            counts[k] += 1
    return counts


def step_holds(fps_p05: float, g2g_p95_ms: float, min_fps: float, max_g2g_ms: float) -> bool:
    return fps_p05 >= min_fps and g2g_p95_ms <= max_g2g_ms


def largest_held(steps: list[Mapping[str, Any]]) -> int:
    """The largest N whose step held, with every smaller N holding too (0: not even one)."""
    best = 0
    for step in sorted(steps, key=lambda s: s["sessions"]):
        if not step["held"]:
            break
        best = step["sessions"]
    return best


# -- one session's camera and viewer --------------------------------------------------------------------
@dataclass
class _Session:
    sid: str
    jpegs: list[bytes]
    offset: int  # where in the cycle of frames this session starts
    shown: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (capture_ns, recv_ns)
    sent: list[tuple[int, int]] = field(default_factory=list)  # (seq, capture_ns) of each published
    published: int = 0
    skipped: int = 0


async def _camera(
    nc: NATS,
    subjects: Subjects,
    s: _Session,
    fps: float,
    size: tuple[int, int],
    start: float,
    stop: asyncio.Event,
) -> None:
    """Publish at ``fps`` from ``start`` (monotonic) until ``stop``; a frame more than one interval
    late is skipped, never bursted (as the camera client does)."""
    from shared.client import camera_frame, frame_slot, publish_frame

    period = 1.0 / fps
    subject = subjects.camera(s.sid)
    seq = 0
    while not stop.is_set():
        missed = await frame_slot(start, seq, period)
        if missed:
            s.skipped += missed
            seq += missed
            continue
        jpeg = s.jpegs[(s.offset + seq) % len(s.jpegs)]
        meta = camera_frame(s.sid, seq, *size)
        if await publish_frame(nc, subject, jpeg, meta):
            s.published += 1
            s.sent.append((seq, meta.capture_ns))
        seq += 1


async def _viewer(nc: NATS, subjects: Subjects, s: _Session) -> Callable[[], Any]:
    from shared.client import watch

    def on_frame(frame: Any) -> None:
        s.shown.setdefault(frame.meta.seq, (frame.meta.capture_ns, frame.recv_ns))

    w = await watch(nc, subjects.output(s.sid), on_frame, keep_bytes=False)
    return w.stop


# -- a step ---------------------------------------------------------------------------------------------
async def run_step(
    url: str,
    subjects: Subjects,
    n: int,
    jpegs: list[bytes],
    *,
    label: str,
    fps: float,
    size: tuple[int, int],
    seconds: int,
    min_fps: float,
    max_g2g_ms: float,
    cpu_snapshot: Callable[[], dict[str, float]],
    threads: Callable[[], dict[str, int]] | None = None,
) -> dict[str, Any]:
    """N sessions at once; the step's figures and whether it held."""
    from runtime.bus import connect
    from shared import control
    from shared.headers import now_ns

    sessions = [_Session(f"{label}-n{n}-s{i}", jpegs, i * len(jpegs) // n) for i in range(n)]
    conns = [await connect(url, f"bench-{s.sid}") for s in sessions]
    stops = [await _viewer(nc, subjects, s) for nc, s in zip(conns, sessions, strict=True)]
    stop = asyncio.Event()
    t_start = time.monotonic() + 0.2
    cams = [
        asyncio.create_task(_camera(nc, subjects, s, fps, size, t_start + i / (fps * n), stop))
        for i, (nc, s) in enumerate(zip(conns, sessions, strict=True))
    ]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(s.shown for s in sessions):
            if time.monotonic() > deadline or any(c.done() for c in cams):
                missing = [s.sid for s in sessions if not s.shown]
                raise RuntimeError(f"no output within {START_TIMEOUT_S:.0f} s from {missing}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(WARMUP_S)
        before, t0_ns, t0 = cpu_snapshot(), now_ns(), time.monotonic()
        await asyncio.sleep(seconds)
        after, t1_ns, wall = cpu_snapshot(), now_ns(), time.monotonic() - t0
        thread_counts = threads() if threads is not None else {}
        await asyncio.sleep(DRAIN_S)
    finally:
        stop.set()
        await asyncio.gather(*cams, return_exceptions=True)
        for nc, s, unwatch in zip(conns, sessions, stops, strict=True):
            await unwatch()
            with contextlib.suppress(Exception):  # the session ends now, not after the idle timeout
                await nc.publish(subjects.control(s.sid), control.stop(s.sid).encode())
            await nc.drain()
    windows: list[int] = []
    latency: list[float] = []
    for s in sessions:
        first = next((q for q, c in s.sent if c >= t0_ns), None)
        if first is None:
            windows += [0] * seconds
            continue
        windows += window_fps(list(s.shown), first, fps, seconds)
        latency += [(r - c) / 1e6 for c, r in s.shown.values() if t0_ns <= c < t1_ns]
    fps_p05 = float(np.percentile(windows, 5)) if windows else 0.0
    g2g = percentiles(latency, (50, 95)) if latency else {"p50": float("inf"), "p95": float("inf")}
    shown = sum(1 for s in sessions for c, _ in s.shown.values() if t0_ns <= c < t1_ns)
    cores = {k: round((after[k] - before[k]) / wall, 3) for k in before}
    return {
        "sessions": n,
        "fps_p05": round(fps_p05, 2),
        "fps_mean": round(float(np.mean(windows)), 2) if windows else 0.0,
        "g2g_ms": g2g,
        "held": step_holds(fps_p05, g2g["p95"], min_fps, max_g2g_ms),
        "frames_shown": shown,
        "camera_skipped": sum(s.skipped for s in sessions),
        "cores_busy": {**cores, "total": round(sum(cores.values()), 3)},
        "cpu_ms_per_frame": round(sum(after[k] - before[k] for k in before) * 1e3 / shown, 3)
        if shown
        else None,
        "threads": thread_counts,
    }
