"""Render-time benchmark of the warp backend: ``python -m tools.bench.warp``.

Frames: the bus photo cropped to the front person's upper body (webcam framing: the torso about a
third of the frame wide) through a moving virtual camera at 640x480, preprocessed once by the real
MediaPipe pipeline (not timed). ``--closeup``: matplotlib's Grace Hopper portrait instead, a
person filling the frame (the renderer's cost grows with the person's size). Timed:
``WarpRenderer.render`` alone, cycling over those frames.
Prints one JSON object: ``{"render_ms": {"p50", "p95"}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

UPPER_BODY = (slice(380, 800), slice(0, 560))  # 4:3 box around the bus photo's front person


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--garment", default="shirt-blue-checks", help="starter-catalogue garment id")
    parser.add_argument("--frames", type=int, default=30, help="distinct camera frames")
    parser.add_argument("--renders", type=int, default=300, help="timed renders")
    parser.add_argument("--renderer", choices=("current", "legacy"), default="current")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--closeup", action="store_true", help="a portrait: the person fills the frame")
    args = parser.parse_args(argv)

    import cv2

    from runtime.media import read_image, sample_photo
    from services.camera.source import Motion, MotionCamera
    from services.generator.warp import WarpRenderer
    from tools.samples import catalogue_garment, preprocessed_frames

    cv2.setNumThreads(1)  # the serving worker renders one session per thread
    if args.closeup:  # shipped inside the matplotlib wheel (a MediaPipe dependency): nothing downloads
        import matplotlib

        photo = read_image(
            str(Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg")
        )
    else:
        photo = read_image(sample_photo("bus.jpg"))[UPPER_BODY]
    camera = MotionCamera(photo, args.width, args.height, Motion(period=args.frames))
    inputs = preprocessed_frames([camera.frame(i) for i in range(args.frames)])
    if args.renderer == "legacy":
        from tools.eval.legacy_warp import LegacyWarpRenderer as WarpRenderer
    session = WarpRenderer("bench", catalogue_garment(args.garment))
    for frame in inputs[:5]:  # warm-up: allocations, first reference estimate
        session.render(frame)
    times, drawn = [], []
    for i in range(args.renders):
        frame = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        out = session.render(frame)[0]
        times.append((time.perf_counter() - t0) * 1e3)
        drawn.append(
            0.0 if out.drawn_mask is None else float(np.count_nonzero(out.drawn_mask)) / out.drawn_mask.size
        )
    report = {
        "render_ms": {
            "p50": round(float(np.percentile(times, 50)), 2),
            "p95": round(float(np.percentile(times, 95)), 2),
        },
        "size": [args.width, args.height],
        "garment": args.garment,
        "renderer": args.renderer,
        "framing": "closeup" if args.closeup else "upper_body",
        "renders": args.renders,
        "frames_with_person": sum(f.landmarks is not None for f in inputs),
        "drawn_fraction_mean": round(float(np.mean(drawn)), 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
