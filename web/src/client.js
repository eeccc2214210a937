// A minimal, complete FashionChameleon client for browsers (and any JavaScript runtime with a
// WebSocket): connect with a session token, start the session, publish camera frames, receive the
// dressed frames and the session's events, list garments and swap. The page is built on it;
// import it in your own frontend (docs/frontends.md).
import { headers as natsHeaders, wsconnect } from "@nats-io/nats-core";
import { EpochFilter } from "./frames.js";
import {
  control,
  decodeMessage,
  encodeMessage,
  frameHeaders,
  garmentGetRequest,
  garmentListRequest,
  inboxPrefix,
  readFrameHeaders,
  receiverReport,
  subjects,
} from "./protocol.js";

export class ChameleonSession {
  /** `nc`: a connected NatsConnection; `session`: what POST /api/session answered. */
  constructor(nc, session) {
    this.nc = nc;
    this.session = session;
    this.sessionId = session.session_id;
    this.subjects = subjects(session.subject_prefix || "chameleon", this.sessionId);
    this.epochs = new EpochFilter();
    this.subs = [];
  }

  /** Connect over the NATS WebSocket listener with the session's token (none on an open server). */
  static async connect(session, options = {}) {
    const servers = session.ws_servers?.length ? session.ws_servers : [session.ws_url];
    const opts = {
      servers,
      name: `web-${session.session_id}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      pingInterval: 10_000,
      ...options,
    };
    if (session.token) {
      opts.token = session.token;
      opts.inboxPrefix = inboxPrefix(session.session_id); // the only inbox the token may read
    }
    return new ChameleonSession(await wsconnect(opts), session);
  }

  /** Store a control event durably (a JetStream publish: the stream acknowledges it). */
  async sendControl(msg, timeoutMs = 5000) {
    const h = natsHeaders();
    h.set("Nats-Msg-Id", msg.event_id); // a retried publish is stored once
    const reply = await this.nc.request(this.subjects.control, encodeMessage(msg), { timeout: timeoutMs, headers: h });
    const ack = JSON.parse(new TextDecoder().decode(reply.data) || "{}");
    if (ack.error) throw new Error(`control not stored: ${ack.error.description || JSON.stringify(ack.error)}`);
    return msg.event_id;
  }

  start({ garmentId = null, width = 0, height = 0, fps = 0 } = {}) {
    return this.sendControl(control("start", this.sessionId, { garmentId, width, height, fps }));
  }

  swap(garmentId) {
    return this.sendControl(control("swap", this.sessionId, { garmentId }));
  }

  stop() {
    return this.sendControl(control("stop", this.sessionId));
  }

  /** Publish one JPEG camera frame with the documented headers (fire and forget). */
  publishFrame(jpeg, { seq, captureNs, width, height }) {
    const h = natsHeaders();
    for (const [k, v] of frameHeaders({ sessionId: this.sessionId, seq, captureNs, width, height })) h.set(k, v);
    this.nc.publish(this.subjects.camera, jpeg, { headers: h });
  }

  /** Resolves when the server has read everything published so far (a PING's PONG): the
   *  acknowledgement the page's SendPacer counts bytes with, at most one per probe interval. */
  flush() {
    return this.nc.flush();
  }

  /** Tell the server what the output stream's downlink carried (fire and forget, ~1 a second):
   *  `{windowMs, frames, bytes, queueMs}` from a ReceiveMeter. */
  publishReceiverReport(report) {
    this.nc.publish(this.subjects.feedback, encodeMessage(receiverReport(this.sessionId, report)));
  }

  /** `onFrame(jpegBytes, meta)` for each output frame; frames of a replaced owner (an older
   *  epoch than one already seen) are dropped, as docs/fleet.md requires of every viewer. */
  onFrame(onFrame, onStale = () => {}) {
    const sub = this.nc.subscribe(this.subjects.output, {
      callback: (err, msg) => {
        if (err) return;
        const meta = readFrameHeaders((name) => msg.headers?.get(name) || "");
        if (!this.epochs.accept(meta.epoch)) return onStale(meta);
        onFrame(msg.data, meta);
      },
    });
    this.subs.push(sub);
    return sub;
  }

  /** `onEvent(event)` for each status, error and swap_applied event of the session. */
  onEvent(onEvent) {
    const sub = this.nc.subscribe(this.subjects.events, {
      callback: (err, msg) => {
        if (err) return;
        try {
          onEvent(decodeMessage(msg.data));
        } catch {
          /* not an event of ours: ignore */
        }
      },
    });
    this.subs.push(sub);
    return sub;
  }

  async listGarments(category = "") {
    const reply = await this.nc.request(this.subjects.garmentsList, encodeMessage(garmentListRequest(category)), {
      timeout: 5000,
    });
    const msg = decodeMessage(reply.data);
    if (!msg.ok) throw new Error(`garment list: ${msg.error_code} ${msg.error}`);
    return msg.items;
  }

  /** The garment's catalogue texture (PNG bytes) for its card. */
  async garmentImage(garmentId) {
    const reply = await this.nc.request(this.subjects.garmentsGet, encodeMessage(garmentGetRequest(garmentId)), {
      timeout: 10_000,
    });
    const msg = decodeMessage(reply.data);
    if (!msg.ok) throw new Error(`garment ${garmentId}: ${msg.error_code} ${msg.error}`);
    return msg.asset.texture_png;
  }

  /** Resolves when the connection is closed for good (closed by us, token expired, kicked). */
  closed() {
    return this.nc.closed();
  }

  /** Connection changes ({type: "disconnect" | "reconnecting" | "reconnect" | ...}). */
  status() {
    return this.nc.status();
  }

  async close({ stopSession = true } = {}) {
    if (stopSession) await this.stop().catch(() => {});
    await this.nc.drain().catch(() => {});
  }
}
