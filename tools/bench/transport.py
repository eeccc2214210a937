"""``chameleon bench transport``: what the bus costs.

The same stages on the same pre-encoded camera frames, in the same run: (a) in one process with
direct calls, (b) as separate service processes over a real nats-server. Two pipelines are measured:

- ``data_path``: ingest + preprocess (MediaPipe), the stages every frame really crosses before
  the generator; the headline ``bus_vs_inprocess_fps_ratio`` is this one.
- ``ingest_only``: ingest + the pass-through, a ~2 ms stage, where the bus's fixed per-hop cost
  is as large as the work itself (reported in full, so that cost stays visible).

Over the bus the client keeps ``--window`` frames in flight (default 2: a camera does not wait for
an output before its next frame, so ingest works on one frame while preprocess works on the one
before), and never sends two frames closer than ``--gap-ms`` (default 3). Without the gap, once a
stage is fast the sends came in pairs (an output frees both slots when the frame before it was
superseded), and a pair read in one go from the socket superseded its first frame in ingest's
latest-frame slot before ingest's worker woke: half the frames were lost to the client's pattern,
not to the bus (a 15 fps camera's frames are 67 ms apart). With one frame in flight (``--window
1``) the ratio is the in-process time per frame over the whole bus round trip's: three hops
against a stage of a few milliseconds. Three frames in flight queue two at preprocess's slot
behind a pose run, and the older is superseded. ``hop_ms`` is every stage-to-stage transport
time taken from the frames' trace headers.

One call makes ``--runs`` short runs of each and reports the median ratio with every run's beside
it: on a shared machine one stall in one short run moves a ratio by 0.2. Within a run the two
sides alternate in ``--chunks`` chunks, so each sees the same moments of the machine's load.
What the bus path pays for beyond the hop: each process's CPU time per frame over the bus
(psutil) against the same stages' CPU per frame in-process, by process.
"""

from __future__ import annotations

import argparse
import asyncio
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
from tools.bench.common import cpu_total, stage_pids


def _payloads(n: int, width: int, height: int) -> list[bytes]:
    cam = MotionCamera(read_image(sample_photo("bus.jpg", fetch=True)), width, height)
    distinct = [encode_jpeg(cam.frame(i)) for i in range(min(n, 60))]
    return [distinct[i % len(distinct)] for i in range(n)]


class InProcess:
    """The same stages with direct calls, one frame after the other: ingest, then preprocess (the
    data path; one session, its graph built by ``warmup`` frames first) or the pass-through."""

    def __init__(self, s: IngestSettings, fps: float, preprocess: bool, warmup: int = 20) -> None:
        self.limits = Limits(s.max_frame_bytes, s.max_input_pixels, s.min_input_side, s.max_aspect)
        self.box, self.quality, self.fps = (s.out_width, s.out_height), s.jpeg_quality, fps
        self.pre = None
        self.warmup = warmup
        if preprocess:
            from services.preprocess.pipeline import SessionPreprocessor

            self.pre = SessionPreprocessor("bench-inprocess")

    def close(self) -> None:
        if self.pre is not None:
            self.pre.close()

    def run(self, payloads: list[bytes], first_seq: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds) for these frames."""
        stage = "preprocess" if self.pre is not None else "passthrough"
        c0, t0 = time.process_time(), time.perf_counter()
        for seq, data in enumerate(payloads, start=first_seq):
            meta = FrameMeta("bench", seq, now_ns(), 0, 0).stamp("camera", "out").stamp("ingest", "in")
            out = process_frame(data, self.limits, *self.box, self.quality)
            meta.stamp("ingest", "out").stamp(stage, "in")
            if self.pre is not None:
                cond = self.pre.process_jpeg(out.jpeg, seq, seq * 1000.0 / self.fps).conditioning
                assert cond.encode()  # the message the service would publish
            meta.stamp(stage, "out")
            FrameMeta.from_headers(meta.to_headers())  # the consumer's parse, as on the bus
        return time.perf_counter() - t0, time.process_time() - c0


class BusPath:
    """The stages as service processes: a client keeping ``window`` frames in flight."""

    def __init__(self, url: str, session: str, channel: Channel, window: int, gap_ms: float = 0.0) -> None:
        self.url, self.session, self.channel, self.window = url, session, channel, window
        self.gap_s = gap_ms / 1e3
        self.subjects = Subjects(BaseSettings.from_env().subject_prefix)

    async def open(self, warmup: list[bytes]) -> None:
        """Connect, watch, and send ``warmup`` frames one at a time (the session's graph is built
        on its first): not timed."""
        self.nc = await connect(self.url, "bench-transport")
        self.watcher = Watcher(self.nc, self.subjects, self.session, keep_frames=False, channel=self.channel)
        await self.watcher.start()
        for seq, data in enumerate(warmup):
            await self._send(seq, data)
            if not await self.watcher.wait_for_seq(seq, timeout_s=30.0):
                raise RuntimeError(f"warm-up frame {seq} never came out")
        self.watcher.frames.clear()

    async def _send(self, seq: int, data: bytes) -> None:
        meta = FrameMeta(self.session, seq, now_ns(), 0, 0).stamp("camera", "out")
        await publish_frame(self.nc, self.subjects.camera(self.session), data, meta)

    async def run(self, payloads: list[bytes], first_seq: int) -> float:
        """Wall seconds from the first frame sent to the last one out (a superseded frame counts
        as done for the window, and is not an output)."""
        t0 = last = time.perf_counter()
        for seq, data in enumerate(payloads, start=first_seq):
            if seq - first_seq >= self.window and not await self.watcher.wait_for_seq(
                seq - self.window, timeout_s=5.0
            ):
                raise RuntimeError(f"no frame at or after {seq - self.window} came out")
            wait = last + self.gap_s - time.perf_counter()
            if seq > first_seq and wait > 0:  # never two frames in one socket read (see --gap-ms)
                await asyncio.sleep(wait)
            last = time.perf_counter()
            await self._send(seq, data)
        if not await self.watcher.wait_for_seq(first_seq + len(payloads) - 1, timeout_s=5.0):
            raise RuntimeError("the last frame never came out")
        return time.perf_counter() - t0

    async def close(self) -> None:
        await self.watcher.stop()
        await self.nc.drain()


def _hops(watcher: Watcher) -> list[float]:
    hops = [ms for r in watcher.frames for _, _, ms in r.meta.hop_ms()]
    return hops + [(r.recv_ns - r.meta.trace[-1].ns) / 1e6 for r in watcher.frames]


def _measure(
    services: list[str],
    channel: Channel,
    payloads: list[bytes],
    warmup: list[bytes],
    args: argparse.Namespace,
    env: dict[str, str],
    settings: IngestSettings,
) -> dict:
    """``args.runs`` runs on one stack. Each run alternates ``args.chunks`` chunks in-process and
    over the bus, so both see the same moments of a shared machine's load; its ratio is frames
    out per second over the bus / frames per second in-process. Every run's figures, the median."""
    runs = []
    preprocess = "preprocess" in services
    chunk = max(1, len(payloads) // args.chunks)
    with Stack(services, nats_url=BaseSettings.from_env().nats_url, env=env) as stack:
        pids = stage_pids(stack)

        async def one_run(r: int) -> dict:
            inproc = InProcess(settings, args.fps, preprocess)
            bus = BusPath(stack.url, f"bench-{r}", channel, args.window, args.gap_ms)
            try:
                inproc.run(warmup, 0)
                await bus.open(warmup)
                t_in = cpu_in = t_bus = 0.0
                cpu_bus = dict.fromkeys(pids, 0.0)
                for first in range(0, len(payloads), chunk):
                    part, seq = payloads[first : first + chunk], len(warmup) + first
                    wall, cpu = inproc.run(part, seq)
                    t_in, cpu_in = t_in + wall, cpu_in + cpu
                    before = {k: cpu_total(ps) for k, ps in pids.items()}
                    t_bus += await bus.run(part, seq)
                    for k, ps in pids.items():
                        cpu_bus[k] += cpu_total(ps) - before[k]
                out = len(bus.watcher.frames)
                summary = bus.watcher.summary()
                return {
                    "inprocess_fps": round(len(payloads) / t_in, 2),
                    "bus_fps": round(out / t_bus, 2),
                    "ratio": round((out / t_bus) / (len(payloads) / t_in), 3),
                    "superseded": len(payloads) - out,
                    "hop_ms": percentiles(_hops(bus.watcher), (50, 95)),
                    "per_hop_ms": summary["hop_ms"],
                    "stage_ms": summary["stage_ms"],
                    "cpu_ms_per_frame": {
                        "inprocess": round(cpu_in * 1e3 / len(payloads), 3),
                        "bus": {k: round(v * 1e3 / max(1, out), 3) for k, v in cpu_bus.items()},
                    },
                }
            finally:
                inproc.close()
                await bus.close()

        for r in range(args.runs):
            runs.append(asyncio.run(one_run(r)))
    mid = sorted(runs, key=lambda x: x["ratio"])[len(runs) // 2]  # the median run, reported in full
    stages = runs[0]["cpu_ms_per_frame"]["bus"]
    bus_cpu = {k: statistics.median(r["cpu_ms_per_frame"]["bus"][k] for r in runs) for k in stages}
    inproc_cpu_ms = statistics.median(r["cpu_ms_per_frame"]["inprocess"] for r in runs)
    return {
        "bus_vs_inprocess_fps_ratio": statistics.median(r["ratio"] for r in runs),
        "ratios": [r["ratio"] for r in runs],
        "inprocess_fps": statistics.median(r["inprocess_fps"] for r in runs),
        "bus_fps": statistics.median(r["bus_fps"] for r in runs),
        "bus_frames_superseded": [r["superseded"] for r in runs],
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
    p.add_argument("--chunks", type=int, default=4, help="in-process and bus chunks alternated per run")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=15.0, help="camera clock for MediaPipe timestamps")
    p.add_argument("--window", type=int, default=2, help="frames in flight over the bus")
    p.add_argument(
        "--gap-ms",
        type=float,
        default=3.0,
        help="the least time between two frames sent (a camera's are 67 ms apart at 15 fps)",
    )
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
    warmup, timed = payloads[:20], payloads[20:]

    # ingest only: a tiny stage, the bus's fixed cost in plain sight
    ingest = _measure(
        ["ingest", "passthrough"], Channel.OUTPUT, timed[: args.ingest_frames], warmup, args, env, settings
    )
    # the data path: ingest + preprocess
    path = _measure(
        ["ingest", "preprocess"], Channel.CONDITIONING, timed[: args.frames], warmup, args, env, settings
    )
    result = {
        "resolution": f"{args.width}x{args.height}",
        "window": args.window,
        "gap_ms": args.gap_ms,
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
