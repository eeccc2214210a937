import assert from "node:assert/strict";
import { test } from "node:test";
import { FreshnessFilter, Ticker } from "../src/frames.js";
import { LinkFitter, RateMeter, ReceiveMeter, SendPacer } from "../src/pacing.js";

/** A millisecond-step simulation of the page's send path over one link: frames ticked at `fps`,
 *  admitted by the pacer, sized by the fitter, queued at a bottleneck of `capKbps` (0: none),
 *  delayed rttMs/2 each way; probes (PINGs) ride the same queue and come back as acks. */
function simulate({ rttMs, capKbps = 0, seconds = 20, fps = 15, stall = null, size = jpegBytes }) {
  const pacer = new SendPacer({ fps });
  const fitter = new LinkFitter({ fps });
  const sending = new RateMeter();
  const ticker = new Ticker(fps, 0);
  const queue = []; // uplink bottleneck: {bytes, frame?: {capturedAt}, token?}
  const inTransit = []; // [arrivesAt, item] to the server
  const pongs = []; // [arrivesAt, token] back to the page
  const delivered = []; // [capturedAt, arrivedAt] per frame at the server
  let dropped = 0;
  const stalled = (t) => stall !== null && t >= stall[0] && t < stall[1];
  const perMs = capKbps ? (capKbps * 1000) / 8 / 1000 : Infinity;
  for (let now = 0; now < seconds * 1000; now += 1) {
    if (!stalled(now)) {
      let budget = perMs;
      while (queue.length && budget > 0) {
        const take = Math.min(budget, queue[0].bytes);
        queue[0].bytes -= take;
        budget -= take;
        if (queue[0].bytes <= 0) inTransit.push([now + rttMs / 2, queue.shift()]);
      }
      while (inTransit.length && inTransit[0][0] <= now) {
        const item = inTransit.shift()[1];
        if (item.frame) delivered.push([item.frame.capturedAt, now]);
        else pongs.push([now + rttMs / 2, item.token]);
      }
      while (pongs.length && pongs[0][0] <= now) {
        const measured = pacer.onAck(pongs.shift()[1], now);
        const d = pacer.framesDropped - dropped;
        dropped = pacer.framesDropped;
        if (!measured) continue;
        fitter.onLink(now, {
          rateBps: pacer.rate(now),
          queueMs: pacer.queueMs(now),
          dropped: d,
          sendingBps: sending.bps(now),
        });
      }
    }
    if (ticker.due(now) === 0) {
      ticker.advance();
      if (pacer.wantProbe(now)) queue.push({ bytes: 6, token: pacer.probeSent(now) });
      if (pacer.admit(now, fitter.expectedBytes())) {
        const bytes = size(fitter.quality, fitter.scale);
        pacer.onSent(bytes);
        sending.add(now, bytes);
        fitter.onFrame(now, bytes);
        queue.push({ bytes, frame: { capturedAt: now } });
      }
      if (pacer.wantProbe(now)) queue.push({ bytes: 6, token: pacer.probeSent(now) });
    }
  }
  const tail = delivered.filter(([c]) => c >= seconds * 1000 - 10_000); // the last 10 s
  const lat = tail.map(([c, a]) => a - c).sort((a, b) => a - b);
  return {
    pacer,
    fitter,
    delivered,
    fps: tail.length / 10,
    p95: lat[Math.ceil(0.95 * lat.length) - 1],
    maxLatency: lat[lat.length - 1],
  };
}

/** About what Chromium's JPEG of the sample scene weighs: 80 KB at q0.85 full size. */
function jpegBytes(quality, scale) {
  return Math.round(80_000 * (quality / 0.85) ** 1.6 * scale * scale);
}

test("the frame rate holds whatever the round trip (one frame per RTT was 5 fps at 200 ms)", () => {
  for (const rttMs of [0, 100, 200, 300]) {
    const r = simulate({ rttMs });
    assert.ok(r.fps >= 14.5, `${rttMs} ms: ${r.fps} fps`);
    assert.ok(r.p95 <= rttMs / 2 + 5, `${rttMs} ms: p95 ${r.p95}`); // no queue on an open link
    assert.equal(r.fitter.quality, 0.85, "an open link keeps the best quality");
    assert.ok(r.pacer.framesDropped <= 5, `${rttMs} ms: ${r.pacer.framesDropped} dropped`); // before the first acks
  }
});

test("probes are not per frame: at most one per probe interval", () => {
  const pacer = new SendPacer({ probeMs: 100 });
  let probes = 0;
  for (let now = 0; now < 10_000; now += 1000 / 30) {
    pacer.onSent(10_000);
    if (pacer.wantProbe(now)) {
      pacer.onAck(pacer.probeSent(now), now + 1);
      probes += 1;
    }
  }
  assert.ok(probes <= 101 && probes >= 60, String(probes)); // 300 frames, one probe per 100-133 ms
});

test("a 2 Mbit/s uplink: frames shrink to fit, the rate holds and no backlog builds", () => {
  const r = simulate({ rttMs: 60, capKbps: 2000, seconds: 60 });
  assert.ok(r.fps >= 12, `${r.fps} fps`);
  assert.ok(r.p95 < 250, `p95 ${r.p95} ms`);
  assert.ok(r.fitter.quality < 0.85 || r.fitter.scale < 1, "it had to give something up");
  const bytesPerS = r.delivered.length ? r.pacer.bytesTotal / 60 : 0;
  assert.ok(bytesPerS <= 2000 * 125, `${bytesPerS} B/s over a 250 kB/s link`);
});

test("a very slow uplink goes down to the session's smallest size, never below", () => {
  const r = simulate({ rttMs: 100, capKbps: 400, seconds: 40 });
  assert.equal(r.fitter.quality, 0.4);
  assert.equal(r.fitter.size.width, 320);
  assert.equal(r.fitter.size.height, 240);
  assert.ok(r.p95 < 600, `p95 ${r.p95}`); // frames are dropped at the page, not queued
});

test("after a 2 s stall sending resumes within a round trip and nothing old was queued", () => {
  const r = simulate({ rttMs: 100, seconds: 12, stall: [5000, 7000] });
  const after = r.delivered.filter(([, a]) => a >= 7000);
  const fresh = after.find(([c]) => c >= 7000);
  assert.ok(fresh && fresh[1] - 7000 < 400, `first fresh frame ${fresh && fresh[1] - 7000} ms after`);
  const stale = after.filter(([c, a]) => a - c > 1000).length;
  assert.ok(stale <= 4, `${stale} frames queued across the stall`); // the window's worth, no more
  assert.ok(r.pacer.framesDropped >= 20, "ticks during the stall were dropped, not queued");
  assert.equal(r.fitter.targetBps, null, "a stall is not a slow link: quality is kept");
  assert.equal(r.fitter.quality, 0.85);
});

test("a reconnect forgets what was in flight and ignores old probes", () => {
  const p = new SendPacer();
  p.onSent(500_000);
  const old = p.probeSent(0);
  assert.equal(p.admit(1, 80_000), false);
  p.reconnected();
  assert.equal(p.inFlight, 0);
  p.onAck(old, 10);
  assert.equal(p.acked, 0);
  assert.equal(p.admit(11, 80_000), true);
});

test("the fitter degrades quality first, then resolution, and recovers in reverse", () => {
  const f = new LinkFitter({ fps: 10, width: 640, height: 480, minWidth: 320, minHeight: 240 });
  f.targetBps = 100_000; // 10 kB a frame
  let t = 0;
  const seen = [];
  for (let i = 0; i < 80; i += 1, t += 100) {
    f.onFrame(t, jpegBytes(f.quality, f.scale));
    seen.push([f.quality, f.scale]);
  }
  const firstScaleDown = seen.findIndex(([, s]) => s < 1);
  assert.ok(firstScaleDown > 0 && seen[firstScaleDown - 1][0] === 0.4, "resolution only after quality");
  assert.ok(jpegBytes(f.quality, f.scale) <= 11_000);
  f.targetBps = null;
  for (let i = 0; i < 100; i += 1, t += 100) f.onFrame(t, jpegBytes(f.quality, f.scale));
  assert.equal(f.scale, 1);
  assert.equal(f.quality, 0.85);
});

test("the fitter stays within the session's bounds", () => {
  const f = new LinkFitter({ width: 640, height: 480, minWidth: 480, minHeight: 360, minQuality: 0.5 });
  assert.deepEqual(f.scales, [1, 0.75]);
  f.targetBps = 1;
  for (let t = 0; t < 20_000; t += 66) f.onFrame(t, 50_000);
  assert.equal(f.quality, 0.5);
  assert.deepEqual(f.size, { width: 480, height: 360 });
});

test("stale output frames after a stall are skipped; a lasting slower path is accepted", () => {
  const f = new FreshnessFilter({ marginMs: 500, windowMs: 5000, giveUpMs: 1000 });
  for (let t = 0; t < 3000; t += 66) assert.ok(f.accept(150, t));
  assert.equal(f.accept(2100, 5100), false); // queued across a 2 s stall
  assert.equal(f.accept(1900, 5110), false);
  assert.ok(f.accept(160, 5200)); // fresh again
  for (let t = 6000; t < 6900; t += 66) assert.equal(f.accept(900, t), false);
  assert.ok(f.accept(900, 7100)); // skipping for a second: the path is slower now
  assert.ok(f.accept(950, 7200));
  assert.equal(f.stale, 2 + 14);
});

test("receiver reports: frames, bytes and the queue over the best recent arrival", () => {
  const m = new ReceiveMeter(10_000);
  assert.equal(m.report(0), null); // nothing arrived: nothing to say
  for (let i = 0; i < 15; i += 1) m.onFrame(i * 66, 30_000, 500 + (i % 3)); // clock offset 500 ms
  let r = m.report(1000);
  assert.equal(r.frames, 15);
  assert.equal(r.bytes, 450_000);
  assert.ok(r.queueMs <= 2, String(r.queueMs)); // the offset cancels
  for (let i = 0; i < 15; i += 1) m.onFrame(1000 + i * 66, 30_000, 500 + 200 + i * 20); // a queue grows
  r = m.report(2000);
  assert.ok(r.queueMs >= 300 && r.queueMs <= 400, String(r.queueMs));
  assert.equal(Math.round(r.windowMs), 1000);
});
