"""Render-time benchmark of the warp backend: ``chameleon bench warp`` (``python -m tools.bench.warp``).

Frames: the bus photo cropped to the front person's upper body (webcam framing: the torso about a
third of the frame wide), matplotlib's Grace Hopper portrait (a close-up: the person fills the
frame; the renderer's cost grows with the person's size) and ``closeup_body``, the close-up of
``bench capacity``: the man in the cream coat, head to thighs, filling the frame's height (his
garment is not magnified there: only ``WarpConfig.pixel_budget`` shrinks his frames), each through
a moving virtual camera at 640x480, preprocessed once by the real MediaPipe pipeline (not timed).
Timed: ``render`` alone, OpenCV on one thread (the serving worker renders one session per thread),
cycling over those frames. ``--renderer both`` (the default) interleaves the current renderer and
the legacy one (``tools/eval/legacy_warp.py``) render by render on the same frames, so both see
the same moments of a shared machine's load: compare their ratio, not absolute times across runs.

Prints one JSON object: ``{"framings": {FRAMING: {RENDERER: {"render_ms": {"p50", "p95"},
"cpu_ms_p50", "drawn_fraction_mean"}, "current_over_legacy_p50"}}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

UPPER_BODY = (slice(380, 800), slice(0, 560))  # 4:3 box around the bus photo's front person
FRAMINGS = ("upper_body", "closeup", "closeup_body")


def _photo(framing: str) -> np.ndarray:
    from runtime.media import read_image, sample_photo

    if framing == "closeup":  # shipped inside the matplotlib wheel (a MediaPipe dependency)
        import matplotlib

        path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        return read_image(str(path))
    if framing == "closeup_body":
        from tools.bench.capacity import closeup_photo

        return closeup_photo(read_image(sample_photo("bus.jpg")))
    return read_image(sample_photo("bus.jpg"))[UPPER_BODY]


def _machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = f"{os.cpu_count()} cores ({cpu or 'cpu unknown'})"
    return f"{platform.machine()}, {cores}, Python {platform.python_version()}"


def bench_framing(framing: str, renderers: list[str], args) -> dict:
    from services.camera.source import Motion, MotionCamera
    from services.generator.warp import WarpRenderer
    from tools.eval.legacy_warp import LegacyWarpRenderer
    from tools.samples import catalogue_garment, preprocessed_frames

    camera = MotionCamera(_photo(framing), args.width, args.height, Motion(period=args.frames))
    inputs = preprocessed_frames([camera.frame(i) for i in range(args.frames)])
    garment = catalogue_garment(args.garment)
    kinds = {"current": WarpRenderer, "legacy": LegacyWarpRenderer}
    sessions = {name: kinds[name]("bench", garment) for name in renderers}
    for session in sessions.values():
        for frame in inputs[:5]:  # warm-up: allocations, first reference estimate
            session.render(frame)
    wall: dict[str, list[float]] = {n: [] for n in sessions}
    cpu: dict[str, list[float]] = {n: [] for n in sessions}
    drawn: dict[str, list[float]] = {n: [] for n in sessions}
    for i in range(args.renders):
        frame = inputs[i % len(inputs)]
        for name, session in sessions.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            out = session.render(frame)[0]
            cpu[name].append((time.thread_time() - c0) * 1e3)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            mask = out.drawn_mask
            drawn[name].append(0.0 if mask is None else float(np.count_nonzero(mask)) / mask.size)
    out: dict = {
        name: {
            "render_ms": {
                "p50": round(float(np.percentile(wall[name], 50)), 2),
                "p95": round(float(np.percentile(wall[name], 95)), 2),
            },
            "cpu_ms_p50": round(float(np.percentile(cpu[name], 50)), 2),
            "drawn_fraction_mean": round(float(np.mean(drawn[name])), 4),
        }
        for name in sessions
    }
    if len(sessions) == 2:
        out["current_over_legacy_p50"] = round(
            out["current"]["render_ms"]["p50"] / max(out["legacy"]["render_ms"]["p50"], 1e-6), 3
        )
    out["frames_with_person"] = sum(f.landmarks is not None for f in inputs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chameleon bench warp", description=__doc__.splitlines()[0])
    parser.add_argument("--garment", default="shirt-blue-checks", help="catalogue garment id")
    parser.add_argument("--frames", type=int, default=30, help="distinct camera frames")
    parser.add_argument("--renders", type=int, default=300, help="timed renders per renderer")
    parser.add_argument("--renderer", choices=("both", "current", "legacy"), default="both")
    parser.add_argument("--framing", choices=(*FRAMINGS, "all"), default="all")
    parser.add_argument("--closeup", action="store_true", help="the close-up only (--framing closeup)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)
    renderers = ["current", "legacy"] if args.renderer == "both" else [args.renderer]
    framings = ["closeup"] if args.closeup else list(FRAMINGS) if args.framing == "all" else [args.framing]
    t0 = time.perf_counter()
    report = {
        "bench": "warp",
        "size": [args.width, args.height],
        "garment": args.garment,
        "renders": args.renders,
        "framings": {f: bench_framing(f, renderers, args) for f in framings},
        "machine": _machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
