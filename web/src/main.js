// The shopper page: asks the web service for a session, connects to NATS over WebSocket, sends
// the webcam (or the demo feed) once the shopper starts it, draws the dressed stream, and swaps
// garments on click. Nothing is captured or sent before "Start camera" is pressed.
// Everything it measures is in `window.chameleon.stats()` (the tests and `chameleon bench
// browser` read it there).
import { ChameleonSession } from "./client.js";
import { FreshnessFilter, LatestSlot, Ticker } from "./frames.js";
import { FpsMeter, Samples, SwapTimer } from "./meters.js";
import { LinkFitter, RateMeter, ReceiveMeter, SendPacer } from "./pacing.js";
import { describeEvent, nowNs, nsToMs } from "./protocol.js";

const $ = (id) => document.getElementById(id);
const NO_OUTPUT_MS = 2000; // live, but no frame drawn this long: say so instead of freezing
const HEADER_BYTES = 300; // a frame's NATS headers and protocol line, counted as sent with it

const page = {
  session: null,
  client: null,
  state: "connecting",
  notice: "",
  garments: new Map(), // id -> {record, button}
  inEffect: null,
  appliedSeq: -1, // the first frame seq of the last applied swap: older frames never move inEffect back
  lastDrawMs: 0,
  outFps: new FpsMeter(),
  camFps: new FpsMeter(),
  latency: new Samples(600),
  drawLog: [], // [wall-clock ms when drawn, glass-to-glass ms] per drawn frame: what the bench reads
  parts: { upload: new Samples(600), services: new Samples(600), deliver: new Samples(600) },
  swaps: new SwapTimer(),
  pacer: new SendPacer(), // how many bytes may be on their way (acknowledged by PONGs)
  fitter: null, // LinkFitter: quality and size of the camera frames (made with the session)
  sending: new RateMeter(), // camera bytes and frames per second actually sent
  fitDropped: 0, // the pacer's drops already told to the fitter
  slot: new LatestSlot(),
  fresh: new FreshnessFilter(), // output frames queued across a stall are not drawn
  received: new ReceiveMeter(), // the output stream's downlink, told to the generator each second
  decoding: false,
  framesDrawn: 0,
  staleDropped: 0,
  events: [],
  errors: [],
  demo: false,
  cameraOn: false, // the shopper pressed "Start camera" (and has not stopped it)
  catalogueEmpty: false,
  source: null, // {draw(ctx, w, h, i)}
  renewals: 0, // sessions that took over from an expiring one
  renewTimer: 0,
  leaving: false,
};

function setState(state, text) {
  page.state = state;
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text;
}

/** The notice over the output: an alert region that stays in the document, so each change is read. */
function setNotice(text) {
  page.notice = text || "";
  $("notice").textContent = page.notice;
}

/** What happened to a garment card, for screen readers (a polite status region). */
function announce(text) {
  $("catalogue-status").textContent = text;
}

const garmentName = (id) => page.garments.get(id)?.record.name || id;

// -- session -------------------------------------------------------------------------------------
async function requestSession() {
  for (;;) {
    const res = await fetch("/api/session", { method: "POST" });
    if (res.ok) return res.json();
    if (res.status === 429) {
      const wait = Number(res.headers.get("Retry-After") || 5);
      setState("at_capacity", `Too many new sessions: retrying in ${wait} s`);
      await new Promise((r) => setTimeout(r, wait * 1000));
      continue;
    }
    throw new Error(`the server refused a session (HTTP ${res.status})`);
  }
}

async function watchStatus(client) {
  for await (const s of client.status()) {
    if (client !== page.client) continue; // an old session on its way out
    if (s.type === "disconnect" || s.type === "reconnecting" || s.type === "staleConnection") {
      setState("reconnecting", "Reconnecting…");
    } else if (s.type === "reconnect") {
      page.pacer.reconnected(); // what was on its way is gone; the new path is measured afresh
      setState("live", "Live");
    } else if (s.type === "error") {
      page.errors.push(String(s.error?.message || s.error));
      setState("error", `Connection error: ${s.error?.message || s.error}`);
    }
  }
}

function onEvent(ev) {
  page.events.push({ kind: ev.kind, code: ev.code, data: ev.data });
  if (page.events.length > 200) page.events.shift();
  const d = describeEvent(ev);
  if (d.kind === "swap") {
    markApplied(d.garmentId, ev.data?.latency_ms, ev.data?.first_seq);
  } else if (d.kind === "error") {
    page.errors.push(d.text);
    setNotice(d.text);
  } else if (d.kind === "notice" && (d.state === "no_person" || d.state === "at_capacity")) {
    setState(d.state, d.text);
    setNotice(d.text);
  } else if (d.kind === "notice" && d.state === "live") {
    setNotice("");
    if (page.framesDrawn) setState("live", "Live");
  }
}

// -- catalogue -------------------------------------------------------------------------------------
function renderCatalogue(items) {
  const list = $("garments");
  list.replaceChildren();
  page.catalogueEmpty = items.length === 0;
  $("catalogue-empty").hidden = !page.catalogueEmpty;
  for (const rec of items) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "garment";
    button.dataset.garmentId = rec.garment_id;
    button.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.alt = "";
    // the product photo, cropped to the garment: it comes with the list (older records have none)
    if (rec.thumbnail_jpeg?.length) {
      img.src = URL.createObjectURL(new Blob([rec.thumbnail_jpeg], { type: "image/jpeg" }));
    }
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = rec.name || rec.garment_id;
    const status = document.createElement("span");
    status.className = "status";
    button.append(img, label, status);
    button.addEventListener("click", () => swapTo(rec.garment_id));
    li.append(button);
    list.append(li);
    page.garments.set(rec.garment_id, { record: rec, button, img, status });
  }
  loadImages(items.filter((r) => !r.thumbnail_jpeg?.length).map((r) => r.garment_id));
}

async function loadImages(ids) {
  for (const id of ids) {
    try {
      const png = await page.client.garmentImage(id);
      const g = page.garments.get(id);
      if (g) g.img.src = URL.createObjectURL(new Blob([png], { type: "image/png" }));
    } catch (err) {
      page.errors.push(String(err.message || err));
    }
  }
}

function showInEffect(garmentId) {
  if (!garmentId || page.inEffect === garmentId) return;
  page.inEffect = garmentId;
  for (const [id, g] of page.garments) g.button.setAttribute("aria-pressed", String(id === garmentId));
  const g = page.garments.get(garmentId);
  $("garment-name").textContent = g ? `· ${g.record.name || garmentId}` : `· ${garmentId}`;
}

async function swapTo(garmentId) {
  const g = page.garments.get(garmentId);
  if (!g || !page.client) return;
  for (const other of page.garments.values()) other.button.classList.remove("pending");
  page.swaps.clicked(garmentId, performance.now());
  g.applied = false;
  g.button.classList.add("pending");
  g.button.classList.remove("failed");
  g.status.textContent = "switching…";
  announce(`Switching to ${garmentName(garmentId)}…`);
  try {
    await page.client.swap(garmentId);
  } catch (err) {
    g.button.classList.remove("pending");
    g.button.classList.add("failed");
    g.status.textContent = "failed";
    announce(`Could not switch to ${garmentName(garmentId)}`);
    page.errors.push(String(err.message || err));
  }
}

/** `swap_applied` arrived: the card stops pending and shows the swap's latency as the page measured
 *  it (click to the first drawn frame), or the generator's until that frame is drawn. */
function markApplied(garmentId, eventLatencyMs, firstSeq) {
  const g = page.garments.get(garmentId);
  if (!g) return;
  if (Number.isFinite(firstSeq)) page.appliedSeq = firstSeq;
  g.button.classList.remove("pending");
  g.applied = true;
  const ms = page.swaps.lastFor === garmentId ? page.swaps.last : eventLatencyMs;
  g.status.textContent = ms != null ? `${Math.round(ms)} ms` : "";
  if (g.button.getAttribute("aria-pressed") !== "true") announce(`Now wearing ${garmentName(garmentId)}`);
  showInEffect(garmentId);
}

// -- output ------------------------------------------------------------------------------------------
function onFrame(jpeg, meta) {
  const out = meta.trace.length ? meta.trace[meta.trace.length - 1] : null;
  const delivery = out?.edge === "out" ? nsToMs(nowNs() - out.ns) : null;
  page.received.onFrame(performance.now(), jpeg.length, delivery);
  page.slot.put({ jpeg, meta });
  if (!page.decoding) drawLoop();
}

async function drawLoop() {
  page.decoding = true;
  const canvas = $("output");
  const ctx = canvas.getContext("2d");
  try {
    for (let item = page.slot.take(); item; item = page.slot.take()) {
      const age = item.meta.captureNs === null ? null : nsToMs(nowNs() - item.meta.captureNs);
      if (age !== null && !page.fresh.accept(age, performance.now())) continue; // queued across a stall
      let bitmap;
      try {
        bitmap = await createImageBitmap(new Blob([item.jpeg], { type: "image/jpeg" })); // off the main thread
      } catch {
        continue; // a frame that does not decode is skipped, the next one follows
      }
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
      }
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      const drawnMs = performance.now();
      page.lastDrawMs = drawnMs;
      page.framesDrawn += 1;
      page.outFps.tick(drawnMs);
      if (item.meta.captureNs !== null) {
        const drawnNs = nowNs();
        const latencyMs = nsToMs(drawnNs - item.meta.captureNs);
        page.latency.add(latencyMs);
        page.drawLog.push([nsToMs(drawnNs), latencyMs]);
        if (page.drawLog.length > 6000) page.drawLog.splice(0, 1000);
        addLatencyParts(item.meta, drawnNs);
      }
      if (item.meta.garmentId) {
        const swapMs = page.swaps.drawn(item.meta.garmentId, drawnMs);
        const g = page.garments.get(item.meta.garmentId);
        if (swapMs !== null && g?.applied) g.status.textContent = `${Math.round(swapMs)} ms`;
        // a frame drawn from before the swap (already in flight when swap_applied came, up to
        // the re-rendered first_seq itself) must not make the old garment's card current again
        if (item.meta.seq === null || item.meta.seq > page.appliedSeq) showInEffect(item.meta.garmentId);
      }
      if (page.state !== "live" && page.state !== "error" && page.state !== "reconnecting") {
        setState("live", "Live");
        setNotice("");
      }
    }
  } finally {
    page.decoding = false;
  }
}

/** Where a frame's glass-to-glass time went, from its trace: the page's encode and upload (capture
 *  to the first service's `in`), the services (to the last `out`), delivery and decode to the draw. */
function addLatencyParts(meta, drawnNs) {
  const trace = meta.trace;
  if (trace.length < 3) return;
  const firstIn = trace.find((s) => s.edge === "in");
  const lastOut = trace[trace.length - 1];
  if (!firstIn || lastOut.edge !== "out") return;
  page.parts.upload.add(nsToMs(firstIn.ns - meta.captureNs));
  page.parts.services.add(nsToMs(lastOut.ns - firstIn.ns));
  page.parts.deliver.add(nsToMs(drawnNs - lastOut.ns));
}

// -- camera ------------------------------------------------------------------------------------------
async function webcamSource(width, height) {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width, height }, audio: false });
  const video = $("webcam");
  video.srcObject = stream;
  await video.play();
  return {
    name: "webcam",
    draw(ctx, w, h) {
      ctx.drawImage(video, 0, 0, w, h);
    },
    stop() {
      for (const t of stream.getTracks()) t.stop(); // the camera's light goes off
      video.srcObject = null;
    },
  };
}

async function demoSource() {
  const img = new Image();
  img.src = "/demo.jpg";
  await img.decode();
  return {
    name: "demo",
    draw(ctx, w, h, i) {
      // a slowly moving camera over the photo (as `chameleon camera --image --motion` does)
      const phase = (2 * Math.PI * i) / 90;
      const zoom = 1 + 0.05 * (1 - Math.cos(phase));
      const s = Math.min(w / img.width, h / img.height) * zoom;
      ctx.fillStyle = "#222";
      ctx.fillRect(0, 0, w, h);
      ctx.setTransform(s, 0, 0, s, w / 2 + 24 * Math.sin(phase), h / 2 + 12 * Math.sin(phase * 1.3));
      ctx.drawImage(img, -img.width / 2, -img.height / 2);
      ctx.setTransform(1, 0, 0, 1, 0, 0);
    },
    stop() {},
  };
}

async function chooseSource(demo) {
  const { width, height } = page.session;
  page.source?.stop();
  page.source = null;
  if (!demo) {
    try {
      page.source = await webcamSource(width, height);
    } catch (err) {
      setNotice(`No webcam (${err.name || err}): showing the demo feed`);
      $("demo-feed").checked = true;
    }
  }
  if (!page.source) {
    try {
      page.source = await demoSource();
    } catch {
      setState("error", "No webcam, and this server has no demo feed");
      return;
    }
  }
  page.demo = page.source.name === "demo";
}

/** The shopper's "Start camera": only now is the webcam asked for (or the demo feed started). */
async function startCamera() {
  const button = $("camera-toggle");
  button.disabled = true;
  try {
    await chooseSource($("demo-feed").checked);
  } finally {
    button.disabled = false;
  }
  setCamera(Boolean(page.source));
  if (page.cameraOn && page.state !== "live") setState("waiting", "Waiting for the stream…");
}

/** "Stop camera": the tracks end (the light goes off) and nothing more is sent. */
function stopCamera() {
  page.source?.stop();
  page.source = null;
  page.demo = false;
  setCamera(false);
  setNotice("");
  setState("ready", "Camera off: nothing is being sent");
}

function setCamera(on) {
  page.cameraOn = on;
  const button = $("camera-toggle");
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Stop camera" : "Start camera";
}

function encodeJpeg(canvas, quality) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
}

/** The fitter for this session's bounds: the size and rate it asks for, down to its minimum. */
function makeFitter(session) {
  return new LinkFitter({
    fps: session.fps,
    width: session.width,
    height: session.height,
    minWidth: session.min_width || session.width,
    minHeight: session.min_height || session.height,
    maxQuality: session.jpeg_quality || 0.85,
    minQuality: session.min_jpeg_quality || session.jpeg_quality || 0.85,
  });
}

/** A PING at most every probe interval (never one per frame): its PONG acknowledges every byte
 *  published before it, which is what the pacer's window and the fitter's rate are made of. */
function probe(client, now) {
  if (!page.pacer.wantProbe(now)) return;
  const token = page.pacer.probeSent(now);
  client.flush().then(
    () => {
      if (client !== page.client) return;
      const at = performance.now();
      const measured = page.pacer.onAck(token, at);
      const dropped = page.pacer.framesDropped - page.fitDropped;
      page.fitDropped = page.pacer.framesDropped;
      if (!measured) return; // waited out a stall: not a sign of a slow link
      page.fitter.onLink(at, {
        rateBps: page.pacer.rate(at),
        queueMs: page.pacer.queueMs(at),
        dropped,
        sendingBps: page.sending.bps(at),
      });
    },
    () => {}, // disconnected: the reconnect resets the pacer
  );
}

/** Camera frames at the session's fps, each tick's frame sent only if the link has room for it
 *  (else dropped: a slow link gets fewer, fresh frames, never a queue), at the size and JPEG
 *  quality the fitter chose for the link. */
async function sendLoop() {
  const canvas = $("camera");
  const ctx = canvas.getContext("2d", { willReadFrequently: false });
  const ticker = new Ticker(page.session.fps, performance.now());
  let seq = 0;
  for (;;) {
    const wait = ticker.due(performance.now());
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    ticker.advance();
    const i = seq++;
    const client = page.client;
    if (!page.source || !client || page.state === "reconnecting") continue; // no link for a moment
    probe(client, performance.now()); // also when no frame goes: what was sent gets acknowledged
    if (!page.pacer.admit(performance.now(), page.fitter.expectedBytes() + HEADER_BYTES)) continue;
    try {
      const { width, height } = page.fitter.size;
      if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
      }
      page.source.draw(ctx, width, height, i);
      const captureNs = nowNs();
      const blob = await encodeJpeg(canvas, page.fitter.quality);
      if (!blob || client !== page.client) continue;
      const jpeg = new Uint8Array(await blob.arrayBuffer());
      client.publishFrame(jpeg, { seq: i, captureNs, width, height });
      const now = performance.now();
      page.pacer.onSent(jpeg.length + HEADER_BYTES);
      page.sending.add(now, jpeg.length);
      page.fitter.onFrame(now, jpeg.length);
      page.camFps.tick(now);
      probe(client, now);
    } catch (err) {
      page.errors.push(String(err.message || err));
    }
  }
}

// -- overlay -----------------------------------------------------------------------------------------
/** The send side as it stands: what the fitter chose, what goes out, what the link showed. */
function sendStats(now) {
  const f = page.fitter;
  const p = page.pacer;
  const kbps = (bps) => (bps === null || bps === undefined ? null : Math.round((bps * 8) / 100) / 10);
  return {
    quality: f?.quality ?? null,
    width: f?.size.width ?? null,
    height: f?.size.height ?? null,
    frame_bytes: f?.frameBytes == null ? null : Math.round(f.frameBytes),
    fps: p ? page.sending.fps(now) : 0,
    kbps: kbps(page.sending.bps(now)),
    link_kbps: kbps(p.rate(now)),
    target_kbps: kbps(f?.targetBps),
    rtt_min_ms: p.rttMin(now),
    queue_ms: Math.round(p.queueMs(now)),
    in_flight_bytes: p.inFlight,
    window_bytes: Math.round(p.window(now, (f?.expectedBytes() ?? 0) + HEADER_BYTES)),
    frames_dropped: p.framesDropped,
    fits: f?.changes ?? 0,
  };
}

function stats() {
  const now = performance.now();
  return {
    state: page.state,
    notice: page.notice,
    camera: page.cameraOn ? "on" : "off",
    catalogue_empty: page.catalogueEmpty,
    session_id: page.session?.session_id ?? null,
    renewals: page.renewals,
    source: page.source?.name ?? null,
    fps_displayed: page.outFps.fps(now),
    fps_sent: page.camFps.fps(now),
    frames_drawn: page.framesDrawn,
    frames_sent: page.pacer.framesSent,
    latency_ms: { p50: page.latency.p(50), p95: page.latency.p(95), count: page.latency.count },
    latency_all_ms: page.latency.all.slice(-5000),
    draw_log: page.drawLog.slice(),
    latency_parts_ms: Object.fromEntries(
      Object.entries(page.parts).map(([k, s]) => [k, { p50: s.p(50), p95: s.p(95) }]),
    ),
    swap_ms: page.swaps.done.all.slice(),
    last_swap_ms: page.swaps.last,
    frames_dropped_by_page: page.pacer.framesDropped + page.slot.replaced + page.fresh.stale,
    camera_frames_dropped: page.pacer.framesDropped,
    output_frames_replaced: page.slot.replaced,
    stale_epoch_dropped: page.staleDropped,
    stale_frames_skipped: page.fresh.stale,
    send: sendStats(now),
    receiver_report: page.lastReport ?? null,
    garment_in_effect: page.inEffect,
    garments: [...page.garments.keys()],
    events: page.events.slice(-50),
    errors: page.errors.slice(-20),
  };
}

/** Once a second: what the downlink carried, so the generator can fit this session's output. */
function sendReceiverReport() {
  const report = page.received.report(performance.now());
  if (!report || !page.client || page.state === "reconnecting") return;
  try {
    page.client.publishReceiverReport(report);
    page.lastReport = report;
  } catch (err) {
    page.errors.push(String(err.message || err));
  }
}

/** Four times a second: only the overlay's own figures (`stats()` copies every sample). */
function updateOverlay() {
  const now = performance.now();
  const fps = page.outFps.fps(now);
  const measured = page.latency.count > 0;
  $("m-fps").textContent = fps ? fps.toFixed(1) : "–";
  $("m-p50").textContent = measured ? `${Math.round(page.latency.p(50))} ms` : "–";
  $("m-p95").textContent = measured ? `${Math.round(page.latency.p(95))} ms` : "–";
  $("m-swap").textContent = page.swaps.last != null ? `${Math.round(page.swaps.last)} ms` : "–";
  const send = page.fitter && page.sending.fps(now) > 0 ? sendStats(now) : null;
  $("m-send").textContent = send
    ? `${Math.round(send.frame_bytes / 1000)} KB · ${send.fps.toFixed(1)} fps · ${(send.kbps / 1000).toFixed(1)} Mbit/s`
    : "–";
  $("m-size").textContent = send ? `${send.width}×${send.height} q${Math.round(send.quality * 100)}` : "–";
  if (page.state === "live" && page.cameraOn && now - page.lastDrawMs > NO_OUTPUT_MS) {
    setState("waiting", "Waiting for the stream…");
  }
}

// -- session lifetime -----------------------------------------------------------------------------
/** A session (and its token) with every subscription the page needs. */
async function openSession() {
  const session = await requestSession();
  const client = await ChameleonSession.connect(session);
  client.onEvent(onEvent);
  client.onFrame(onFrame, () => {
    page.staleDropped += 1;
  });
  watchStatus(client);
  client.closed().then(() => {
    // closed for good (the token expired, the session was stopped): never a silent freeze
    if (page.client === client && !page.leaving) renewSession();
  });
  return { session, client };
}

/** Before the token expires (or after the connection is lost for good), a new session takes over
 *  with the garment in effect; the old one is stopped. */
async function renewSession() {
  const old = page.client;
  page.client = null; // the send loop skips its ticks meanwhile
  try {
    const { session, client } = await openSession();
    const { width, height, fps } = session;
    await client.start({ garmentId: page.inEffect, width, height, fps });
    page.session = session;
    page.client = client;
    page.pacer.reconnected(); // a new connection: its own acknowledgements
    page.appliedSeq = -1; // the new session's frames count afresh
    page.renewals += 1;
    if (page.state === "error" || page.state === "reconnecting") setState("waiting", "Waiting for the stream…");
    scheduleRenewal();
  } catch (err) {
    page.errors.push(`renewing the session: ${err.message || err}`);
    setState("reconnecting", "Reconnecting…");
    page.client = old;
    setTimeout(renewSession, 5000);
    return;
  }
  old?.close().catch(() => {});
}

function scheduleRenewal() {
  clearTimeout(page.renewTimer);
  if (!page.session.expires_at) return; // an open server: no token to expire
  const left = Date.parse(page.session.expires_at) - Date.now();
  const margin = Math.min(60_000, left / 4);
  page.renewTimer = setTimeout(renewSession, Math.max(1000, left - margin));
}

// -- start -------------------------------------------------------------------------------------------
async function main() {
  window.chameleon = { stats, swapTo };
  setInterval(updateOverlay, 250);
  setInterval(sendReceiverReport, 1000);
  try {
    setState("connecting", "Connecting…");
    const { session, client } = await openSession();
    page.session = session;
    page.fitter = makeFitter(session);
    page.client = client;
    const items = await client.listGarments();
    renderCatalogue(items);
    const { width, height, fps } = session;
    await client.start({ garmentId: items[0]?.garment_id ?? null, width, height, fps });
    scheduleRenewal();
    const button = $("camera-toggle");
    button.addEventListener("click", () => (page.cameraOn ? stopCamera() : startCamera()));
    $("demo-feed").addEventListener("change", (e) => {
      if (page.cameraOn) chooseSource(e.target.checked); // else: what Start will use
    });
    button.disabled = false;
    const demo = new URLSearchParams(location.search).has("demo");
    $("demo-feed").checked = demo;
    if (demo) {
      await startCamera(); // the demo feed captures nothing of the shopper
    } else {
      setState("ready", "Ready: press Start camera to try garments on (nothing is captured before)");
    }
    window.addEventListener("pagehide", () => {
      page.leaving = true;
      page.client?.close();
    });
    await sendLoop();
  } catch (err) {
    page.errors.push(String(err.message || err));
    setState("error", `Error: ${err.message || err}`);
  }
}

main();
