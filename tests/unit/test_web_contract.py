"""The page's JavaScript speaks the Python services' contract: a control message it encodes is one
``shared.schemas.Control`` decodes, the frame headers it writes are ones ``FrameMeta`` reads
(nanoseconds exact), and it reads the events and frame headers Python writes. Runs the page's own
module in Node.js; skipped when Node.js or the page's packages are missing."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.headers import FrameMeta
from shared.schemas import Control, Event, ReceiverReport
from shared.subjects import Subjects

pytestmark = pytest.mark.unit
WEB = Path(__file__).resolve().parents[2] / "web"

SCRIPT = """
import { control, decodeMessage, describeEvent, encodeMessage, frameHeaders, readFrameHeaders, receiverReport,
  subjects } from "./src/protocol.js";
const [eventB64, headersJson] = process.argv.slice(1);
const swap = control("swap", "web-abc", { garmentId: "tee-red-solid", eventId: "e1" });
const start = control("start", "web-abc", { garmentId: null, width: 640, height: 480, fps: 15 });
const headers = Object.fromEntries(frameHeaders({
  sessionId: "web-abc", seq: 7, captureNs: 1764570000123456789n, width: 640, height: 480 }));
const ev = decodeMessage(Buffer.from(eventB64, "base64"));
const py = JSON.parse(headersJson);
const meta = readFrameHeaders((n) => py[n] || "");
console.log(JSON.stringify({
  swap: Buffer.from(encodeMessage(swap)).toString("base64"),
  start: Buffer.from(encodeMessage(start)).toString("base64"),
  report: Buffer.from(encodeMessage(receiverReport("web-abc",
    { windowMs: 1003.5, frames: 14, bytes: 420000, queueMs: 12.25 }))).toString("base64"),
  headers,
  subjects: subjects("chameleon", "web-abc"),
  event: describeEvent(ev),
  meta: { seq: meta.seq, captureNs: String(meta.captureNs), epoch: meta.epoch, garmentId: meta.garmentId },
}));
"""


def test_javascript_and_python_agree_on_the_wire() -> None:
    node = shutil.which("node")
    if node is None or not (WEB / "node_modules" / "@msgpack" / "msgpack").is_dir():
        pytest.skip("Node.js or web/node_modules missing: `make web` (needs Node.js 18+)")
    event = Event(
        kind="error",
        session_id="web-abc",
        service="ingest",
        code="at_capacity",
        message="full",
        ts_ns=2**62,
        data={"retry_after_s": 3.0},
    )
    out_meta = FrameMeta("web-abc", 9, 1_764_570_000_987_654_321, 640, 480, garment_id="g1", epoch=4)
    out_meta.stamp("generator", "out", 1_764_570_001_000_000_000)
    proc = subprocess.run(
        [
            node,
            "--input-type=module",
            "-e",
            SCRIPT,
            base64.b64encode(event.encode()).decode(),
            json.dumps(out_meta.to_headers()),
        ],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)

    swap = Control.decode(base64.b64decode(got["swap"]))
    assert (swap.action, swap.session_id, swap.garment_id, swap.event_id) == (
        "swap",
        "web-abc",
        "tee-red-solid",
        "e1",
    )
    assert swap.published_ns > 1_700_000_000 * 10**9  # wall-clock nanoseconds, as int64
    start = Control.decode(base64.b64decode(got["start"]))
    assert (start.action, start.width, start.height, start.fps, start.garment_id) == (
        "start",
        640,
        480,
        15.0,
        None,
    )

    report = ReceiverReport.decode(base64.b64decode(got["report"]))
    assert report == ReceiverReport("web-abc", 1003.5, 14, 420_000, 12.25)

    meta = FrameMeta.from_headers(got["headers"])
    assert (meta.session_id, meta.seq, meta.capture_ns) == ("web-abc", 7, 1_764_570_000_123_456_789)
    assert (meta.width, meta.height) == (640, 480)
    assert [(s.stage, s.edge, s.ns) for s in meta.trace] == [("browser", "out", 1_764_570_000_123_456_789)]

    s = Subjects("chameleon")
    assert got["subjects"]["camera"] == s.camera("web-abc")
    assert got["subjects"]["control"] == s.control("web-abc")
    assert got["subjects"]["output"] == s.output("web-abc")
    assert got["subjects"]["events"] == s.events("web-abc")
    assert got["subjects"]["feedback"] == s.feedback("web-abc")
    assert got["subjects"]["garmentsList"] == s.garments("list")
    assert got["subjects"]["garmentsGet"] == s.garments("get")

    assert got["event"]["state"] == "at_capacity" and "3 s" in got["event"]["text"]
    assert got["meta"] == {"seq": 9, "captureNs": "1764570000987654321", "epoch": 4, "garmentId": "g1"}
