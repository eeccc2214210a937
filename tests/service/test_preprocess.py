"""Preprocess over a real nats-server: conditioning out, per-session isolation, idle reclaim,
errors as events."""

from __future__ import annotations

import asyncio
import functools
import uuid

import numpy as np
import pytest
from service_testkit import until

from runtime.bus import connect
from runtime.fleet.view import open_view
from runtime.media import encode_jpeg
from runtime.service import serve_in_task
from services.camera.source import MotionCamera
from services.ingest.admission import Admission
from services.preprocess import conditioning as cond
from services.preprocess.handlers import PreprocessHandlers
from services.preprocess.settings import PreprocessSettings
from shared.client import publish_frame
from shared.errors import CodedError
from shared.headers import FrameMeta, now_ns
from shared.masks import decode_rle
from shared.schemas import Conditioning, Control, Event, unpack_array
from shared.subjects import Subjects

pytestmark = pytest.mark.service
SUBJ = Subjects(f"pre{uuid.uuid4().hex[:8]}")  # this module's own buckets on the shared server


def _preprocess(url: str, **kw: object):
    settings = PreprocessSettings(nats_url=url, subject_prefix=SUBJ.prefix, summary_interval_s=60, **kw)  # type: ignore[arg-type]
    return serve_in_task("preprocess", settings, lambda ctx: PreprocessHandlers(ctx, settings))


def _meta(session: str, seq: int, w: int = 640, h: int = 480) -> FrameMeta:
    return FrameMeta(session, seq, now_ns(), w, h).stamp("ingest", "in").stamp("ingest", "out")


class Collector:
    def __init__(self, nc, session: str) -> None:  # type: ignore[no-untyped-def]
        self.nc, self.session = nc, session
        self.cond: list[tuple[FrameMeta, Conditioning]] = []
        self.events: list[Event] = []
        self.refused: CodedError | None = None

    async def admit(self) -> None:
        """What ingest does before a session's frames go on: place it on a preprocess worker."""
        admission = Admission(await open_view(self.nc.jetstream(), SUBJ), ["preprocess"])
        try:
            if not admission.admitted(self.session):
                await admission.admit(self.session)
            self.refused = None
        except CodedError as exc:
            self.refused = exc
        finally:
            await admission.view.close()

    async def on_cond(self, msg) -> None:
        self.cond.append((FrameMeta.from_headers(msg.headers), Conditioning.decode(msg.data)))

    async def on_event(self, msg) -> None:
        self.events.append(Event.decode(msg.data))

    def codes(self) -> list[str]:
        return [e.code for e in self.events]


async def _watch(nc, session: str) -> Collector:
    col = Collector(nc, session)
    await nc.subscribe(SUBJ.conditioning(session), cb=col.on_cond)
    await nc.subscribe(SUBJ.events(session), cb=col.on_event)
    await nc.flush()
    await col.admit()
    return col


_until = functools.partial(until, timeout=20.0)


async def _send_and_wait(nc, col: Collector, session: str, jpeg: bytes, seq: int) -> Conditioning:
    await col.admit()  # again after an idle release, as ingest would
    await publish_frame(nc, SUBJ.ingested(session), jpeg, _meta(session, seq))
    await _until(lambda: any(c.seq == seq for _, c in col.cond))
    return next(c for _, c in col.cond if c.seq == seq)


async def test_frames_in_conditioning_out_with_stamped_headers(nats_url: str, bus_photo) -> None:
    cam = MotionCamera(bus_photo, 640, 480)
    async with _preprocess(nats_url):
        nc = await connect(nats_url, "test")
        col = await _watch(nc, "pp-out")
        for seq in range(4):
            await _send_and_wait(nc, col, "pp-out", encode_jpeg(cam.frame(seq)), seq)
        meta, msg = col.cond[-1]
        assert msg.session_id == "pp-out" and (msg.width, msg.height) == (640, 480) and msg.person_found
        assert unpack_array(msg.landmarks).shape == (33, 4)
        assert decode_rle(msg.garment_mask_rle, 640, 480).shape == (480, 640)
        assert msg.person_mask_rle
        assert [f"{s.stage}.{s.edge}" for s in meta.trace] == [
            "ingest.in",
            "ingest.out",
            "preprocess.in",
            "preprocess.out",
        ]
        assert meta.stage_ms()["preprocess"] > 0 and meta.seq == msg.seq
        await nc.drain()


async def test_sessions_never_share_tracker_state(nats_url: str, bus_photo) -> None:
    person = MotionCamera(bus_photo, 640, 480)
    empty = encode_jpeg(np.full((480, 640, 3), 70, np.uint8))
    async with _preprocess(nats_url) as pre:
        nc = await connect(nats_url, "test")
        col_a, col_b = await _watch(nc, "iso-a"), await _watch(nc, "iso-b")
        for seq in range(6):  # interleaved: a tracker shared by both would lose the person
            await _send_and_wait(nc, col_a, "iso-a", encode_jpeg(person.frame(seq)), seq)
            await _send_and_wait(nc, col_b, "iso-b", empty, seq)
        assert all(c.person_found for _, c in col_a.cond)
        assert not any(c.person_found for _, c in col_b.cond)
        a, b = pre.sessions["iso-a"].pre, pre.sessions["iso-b"].pre
        assert a is not b and a.tracker is not b.tracker and a.smoother is not b.smoother
        assert a.frames == 6 and b.frames == 6  # each saw its own six frames, no more
        assert a.tracker.frames_total <= 6 and b.tracker.frames_total == 6  # no person: pose on each
        assert cond.NO_PERSON in col_b.codes() and cond.NO_PERSON not in col_a.codes()
        await nc.drain()


async def test_idle_and_stopped_sessions_are_reclaimed(nats_url: str, bus_photo) -> None:
    frame = encode_jpeg(MotionCamera(bus_photo, 320, 240).frame(0))
    async with _preprocess(nats_url, session_idle_s=1.5) as pre:
        nc = await connect(nats_url, "test")
        col_idle, col_stop = await _watch(nc, "idle"), await _watch(nc, "stopme")
        await _send_and_wait(nc, col_idle, "idle", frame, 0)
        await _send_and_wait(nc, col_stop, "stopme", frame, 0)
        idle_tracker = pre.sessions["idle"].pre.tracker
        stop_tracker = pre.sessions["stopme"].pre.tracker
        assert idle_tracker.is_open and stop_tracker.is_open
        stop = Control("stop", "stopme", uuid.uuid4().hex, now_ns())
        await nc.publish(SUBJ.control("stopme"), stop.encode())
        await _until(lambda: not stop_tracker.is_open, timeout=1.0)  # well before the idle timeout
        assert "stopme" not in pre.sessions and idle_tracker.is_open
        await _until(lambda: not idle_tracker.is_open and pre.reclaimed == 2, timeout=5)
        assert not pre.sessions
        assert pre.health()["sessions"] == 0
        # a reclaimed session that comes back gets a fresh tracker
        await _send_and_wait(nc, col_idle, "idle", frame, 1)
        assert pre.sessions["idle"].pre.tracker is not idle_tracker
        await nc.drain()


async def test_garbage_gets_an_error_event_and_the_service_keeps_serving(nats_url: str, bus_photo) -> None:
    good = encode_jpeg(MotionCamera(bus_photo, 640, 480).frame(0))
    async with _preprocess(nats_url, max_sessions=2) as pre:
        nc = await connect(nats_url, "test")
        col = await _watch(nc, "junk")
        await publish_frame(nc, SUBJ.ingested("junk"), b"\xff\xd8 certainly not a jpeg", _meta("junk", 0))
        await _until(lambda: "bad_frame" in col.codes())
        err = next(e for e in col.events if e.code == "bad_frame")
        assert err.kind == "error" and err.service == "preprocess" and err.session_id == "junk"
        await nc.publish(SUBJ.ingested("junk"), good)  # no headers at all
        await _until(lambda: "bad_headers" in col.codes())
        tiny = encode_jpeg(np.zeros((10, 14, 3), np.uint8))
        msg = await _send_and_wait(nc, col, "junk", tiny, 1)  # forwarded, without a pose
        assert not msg.person_found and msg.note == "frame_too_small"
        await _until(lambda: "frame_too_small" in col.codes())
        msg = await _send_and_wait(nc, col, "junk", good, 2)
        assert msg.person_found
        # a third session is over capacity: refused with an event, the others unaffected
        col_two = await _watch(nc, "second")
        col_full = await _watch(nc, "third")
        await _send_and_wait(nc, col_two, "second", good, 0)
        # refused by admission for the whole fleet: ingest answers it with an at_capacity event
        assert col_full.refused is not None and col_full.refused.code == "at_capacity"
        await publish_frame(nc, SUBJ.ingested("third"), good, _meta("third", 0))
        await asyncio.sleep(0.3)
        assert set(pre.sessions) == {"junk", "second"} and not col_full.cond
        await nc.drain()


async def test_each_session_gets_the_garment_region_its_own_garment_needs(nats_url: str, bus_photo) -> None:
    """The category comes from the garment's catalogue record (the real garment service), per
    session, through start and swap: a dress session gets the dress region, a tee session beside
    it the top region, and a swap changes it."""
    from services.garments.handlers import GarmentHandlers
    from services.garments.settings import GarmentSettings
    from services.garments.starter import add_starter_garments
    from shared.control import start, swap
    from shared.garment_client import GarmentClient

    gs = GarmentSettings(nats_url=nats_url, subject_prefix=SUBJ.prefix, summary_interval_s=60)
    cam = MotionCamera(bus_photo, 640, 480)
    async with (
        serve_in_task("garments", gs, lambda ctx: GarmentHandlers(ctx, gs)),
        _preprocess(nats_url) as pre,
    ):
        nc = await connect(nats_url, "test")
        client = GarmentClient(nc, SUBJ, timeout_s=60)
        await add_starter_garments(client, ["tee-red-solid", "dress-red-solid"])
        pre._catalogue_read_at = float("-inf")  # the garments were added after it started
        dress, tee = await _watch(nc, "cat-dress"), await _watch(nc, "cat-tee")
        await nc.publish(SUBJ.control("cat-dress"), start("cat-dress", "dress-red-solid").encode())
        await nc.publish(SUBJ.control("cat-tee"), start("cat-tee", "tee-red-solid").encode())
        await nc.flush()
        await _until(lambda: pre.category("cat-dress") == "dress" and pre.category("cat-tee") == "top")
        for seq in range(3):
            d = await _send_and_wait(nc, dress, "cat-dress", encode_jpeg(cam.frame(seq)), seq)
            t = await _send_and_wait(nc, tee, "cat-tee", encode_jpeg(cam.frame(seq)), seq)

        def area(msg) -> int:  # type: ignore[no-untyped-def]
            return int(np.count_nonzero(decode_rle(msg.garment_mask_rle, 640, 480)))

        assert area(d) > 1.3 * area(t), (area(d), area(t))  # a dress reaches down the legs
        await nc.publish(SUBJ.control("cat-dress"), swap("cat-dress", "tee-red-solid").encode())
        await nc.flush()
        await _until(lambda: pre.category("cat-dress") == "top")
        d = await _send_and_wait(nc, dress, "cat-dress", encode_jpeg(cam.frame(5)), 5)
        t = await _send_and_wait(nc, tee, "cat-tee", encode_jpeg(cam.frame(5)), 5)
        assert abs(area(d) - area(t)) < 0.1 * area(t), (area(d), area(t))  # a top region now
        await nc.drain()


async def test_metrics_say_where_each_frames_landmarks_came_from(nats_url: str, bus_photo) -> None:
    """Every frame with a person is counted once, by a pose run or by flow's carry, and the pose
    graph's runs are at least the frames pose ran on: the shares the CPU per session rests on."""
    cam = MotionCamera(bus_photo, 640, 480)
    async with _preprocess(nats_url) as handlers:
        nc = await connect(nats_url, "test")
        col = await _watch(nc, "pp-metrics")
        for seq in range(10):
            await _send_and_wait(nc, col, "pp-metrics", encode_jpeg(cam.frame(seq)), seq)
        registry = handlers.ctx.metrics.registry

        def value(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, {"service": handlers.ctx.name, **labels}) or 0.0

        pose = value("chameleon_preprocess_landmarks_total", how="pose")
        flow = value("chameleon_preprocess_landmarks_total", how="flow")
        assert pose + flow == 10 and pose >= 1 and flow >= 1
        assert value("chameleon_pose_graph_runs_total") >= pose
        assert value("chameleon_pose_retry_finds_total") == 0  # the person is in plain view
        assert value("chameleon_preprocess_flow_misses_total") <= pose
        await nc.drain()
