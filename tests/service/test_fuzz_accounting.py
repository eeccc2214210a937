"""Issue #13, what ``chameleon bench fuzz`` found, over a real nats-server: a session may only ever
act on itself, a camera cannot fence its own frames, and junk costs a few log lines per second,
never one per message, while every control message is still answered.

- A control message on session A's subject naming session B (A's token may publish it: the
  subject is A's) used to act on B in ingest (B's resolution), preprocess (a ``stop`` closed B's
  MediaPipe graph and released B from the fleet) and auth (a ``stop`` revoked A, though the
  generator refused it as ``session_mismatch``).
- A camera frame with ``Chameleon-Epoch: 2^53-1`` made ingest drop every later frame of that
  session as ``stale_epoch``, so the session went idle and its control was no longer consumed.
- The generator logged one ``control_rejected`` line per junk control message; a pose status
  changing with every frame logged a ``session_status`` line each time.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest
from service_testkit import until as _until
from structlog.testing import capture_logs

from runtime.bus import ConnectionState, connect
from runtime.events import EventPublisher
from runtime.media import encode_jpeg
from runtime.metrics import ServiceMetrics, SessionStats
from runtime.service import ServiceContext, serve_in_task
from services.auth.handlers import AuthHandlers
from services.auth.keys import AuthKeys
from services.auth.settings import AuthSettings
from services.generator.control import ControlMessage
from services.generator.handlers import GeneratorHandlers
from services.generator.settings import GeneratorSettings
from services.ingest.handlers import IngestHandlers
from services.ingest.settings import IngestSettings
from services.preprocess.handlers import PreprocessHandlers, _OpenPreprocessor
from services.preprocess.settings import PreprocessSettings
from shared import control
from shared.client import publish_frame
from shared.headers import H_EPOCH, FrameMeta, now_ns
from shared.schemas import Event
from shared.subjects import Subjects

pytestmark = pytest.mark.service
SUBJ = Subjects(f"fuzzacct{uuid.uuid4().hex[:8]}")


@dataclass
class FakeMsg:
    """A delivered control message, as a handler's callback gets it."""

    subject: str
    data: bytes
    headers: dict | None = None
    acked: int = 0

    async def ack(self) -> None:
        self.acked += 1

    async def term(self) -> None:
        self.acked += 1


@dataclass
class Events:
    received: list[Event] = field(default_factory=list)

    async def on(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.received.append(Event.decode(msg.data))


def _ctx(nc, name: str) -> ServiceContext:  # type: ignore[no-untyped-def]
    return ServiceContext(name, nc, SUBJ, ServiceMetrics(name), SessionStats(), ConnectionState(True))


until = functools.partial(_until, timeout=10.0)


def _jpeg(w: int, h: int) -> bytes:
    return encode_jpeg(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _ingest(url: str):  # type: ignore[no-untyped-def]
    settings = IngestSettings(
        nats_url=url, subject_prefix=SUBJ.prefix, summary_interval_s=60, admit_stages=""
    )
    return serve_in_task("ingest", settings, lambda ctx: IngestHandlers(ctx, settings))


async def test_a_start_naming_another_session_does_not_resize_it(nats_url: str) -> None:
    async with _ingest(nats_url):
        nc = await connect(nats_url, "test")
        sizes: dict[str, list[int]] = {"attacker": [], "victim": []}

        async def on_ingested(msg) -> None:  # type: ignore[no-untyped-def]
            meta = FrameMeta.from_headers(msg.headers)
            sizes[meta.session_id].append(meta.width)

        await nc.subscribe(f"{SUBJ.prefix}.*.ingested", cb=on_ingested)
        await nc.flush()
        # on the attacker's own subject (all its token may publish): a start naming the victim,
        # then one for itself, which ingest handles after the first (one subscription, in order)
        await nc.publish(SUBJ.control("attacker"), control.start("victim", width=320, height=240).encode())
        await nc.publish(SUBJ.control("attacker"), control.start("attacker", width=480, height=360).encode())
        seq = 0
        while not sizes["attacker"] or sizes["attacker"][-1] != 480:  # its own start is in effect
            await publish_frame(
                nc,
                SUBJ.camera("attacker"),
                _jpeg(640, 480),
                FrameMeta("attacker", seq, now_ns(), 640, 480).stamp("camera", "out"),
            )
            seq += 1
            await asyncio.sleep(0.05)
            assert seq < 200, sizes
        await publish_frame(
            nc,
            SUBJ.camera("victim"),
            _jpeg(640, 480),
            FrameMeta("victim", 0, now_ns(), 640, 480).stamp("camera", "out"),
        )
        await until(lambda: sizes["victim"])
        assert sizes["victim"] == [640]  # the default box: the attacker's start changed nothing
        await nc.drain()


async def test_a_camera_sent_epoch_fences_nothing(nats_url: str) -> None:
    async with _ingest(nats_url) as ingest:
        nc = await connect(nats_url, "test")
        epochs: list[int] = []

        async def on_ingested(msg) -> None:  # type: ignore[no-untyped-def]
            epochs.append(FrameMeta.from_headers(msg.headers).epoch)

        await nc.subscribe(SUBJ.ingested("epoch"), cb=on_ingested)
        await nc.flush()
        absurd = FrameMeta("epoch", 0, now_ns(), 320, 240).stamp("camera", "out").to_headers()
        absurd[H_EPOCH] = str(2**53 - 1)
        await nc.publish(SUBJ.camera("epoch"), _jpeg(320, 240), headers=absurd)
        await until(lambda: len(epochs) == 1)
        await publish_frame(
            nc,
            SUBJ.camera("epoch"),
            _jpeg(320, 240),
            FrameMeta("epoch", 1, now_ns(), 320, 240).stamp("camera", "out"),
        )
        await until(lambda: len(epochs) == 2)  # the later frame was not dropped as stale_epoch
        assert epochs == [0, 0]  # and no camera-made epoch travels on to preprocess
        dropped = ingest.ctx.metrics.registry.get_sample_value(
            "chameleon_frames_dropped_total", {"service": "ingest", "reason": "stale_epoch"}
        )
        assert not dropped
        await nc.drain()


class _Graph:
    frames = 3

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_a_stop_naming_another_session_closes_nothing_in_preprocess(nats_url: str) -> None:
    nc = await connect(nats_url, "test")
    handlers = PreprocessHandlers(_ctx(nc, "preprocess"), PreprocessSettings(nats_url=nats_url))
    released: list[str] = []

    async def release(session_id: str) -> None:
        released.append(session_id)

    handlers.fleet.release = release  # type: ignore[method-assign]
    graph = _Graph()
    handlers.sessions["victim"] = _OpenPreprocessor(graph)  # type: ignore[arg-type]
    handlers.fleet.serving["victim"] = None  # type: ignore[assignment]
    try:
        await handlers.on_control(FakeMsg(SUBJ.control("attacker"), control.stop("victim").encode()))
        assert "victim" in handlers.sessions and not graph.closed and not released
        await handlers.on_control(FakeMsg(SUBJ.control("victim"), control.stop("victim").encode()))
        assert graph.closed and released == ["victim"]  # its own stop still closes it
    finally:
        handlers._executor.shutdown(wait=True)
        await nc.drain()


async def test_a_stop_naming_another_session_revokes_nobody(nats_url: str) -> None:
    keys = AuthKeys.generate()
    nc = await connect(nats_url, "test")
    settings = AuthSettings(
        nats_url=nats_url, auth_issuer_seed=keys.issuer_seed, auth_token_public_key=keys.token_public
    )
    handlers = AuthHandlers(_ctx(nc, "auth"), settings)
    revoked: list[str] = []
    handlers.authorizer.revoke = lambda sid, now: revoked.append(sid) or []  # type: ignore[method-assign]
    try:
        await handlers.on_control(FakeMsg(SUBJ.control("attacker"), control.stop("victim").encode()))
        assert revoked == []  # the generator refuses it (session_mismatch): no stop happened
        await handlers.on_control(FakeMsg(SUBJ.control("attacker"), control.stop("attacker").encode()))
        assert revoked == ["attacker"]
    finally:
        await nc.drain()


async def test_junk_control_is_answered_one_event_each_and_logged_a_few_lines(nats_url: str) -> None:
    nc = await connect(nats_url, "test")
    settings = GeneratorSettings(nats_url=nats_url, subject_prefix=SUBJ.prefix, backend="warp")
    handlers = GeneratorHandlers(_ctx(nc, "generator"), settings)
    events = Events()
    await nc.subscribe(SUBJ.events("junk"), cb=events.on)
    await nc.flush()
    rng = np.random.default_rng(13)
    n = 120
    t0 = time.monotonic()
    with capture_logs() as logs:
        for i in range(n):
            data = rng.bytes(int(rng.integers(1, 500))) if i % 2 else control.stop("someone-else").encode()
            await handlers.control.on_message(ControlMessage(SUBJ.control("junk"), data))
    elapsed = time.monotonic() - t0
    await until(lambda: len(events.received) == n)
    assert all(e.kind == "error" and "event_id" in e.data for e in events.received)  # each answered
    assert {e.code for e in events.received} == {"bad_control", "session_mismatch"}
    lines = [e for e in logs if e["event"] == "control_rejected"]
    assert 2 <= len(lines) <= 2 * 3 * (math.ceil(elapsed) + 1), len(lines)  # 3 a second per code
    outcomes = handlers.control.total.collect()[0].samples
    assert sum(s.value for s in outcomes if s.name.endswith("_total")) == n  # and each counted
    await nc.drain()


async def test_status_changes_are_all_published_and_logged_a_few_lines(nats_url: str) -> None:
    nc = await connect(nats_url, "test")
    publisher = EventPublisher(nc, SUBJ, "preprocess")
    events = Events()
    await nc.subscribe(SUBJ.events("flip"), cb=events.on)
    await nc.flush()
    t0 = time.monotonic()
    with capture_logs() as logs:
        for i in range(60):
            await publisher.status("flip", "no_person" if i % 2 else "person_ok")
    elapsed = time.monotonic() - t0
    await until(lambda: len(events.received) == 60)
    lines = [e for e in logs if e["event"] == "session_status"]
    assert 2 <= len(lines) <= 2 * 3 * (math.ceil(elapsed) + 1), len(lines)
    await nc.drain()
