"""Issue #13, hostile input, over a real nats-server: every defect reproduced as the issue reports
it (real services, real JPEG bytes, real MediaPipe, a real preprocess process for its stderr)."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import uuid
from pathlib import Path

import numpy as np
import pytest
from service_testkit import admit_when_registered, spawn_service
from service_testkit import until as _until
from structlog.testing import capture_logs

from runtime.bus import connect
from runtime.fleet.view import open_view
from runtime.media import decode_jpeg, encode_jpeg
from runtime.service import serve_in_task
from services.camera.source import MotionCamera
from services.garments.handlers import GarmentHandlers
from services.garments.settings import GarmentSettings
from services.garments.starter import add_starter_garments
from services.generator.handlers import GeneratorHandlers
from services.generator.settings import GeneratorSettings
from services.ingest.admission import Admission
from services.ingest.handlers import IngestHandlers
from services.ingest.settings import IngestSettings
from services.preprocess.pipeline import SessionPreprocessor
from shared.client import publish_frame
from shared.garment_client import GarmentClient
from shared.headers import FrameMeta, now_ns
from shared.schemas import Control, Event, SessionState
from shared.subjects import Subjects
from tools.samples import garbage_scan, with_sof_size

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]
SUBJ = Subjects(f"hostile{uuid.uuid4().hex[:8]}")  # this module's own buckets on the shared server


def _ingest(url: str, **kw: object):  # type: ignore[no-untyped-def]
    settings = IngestSettings(
        nats_url=url,
        subject_prefix=SUBJ.prefix,
        **{"summary_interval_s": 60, "admit_stages": "", **kw},  # type: ignore[arg-type]
    )
    return serve_in_task("ingest", settings, lambda ctx: IngestHandlers(ctx, settings))


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    return encode_jpeg(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


class Watch:
    """Frames and events of the sessions a test watches (``*`` for all)."""

    def __init__(self) -> None:
        self.frames: list[tuple[FrameMeta, bytes]] = []
        self.events: list[Event] = []

    @classmethod
    async def on(cls, nc, subjects: Subjects, session: str, out: str = "ingested") -> Watch:  # type: ignore[no-untyped-def]
        w = cls()
        frames = f"{subjects.prefix}.{session}.{out}"
        await nc.subscribe(frames, cb=w._frame)
        await nc.subscribe(f"{subjects.prefix}.{session}.events", cb=w._event)
        await nc.flush()
        return w

    async def _frame(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.frames.append((FrameMeta.from_headers(msg.headers), bytes(msg.data)))

    async def _event(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.events.append(Event.decode(msg.data))

    def codes(self, kind: str | None = None) -> list[str]:
        return [e.code for e in self.events if kind is None or e.kind == kind]


until = functools.partial(_until, timeout=10.0)


def _meta(session: str, seq: int, w: int, h: int, capture_ns: int | None = None) -> FrameMeta:
    return FrameMeta(session, seq, capture_ns or now_ns(), w, h).stamp("camera", "out")


def _rejected(handlers, code: str) -> float:  # type: ignore[no-untyped-def]
    value = handlers.ctx.metrics.registry.get_sample_value(
        "chameleon_frames_rejected_total", {"service": handlers.ctx.name, "code": code}
    )
    return value or 0.0


# -- integer headers ------------------------------------------------------------------------------
async def test_a_sequence_number_of_2_to_the_70_is_bad_headers_at_ingest(nats_url: str) -> None:
    """It used to pass ingest and fail preprocess with a msgpack overflow traceback per frame and
    no error event."""
    async with _ingest(nats_url):
        nc = await connect(nats_url, "test")
        watch = await Watch.on(nc, SUBJ, "seq70")
        await publish_frame(nc, SUBJ.camera("seq70"), _jpeg(320, 240), _meta("seq70", 2**70, 320, 240))
        await until(lambda: "bad_headers" in watch.codes("error"))
        err = next(e for e in watch.events if e.code == "bad_headers")
        assert "Chameleon-Seq" in err.message and err.service == "ingest"
        await publish_frame(nc, SUBJ.camera("seq70"), _jpeg(320, 240), _meta("seq70", 1, 320, 240))
        await until(lambda: len(watch.frames) == 1)  # the session keeps flowing
        assert watch.frames[0][0].seq == 1
        await nc.drain()


# -- JPEGs whose header lies ----------------------------------------------------------------------
async def test_a_jpeg_whose_data_does_not_match_its_header_is_a_bad_frame_at_ingest(nats_url: str) -> None:
    """A 640x480 header over 176x144 data, or over garbage, used to pass ingest undecoded."""
    lying = with_sof_size(_jpeg(176, 144), 640, 480)
    async with _ingest(nats_url):
        nc = await connect(nats_url, "test")
        watches = {s: await Watch.on(nc, SUBJ, s) for s in ("lie", "garbage")}
        await publish_frame(nc, SUBJ.camera("lie"), lying, _meta("lie", 0, 640, 480))
        await publish_frame(
            nc, SUBJ.camera("garbage"), garbage_scan(_jpeg(640, 480)), _meta("garbage", 0, 640, 480)
        )
        await until(lambda: all("bad_frame" in w.codes("error") for w in watches.values()))
        for w in watches.values():
            assert "corrupt image data" in next(e.message for e in w.events if e.code == "bad_frame")
        good = _jpeg(640, 480)
        await publish_frame(nc, SUBJ.camera("lie"), good, _meta("lie", 1, 640, 480))
        await until(lambda: len(watches["lie"].frames) == 1)
        assert watches["lie"].frames[0][1] == good and not watches["garbage"].frames
        await nc.drain()


async def test_preprocess_reports_a_lying_jpeg_as_bad_frame_and_prints_only_json(nats_url: str) -> None:
    """A lying JPEG that reaches preprocess (published on ``ingested`` directly) used to make it
    print libjpeg's raw warning for every frame and report ``no_person``; the service runs as a
    process of its own, as deployed, so its whole stderr is seen."""
    proc = await spawn_service(
        "services.preprocess.main", nats_url, SUBJ.prefix, "hostile-pre", CHAMELEON_SUMMARY_INTERVAL_S="1"
    )
    lying = with_sof_size(_jpeg(176, 144), 640, 480)
    nc = await connect(nats_url, "test")
    try:
        watch = await Watch.on(nc, SUBJ, "pre-lie", out="cond")
        await admit_when_registered(nc, SUBJ, "preprocess", "pre-lie", proc)
        for seq in range(30):
            payload = lying if seq % 2 else garbage_scan(_jpeg(640, 480))
            await publish_frame(nc, SUBJ.ingested("pre-lie"), payload, _meta("pre-lie", seq, 640, 480))
            await asyncio.sleep(1 / 30)
        await until(lambda: "bad_frame" in watch.codes("error"), timeout=30)
        await asyncio.sleep(0.5)
        assert not watch.frames and "no_person" not in watch.codes()
    finally:
        await nc.drain()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    raw = [line for line in lines if not line.startswith("{")]
    assert not raw, f"raw library output on stderr: {raw[:5]}"
    logged = [json.loads(line) for line in lines]
    assert any(e["event"] == "service_started" for e in logged)
    errors = [e for e in logged if e["event"] == "session_error"]
    assert 1 <= len(errors) <= 5, errors  # 30 frames in 1 s: rate-limited, not one per frame
    assert errors[0]["code"] == "bad_frame"


# -- resolution -----------------------------------------------------------------------------------
async def test_a_start_asking_for_4096x4096_is_capped(nats_url: str) -> None:
    """Small frames were scaled up to the requested box: 13 MP frames took the generator a minute
    each and slowed every other session."""
    async with _ingest(nats_url):
        nc = await connect(nats_url, "test")
        watch = await Watch.on(nc, SUBJ, "huge")
        start = Control("start", "huge", uuid.uuid4().hex, now_ns(), width=4096, height=4096)
        await nc.publish(SUBJ.control("huge"), start.encode())
        await until(lambda: "resolution_capped" in watch.codes("status"))
        capped = next(e for e in watch.events if e.code == "resolution_capped")
        assert capped.data["requested"] == [4096, 4096] and capped.data["applied"] == [1280, 720]
        await publish_frame(nc, SUBJ.camera("huge"), _jpeg(176, 144), _meta("huge", 0, 176, 144))
        await until(lambda: len(watch.frames) == 1)
        meta, data = watch.frames[0]
        assert (meta.width, meta.height) == (880, 720) and decode_jpeg(data).shape == (720, 880, 3)
        await nc.drain()


# -- capture time ---------------------------------------------------------------------------------
async def test_a_capture_time_in_the_future_is_refused(nats_url: str) -> None:
    async with _ingest(nats_url):
        nc = await connect(nats_url, "test")
        watch = await Watch.on(nc, SUBJ, "future")
        ahead = _meta("future", 0, 320, 240, capture_ns=now_ns() + 10 * 10**9)
        await publish_frame(nc, SUBJ.camera("future"), _jpeg(320, 240), ahead)
        await until(lambda: "clock_skew" in watch.codes("error"))
        assert not watch.frames
        slightly = _meta("future", 1, 320, 240, capture_ns=now_ns() + 300_000_000)  # within the skew
        await publish_frame(nc, SUBJ.camera("future"), _jpeg(320, 240), slightly)
        await until(lambda: len(watch.frames) == 1)
        await nc.drain()


# -- session ids that are no session ----------------------------------------------------------------
async def test_frames_under_invalid_session_ids_are_counted_and_logged_rate_limited(nats_url: str) -> None:
    bad = ["x" * 200, "a$b", "*", "_svc"]
    with capture_logs() as logs:
        async with _ingest(nats_url) as ingest:
            nc = await connect(nats_url, "test")
            for _ in range(50):
                for token in bad:
                    await publish_frame(
                        nc, f"{SUBJ.prefix}.{token}.camera", _jpeg(32, 32), _meta(token, 0, 32, 32)
                    )
                    await asyncio.sleep(0.002)  # a fast camera, not a flood the pending limits cut
            await until(lambda: _rejected(ingest, "bad_session_id") == 200)
            await nc.drain()
    lines = [e for e in logs if e["event"] == "bad_session_id"]
    assert 1 <= len(lines) <= 3, lines  # one line per second per service, with a count of the rest
    assert lines[0]["subject"].startswith(SUBJ.prefix)


async def test_junk_under_a_new_session_id_per_frame_costs_few_log_lines(nats_url: str) -> None:
    """Each such frame used to cost three lines: its error, its session's summary, its idle."""
    n = 200
    with capture_logs() as logs:
        async with _ingest(nats_url, summary_interval_s=0.2, session_idle_s=0.3) as ingest:
            nc = await connect(nats_url, "test")
            watch = await Watch.on(nc, SUBJ, "*")
            for i in range(n):
                await publish_frame(
                    nc, SUBJ.camera(f"junk-{i}"), b"not a jpeg", _meta(f"junk-{i}", 0, 32, 32)
                )
                await asyncio.sleep(0.002)  # a fast camera, not a flood the pending limits cut
            await until(
                lambda: _rejected(ingest, "bad_frame") == n, what=lambda: _rejected(ingest, "bad_frame")
            )
            await until(lambda: not ingest.stage.sessions)  # every junk session went idle
            await asyncio.sleep(0.5)  # and a summary interval passed
            # every session still got its error event: it has a subject to answer on
            await until(lambda: len({e.session_id for e in watch.events if e.code == "bad_frame"}) == n)
            await nc.drain()
    per_session = [e for e in logs if e["event"] in ("session_error", "session_summary", "session_idle")]
    assert len(per_session) <= n // 10, [e["event"] for e in per_session]


# -- garments that no longer exist ----------------------------------------------------------------
async def test_a_stored_garment_that_no_longer_exists_falls_back_to_the_default(
    nats_url: str, bus_photo
) -> None:
    """The session used to be locked out: ``unknown_garment`` for every frame and no output."""
    prefix = f"fallback{uuid.uuid4().hex[:8]}"
    subjects = Subjects(prefix)
    cam = MotionCamera(bus_photo, 320, 240)
    pre = SessionPreprocessor("gone")
    try:
        conds = [pre.process(cam.frame(i), i, i * 1000 / 15).conditioning for i in range(6)]
    finally:
        pre.close()
    gsettings = GarmentSettings(nats_url=nats_url, subject_prefix=prefix, summary_interval_s=60)
    settings = GeneratorSettings(
        nats_url=nats_url, subject_prefix=prefix, summary_interval_s=60, backend="warp"
    )
    async with serve_in_task("garments", gsettings, lambda ctx: GarmentHandlers(ctx, gsettings)):
        nc = await connect(nats_url, "test")
        await add_starter_garments(GarmentClient(nc, subjects, timeout_s=30), [settings.default_garment])
        async with serve_in_task("generator", settings, lambda ctx: GeneratorHandlers(ctx, settings)):
            kv = await nc.jetstream().key_value(subjects.session_bucket)
            stored = SessionState("gone", "no-such-garment", backend="warp")
            await kv.put("gone", stored.encode())
            watch = await Watch.on(nc, subjects, "gone", out="out")
            admission = Admission(await open_view(nc.jetstream(), subjects), ["generator"])
            await admission.admit("gone")
            await admission.view.close()
            for i in range(12):
                cond = conds[i % len(conds)]
                meta = FrameMeta("gone", i, now_ns(), cond.width, cond.height).stamp("preprocess", "out")
                await publish_frame(nc, subjects.conditioning("gone"), cond.encode(), meta)
                await asyncio.sleep(1 / 15)
            await until(lambda: len(watch.frames) >= 6)
            assert {m.garment_id for m, _ in watch.frames} == {settings.default_garment}
            assert "unknown_garment" not in watch.codes()
            fallback = next(e for e in watch.events if e.code == "garment_fallback")
            assert fallback.kind == "status" and fallback.data["requested"] == "no-such-garment"
            state = SessionState.decode((await kv.get("gone")).value)
            assert state.garment_id == settings.default_garment  # the next resume does not fail again
        await nc.drain()
