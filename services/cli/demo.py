"""``chameleon demo``: the whole pipeline on an embedded default, with garment swaps and measured
quality in a JSON summary (the last line printed with ``--json``).

Input: ``--video PATH``, or by default a moving camera over the real full-body sample photo. The
demo loads the starter catalogue, starts a session, swaps the garment every ``--swap-every``
frames, and measures what a user would see: output FPS, glass-to-glass latency, swap latency,
ghosting two frames after each swap, and how untouched everything outside the garment stays.
This module runs the demo and records what its client receives; the image measures are
``harness.demo_metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from harness import progress
from harness.demo_metrics import demo_quality
from harness.recorder import Recorder, starter_colours
from harness.stack import Stack, available_services
from runtime.bus import connect
from runtime.media import read_image, sample_photo
from runtime.metrics import percentiles
from runtime.settings import BaseSettings
from services.camera.client import run_camera
from services.camera.source import MotionCamera, video_frames
from services.watch.client import Watcher
from shared import control
from shared.auth import NatsCredentials
from shared.subjects import Subjects

DEFAULT_GARMENTS = "tee-red-solid,shirt-blue-checks,tee-yellow-dots,jacket-denim-solid,tee-navy-stripes"
DATA_PATH = ("garments", "ingest", "preprocess", "generator", "passthrough")
START_TIMEOUT_S = 60.0  # the generator answers ``start`` (a student backend loads its model)
IN_FLIGHT_TIMEOUT_S = 10.0  # frames and answers already on their way come out within this


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", help="input video (default: moving camera over the sample photo)")
    p.add_argument("--image", help="still photo to move a camera over (default: the sample photo)")
    p.add_argument("--frames", type=int, default=150, help="frames to publish")
    p.add_argument("--fps", type=float, default=15.0, help="camera frame rate")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--session", default="demo")
    p.add_argument("--backend", default="auto", help="generator backend: auto, warp, student")
    p.add_argument("--garments", default=DEFAULT_GARMENTS, help="comma-separated garment ids to cycle")
    p.add_argument("--swap-every", type=int, default=30, help="swap the garment every K frames (0: never)")
    p.add_argument("--out", default="out/demo.mp4", help="output video path ('' to skip)")
    p.add_argument("--sheet", default="", help="contact sheet PNG around each swap")
    p.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    p.add_argument("--logs", default="out/logs", help="folder for service logs")
    p.add_argument(
        "--insecure", action="store_true", help="no authorization (the demo's clients then need no token)"
    )


def demo_pipeline() -> list[str]:
    return [n for n in available_services() if n in DATA_PATH]


def frame_source(args: argparse.Namespace) -> Iterator[np.ndarray]:
    if args.video:
        return video_frames(args.video, loop=True)
    photo = read_image(args.image) if args.image else read_image(sample_photo("bus.jpg", fetch=True))
    return MotionCamera(photo, args.width, args.height).frames()


async def warm_up(
    nc, subjects: Subjects, sid: str, frames: Iterator[np.ndarray], fps: float, watcher: Watcher
) -> int:  # type: ignore[no-untyped-def]
    """Stream until the first output frame arrives (the session's MediaPipe graph and renderer
    are built on its first frame: seconds on a busy machine), so the summary measures the
    steady stream a shopper watches, not the start-up. Returns the next sequence number."""
    arrived = asyncio.Event()

    async def check(_seq: int) -> None:
        if watcher.frames:
            arrived.set()

    report = await run_camera(
        nc, subjects, sid, frames, fps, max_frames=int(fps * 60), stop=arrived, on_published=check
    )
    if not watcher.frames:
        raise RuntimeError("no output frame within 60 s of warm-up: see the service logs")
    # the newest warm-up frame coming out means none is left in flight to spill into the measure
    last = report.published + report.skipped - 1
    if not await watcher.wait_for_seq(last, IN_FLIGHT_TIMEOUT_S):
        raise RuntimeError(
            f"warm-up frame {last} not out within {IN_FLIGHT_TIMEOUT_S:.0f} s: see the service logs"
        )
    return report.published + report.skipped


async def _run(
    args: argparse.Namespace,
    url: str,
    subjects: Subjects,
    pipeline: list[str],
    admin: NatsCredentials | None = None,
    session: NatsCredentials | None = None,
) -> dict:
    """``admin`` loads the catalogue and records conditioning (what only an operator may see);
    ``session``, a token when secure, is the shopper's side: camera, output, events, control."""
    nc = await connect(url, "demo", credentials=admin)
    client = await connect(url, f"demo-{args.session}", credentials=session) if session else nc
    sid = args.session
    garments = [g for g in args.garments.split(",") if g]
    generating = "generator" in pipeline
    try:
        colours = await starter_colours(nc, subjects) if "garments" in pipeline else {}
        rec = Recorder()
        await nc.subscribe(subjects.conditioning(sid), cb=rec.on_cond)
        await nc.flush()
        await client.subscribe(subjects.events(sid), cb=rec.on_event)
        watcher = Watcher(client, subjects, sid)
        await watcher.start()  # flushes: the subscriptions above are in place before ``start``
        if generating:
            start = control.start(sid, garments[0], args.backend, args.width, args.height, args.fps)
            await control.publish_control(client, subjects, start, ensure_stream=session is None)
            try:
                await asyncio.wait_for(rec.started.wait(), START_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(
                    f"session {sid} not started within {START_TIMEOUT_S:.0f} s: see the service logs"
                ) from None
        frames = frame_source(args)
        first_seq = await warm_up(client, subjects, sid, frames, args.fps, watcher)
        watcher.frames.clear()
        rec.raw_cond.clear()
        swaps_sent = 0
        last_swap = ""

        async def maybe_swap(seq: int) -> None:
            nonlocal swaps_sent, last_swap
            n = seq - first_seq
            if generating and args.swap_every and n and n % args.swap_every == 0:
                swaps_sent += 1
                swap = control.swap(sid, garments[swaps_sent % len(garments)])
                last_swap = swap.event_id
                await control.publish_control(client, subjects, swap, ensure_stream=session is None)

        t0 = time.monotonic()
        report = await run_camera(
            client, subjects, sid, frames, args.fps, args.frames, on_published=maybe_swap, first_seq=first_seq
        )
        # a chunked backend (student) emits its last incomplete chunk when the session idles (5 s)
        last = first_seq + report.published + report.skipped - 1
        await watcher.wait_for_seq(last, timeout_s=IN_FLIGHT_TIMEOUT_S)
        if last_swap:  # answered last: a swap superseded before its frame gets no answer of its own
            await rec.answer(last_swap, IN_FLIGHT_TIMEOUT_S)
        await watcher.stop()
        wall = time.monotonic() - t0
    finally:
        if client is not nc:
            await client.drain()
        await nc.drain()
    # warm-up frames still in flight when the measurement began are not part of it
    watcher.frames = [r for r in watcher.frames if r.meta.seq >= first_seq]
    summary = watcher.summary()
    delivered = len({r.meta.seq for r in watcher.frames})
    applied = rec.of("swap_applied")
    result = {
        "pipeline": pipeline,
        "backend": next((e.data.get("backend") for e in rec.of("started")), None),
        "frames_in": report.published,
        "frames_out": delivered,  # distinct input frames that came out
        "rerendered": summary["frames_out"] - delivered,  # extra frames: a swap re-renders the newest
        "fps_in": round(report.published / wall, 2) if wall else 0.0,
        "fps_out": _rate(watcher, delivered),
        "latency_ms": summary["latency_ms"],
        "dropped": report.published - delivered,
        "camera_skipped": report.skipped,
        "camera_link_dropped": report.link_dropped,  # of those, the link (its acknowledgements) had no room
        # sent by the demo; applied (a swap_applied event: a superseded one is not); measured for
        # ghosting (swap_details; swaps_unmeasured says why the others are not)
        "swaps_sent": swaps_sent,
        "swaps_applied": len(applied),
        "swaps_measured": 0,
        "swaps": len(applied),  # = swaps_applied, for readers of earlier summaries
        "swap_latency_ms": percentiles([float(e.data["latency_ms"]) for e in applied], (50, 95)),
        "errors": sorted({e.code for e in rec.events if e.kind == "error"}),
        "stage_ms": summary["stage_ms"],
        "hop_ms": summary["hop_ms"],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    if generating:
        measured = await asyncio.to_thread(
            demo_quality, watcher.frames, rec.cond, rec.of("swap_applied"), colours, args.sheet
        )
        result.update(measured)
        if args.sheet:
            result["sheet"] = args.sheet
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result["video"] = args.out
        result["video_frames"] = watcher.write_video(args.out, args.fps)
    return result


def _rate(watcher: Watcher, frames: int) -> float:
    """Distinct output frames per second over the measured stream (re-renders not counted)."""
    f = watcher.frames
    span_s = (f[-1].recv_ns - f[0].recv_ns) / 1e9 if len(f) > 1 else 0.0
    return round((frames - 1) / span_s, 2) if span_s > 0 else 0.0


def run(args: argparse.Namespace, settings: BaseSettings) -> int:
    pipeline = demo_pipeline()
    env = {"CHAMELEON_OUT_WIDTH": str(args.width), "CHAMELEON_OUT_HEIGHT": str(args.height)}
    stack = Stack(
        pipeline,
        nats_url=settings.nats_url,
        env=env,
        log_dir=Path(args.logs) if args.logs else None,
        secure=not args.insecure and not settings.nats_url,  # an outside server's auth is its own
    )
    with stack, progress.elapsed("demo", args.frames / args.fps if args.fps else None, json=args.json):
        creds = stack.admin_credentials, stack.session_credentials(args.session)
        result = asyncio.run(_run(args, stack.url, Subjects(settings.subject_prefix), pipeline, *creds))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0 if result["frames_out"] > 0 else 1
