"""``chameleon demo``: the whole pipeline on an embedded default, with a JSON summary.

Input: ``--video PATH``, or by default a moving camera over the real full-body sample photo.
Until the generator service exists, the last stage is the clearly named ``passthrough``.
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

from services.camera.client import run_camera
from services.camera.source import MotionCamera, video_frames
from services.cli.stack import Stack, available_services
from services.watch.client import Watcher
from shared.bus import connect
from shared.media import read_image, sample_photo
from shared.settings import BaseSettings
from shared.subjects import Subjects


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", help="input video (default: moving camera over the sample photo)")
    p.add_argument("--image", help="still photo to move a camera over (default: the sample photo)")
    p.add_argument("--frames", type=int, default=150, help="frames to publish")
    p.add_argument("--fps", type=float, default=15.0, help="camera frame rate")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--session", default="demo")
    p.add_argument("--out", default="out/demo.mp4", help="output video path ('' to skip)")
    p.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    p.add_argument("--logs", default="out/logs", help="folder for service logs")


def demo_pipeline() -> list[str]:
    """The data path only: services that do not touch frames stay out of the demo."""
    names = available_services()
    return [n for n in names if n in ("ingest", "generator", "passthrough")]


def frame_source(args: argparse.Namespace) -> Iterator[np.ndarray]:
    if args.video:
        return video_frames(args.video, loop=True)
    photo = read_image(args.image) if args.image else read_image(sample_photo("bus.jpg", fetch=True))
    return MotionCamera(photo, args.width, args.height).frames()


async def _run(args: argparse.Namespace, url: str, pipeline: list[str]) -> dict:
    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    nc = await connect(url, "demo")
    try:
        watcher = Watcher(nc, subjects, args.session)
        await watcher.start()
        t0 = time.monotonic()
        report = await run_camera(nc, subjects, args.session, frame_source(args), args.fps, args.frames)
        await watcher.wait_for(report.published, timeout_s=3.0)
        await watcher.stop()
        wall = time.monotonic() - t0
    finally:
        await nc.drain()
    summary = watcher.summary()
    result = {
        "pipeline": pipeline,
        "frames_in": report.published,
        "frames_out": summary["frames_out"],
        "fps_in": round(report.published / wall, 2) if wall else 0.0,
        "fps_out": summary["fps_out"],
        "latency_ms": summary["latency_ms"],
        "dropped": report.published - summary["frames_out"],
        "camera_skipped": report.skipped,
        "stage_ms": summary["stage_ms"],
        "hop_ms": summary["hop_ms"],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result["video"] = args.out
        result["video_frames"] = watcher.write_video(args.out, args.fps)
    return result


def run(args: argparse.Namespace) -> int:
    settings = BaseSettings.from_env()
    pipeline = demo_pipeline()
    stack = Stack(pipeline, nats_url=settings.nats_url, log_dir=Path(args.logs) if args.logs else None)
    with stack:
        result = asyncio.run(_run(args, stack.url, pipeline))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0 if result["frames_out"] > 0 else 1
