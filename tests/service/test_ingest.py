"""Ingest over a real nats-server: forwarding, rejection, latest-frame-wins, reconnect."""

from __future__ import annotations

import asyncio
import functools

import cv2
import numpy as np
import pytest
from service_testkit import until

from harness.natsserver import EmbeddedNats
from runtime.bus import connect
from runtime.media import decode_jpeg, encode_jpeg
from runtime.service import serve_in_task
from services.camera.source import MotionCamera
from services.ingest.handlers import IngestHandlers
from services.ingest.settings import IngestSettings
from shared.client import publish_frame
from shared.headers import FrameMeta, now_ns
from shared.schemas import Event
from shared.subjects import Subjects

pytestmark = pytest.mark.service
SUBJ = Subjects()


def _ingest(url: str, **kw: object):
    settings = IngestSettings(nats_url=url, summary_interval_s=60, **{"admit_stages": "", **kw})  # type: ignore[arg-type]
    # ingest alone: no stateful stage to place sessions in (tests/service/test_fleet.py admits)
    return serve_in_task("ingest", settings, lambda ctx: IngestHandlers(ctx, settings))


def _frame(seq: int, w: int = 1280, h: int = 720, session: str = "s1") -> tuple[bytes, FrameMeta]:
    img = np.full((h, w, 3), (seq * 7) % 255, np.uint8)
    meta = FrameMeta(session, seq, now_ns(), w, h).stamp("camera", "out")
    return encode_jpeg(img), meta


class Collector:
    def __init__(self) -> None:
        self.frames: list[tuple[FrameMeta, bytes, int]] = []
        self.events: list[Event] = []

    async def on_frame(self, msg) -> None:
        self.frames.append((FrameMeta.from_headers(msg.headers), bytes(msg.data), now_ns()))

    async def on_event(self, msg) -> None:
        self.events.append(Event.decode(msg.data))


_until = functools.partial(until, timeout=5.0)


async def test_forwards_valid_frames_normalised_and_stamped(nats_url: str) -> None:
    async with _ingest(nats_url):
        nc = await connect(nats_url, "test")
        col = Collector()
        await nc.subscribe(SUBJ.ingested("fwd"), cb=col.on_frame)
        for seq in range(5):
            jpeg, meta = _frame(seq, session="fwd")
            await publish_frame(nc, SUBJ.camera("fwd"), jpeg, meta)
            await asyncio.sleep(0.03)
        await _until(lambda: len(col.frames) == 5)
        for seq, (meta, data, _) in enumerate(col.frames):
            assert meta.seq == seq and (meta.width, meta.height) == (640, 360)
            assert decode_jpeg(data).shape == (360, 640, 3)
            assert [s.stage + "." + s.edge for s in meta.trace] == ["camera.out", "ingest.in", "ingest.out"]
            assert "ingest" in meta.stage_ms()
        await nc.drain()


async def test_garbage_gets_error_event_and_service_keeps_serving(nats_url: str) -> None:
    async with _ingest(nats_url, max_frame_bytes=300_000):
        nc = await connect(nats_url, "test")
        col_bad, col_good = Collector(), Collector()
        await nc.subscribe(SUBJ.events("bad"), cb=col_bad.on_event)
        await nc.subscribe(SUBJ.ingested("bad"), cb=col_bad.on_frame)
        await nc.subscribe(SUBJ.ingested("good"), cb=col_good.on_frame)
        _, meta = _frame(0, session="bad")
        await publish_frame(nc, SUBJ.camera("bad"), b"not a jpeg at all", meta)
        await _until(lambda: any(e.code == "bad_frame" for e in col_bad.events))
        # missing headers entirely, and an oversized payload, on the same session
        await nc.publish(SUBJ.camera("bad"), b"\xff\xd8junk")
        await _until(lambda: any(e.code == "bad_headers" for e in col_bad.events))
        big = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
        _, meta = _frame(1, session="bad")
        await publish_frame(nc, SUBJ.camera("bad"), encode_jpeg(big, 95), meta)
        await _until(lambda: any(e.code == "frame_too_large" for e in col_bad.events))
        err = next(e for e in col_bad.events if e.code == "bad_frame")
        assert err.kind == "error" and err.service == "ingest" and err.session_id == "bad" and err.message
        # the same service still serves the bad session's good frames and other sessions
        for session in ("bad", "good"):
            jpeg, meta = _frame(2, session=session)
            await publish_frame(nc, SUBJ.camera(session), jpeg, meta)
        await _until(lambda: col_good.frames and col_bad.frames)
        await nc.drain()


async def test_stale_frames_are_dropped(nats_url: str) -> None:
    async with _ingest(nats_url, deadline_ms=100) as ingest:
        nc = await connect(nats_url, "test")
        col = Collector()
        await nc.subscribe(SUBJ.ingested("stale"), cb=col.on_frame)
        jpeg, meta = _frame(0, session="stale")
        meta.capture_ns -= 2_000_000_000
        await publish_frame(nc, SUBJ.camera("stale"), jpeg, meta)
        jpeg, meta = _frame(1, session="stale")
        await publish_frame(nc, SUBJ.camera("stale"), jpeg, meta)
        await _until(lambda: len(col.frames) == 1)
        assert col.frames[0][0].seq == 1
        assert ingest.ctx.stats["stale"].dropped >= 1
        await nc.drain()


async def test_latest_frame_wins_under_a_burst(nats_url: str) -> None:
    """200 frames published as fast as possible: the stage skips to the newest instead of
    working through a queue, so the last frame comes out promptly."""
    async with _ingest(nats_url, deadline_ms=10_000):
        nc = await connect(nats_url, "test")
        col = Collector()
        await nc.subscribe(SUBJ.ingested("burst"), cb=col.on_frame)
        scene = np.zeros((720, 1280, 3), np.uint8)
        scene[..., 0] = np.linspace(0, 255, 1280, dtype=np.uint8)[None, :]
        for k in range(12):
            cv2.circle(scene, (100 * k + 60, 360), 50, (40 * k % 255, 200, 90), -1)
        cam = MotionCamera(scene, 1280, 720)
        payloads = [encode_jpeg(cam.frame(i), 90) for i in range(4)]
        for seq in range(200):
            meta = FrameMeta("burst", seq, now_ns(), 1280, 720).stamp("camera", "out")
            await publish_frame(nc, SUBJ.camera("burst"), payloads[seq % 4], meta)
        sent_last = now_ns()
        await nc.flush()
        await _until(lambda: col.frames and col.frames[-1][0].seq == 199, timeout=10)
        seqs = [m.seq for m, _, _ in col.frames]
        assert seqs == sorted(seqs), "frames must never go backwards"
        assert len(seqs) < 100, f"processed {len(seqs)} of 200: frames were queued, not superseded"
        _, _, received = col.frames[-1]
        # one-slot buffer: the newest frame waits at most for the one in flight
        assert (received - sent_last) / 1e6 < 150
        await nc.drain()


async def test_reconnect_does_not_replay_stale_frames(restartable_nats: EmbeddedNats) -> None:
    url = restartable_nats.url
    async with _ingest(url, deadline_ms=10_000) as ingest:
        cam_nc = await connect(url, "camera")
        view_nc = await connect(url, "viewer")
        col = Collector()
        await view_nc.subscribe(SUBJ.ingested("rc"), cb=col.on_frame)
        await view_nc.flush()
        jpeg, meta = _frame(0, 320, 240, session="rc")
        await publish_frame(cam_nc, SUBJ.camera("rc"), jpeg, meta)
        await _until(lambda: len(col.frames) == 1)

        restartable_nats.stop()
        await _until(lambda: not cam_nc.is_connected)
        sent_while_down = 0
        for seq in range(1, 30):  # frames captured during the outage
            jpeg, meta = _frame(seq, 320, 240, session="rc")
            sent_while_down += await publish_frame(cam_nc, SUBJ.camera("rc"), jpeg, meta)
            await asyncio.sleep(0.01)
        assert sent_while_down == 0
        restartable_nats.start()
        restart_ns = now_ns()
        clients = (cam_nc, view_nc, ingest.ctx.nc)  # the ingest service reconnects on its own
        await _until(lambda: all(nc.is_connected for nc in clients), timeout=15)
        for nc in clients:  # a round trip each: the server has the resubscriptions sent before it
            await nc.flush(timeout=5)
        jpeg, meta = _frame(100, 320, 240, session="rc")
        await publish_frame(cam_nc, SUBJ.camera("rc"), jpeg, meta)
        await _until(lambda: any(m.seq == 100 for m, _, _ in col.frames))  # the first is not lost
        for seq in range(101, 110):
            jpeg, meta = _frame(seq, 320, 240, session="rc")
            await publish_frame(cam_nc, SUBJ.camera("rc"), jpeg, meta)
            await asyncio.sleep(0.02)
        await _until(lambda: any(m.seq >= 101 for m, _, _ in col.frames), timeout=10)
        replayed = [m.seq for m, _, _ in col.frames if 1 <= m.seq < 100]
        assert replayed == [], f"stale frames replayed after reconnect: {replayed}"
        assert all(m.capture_ns >= restart_ns for m, _, _ in col.frames[1:])
        await cam_nc.drain()
        await view_nc.drain()
