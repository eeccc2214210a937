"""Preprocess benchmark: ``python -m tools.bench.preprocess [--frames N]`` (``chameleon bench
preprocess --json``). No bus: it drives ``SessionPreprocessor`` exactly as a worker thread does,
with JPEG frames from a camera moving over the real sample photo.

The last printed line is JSON: ``ms_per_frame`` {p50, p95} at 640x480 and 1280x720 (JPEG in →
Conditioning message bytes out), per-stage p50s (``pose`` over the frames MediaPipe ran on, ``flow``
over those it skipped), ``pose_share``, ``detect_rate`` on the moving stream, ``jitter_ratio``
(published / MediaPipe's raw with pose on every frame, on a static noisy stream), RSS after
warm-up and after the long run, machine, date; with ``--jpeg`` the JPEG codec comparison.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

import cv2
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
    times, stream, sizes, posed = [], [], [], []
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
            stream.append(result.landmarks)
            posed.append(result.posed)
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
        "pose_share": round(float(np.mean(posed)), 3),
        "message_kb_p95": round(float(np.percentile(sizes, 95)) / 1024, 1),
        "rss_mb_warm": round(rss_warm or rss_mb(), 1),
        "rss_mb_after": round(rss_last or rss_mb(), 1),  # still running, before close()
        "rss_mb_closed": round(rss_mb(), 1),
        "frames": len(times),
    }


def jitter_ratio(photo: np.ndarray, frames: int = 120) -> dict[str, float]:
    """Published landmarks' jitter on a static noisy stream over MediaPipe's raw landmarks with
    pose on every frame (the reference the goal is set against: smoothing and flow together must
    at least halve it)."""
    from services.preprocess.pipeline import PreprocessConfig, SessionPreprocessor
    from services.preprocess.tracking import CadenceConfig
    from tools.eval.preprocess import jitter_px, noisy_still_frames

    def stream(config: PreprocessConfig) -> tuple[list, list]:
        pre = SessionPreprocessor("bench-still", config)
        raw, smooth = [], []
        try:
            for i, frame in enumerate(noisy_still_frames(photo, frames)):
                r = pre.process(frame, i, 1000.0 + i * FRAME_MS, frame_jpeg=b"-")
                raw.append(r.raw_landmarks)
                smooth.append(r.landmarks)
        finally:
            pre.close()
        return raw, smooth

    raw, _ = stream(PreprocessConfig(cadence=CadenceConfig(max_interval=1)))
    _, smooth = stream(PreprocessConfig())
    raw_j, smooth_j = jitter_px(raw[10:], 640, 480), jitter_px(smooth[10:], 640, 480)
    return {"raw_px": round(raw_j, 3), "smoothed_px": round(smooth_j, 3), "ratio": round(smooth_j / raw_j, 3)}


def cadence_quality(
    photo: np.ndarray,
    frames: int = 120,
    fps: float = 15.0,
    sweep: Sequence[tuple[int, float]] = (),
) -> dict:
    """What pose on every k-th frame costs in quality, against pose on every frame, on the same
    moving-camera stream (the demo's motion, a 15 fps camera): how far the published shoulders and
    hips are from where the known camera motion puts them, and how much the person and garment
    masks overlap those of pose on every frame (IoU, mean and worst frame).

    ``truth``: the masks against the truth instead. The camera moves over a still photo by a known
    transform, so each frame's mask maps back onto the photo, where the person stands still; the
    truth is the majority of pose-on-every-frame's masks there. Against it a carried mask is not
    scored for departing from MediaPipe's own frame-to-frame noise. ``sweep``: other cadences
    (``max_interval``, ``travel_px``) scored the same way: what a longer carry would cost."""
    from services.camera.source import MotionCamera
    from services.generator.inputs import masks
    from services.preprocess.pipeline import PreprocessConfig, SessionPreprocessor
    from services.preprocess.tracking import CadenceConfig
    from tools.eval.preprocess import follow_error_px

    cam = MotionCamera(photo, 640, 480)
    stream = [cam.frame(i) for i in range(frames)]
    transforms = [cam.transform(i) for i in range(frames)]

    def run(config: PreprocessConfig) -> tuple[list, list, float]:
        pre = SessionPreprocessor("bench-cadence", config)
        out, lms = [], []
        try:
            for i, frame in enumerate(stream):
                r = pre.process(frame, i, 1000.0 + i * 1e3 / fps, frame_jpeg=b"-")
                out.append(masks(r.conditioning, (480, 640)))
                lms.append(r.landmarks)
        finally:
            pre.close()
        return out, lms, pre.pose_runs / len(stream)

    every, every_lm, _ = run(PreprocessConfig(cadence=CadenceConfig(max_interval=1)))
    shipped, shipped_lm, share = run(PreprocessConfig())

    def iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
        if a is None or b is None:
            return float("nan")
        union = np.count_nonzero((a > 0) | (b > 0))
        return np.count_nonzero((a > 0) & (b > 0)) / union if union else 1.0

    def mean_min(values: list[float]) -> dict[str, float]:
        return {"mean": round(float(np.nanmean(values)), 4), "min": round(float(np.nanmin(values)), 4)}

    ph, pw = photo.shape[:2]
    to_photo = [cv2.invertAffineTransform(m) for m in transforms]

    def on_photo(mask: np.ndarray, i: int) -> np.ndarray:
        return cv2.warpAffine(mask, to_photo[i], (pw, ph), flags=cv2.INTER_NEAREST) > 0

    seen = [on_photo(np.full((480, 640), 255, np.uint8), i) for i in range(frames)]
    truth = []
    for k in (0, 1):
        votes = np.zeros((ph, pw), np.int32)
        for i, m in enumerate(every):
            if m[k] is not None:
                votes += on_photo(m[k], i)
        looked = np.sum([s for s, m in zip(seen, every, strict=True) if m[k] is not None], axis=0)
        truth.append(votes * 2 > np.maximum(looked, 1))

    def against_truth(out: list) -> dict[str, dict[str, float]]:
        scores = {}
        for k, name in ((0, "person_iou"), (1, "garment_iou")):
            ious = []
            for i, m in enumerate(out):
                if m[k] is not None:
                    ious.append(iou(on_photo(m[k], i), truth[k] & seen[i]))
            scores[name] = mean_min(ious) if ious else {"mean": float("nan"), "min": float("nan")}
        return scores

    out: dict = {"pose_share": round(share, 3)}
    for k, name in ((0, "person_iou"), (1, "garment_iou")):
        out[name] = mean_min([iou(a[k], b[k]) for a, b in zip(every, shipped, strict=True)])
    out["follow_error_px"] = {
        "every_frame": round(follow_error_px(every_lm, transforms, 640, 480)[0], 3),
        "shipped": round(follow_error_px(shipped_lm, transforms, 640, 480)[0], 3),
    }
    out["truth"] = {"every_frame": against_truth(every), "shipped": against_truth(shipped)}
    out["sweep"] = []
    for max_interval, travel_px in sweep:
        masks_k, lm_k, share_k = run(
            PreprocessConfig(cadence=CadenceConfig(max_interval=max_interval, travel_px=travel_px))
        )
        out["sweep"].append(
            {
                "max_interval": max_interval,
                "travel_px": travel_px,
                "pose_share": round(share_k, 3),
                "follow_error_px": round(follow_error_px(lm_k, transforms, 640, 480)[0], 3),
                "truth": against_truth(masks_k),
            }
        )
    return out


def jpeg_codecs(photo: np.ndarray, frames: int = 60, qualities: tuple[int, ...] = (85, 90, 95)) -> dict:
    """OpenCV's JPEG (libjpeg-turbo 3, SIMD, as its wheel builds it) against simplejpeg's
    (libjpeg-turbo through its TurboJPEG API) when that package is installed: decode and encode
    CPU ms at 640x480, and per output quality the size and PSNR (what choosing a quality rests on).
    Not a dependency: the comparison is what decided against it (docs/benchmarks.md)."""
    from runtime.media import decode_image, encode_jpeg
    from services.camera.source import MotionCamera

    cam = MotionCamera(photo, 640, 480)
    imgs = [cam.frame(i) for i in range(frames)]
    jpegs = [encode_jpeg(f, 85) for f in imgs]

    def cpu_ms(fn, items) -> float:  # type: ignore[no-untyped-def]
        fn(items[0])
        t0 = time.process_time()
        for x in items:
            fn(x)
        return round((time.process_time() - t0) * 1e3 / len(items), 3)

    out: dict = {"opencv": {"decode_ms": cpu_ms(decode_image, jpegs), "quality": {}}}
    for q in qualities:
        enc = [encode_jpeg(f, q) for f in imgs[:10]]
        out["opencv"]["quality"][q] = {
            "encode_ms": cpu_ms(lambda f, q=q: encode_jpeg(f, q), imgs),
            "kb": round(float(np.mean([len(e) for e in enc])) / 1024, 1),
            "psnr_db": round(
                float(np.mean([cv2.PSNR(f, decode_image(e)) for f, e in zip(imgs[:10], enc, strict=True)])), 2
            ),
        }
    try:
        import simplejpeg  # type: ignore[import-not-found]
    except ImportError:
        out["simplejpeg"] = "not installed"
        return out
    out["simplejpeg"] = {
        "version": simplejpeg.__version__,
        "decode_ms": cpu_ms(lambda j: simplejpeg.decode_jpeg(j, colorspace="BGR", strict=True), jpegs),
        "quality": {
            q: {
                "encode_ms": cpu_ms(
                    lambda f, q=q: simplejpeg.encode_jpeg(f, q, colorspace="BGR", colorsubsampling="420"),
                    imgs,
                )
            }
            for q in qualities
        },
    }
    return out


def _cadences(text: str) -> list[tuple[int, float]]:
    try:
        pairs = [(int(k), float(t)) for k, t in (item.split(":") for item in text.split(",") if item)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MAX_INTERVAL:TRAVEL_PX[,...]") from None
    if any(k < 1 or t <= 0 for k, t in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: MAX_INTERVAL >= 1, TRAVEL_PX > 0")
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chameleon bench preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames of the long 640x480 run")
    parser.add_argument("--frames-720p", type=int, default=300, help="frames of the 1280x720 run")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    parser.add_argument("--jpeg", action="store_true", help="also compare JPEG codecs (jpeg_codecs)")
    parser.add_argument(
        "--cadence",
        type=_cadences,
        default=[],
        help="also score these cadences against the truth, MAX_INTERVAL:TRAVEL_PX comma-separated (6:8,8:12)",
    )
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
    cadence = cadence_quality(photo, sweep=args.cadence)
    result = {
        "bench": "preprocess",
        "ms_per_frame": {"640x480": vga["ms"], "1280x720": hd["ms"]},
        "stages_ms_p50": {"640x480": vga["stages_ms_p50"], "1280x720": hd["stages_ms_p50"]},
        "detect_rate": vga["detect_rate"],
        "pose_share": {"640x480": vga["pose_share"], "1280x720": hd["pose_share"]},
        "jitter_ratio": jitter["ratio"],
        "jitter_px": {"raw": jitter["raw_px"], "smoothed": jitter["smoothed_px"]},
        "message_kb_p95": {"640x480": vga["message_kb_p95"], "1280x720": hd["message_kb_p95"]},
        "frames": vga["frames"],
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_warm": vga["rss_mb_warm"],
        "rss_mb_after": vga["rss_mb_after"],
        "rss_mb_closed": vga["rss_mb_closed"],
        "against_pose_on_every_frame": cadence,
        "jpeg": jpeg_codecs(photo) if args.jpeg else None,
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
