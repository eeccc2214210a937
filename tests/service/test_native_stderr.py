"""Issue #13: what native libraries print straight to file descriptor 2 (MediaPipe, TFLite, absl:
``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``, ``W0000 00:00:... *.cc:114] ...``)
comes out of a service process as JSON log lines, like everything else it writes.

The preprocess service runs as a process of its own, as deployed, against a real nats-server, and
builds a real MediaPipe graph for one good frame of the bus photo."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path

import pytest
from service_testkit import admit_when_registered, spawn_service

from runtime.bus import connect
from runtime.media import encode_jpeg
from services.camera.source import MotionCamera
from shared.client import publish_frame
from shared.headers import FrameMeta, now_ns
from shared.subjects import Subjects

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]
SUBJ = Subjects(f"native{uuid.uuid4().hex[:8]}")


async def test_native_library_output_of_a_service_is_json(nats_url: str, bus_photo) -> None:  # type: ignore[no-untyped-def]
    proc = await spawn_service("services.preprocess.main", nats_url, SUBJ.prefix, "native-pre")
    nc = await connect(nats_url, "test")
    conditioned = asyncio.Event()

    async def on_cond(_msg) -> None:  # type: ignore[no-untyped-def]
        conditioned.set()

    try:
        await nc.subscribe(SUBJ.conditioning("native"), cb=on_cond)
        await nc.flush()
        await admit_when_registered(nc, SUBJ, "preprocess", "native", proc)
        jpeg = encode_jpeg(MotionCamera(bus_photo, 640, 480).frame(0))
        meta = FrameMeta("native", 0, now_ns(), 640, 480).stamp("ingest", "out")
        await publish_frame(nc, SUBJ.ingested("native"), jpeg, meta)
        await asyncio.wait_for(conditioned.wait(), 60)  # the session's graph was built and ran
        await asyncio.sleep(0.5)  # what the graph's threads printed has been read
    finally:
        await nc.drain()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    raw = [line for line in lines if not line.startswith("{")]
    assert not raw, f"raw library output on stderr: {raw[:5]}"
    logged = [json.loads(line) for line in lines]
    native = [e for e in logged if e["event"] == "native_output"]
    # building a MediaPipe graph prints at least the XNNPACK delegate line: it came through as JSON
    assert native, [e["event"] for e in logged]
    assert all(e["service"] == "preprocess" and e["text"] for e in native)
    assert any(e["event"] == "session_opened" for e in logged)
