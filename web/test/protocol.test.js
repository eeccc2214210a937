import assert from "node:assert/strict";
import { test } from "node:test";
import {
  H,
  control,
  decodeMessage,
  describeEvent,
  encodeMessage,
  frameHeaders,
  inboxPrefix,
  nowNs,
  nsToMs,
  parseTrace,
  readFrameHeaders,
  subjects,
  validSessionId,
} from "../src/protocol.js";

test("subjects follow <prefix>.<session>.<channel>", () => {
  const s = subjects("chameleon", "web-1");
  assert.equal(s.camera, "chameleon.web-1.camera");
  assert.equal(s.control, "chameleon.web-1.control");
  assert.equal(s.output, "chameleon.web-1.out");
  assert.equal(s.events, "chameleon.web-1.events");
  assert.equal(s.garmentsList, "chameleon._svc.garments.list");
  assert.equal(inboxPrefix("web-1"), "_INBOX_SESSION.web-1");
});

test("session ids that are not one subject token are refused", () => {
  for (const bad of ["", "a.b", "*", ">", "_svc", "a$b", "x".repeat(65)]) {
    assert.equal(validSessionId(bad), false, bad);
    assert.throws(() => subjects("chameleon", bad));
  }
  assert.equal(validSessionId("A9_-z"), true);
});

test("frame headers round-trip, nanoseconds exactly", () => {
  const captureNs = 1_764_570_000_123_456_789n; // beyond 2^53: must stay exact
  const hs = new Map(frameHeaders({ sessionId: "s1", seq: 42, captureNs, width: 640, height: 480 }));
  assert.equal(hs.get(H.SCHEMA), "1");
  assert.equal(hs.get(H.CAPTURE_NS), "1764570000123456789");
  assert.equal(hs.get(H.TRACE), "browser.out=1764570000123456789");
  hs.set(H.EPOCH, "3");
  hs.set(H.GARMENT, "tee-red-solid");
  const meta = readFrameHeaders((n) => hs.get(n) || "");
  assert.equal(meta.seq, 42);
  assert.equal(meta.captureNs, captureNs);
  assert.equal(meta.epoch, 3);
  assert.equal(meta.garmentId, "tee-red-solid");
  assert.deepEqual(meta.trace, [{ stage: "browser", edge: "out", ns: captureNs }]);
});

test("malformed numeric headers read as absent, never as garbage numbers", () => {
  const meta = readFrameHeaders((n) => ({ [H.SEQ]: "-1", [H.CAPTURE_NS]: "12a", [H.EPOCH]: "" })[n] || "");
  assert.equal(meta.seq, null);
  assert.equal(meta.captureNs, null);
  assert.equal(meta.epoch, 0);
  assert.deepEqual(parseTrace("a.in=1;junk;b.out=x;c.out=5"), [
    { stage: "a", edge: "in", ns: 1n },
    { stage: "c", edge: "out", ns: 5n },
  ]);
});

test("control messages carry every field the generator decodes", () => {
  const msg = control("swap", "s1", { garmentId: "g1", eventId: "e1", publishedNs: 2n ** 62n });
  const back = decodeMessage(encodeMessage(msg));
  assert.deepEqual(Object.keys(back).sort(), [
    "action", "backend", "event_id", "fps", "garment_id", "height", "published_ns", "session_id", "type", "v", "width",
  ]);
  assert.equal(back.published_ns, 2n ** 62n);
  assert.equal(back.type, "control");
  assert.throws(() => control("swap", "s1", {}));
});

test("the capture clock is wall-clock nanoseconds", () => {
  const fake = { timeOrigin: 1_700_000_000_000, now: () => 1.5 };
  assert.equal(nowNs(fake), 1_700_000_000_001_500_000n);
  assert.equal(nsToMs(2_500_000n), 2.5);
  const real = nsToMs(nowNs());
  assert.ok(Math.abs(real - Date.now()) < 1000);
});

test("events map to the page's states", () => {
  assert.equal(describeEvent({ kind: "status", code: "no_person" }).state, "no_person");
  assert.equal(describeEvent({ kind: "error", code: "at_capacity", data: { retry_after_s: 5 } }).state, "at_capacity");
  assert.equal(describeEvent({ kind: "error", code: "bad_frame", message: "x" }).state, "error");
  assert.deepEqual(describeEvent({ kind: "swap_applied", code: "swap_applied", data: { garment_id: "g" } }), {
    kind: "swap",
    garmentId: "g",
  });
  assert.equal(describeEvent({ kind: "status", code: "person_ok" }).state, "live");
});
