"""``chameleon demo``: the whole pipeline on an embedded default, with garment swaps and measured
quality in a JSON summary (the last line printed with ``--json``).

Input: ``--video PATH``, or by default a moving camera over the real full-body sample photo. The
demo loads the starter catalogue, starts a session, swaps the garment every ``--swap-every``
frames, and measures what a user would see: output FPS, glass-to-glass latency, swap latency,
ghosting two frames after each swap, and how untouched everything outside the garment stays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from nats.aio.msg import Msg

from services.camera.client import run_camera
from services.camera.source import MotionCamera, video_frames
from services.cli.stack import Stack, available_services
from services.watch.client import Watcher
from shared import control
from shared.bus import connect
from shared.headers import FrameMeta, HeaderError
from shared.media import decode_jpeg, read_image, sample_photo
from shared.metrics import percentiles
from shared.schemas import Conditioning, Event, SchemaError
from shared.settings import BaseSettings
from shared.subjects import Subjects

DEFAULT_GARMENTS = "tee-red-solid,shirt-blue-checks,tee-yellow-dots,jacket-denim-solid,tee-navy-stripes"
DATA_PATH = ("garments", "ingest", "preprocess", "generator", "passthrough")


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


def demo_pipeline() -> list[str]:
    return [n for n in available_services() if n in DATA_PATH]


def frame_source(args: argparse.Namespace) -> Iterator[np.ndarray]:
    if args.video:
        return video_frames(args.video, loop=True)
    photo = read_image(args.image) if args.image else read_image(sample_photo("bus.jpg", fetch=True))
    return MotionCamera(photo, args.width, args.height).frames()


@dataclass
class Recorder:
    """What the demo's client sees besides the output: conditioning (inputs and garment masks,
    by sequence) and the session's events."""

    raw_cond: dict[int, bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_cond(self, msg: Msg) -> None:
        """Keep the bytes only: decoding 15 conditioning messages a second would take CPU from
        the pipeline being measured; the few that metrics need are decoded afterwards."""
        try:
            self.raw_cond[FrameMeta.from_headers(msg.headers).seq] = bytes(msg.data)
        except HeaderError:
            pass

    def cond(self, seq: int) -> Conditioning | None:
        raw = self.raw_cond.get(seq)
        try:
            return Conditioning.decode(raw) if raw else None
        except SchemaError:
            return None

    async def on_event(self, msg: Msg) -> None:
        try:
            event = Event.decode(msg.data)
        except SchemaError:
            return
        self.events.append(event)
        if event.kind == "session_started":
            self.started.set()

    def of(self, code: str) -> list[Event]:
        return [e for e in self.events if e.code == code]


async def load_catalogue(nc, subjects: Subjects) -> dict[str, list[tuple[int, int, int]]]:  # type: ignore[no-untyped-def]
    """Add the starter catalogue (idempotent) and return each garment's dominant colours."""
    from services.garments.starter import load_catalogue as add_catalogue
    from shared.garment_client import GarmentClient

    client = GarmentClient(nc, subjects, timeout_s=30)
    colours = {}
    for reply in await add_catalogue(client):
        asset = await client.get(reply.garment_id)
        colours[reply.garment_id] = [tuple(int(v) for v in c["bgr"]) for c in asset.dominant_colours]
    return colours


def quality(
    watcher: Watcher, rec: Recorder, colours: dict[str, list[tuple[int, int, int]]], sheet: str
) -> dict:
    """Ghosting two frames after each swap, and PSNR outside the garment region pooled over
    every frame (output against its own input; the region dilated by 2 px for the feathered edge).

    Ghosting is measured on the pixels that show a garment (``garment_pixels``: in the garment
    region, nearer a garment's colours than the camera's own pixel): a pixel that still shows
    the person's own clothes is neither the old garment nor the new."""
    from services.generator.inputs import frame_input
    from tools.quality import contact_sheet, garment_pixels, ghost_ratio

    out_by_seq = {r.meta.seq: r for r in watcher.frames}
    seqs = sorted(out_by_seq)

    def pair(seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """Output frame, its input frame and garment region for ``seq`` (decoded the way the
        generator decodes conditioning), or None when either side is missing or malformed."""
        c, out = rec.cond(seq), decode_jpeg(out_by_seq[seq].jpeg)
        if c is None or out is None:
            return None
        try:
            inp = frame_input(c)
        except SchemaError:
            return None
        return (out, inp.frame_bgr, inp.garment_mask) if out.shape == inp.frame_bgr.shape else None

    sq_err, n_px = 0.0, 0
    for s in seqs:
        if (p := pair(s)) is None:
            continue
        out, inp, region = p
        keep = (
            np.ones(inp.shape[:2], bool)
            if region is None
            else cv2.dilate(region, np.ones((5, 5), np.uint8)) == 0
        )
        diff = out[keep].astype(np.float64) - inp[keep].astype(np.float64)
        sq_err += float((diff**2).sum())
        n_px += diff.size
    psnr = 100.0 if n_px == 0 or sq_err == 0 else 10 * np.log10(255.0**2 / (sq_err / n_px))

    ghosts: list[float] = []
    details: list[dict] = []
    rows = []
    garment_of = {r.meta.seq: r.meta.garment_id for r in watcher.frames}
    for ev in rec.of("swap_applied"):
        first = int(ev.data["first_seq"])
        new = str(ev.data["garment_id"])
        before = [s for s in seqs if s < first]
        old = garment_of.get(before[-1]) if before else None
        later = [s for s in seqs if s >= first + 2]
        if not later or old is None or old == new:
            continue
        s = later[0]
        if (p := pair(s)) is None or p[2] is None:
            continue
        out, inp, region = p
        shown = garment_pixels(out, inp, region, colours[old], colours[new])
        if np.count_nonzero(shown) < 50:
            continue
        ghosts.append(ghost_ratio(out, shown, colours[old], colours[new]))
        details.append(
            {
                "from": old,
                "to": new,
                "first_seq": first,
                "measured_seq": s,
                "latency_ms": ev.data.get("latency_ms"),
                "apply_ms": ev.data.get("apply_ms"),
                "delivery_ms": ev.data.get("delivery_ms"),
                "wait_ms": ev.data.get("wait_ms"),
                "ghost_ratio_2f": round(ghosts[-1], 4),
            }
        )
        if sheet:
            for k in (before[-1], first, s):
                ck = rec.cond(k)
                if ck is not None:
                    label = f"seq {k} {garment_of.get(k)}" + ("  <- swap" if k == first else "")
                    rows.append((label, decode_jpeg(ck.frame_jpeg), decode_jpeg(out_by_seq[k].jpeg)))
    if sheet and rows:
        Path(sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(sheet, contact_sheet(rows))
    return {
        "ghost_ratio_2f": round(max(ghosts), 4) if ghosts else None,
        "swap_details": details,
        "ghost_ratio_2f_mean": round(float(np.mean(ghosts)), 4) if ghosts else None,
        "psnr_outside_garment_db": round(float(psnr), 2),
    }


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
    await asyncio.sleep(0.5)  # let the warm-up frames still in flight come out
    return report.published + report.skipped


async def _run(args: argparse.Namespace, url: str, pipeline: list[str]) -> dict:
    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    nc = await connect(url, "demo")
    sid = args.session
    garments = [g for g in args.garments.split(",") if g]
    generating = "generator" in pipeline
    try:
        colours = await load_catalogue(nc, subjects) if "garments" in pipeline else {}
        rec = Recorder()
        await nc.subscribe(subjects.conditioning(sid), cb=rec.on_cond)
        await nc.subscribe(subjects.events(sid), cb=rec.on_event)
        watcher = Watcher(nc, subjects, sid)
        await watcher.start()
        if generating:
            start = control.start(sid, garments[0], args.backend, args.width, args.height, args.fps)
            await control.publish_control(nc, subjects, start)
            await asyncio.wait_for(rec.started.wait(), 60)
        frames = frame_source(args)
        first_seq = await warm_up(nc, subjects, sid, frames, args.fps, watcher)
        watcher.frames.clear()
        rec.raw_cond.clear()
        swaps_sent = 0

        async def maybe_swap(seq: int) -> None:
            nonlocal swaps_sent
            n = seq - first_seq
            if generating and args.swap_every and n and n % args.swap_every == 0:
                swaps_sent += 1
                garment = garments[swaps_sent % len(garments)]
                await control.publish_control(nc, subjects, control.swap(sid, garment))

        t0 = time.monotonic()
        report = await run_camera(
            nc, subjects, sid, frames, args.fps, args.frames, on_published=maybe_swap, first_seq=first_seq
        )
        await watcher.wait_for_seq(first_seq + report.published + report.skipped - 1, timeout_s=5.0)
        await asyncio.sleep(0.3)  # the last events
        await watcher.stop()
        wall = time.monotonic() - t0
    finally:
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
        "swaps": len(applied),
        "swaps_sent": swaps_sent,
        "swap_latency_ms": percentiles([float(e.data["latency_ms"]) for e in applied], (50, 95)),
        "errors": sorted({e.code for e in rec.events if e.kind == "error"}),
        "stage_ms": summary["stage_ms"],
        "hop_ms": summary["hop_ms"],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    if generating:
        result.update(await asyncio.to_thread(quality, watcher, rec, colours, args.sheet))
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


def run(args: argparse.Namespace) -> int:
    settings = BaseSettings.from_env()
    pipeline = demo_pipeline()
    env = {"CHAMELEON_OUT_WIDTH": str(args.width), "CHAMELEON_OUT_HEIGHT": str(args.height)}
    stack = Stack(
        pipeline, nats_url=settings.nats_url, env=env, log_dir=Path(args.logs) if args.logs else None
    )
    with stack:
        result = asyncio.run(_run(args, stack.url, pipeline))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0 if result["frames_out"] > 0 else 1
