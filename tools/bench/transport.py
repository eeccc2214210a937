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

One call makes ``--runs`` short runs of each (in-process, then over the bus, on the same stack) and
reports the median ratio with every run's beside it: on a shared machine one stall in one short
run moves a ratio by 0.2. What the bus path pays for beyond the hop: each process's CPU time per
frame over the bus (psutil) against the same stages' CPU per frame in-process, by process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
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
from tools.bench.common import child_pids, process_cpu_s


def _payloads(n: int, width: int, height: int) -> list[bytes]:
    cam = MotionCamera(read_image(sample_photo("bus.jpg", fetch=True)), width, height)
    distinct = [encode_jpeg(cam.frame(i)) for i in range(min(n, 60))]
    return [distinct[i % len(distinct)] for i in range(n)]


def inprocess_fps(payloads: list[bytes], s: IngestSettings) -> tuple[float, float]:
    """(frames per second, CPU ms per frame) of ingest + the pass-through with direct calls."""
    limits = Limits(s.max_frame_bytes, s.max_input_pixels, s.min_input_side, s.max_aspect)
    c0, t0 = time.process_time(), time.perf_counter()
    for seq, data in enumerate(payloads):
        meta = FrameMeta("bench", seq, now_ns(), 0, 0).stamp("camera", "out")
        meta.stamp("ingest", "in")
        out = process_frame(data, limits, s.out_width, s.out_height, s.jpeg_quality)
        meta.stamp("ingest", "out").stamp("passthrough", "in").stamp("passthrough", "out")
        FrameMeta.from_headers(meta.to_headers())  # the consumer's parse, as on the bus
        assert out.jpeg
    n = len(payloads)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1e3 / n


def inprocess_data_path_fps(
    payloads: list[bytes], s: IngestSettings, fps: float, warmup: int = 20
) -> tuple[float, float]:
    """(frames per second, CPU ms per frame) of ingest + preprocess with direct calls, one frame
    after the other, on a session warmed up by ``warmup`` frames first (its graph built)."""
    from services.preprocess.pipeline import SessionPreprocessor

    limits = Limits(s.max_frame_bytes, s.max_input_pixels, s.min_input_side, s.max_aspect)
    pre = SessionPreprocessor("bench-inprocess")
    try:
        for seq, data in enumerate(payloads[:warmup]):
            pre.process_jpeg(data, seq, seq * 1000.0 / fps)
        c0, t0 = time.process_time(), time.perf_counter()
        for seq, data in enumerate(payloads, start=warmup):
            meta = FrameMeta("bench", seq, now_ns(), 0, 0).stamp("camera", "out").stamp("ingest", "in")
            out = process_frame(data, limits, s.out_width, s.out_height, s.jpeg_quality)
            meta.stamp("ingest", "out").stamp("preprocess", "in")
            cond = pre.process_jpeg(out.jpeg, seq, seq * 1000.0 / fps).conditioning
            meta.stamp("preprocess", "out")
            FrameMeta.from_headers(meta.to_headers())
            assert cond.encode()  # the message the service would publish
        n = len(payloads)
        return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1e3 / n
    finally:
        pre.close()


async def bus_run(
    url: str,
    payloads: list[bytes],
    window: int,
    session: str,
    channel: Channel = Channel.OUTPUT,
    warmup: int = 0,
    on_start=None,  # type: ignore[no-untyped-def]
) -> tuple[float, Watcher]:
    """Frames through the stages over the bus, ``window`` in flight; the first ``warmup`` frames
    (a session's graph is built on its first) are sent, waited for and not timed. ``on_start``
    runs as the timed frames begin."""
    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    nc = await connect(url, "bench-transport")
    watcher = Watcher(nc, subjects, session, keep_frames=False, channel=channel)
    await watcher.start()
    for seq, data in enumerate(payloads[:warmup]):
        await publish_frame(
            nc, subjects.camera(session), data, FrameMeta(session, seq, now_ns(), 0, 0).stamp("camera", "out")
        )
        if not await watcher.wait_for_seq(seq, timeout_s=30.0):
            raise RuntimeError(f"warm-up frame {seq} never came out")
    watcher.frames.clear()
    if on_start is not None:
        on_start()
    t0 = time.perf_counter()
    for seq, data in enumerate(payloads, start=warmup):
        # keep at most `window` frames in flight (a superseded frame counts as done)
        if seq - warmup >= window and not await watcher.wait_for_seq(seq - window, timeout_s=5.0):
            raise RuntimeError(f"no frame at or after {seq - window} came out")
        meta = FrameMeta(session, seq, now_ns(), 0, 0).stamp("camera", "out")
        await publish_frame(nc, subjects.camera(session), data, meta)
    if not await watcher.wait_for_seq(warmup + len(payloads) - 1, timeout_s=5.0):
        raise RuntimeError("the last frame never came out")
    elapsed = time.perf_counter() - t0
    await watcher.stop()
    await nc.drain()
    return len(watcher.frames) / elapsed, watcher


def _hops(watcher: Watcher) -> list[float]:
    hops = [ms for r in watcher.frames for _, _, ms in r.meta.hop_ms()]
    return hops + [(r.recv_ns - r.meta.trace[-1].ns) / 1e6 for r in watcher.frames]


def _cpu_into(into: dict[str, float], pids: dict[str, int]) -> None:
    into.update({k: process_cpu_s(p) for k, p in pids.items()})


def _measure(
    services: list[str],
    channel: Channel,
    payloads: list[bytes],
    args: argparse.Namespace,
    env: dict[str, str],
    inprocess,  # type: ignore[no-untyped-def]  # () -> (fps, cpu ms per frame), the same stages in one process
) -> dict:
    """``args.runs`` pairs of (in-process, bus) runs on one stack; every run's figures and the
    median ratio."""
    runs = []
    with Stack(services, nats_url=BaseSettings.from_env().nats_url, env=env) as stack:
        pids = {c.name: c.proc.pid for c in stack.children}
        servers = child_pids("nats-server") if stack.nats is not None else []
        if len(servers) == 1:
            pids["nats_server"] = servers[0]
        inprocess()  # warm caches and imports once
        for r in range(args.runs):
            inproc_fps, inproc_cpu = inprocess()
            before: dict[str, float] = {}
            start = functools.partial(_cpu_into, before, pids)
            bus, watcher = asyncio.run(
                bus_run(stack.url, payloads, args.window, f"bench-{r}", channel, warmup=20, on_start=start)
            )
            after = {k: process_cpu_s(p) for k, p in pids.items()}
            out = max(1, len(watcher.frames))
            summary = watcher.summary()
            runs.append(
                {
                    "inprocess_fps": round(inproc_fps, 2),
                    "bus_fps": round(bus, 2),
                    "ratio": round(bus / inproc_fps, 3),
                    "superseded": len(payloads) - len(watcher.frames),
                    "hop_ms": percentiles(_hops(watcher), (50, 95)),
                    "per_hop_ms": summary["hop_ms"],
                    "stage_ms": summary["stage_ms"],
                    "cpu_ms_per_frame": {
                        "inprocess": round(inproc_cpu, 3),
                        "bus": {k: round((after[k] - before[k]) * 1e3 / out, 3) for k in pids},
                    },
                }
            )
        serial, _ = asyncio.run(bus_run(stack.url, payloads, 1, "bench-serial", channel, warmup=20))
    mid = sorted(runs, key=lambda x: x["ratio"])[len(runs) // 2]  # the median run, reported in full
    bus_cpu = {
        k: statistics.median(r["cpu_ms_per_frame"]["bus"][k] for r in runs)
        for k in runs[0]["cpu_ms_per_frame"]["bus"]
    }
    inproc_cpu_ms = statistics.median(r["cpu_ms_per_frame"]["inprocess"] for r in runs)
    return {
        "bus_vs_inprocess_fps_ratio": statistics.median(r["ratio"] for r in runs),
        "ratios": [r["ratio"] for r in runs],
        "inprocess_fps": statistics.median(r["inprocess_fps"] for r in runs),
        "bus_fps": statistics.median(r["bus_fps"] for r in runs),
        "bus_serial_fps": round(serial, 2),
        "bus_frames_superseded": mid["superseded"],
        "hop_ms": mid["hop_ms"],
        "per_hop_ms": mid["per_hop_ms"],
        "stage_ms": mid["stage_ms"],
        "cpu_ms_per_frame": {
            "inprocess": round(inproc_cpu_ms, 3),
            "bus": {k: round(v, 3) for k, v in bus_cpu.items()},
            "bus_total": round(sum(bus_cpu.values()), 3),
            "bus_over_inprocess": round(sum(bus_cpu.values()) - inproc_cpu_ms, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon bench transport")
    p.add_argument("--frames", type=int, default=120, help="timed frames per data-path run")
    p.add_argument("--ingest-frames", type=int, default=300, help="timed frames per ingest-only run")
    p.add_argument("--runs", type=int, default=5, help="short runs of each; the median ratio is reported")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=15.0, help="camera clock for MediaPipe timestamps")
    p.add_argument("--window", type=int, default=2, help="frames in flight over the bus")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")

    settings = IngestSettings.from_env(out_width=args.width, out_height=args.height, deadline_ms=60_000.0)
    env = {
        "CHAMELEON_DEADLINE_MS": "60000",
        "CHAMELEON_OUT_WIDTH": str(args.width),
        "CHAMELEON_OUT_HEIGHT": str(args.height),
    }
    payloads = _payloads(max(args.frames, args.ingest_frames) + 20, args.width, args.height)

    # ingest only: a tiny stage, the bus's fixed cost in plain sight
    small = payloads[: args.ingest_frames]
    ingest = _measure(
        ["ingest", "passthrough"], Channel.OUTPUT, small, args, env, lambda: inprocess_fps(small, settings)
    )
    # the data path: ingest + preprocess
    frames = payloads[: args.frames]
    path = _measure(
        ["ingest", "preprocess"],
        Channel.CONDITIONING,
        frames,
        args,
        env,
        lambda: inprocess_data_path_fps(frames, settings, args.fps),
    )
    result = {
        "resolution": f"{args.width}x{args.height}",
        "window": args.window,
        "runs": args.runs,
        "inprocess_fps": path["inprocess_fps"],
        "bus_fps": path["bus_fps"],
        "bus_vs_inprocess_fps_ratio": path["bus_vs_inprocess_fps_ratio"],
        "hop_ms": path["hop_ms"],
        "data_path": {"stages": ["ingest", "preprocess"], "frames": args.frames, **path},
        "ingest_only": {"stages": ["ingest", "passthrough"], "frames": args.ingest_frames, **ingest},
        "load_average_1m": round(os.getloadavg()[0], 2),
        "machine": f"{platform.machine()}, {_cores()} cores",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
