"""``chameleon bench transport``: what the bus costs.

The same stages on the same pre-encoded camera frames, in the same run: (a) in one process with
direct calls, (b) as separate service processes over a real nats-server. Two pipelines are measured:

- ``data_path``: ingest + preprocess (MediaPipe), the stages every frame really crosses before
  the generator; the headline ``bus_vs_inprocess_fps_ratio`` is this one.
- ``ingest_only``: ingest + the pass-through, a ~2 ms stage, where the bus's fixed per-hop cost
  is as large as the work itself (reported in full, so that cost stays visible).

Over the bus the client keeps ``--window`` frames in flight, as a camera does (it never waits for
the previous frame's output); ``bus_serial_fps`` (window 1) is reported next to it. ``hop_ms`` is
every stage-to-stage transport time taken from the frames' trace headers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from datetime import datetime, timezone

from harness.stack import Stack
from runtime.bus import connect
from runtime.media import encode_jpeg, read_image, sample_photo
from runtime.metrics import percentiles
from runtime.settings import BaseSettings
from services.camera.source import MotionCamera
from services.ingest.settings import IngestSettings
from services.ingest.validate import Limits, process_frame
from services.watch.client import Watcher
from shared.client import publish_frame
from shared.headers import FrameMeta, now_ns
from shared.subjects import Channel, Subjects


def _payloads(n: int, width: int, height: int) -> list[bytes]:
    cam = MotionCamera(read_image(sample_photo("bus.jpg", fetch=True)), width, height)
    distinct = [encode_jpeg(cam.frame(i)) for i in range(min(n, 60))]
    return [distinct[i % len(distinct)] for i in range(n)]


def inprocess_fps(payloads: list[bytes], s: IngestSettings) -> float:
    limits = Limits(s.max_frame_bytes, s.max_input_pixels, s.min_input_side, s.max_aspect)
    t0 = time.perf_counter()
    for seq, data in enumerate(payloads):
        meta = FrameMeta("bench", seq, now_ns(), 0, 0).stamp("camera", "out")
        meta.stamp("ingest", "in")
        out = process_frame(data, limits, s.out_width, s.out_height, s.jpeg_quality)
        meta.stamp("ingest", "out").stamp("passthrough", "in").stamp("passthrough", "out")
        FrameMeta.from_headers(meta.to_headers())  # the consumer's parse, as on the bus
        assert out.jpeg
    return len(payloads) / (time.perf_counter() - t0)


def inprocess_data_path_fps(payloads: list[bytes], s: IngestSettings, fps: float) -> float:
    """ingest + preprocess with direct calls, one frame after the other."""
    from services.preprocess.pipeline import SessionPreprocessor

    limits = Limits(s.max_frame_bytes, s.max_input_pixels, s.min_input_side, s.max_aspect)
    pre = SessionPreprocessor("bench-inprocess")
    try:
        t0 = time.perf_counter()
        for seq, data in enumerate(payloads):
            meta = FrameMeta("bench", seq, now_ns(), 0, 0).stamp("camera", "out").stamp("ingest", "in")
            out = process_frame(data, limits, s.out_width, s.out_height, s.jpeg_quality)
            meta.stamp("ingest", "out").stamp("preprocess", "in")
            cond = pre.process_jpeg(out.jpeg, seq, seq * 1000.0 / fps).conditioning
            meta.stamp("preprocess", "out")
            FrameMeta.from_headers(meta.to_headers())
            assert cond.encode()  # the message the service would publish
        return len(payloads) / (time.perf_counter() - t0)
    finally:
        pre.close()


async def bus_run(
    url: str, payloads: list[bytes], window: int, session: str, channel: Channel = Channel.OUTPUT
) -> tuple[float, Watcher]:
    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    nc = await connect(url, "bench-transport")
    watcher = Watcher(nc, subjects, session, keep_frames=False, channel=channel)
    await watcher.start()
    t0 = time.perf_counter()
    for seq, data in enumerate(payloads):
        # keep at most `window` frames in flight (a superseded frame counts as done)
        if seq >= window and not await watcher.wait_for_seq(seq - window, timeout_s=5.0):
            raise RuntimeError(f"no frame at or after {seq - window} came out")
        meta = FrameMeta(session, seq, now_ns(), 0, 0).stamp("camera", "out")
        await publish_frame(nc, subjects.camera(session), data, meta)
    if not await watcher.wait_for_seq(len(payloads) - 1, timeout_s=5.0):
        raise RuntimeError("the last frame never came out")
    elapsed = time.perf_counter() - t0
    await watcher.stop()
    await nc.drain()
    return len(watcher.frames) / elapsed, watcher


def _hops(watcher: Watcher) -> list[float]:
    hops = [ms for r in watcher.frames for _, _, ms in r.meta.hop_ms()]
    return hops + [(r.recv_ns - r.meta.trace[-1].ns) / 1e6 for r in watcher.frames]


def _measure(
    services: list[str], channel: Channel, payloads: list[bytes], window: int, env: dict[str, str]
) -> dict:
    with Stack(services, nats_url=BaseSettings.from_env().nats_url, env=env) as stack:
        asyncio.run(bus_run(stack.url, payloads[:30], window, "bench-warmup", channel))
        bus, watcher = asyncio.run(bus_run(stack.url, payloads, window, "bench", channel))
        serial, _ = asyncio.run(
            bus_run(stack.url, payloads[: max(30, len(payloads) // 3)], 1, "bench-serial", channel)
        )
    summary = watcher.summary()
    return {
        "bus_fps": round(bus, 2),
        "bus_serial_fps": round(serial, 2),
        "bus_frames_superseded": len(payloads) - len(watcher.frames),
        "hop_ms": percentiles(_hops(watcher), (50, 95)),
        "per_hop_ms": summary["hop_ms"],
        "stage_ms": summary["stage_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon bench transport")
    p.add_argument("--frames", type=int, default=300, help="frames through the data path")
    p.add_argument("--ingest-frames", type=int, default=600, help="frames through ingest only")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=15.0, help="camera clock for MediaPipe timestamps")
    p.add_argument("--window", type=int, default=2, help="frames in flight over the bus")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    settings = IngestSettings.from_env(out_width=args.width, out_height=args.height, deadline_ms=60_000.0)
    env = {
        "CHAMELEON_DEADLINE_MS": "60000",
        "CHAMELEON_OUT_WIDTH": str(args.width),
        "CHAMELEON_OUT_HEIGHT": str(args.height),
    }
    payloads = _payloads(max(args.frames, args.ingest_frames), args.width, args.height)

    # ingest only: a ~2 ms stage, the bus's fixed cost in plain sight
    small = payloads[: args.ingest_frames]
    inprocess_fps(small[:30], settings)
    ingest_inproc = inprocess_fps(small, settings)
    ingest_bus = _measure(["ingest", "passthrough"], Channel.OUTPUT, small, args.window, env)

    # the data path: ingest + preprocess
    frames = payloads[: args.frames]
    inprocess_data_path_fps(frames[:20], settings, args.fps)
    path_inproc = inprocess_data_path_fps(frames, settings, args.fps)
    path_bus = _measure(["ingest", "preprocess"], Channel.CONDITIONING, frames, args.window, env)

    result = {
        "resolution": f"{args.width}x{args.height}",
        "window": args.window,
        "inprocess_fps": round(path_inproc, 2),
        "bus_fps": path_bus["bus_fps"],
        "bus_vs_inprocess_fps_ratio": round(path_bus["bus_fps"] / path_inproc, 3),
        "hop_ms": path_bus["hop_ms"],
        "data_path": {
            "stages": ["ingest", "preprocess"],
            "frames": args.frames,
            "inprocess_fps": round(path_inproc, 2),
            **path_bus,
        },
        "ingest_only": {
            "stages": ["ingest", "passthrough"],
            "frames": args.ingest_frames,
            "inprocess_fps": round(ingest_inproc, 1),
            "bus_vs_inprocess_fps_ratio": round(ingest_bus["bus_fps"] / ingest_inproc, 3),
            **ingest_bus,
        },
        "machine": f"{platform.machine()}, {_cores()} cores",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
