"""The Python camera client over a simulated access link (``tools.linksim``, forwarding to a real
nats-server): its frame rate does not fall with the round trip, and on a slow uplink it drops
frames at the client instead of queueing them, so the frames that do arrive are fresh."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from runtime.bus import connect
from services.camera.client import run_camera
from services.camera.source import MotionCamera
from shared.headers import FrameMeta
from shared.subjects import Subjects
from tools.linksim.model import LinkSpec
from tools.linksim.proxy import LinkProxy

pytestmark = pytest.mark.service
SUBJECTS = Subjects()


async def _camera_through(
    nats_url: str, link: LinkSpec, photo: np.ndarray, seconds: float, session: str
) -> tuple[list[tuple[float, float]], object]:
    """Run the camera through ``link`` for ``seconds``; (arrived s, latency ms) per frame at the server."""
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    proxy = await LinkProxy(link, (host, int(port))).start()
    watcher = await connect(nats_url, "watcher", give_up_after_s=5)
    proxy_host, proxy_port = proxy.address
    camera_nc = await connect(f"nats://{proxy_host}:{proxy_port}", "camera", give_up_after_s=5)
    arrived: list[tuple[float, float]] = []

    async def on_frame(msg) -> None:  # type: ignore[no-untyped-def]
        meta = FrameMeta.from_headers(msg.headers)
        arrived.append((time.monotonic(), (time.time_ns() - meta.capture_ns) / 1e6))

    await watcher.subscribe(SUBJECTS.camera(session), cb=on_frame)
    await watcher.flush()
    camera = MotionCamera(photo, 640, 480)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    try:
        report = await run_camera(camera_nc, SUBJECTS, session, camera.frames(10_000), 15.0, stop=stop)
        await asyncio.sleep(0.5)  # what is still on its way
    finally:
        await camera_nc.close()
        await watcher.close()
        await proxy.close()
    return arrived, report


async def test_the_camera_keeps_its_frame_rate_over_a_200_ms_round_trip(nats_url: str, bus_photo) -> None:
    arrived, report = await _camera_through(nats_url, LinkSpec.of(rtt_ms=200), bus_photo, 4.0, "pace-rtt")
    t0 = arrived[0][0]
    steady = [lat for at, lat in arrived if at >= t0 + 1.0]
    assert len(steady) / (arrived[-1][0] - t0 - 1.0) >= 12, (len(steady), report)
    assert max(steady) < 400, f"latency {max(steady):.0f} ms: frames queued somewhere"


async def test_a_slow_uplink_drops_frames_at_the_camera_not_in_a_queue(nats_url: str, bus_photo) -> None:
    link = LinkSpec.of(rtt_ms=40, uplink_kbps=1500)  # ~190 kB/s for frames of ~50 kB at 15 fps
    arrived, report = await _camera_through(nats_url, link, bus_photo, 5.0, "pace-cap")
    assert report.link_dropped > 10, report  # the camera knew the link was full
    t_end = arrived[-1][0]
    late = [lat for at, lat in arrived if at >= t_end - 2.0]
    # unpaced, the last frames wait behind seconds of earlier ones (client buffer, socket, link)
    assert late and max(late) < 900, f"latency {max(late):.0f} ms in the last 2 s"
    assert len(arrived) >= 8
