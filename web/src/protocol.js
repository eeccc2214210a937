// The wire contract as the Python side defines it (shared/subjects.py, shared/headers.py,
// shared/schemas.py): subjects, frame headers and control messages. Pure: no NATS, no DOM, so the
// same code runs in the page, in Node's tests and in any other frontend.
import { decode, encode } from "@msgpack/msgpack";

export const H = Object.freeze({
  SCHEMA: "Chameleon-Frame-Schema",
  SESSION: "Chameleon-Session",
  SEQ: "Chameleon-Seq",
  CAPTURE_NS: "Chameleon-Capture-Ns",
  WIDTH: "Chameleon-Width",
  HEIGHT: "Chameleon-Height",
  TRACE: "Chameleon-Trace",
  GARMENT: "Chameleon-Garment",
  EPOCH: "Chameleon-Epoch",
});
export const FRAME_SCHEMA_VERSION = 1;
export const STAGE = "browser"; // this client's name in the frame trace

const SESSION_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export function validSessionId(id) {
  return typeof id === "string" && SESSION_RE.test(id);
}

/** Every subject one session uses: `<prefix>.<session>.<channel>` and the garment service. */
export function subjects(prefix, sessionId) {
  if (!validSessionId(sessionId)) throw new Error(`invalid session id ${JSON.stringify(sessionId)}`);
  const s = `${prefix}.${sessionId}`;
  return {
    camera: `${s}.camera`,
    control: `${s}.control`,
    output: `${s}.out`,
    events: `${s}.events`,
    feedback: `${s}.feedback`,
    garmentsList: `${prefix}._svc.garments.list`,
    garmentsGet: `${prefix}._svc.garments.get`,
  };
}

/** The reply-inbox prefix a session token allows (shared.auth.session_inbox_prefix). */
export function inboxPrefix(sessionId) {
  return `_INBOX_SESSION.${sessionId}`;
}

/** Wall-clock nanoseconds as a BigInt (the capture stamp; the services share the clock). */
export function nowNs(clock = globalThis.performance) {
  const us = Math.round((clock.timeOrigin + clock.now()) * 1000);
  return BigInt(us) * 1000n;
}

export function nsToMs(ns) {
  return Number(ns / 1000n) / 1000;
}

/** Headers of one camera frame, as `[name, value]` pairs. */
export function frameHeaders({ sessionId, seq, captureNs, width, height }) {
  return [
    [H.SCHEMA, String(FRAME_SCHEMA_VERSION)],
    [H.SESSION, sessionId],
    [H.SEQ, String(seq)],
    [H.CAPTURE_NS, String(captureNs)],
    [H.WIDTH, String(width)],
    [H.HEIGHT, String(height)],
    [H.TRACE, `${STAGE}.out=${captureNs}`],
  ];
}

const DIGITS = /^[0-9]{1,19}$/;

function bigHeader(get, name) {
  const raw = get(name) || "";
  return DIGITS.test(raw) ? BigInt(raw) : null;
}

/** What a frame's headers say (`get(name)` returns one header's value or "").
 *  Numbers a consumer computes with are BigInt nanoseconds; `null` when absent or malformed. */
export function readFrameHeaders(get) {
  const seq = bigHeader(get, H.SEQ);
  const epoch = bigHeader(get, H.EPOCH);
  return {
    sessionId: get(H.SESSION) || "",
    seq: seq === null ? null : Number(seq),
    captureNs: bigHeader(get, H.CAPTURE_NS),
    garmentId: get(H.GARMENT) || null,
    epoch: epoch === null ? 0 : Number(epoch),
    trace: parseTrace(get(H.TRACE) || ""),
  };
}

export function parseTrace(raw) {
  if (!raw) return [];
  const out = [];
  for (const part of raw.split(";")) {
    const eq = part.indexOf("=");
    const dot = part.lastIndexOf(".", eq);
    if (eq < 0 || dot < 0 || !DIGITS.test(part.slice(eq + 1))) continue;
    out.push({ stage: part.slice(0, dot), edge: part.slice(dot + 1, eq), ns: BigInt(part.slice(eq + 1)) });
  }
  return out;
}

export function newEventId() {
  return globalThis.crypto.randomUUID().replaceAll("-", "");
}

/** A control event (`start`, `swap`, `stop`) as the generator decodes it (shared.schemas.Control). */
export function control(action, sessionId, opts = {}) {
  const msg = {
    type: "control",
    v: 1,
    action,
    session_id: sessionId,
    event_id: opts.eventId || newEventId(),
    published_ns: opts.publishedNs ?? nowNs(),
    garment_id: opts.garmentId ?? null,
    backend: opts.backend || "auto",
    width: opts.width || 0,
    height: opts.height || 0,
    fps: opts.fps || 0,
  };
  if (action === "swap" && !msg.garment_id) throw new Error("a swap needs a garment id");
  return msg;
}

/** What the viewer received over the last `windowMs` (shared.schemas.ReceiverReport): the
 *  generator fits the session's output quality to it. */
export function receiverReport(sessionId, { windowMs, frames, bytes, queueMs }) {
  return {
    type: "receiver_report",
    v: 1,
    session_id: sessionId,
    window_ms: Number(windowMs),
    frames: Math.round(frames),
    bytes: Math.round(bytes),
    queue_ms: Math.max(0, Math.min(600_000, Number(queueMs))),
  };
}

export function encodeMessage(obj) {
  return encode(obj, { useBigInt64: true });
}

export function decodeMessage(bytes) {
  return decode(bytes, { useBigInt64: true });
}

export const garmentListRequest = (category = "") => ({ type: "garment_list", v: 1, category });
export const garmentGetRequest = (garmentId) => ({ type: "garment_get", v: 1, garment_id: garmentId });

/** The page's state for an event from the session's events subject (shared.schemas.Event). */
export function describeEvent(ev) {
  const code = ev.code || "";
  if (ev.kind === "swap_applied") return { kind: "swap", garmentId: ev.data?.garment_id ?? null };
  if (code === "no_person") return { kind: "notice", state: "no_person", text: "No person in view" };
  if (code === "partial_person" || code === "no_torso")
    return { kind: "notice", state: "no_person", text: "Step back: shoulders and chest must be in view" };
  if (code === "person_ok") return { kind: "notice", state: "live", text: "" };
  if (code === "at_capacity") {
    const retry = Number(ev.data?.retry_after_s ?? 0);
    return { kind: "notice", state: "at_capacity", text: `All workers busy: retrying in ${retry.toFixed(0)} s` };
  }
  if (ev.kind === "error") return { kind: "error", state: "error", text: `${code}: ${ev.message || ""}`.trim() };
  if (ev.kind === "session_started") return { kind: "notice", state: "started", text: "Session started" };
  if (ev.kind === "session_ended") return { kind: "notice", state: "ended", text: "Session ended" };
  return { kind: "status", state: code, text: ev.message || code };
}
