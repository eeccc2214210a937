"""``chameleon bench soak``: one session streaming for a long time, and what the services' memory and
output rate do meanwhile (issue #13).

The demo pipeline (garments, ingest, preprocess, generator with the warp backend; secure unless
``--insecure``) from ``harness.stack.Stack``, one session streaming ``--frames`` frames of a
moving camera over the sample photo at ``--fps`` (default 30: faster than the warp pipeline
sustains on a small machine, so the services run full; 15 for a camera's rate). Every
``--sample-s`` seconds the resident set (psutil) of each service
process is read. Reported:

- ``rss_growth_ratio``: per service, its RSS when the last frame was sent over its RSS once the
  warm-up (the first ``--warmup-share`` of the frames, 10 %) was sent: the graphs, models, caches
  and pools are built by then, so what grows after it is what a long session would keep growing;
- ``rss_mib``: the same two samples, the peak and the RSS at each tenth of the frames, in MiB;
  ``rss_slope_mib_per_1k_frames``: the least-squares slope of RSS over the frames sent after the
  warm-up (a rise that levels off shows in ``by_tenth``, not in the slope);
- ``fps_out_min_window``: the lowest output rate (distinct frames per second) over the complete
  10 s windows after the warm-up, with the median window and the overall rate;
- ``frames`` and ``seconds`` of the run, so a short run says it is one.

The JSON report is the LAST line printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tools.bench.common import emit, provenance, rss_kib

SERVICES = ["garments", "ingest", "preprocess", "generator"]
GARMENT = "tee-red-solid"
WINDOW_S = 10.0
GOAL_RSS_GROWTH = 1.05


# -- the arithmetic (pure) ----------------------------------------------------------------------------
def growth_ratio(warm: float, end: float) -> float:
    return end / warm if warm > 0 else 0.0


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def window_rates(
    arrivals: Iterable[tuple[int, int]], start_ns: int, end_ns: int, window_s: float
) -> list[float]:
    """Distinct frames (by seq) per second in each complete ``window_s`` window of
    ``[start_ns, end_ns)``; a window with nothing out counts 0."""
    width = int(window_s * 1e9)
    count = (end_ns - start_ns) // width
    seen: list[set[int]] = [set() for _ in range(max(0, count))]
    for t, seq in arrivals:
        i = (t - start_ns) // width
        if 0 <= i < count:
            seen[i].add(seq)
    return [len(s) / window_s for s in seen]


def goals(report: Mapping[str, Any]) -> dict[str, bool]:
    return {
        f"rss_growth_le_{GOAL_RSS_GROWTH}_{name}": ratio <= GOAL_RSS_GROWTH
        for name, ratio in report["rss_growth_ratio"].items()
    }


# -- the run ----------------------------------------------------------------------------------------------
@dataclass
class RssSampler:
    """RSS of each service process, sampled with the number of frames sent so far."""

    pids: dict[str, int]
    samples: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name -> (frames, KiB)

    def sample(self, frames_sent: int) -> None:
        for name, pid in self.pids.items():
            try:
                kib = rss_kib(pid)
            except psutil.Error:  # exited: the report's crash count says so
                continue
            self.samples.setdefault(name, []).append((frames_sent, kib))

    def at(self, name: str, frames: int) -> int:
        """The first sample taken with at least ``frames`` sent (the last one if none)."""
        points = self.samples.get(name, [])
        return next((kib for n, kib in points if n >= frames), points[-1][1] if points else 0)


async def measure(stack: Any, args: argparse.Namespace) -> dict[str, Any]:
    from harness.session import open_session
    from runtime.media import read_image, sample_photo
    from runtime.settings import BaseSettings
    from services.camera.client import run_camera
    from services.camera.source import MotionCamera
    from shared.subjects import Subjects

    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    sid = args.session
    live = await open_session(
        stack, subjects, sid, GARMENT, width=args.width, height=args.height, fps=args.fps, name="bench-soak"
    )
    admin, nc, watcher = live.admin, live.client.nc, live.watcher

    sampler = RssSampler({c.worker_id: c.proc.pid for c in stack.children})
    sent = 0
    warm_frames = max(1, int(args.frames * args.warmup_share))
    warm_ns: list[int] = []

    async def counted(_seq: int) -> None:
        nonlocal sent
        sent += 1
        if sent == warm_frames:
            warm_ns.append(time.time_ns())

    async def sample_loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(sampler.sample, sent)
            try:
                await asyncio.wait_for(stop.wait(), args.sample_s)
            except TimeoutError:
                pass

    photo = read_image(sample_photo("bus.jpg", fetch=True))
    frames = MotionCamera(photo, args.width, args.height).frames()
    stop = asyncio.Event()
    sampling = asyncio.create_task(sample_loop(stop))
    t0 = time.monotonic()
    report_cam = await run_camera(nc, subjects, sid, frames, args.fps, args.frames, on_published=counted)
    t_end_ns = time.time_ns()
    await asyncio.to_thread(sampler.sample, sent)  # the end sample: every frame sent
    camera_s = time.monotonic() - t0
    last = report_cam.published + report_cam.skipped - 1
    await watcher.wait_for_seq(last, 5.0)
    stop.set()
    await sampling
    crashed = sorted(c.worker_id for c in stack.children if c.proc.poll() is not None)
    await watcher.stop()
    summary = watcher.summary()
    await nc.drain()
    await admin.drain()

    start_ns = warm_ns[0] if warm_ns else t_end_ns
    arrivals = [(r.recv_ns, r.meta.seq) for r in watcher.frames]
    windows = window_rates(arrivals, start_ns, t_end_ns, WINDOW_S)
    distinct = len({seq for _, seq in arrivals})
    growth, mib, slopes = {}, {}, {}
    for name, points in sorted(sampler.samples.items()):
        warm, end = sampler.at(name, warm_frames), points[-1][1]
        growth[name] = round(growth_ratio(warm, end), 4)
        mib[name] = {
            "warm": round(warm / 1024, 1),
            "end": round(end / 1024, 1),
            "peak": round(max(k for _, k in points) / 1024, 1),
        }
        mib[name]["by_tenth"] = [
            round(sampler.at(name, args.frames * i // 10) / 1024, 1) for i in range(1, 11)
        ]
        after = [(n / 1000, k / 1024) for n, k in points if n >= warm_frames]
        slopes[name] = round(slope(after), 3)
    report: dict[str, Any] = {
        "bench": "soak",
        "frames": report_cam.published,
        "frames_asked": args.frames,
        "fps": args.fps,
        "resolution": f"{args.width}x{args.height}",
        "secure": stack.secure,
        "rss_growth_ratio": growth,
        "fps_out_min_window": round(min(windows), 2) if windows else 0.0,
        "fps_out_median_window": round(statistics.median(windows), 2) if windows else 0.0,
        "fps_out": round(distinct / camera_s, 2) if camera_s else 0.0,
        "fps_in": round(report_cam.published / camera_s, 2) if camera_s else 0.0,
        "windows": len(windows),
        "window_s": WINDOW_S,
        "warmup_frames": warm_frames,
        "rss_mib": mib,
        "rss_slope_mib_per_1k_frames": slopes,
        "rss_samples": {name: len(points) for name, points in sampler.samples.items()},
        "frames_out": distinct,
        "camera_skipped": report_cam.skipped,
        "latency_ms": summary["latency_ms"],
        "crashed": crashed,
        "camera_s": round(camera_s, 1),
    }
    report["goals"] = goals(report)
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    from harness.stack import Stack

    env = {
        "CHAMELEON_BACKEND": "warp",
        "CHAMELEON_DEFAULT_GARMENT": GARMENT,
        "CHAMELEON_OUT_WIDTH": str(args.width),
        "CHAMELEON_OUT_HEIGHT": str(args.height),
    }
    started = time.monotonic()
    stack = Stack(
        SERVICES,
        env=env,
        log_dir=Path(args.logs) if args.logs else None,
        secure=not args.insecure,
        ready_timeout_s=180.0,
    )
    with stack:
        report = asyncio.run(measure(stack, args))
    report["seconds"] = round(time.monotonic() - started, 1)
    report.update(provenance())
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chameleon bench soak",
        description="One session streaming many frames: the services' RSS growth and the lowest output rate.",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--frames", type=int, default=20_000, help="frames to stream")
    p.add_argument(
        "--fps", type=float, default=30.0, help="camera rate (15: a camera's; 30: the pipeline full)"
    )
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--warmup-share", type=float, default=0.1, help="share of the frames before the first RSS")
    p.add_argument("--sample-s", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--session", default="soak")
    p.add_argument("--insecure", action="store_true", help="an open stack (no authorization)")
    p.add_argument("--logs", default="out/logs/soak", help="folder for service logs ('': stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.frames < 10 or args.fps <= 0 or not 0 < args.warmup_share < 1:
        _parser().error("--frames must be at least 10, --fps positive, --warmup-share within (0, 1)")
    from harness import progress

    with progress.elapsed("bench soak", args.frames / args.fps, json=args.json):
        report = run(args)
    return emit(report, args.json, width=30)


if __name__ == "__main__":
    raise SystemExit(main())
