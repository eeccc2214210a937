"""A complete FashionChameleon client in Python on the thin client module (``shared/client.py``:
nats-py, msgpack and numpy, nothing of the server): what docs/frontends.md describes. Publishes a
photo as camera frames, starts the session with a garment, receives the dressed frames and the
events, and prints one JSON line. Frames go at a fixed pace while the link has room for them and
are dropped, never queued, when it has not (``PacedSender``: acknowledged bytes, not one round trip
per frame).

    pip install fashion-chameleon opencv-python-headless   # the client, and OpenCV to read the photo
    python examples/python_client.py --nats nats://127.0.0.1:4222 --session alice \\
        --token "$CHAMELEON_TOKEN" --image photo.jpg --frames 60 --garment shirt-green-solid
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import cv2

from shared.client import Frame, PacedSender, Session
from shared.schemas import Event


async def run(args: argparse.Namespace) -> dict:
    # a session token allows this session's subjects and replies under its own inbox prefix,
    # which the client sets for you; without one, an open server
    session = await Session.connect(args.nats, args.session, token=args.token, give_up_after_s=10)
    latencies: list[float] = []
    events: list[str] = []

    def on_frame(frame: Frame) -> None:  # frames of a replaced worker (older epoch) never get here
        latencies.append((frame.recv_ns - frame.meta.capture_ns) / 1e6)

    def on_event(event: Event) -> None:
        events.append(f"{event.kind}:{event.code}")

    await session.watch(on_frame)
    await session.events(on_event)
    await session.start(args.garment, width=640, height=480, fps=args.fps)

    frame = cv2.resize(cv2.imread(args.image), (640, 480))
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    paced = PacedSender(session.nc, args.fps)
    start = time.monotonic()
    sent = 0
    for seq in range(args.frames):
        await asyncio.sleep(max(0.0, start + seq / args.fps - time.monotonic()))  # a fixed pace
        sent += await session.publish(jpeg, seq, 640, 480, paced=paced)
    await paced.close()
    await asyncio.sleep(args.linger)
    await session.stop()
    await session.close()
    latencies.sort()
    return {
        "frames_sent": sent,
        "frames_dropped_by_link": paced.dropped,
        "frames_received": len(latencies),
        "latency_ms_p50": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "events": sorted(set(events)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats", required=True, help="server URL(s), comma-separated")
    p.add_argument("--session", required=True)
    p.add_argument("--token", default="", help="a session token (empty: an open server)")
    p.add_argument("--image", required=True)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--garment", default=None)
    p.add_argument("--linger", type=float, default=1.5, help="seconds to wait for the last frames")
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
