"""Preprocess benchmark: ``python -m tools.bench.preprocess [--frames N]`` (``chameleon bench
preprocess --json``). No bus: it drives ``SessionPreprocessor`` exactly as a worker thread does,
with JPEG frames from a camera moving over the real sample photo.

The last printed line is JSON: ``ms_per_frame`` {p50, p95} at 640x480 and 1280x720 (JPEG in →
Conditioning message bytes out), ``detect_rate`` on the moving stream, ``jitter_ratio``
(smoothed / raw on a static noisy stream), RSS after warm-up and after the long run, machine, date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time

import numpy as np

from tools.bench.common import rss_kib

WARMUP_FRAMES = 30
FRAME_MS = 1000.0 / 30.0


def rss_mb() -> float:
    return rss_kib(os.getpid()) / 1024.0


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import mediapipe

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "mediapipe": mediapipe.__version__,
        "platform": platform.platform(terse=True),
    }


def _pct(xs: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(xs, 50)), 2), "p95": round(float(np.percentile(xs, 95)), 2)}


def run_stream(photo: np.ndarray, width: int, height: int, frames: int, progress: bool = False) -> dict:
    """Preprocess ``frames`` moving-camera frames; time each frame from JPEG to message bytes."""
    from runtime.media import encode_jpeg
    from services.camera.source import MotionCamera
    from services.preprocess.pipeline import SessionPreprocessor
    from tools.eval.preprocess import detect_rate

    cam = MotionCamera(photo, width, height)
    cycle = [encode_jpeg(cam.frame(i)) for i in range(int(cam.motion.period))]
    pre = SessionPreprocessor("bench")
    times, stream, sizes = [], [], []
    stages: dict[str, list[float]] = {}
    rss_warm = rss_last = None
    try:
        for i in range(frames + WARMUP_FRAMES):
            jpeg = cycle[i % len(cycle)]
            t0 = time.perf_counter()
            result = pre.process_jpeg(jpeg, i, 1000.0 + i * FRAME_MS)
            payload = result.conditioning.encode()
            elapsed = (time.perf_counter() - t0) * 1e3
            if i < WARMUP_FRAMES:
                continue
            if rss_warm is None:
                rss_warm = rss_mb()
            times.append(elapsed)
            sizes.append(len(payload))
            stream.append(result.raw_landmarks)
            for k, v in result.timings_ms.items():
                stages.setdefault(k, []).append(v)
            if i == frames + WARMUP_FRAMES - 1:
                rss_last = rss_mb()
            if progress and (i - WARMUP_FRAMES) % 500 == 499:
                print(
                    f"  {width}x{height}: {i - WARMUP_FRAMES + 1} frames, rss {rss_mb():.0f} MB",
                    file=sys.stderr,
                )
    finally:
        pre.close()
    return {
        "ms": _pct(times),
        "stages_ms_p50": {k: round(float(np.median(v)), 2) for k, v in stages.items()},
        "detect_rate": round(detect_rate(stream), 4),
        "message_kb_p95": round(float(np.percentile(sizes, 95)) / 1024, 1),
        "rss_mb_warm": round(rss_warm or rss_mb(), 1),
        "rss_mb_after": round(rss_last or rss_mb(), 1),  # still running, before close()
        "rss_mb_closed": round(rss_mb(), 1),
        "frames": len(times),
    }


def jitter_ratio(photo: np.ndarray, frames: int = 120) -> dict[str, float]:
    from services.preprocess.pipeline import SessionPreprocessor
    from tools.eval.preprocess import jitter_px, noisy_still_frames

    pre = SessionPreprocessor("bench-still")
    raw, smooth = [], []
    try:
        for i, frame in enumerate(noisy_still_frames(photo, frames)):
            r = pre.process(frame, i, 1000.0 + i * FRAME_MS, frame_jpeg=b"-")
            raw.append(r.raw_landmarks)
            smooth.append(r.landmarks)
    finally:
        pre.close()
    raw_j, smooth_j = jitter_px(raw[10:], 640, 480), jitter_px(smooth[10:], 640, 480)
    return {"raw_px": round(raw_j, 3), "smoothed_px": round(smooth_j, 3), "ratio": round(smooth_j / raw_j, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chameleon bench preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames of the long 640x480 run")
    parser.add_argument("--frames-720p", type=int, default=300, help="frames of the 1280x720 run")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = parser.parse_args(argv)
    if args.frames < 10 or args.frames_720p < 10:
        parser.error("--frames and --frames-720p must be at least 10")

    from runtime.media import MediaError, read_image, sample_photo

    try:
        photo = read_image(sample_photo("bus.jpg"))
    except MediaError as exc:
        print(f"sample photo unavailable: {exc}", file=sys.stderr)
        return 2
    verbose = not args.json
    rss_start = rss_mb()
    vga = run_stream(photo, 640, 480, args.frames, progress=verbose)
    hd = run_stream(photo, 1280, 720, args.frames_720p)
    jitter = jitter_ratio(photo)
    result = {
        "bench": "preprocess",
        "ms_per_frame": {"640x480": vga["ms"], "1280x720": hd["ms"]},
        "stages_ms_p50": {"640x480": vga["stages_ms_p50"], "1280x720": hd["stages_ms_p50"]},
        "detect_rate": vga["detect_rate"],
        "jitter_ratio": jitter["ratio"],
        "jitter_px": {"raw": jitter["raw_px"], "smoothed": jitter["smoothed_px"]},
        "message_kb_p95": {"640x480": vga["message_kb_p95"], "1280x720": hd["message_kb_p95"]},
        "frames": vga["frames"],
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_warm": vga["rss_mb_warm"],
        "rss_mb_after": vga["rss_mb_after"],
        "rss_mb_closed": vga["rss_mb_closed"],
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if verbose:
        print(f"640x480  p50 {vga['ms']['p50']} ms  p95 {vga['ms']['p95']} ms  stages {vga['stages_ms_p50']}")
        print(f"1280x720 p50 {hd['ms']['p50']} ms  p95 {hd['ms']['p95']} ms")
        print(
            f"detect {vga['detect_rate']}  jitter ratio {jitter['ratio']}  "
            f"rss warm {vga['rss_mb_warm']} MB → after {vga['frames']} frames {vga['rss_mb_after']} MB"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
