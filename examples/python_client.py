"""A minimal, complete FashionChameleon client in Python, with nothing of this project imported:
what docs/frontends.md describes, in one file. Publishes a photo as camera frames, starts the
session with a garment, receives the dressed frames and the events, and prints one JSON line.
Frames go at a fixed pace while the link has room for them and are dropped, never queued, when it
has not (``Pacer``: acknowledged bytes, not one round trip per frame).

    python examples/python_client.py --nats nats://127.0.0.1:4222 --session alice \\
        --token "$CHAMELEON_TOKEN" --image photo.jpg --frames 60 --garment shirt-green-solid

Needs nats-py, msgpack and opencv-python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import cv2
import msgpack
import nats

PREFIX = "chameleon"
PROBE_S = 0.1  # an acknowledgement (PING/PONG) at most this often, whatever the frame rate
QUEUE_S = 0.3  # the queueing a frame may meet on the link before frames are dropped instead


class Pacer:
    """May the next frame go? A PONG answers a PING once the server has read everything published
    before it, so bytes published minus bytes acknowledged is what is still on its way. A frame
    goes while that fits a round trip plus ``QUEUE_S`` of what the frames need and the last probe
    met no queue (its round trip within ``QUEUE_S`` of the path's own); otherwise it is dropped.
    Waiting for a PONG per frame instead would cap the rate at one frame per round trip."""

    def __init__(self, nc, fps: float) -> None:
        self.nc, self.fps = nc, fps
        self.sent = self.acked = 0
        self.rtt_min: float | None = None
        self.last_rtt = 0.0
        self.probed_at, self.probed_bytes = float("-inf"), 0
        self.tasks: set[asyncio.Task] = set()
        self.dropped = 0

    def admit(self, frame_bytes: int) -> bool:
        in_flight = self.sent - self.acked
        if in_flight == 0:
            return True
        if self.rtt_min is None:  # no round trip measured yet: two frames, as TCP starts small
            ok = in_flight + frame_bytes <= 2 * frame_bytes
        else:
            window = self.fps * frame_bytes * (self.rtt_min + 2 * PROBE_S + QUEUE_S)
            ok = self.last_rtt <= self.rtt_min + QUEUE_S and in_flight + frame_bytes <= window
        self.dropped += not ok
        return ok

    def published(self, nbytes: int) -> None:
        self.sent += nbytes
        now = time.monotonic()
        if now - self.probed_at >= PROBE_S:
            self.probed_at, self.probed_bytes = now, self.sent
            task = asyncio.create_task(self._probe(self.sent, now))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _probe(self, covered: int, at: float) -> None:
        # nats-py writes the PING straight to the socket, ahead of publishes still in its buffer
        covered = min(covered, self.sent - self.nc.pending_data_size)
        try:  # no timeout: nats-py cancels a timed-out flush, and a late PONG then breaks it
            await self.nc.flush(timeout=3600)
        except Exception:
            return
        self.last_rtt = time.monotonic() - at
        self.rtt_min = self.last_rtt if self.rtt_min is None else min(self.rtt_min, self.last_rtt)
        self.acked = max(self.acked, covered)


async def send_control(nc, session: str, action: str, **fields) -> str:
    """A control event is a JetStream publish: the stream acknowledges it (a JSON PubAck), and
    ``Nats-Msg-Id`` makes a retry land once."""
    msg = {
        "type": "control",
        "v": 1,
        "action": action,
        "session_id": session,
        "event_id": uuid.uuid4().hex,
        "published_ns": time.time_ns(),
        "garment_id": None,
        "backend": "auto",
        "width": 0,
        "height": 0,
        "fps": 0.0,
        **fields,
    }
    reply = await nc.request(
        f"{PREFIX}.{session}.control",
        msgpack.packb(msg),
        timeout=5,
        headers={"Nats-Msg-Id": msg["event_id"]},
    )
    ack = json.loads(reply.data or b"{}")
    if "error" in ack:
        raise RuntimeError(f"control not stored: {ack['error']}")
    return msg["event_id"]


async def run(args: argparse.Namespace) -> dict:
    options: dict = {"servers": args.nats.split(",")}
    if args.token:  # a session token allows replies only under this session's inbox prefix
        options.update(token=args.token, inbox_prefix=f"_INBOX_SESSION.{args.session}")
    nc = await nats.connect(**options)
    base = f"{PREFIX}.{args.session}"
    latencies: list[float] = []
    events: list[str] = []
    newest_epoch = 0

    async def on_frame(msg) -> None:
        nonlocal newest_epoch
        epoch = int(msg.headers.get("Chameleon-Epoch", "0"))
        if epoch < newest_epoch:  # from a worker that has been replaced: never show it
            return
        newest_epoch = epoch
        latencies.append((time.time_ns() - int(msg.headers["Chameleon-Capture-Ns"])) / 1e6)

    async def on_event(msg) -> None:
        event = msgpack.unpackb(msg.data)
        events.append(f"{event['kind']}:{event['code']}")

    await nc.subscribe(f"{base}.out", cb=on_frame)
    await nc.subscribe(f"{base}.events", cb=on_event)
    await send_control(
        nc, args.session, "start", garment_id=args.garment, width=640, height=480, fps=args.fps
    )

    frame = cv2.resize(cv2.imread(args.image), (640, 480))
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    pacer = Pacer(nc, args.fps)
    start = time.monotonic()
    for seq in range(args.frames):
        await asyncio.sleep(max(0.0, start + seq / args.fps - time.monotonic()))  # a fixed pace
        if not pacer.admit(len(jpeg)):
            continue  # the link is full: this frame is dropped, the next one is fresher
        now = time.time_ns()
        headers = {
            "Chameleon-Frame-Schema": "1",
            "Chameleon-Session": args.session,
            "Chameleon-Seq": str(seq),
            "Chameleon-Capture-Ns": str(now),
            "Chameleon-Width": "640",
            "Chameleon-Height": "480",
            "Chameleon-Trace": f"camera.out={now}",
        }
        await nc.publish(f"{base}.camera", jpeg, headers=headers)
        pacer.published(len(jpeg))
    await asyncio.sleep(args.linger)
    await send_control(nc, args.session, "stop")
    await nc.flush()  # PONGs come in order: every probe has its answer after this one
    await nc.drain()
    latencies.sort()
    return {
        "frames_sent": args.frames - pacer.dropped,
        "frames_dropped": pacer.dropped,
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
