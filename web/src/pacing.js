// How often and how big the page sends its camera frames. Pure (times in ms, sizes in bytes), so
// Node's tests can drive it with a simulated link; docs/frontends.md gives the numbers.
//
// Why acknowledged bytes and not one frame in flight: waiting for each frame's PONG caps the rate
// at one frame per round trip (100 ms RTT: 10 fps at most, 200 ms: 5). Why not only the
// WebSocket's bufferedAmount: it counts bytes the browser has not yet handed to its socket, not the
// socket's buffer nor the queue at a phone's radio, so a slow uplink shows as latency long before
// it shows there. A PONG says the server has read everything published before its PING: bytes
// published minus bytes acknowledged is what is on its way, however deep the queues are.

/** Windowed extreme of timestamped samples (a max filter for rates, a min filter for RTTs). */
class WindowedExtreme {
  constructor(windowMs, better) {
    this.windowMs = windowMs;
    this.better = better; // (a, b) => a is the better extreme
    this.samples = []; // [at, value], kept monotone so the front is the extreme
  }
  add(at, value) {
    while (this.samples.length && !this.better(this.samples[this.samples.length - 1][1], value)) this.samples.pop();
    this.samples.push([at, value]);
    this.expire(at);
  }
  expire(now) {
    while (this.samples.length && this.samples[0][0] <= now - this.windowMs) this.samples.shift();
  }
  value(now) {
    this.expire(now);
    return this.samples.length ? this.samples[0][1] : null;
  }
  reset() {
    this.samples = [];
  }
}

/**
 * The send window: frames go out at the pace asked (the ticker) while the bytes on their way stay
 * within a round trip (plus the probes' lag and a small allowance) of what the frames need, or of
 * what the link was seen to carry when it was the bottleneck, whichever is less; beyond that a
 * tick's frame is dropped, never queued. Acknowledgements come from a probe (a NATS PING) at most
 * every `probeMs`, whatever the frame rate: never one per frame.
 *
 * Why not the delivered rate alone: while the page sends less than the link carries, the
 * delivered rate is just the send rate, and a window made of it would refuse the next frame,
 * lower the send rate, and so on down. Only a rate measured while a queue stood (the probes'
 * round trip above the path's own) says what the link can carry.
 */
export class SendPacer {
  constructor({
    fps = 15,
    minWindow = 24 * 1024,
    startWindow = 128 * 1024, // slow start's first window: about two frames of the largest size
    maxRttMs = 1000, // a path's own round trip beyond this is a queue the probes never saw drain
    drainEveryMs = 8000, // no probe near the path's round trip for this long: let the queue drain
    probeMs = 100,
    allowanceMs = 100, // queueing the window allows beyond the round trip (1.5 frames at 15 fps)
    queuedMs = 40, // probes this far above the path's own round trip: the link is the bottleneck
    rateWindowMs = 2000,
    capacityWindowMs = 10_000,
    rttWindowMs = 10_000,
    maxProbes = 32,
    outageMs = 1000, // a probe this much over the path's round trip waited out a stall
  } = {}) {
    Object.assign(this, { fps, minWindow, maxRttMs, drainEveryMs, probeMs, allowanceMs, queuedMs, maxProbes });
    this.initialWindow = startWindow;
    this.outageMs = outageMs;
    this.rates = new WindowedExtreme(rateWindowMs, (a, b) => a >= b); // delivered bytes/s, max
    this.capacity = new WindowedExtreme(capacityWindowMs, (a, b) => a >= b); // … while queued
    this.rtts = new WindowedExtreme(rttWindowMs, (a, b) => a <= b); // probe round trips, min
    this.generation = 0; // bumped on reconnect: older probes' answers are ignored
    this.reset();
    this.framesSent = 0;
    this.framesDropped = 0; // ticks whose frame the window refused
    this.bytesTotal = 0;
  }

  /** After a reconnect: what was on its way is gone, and the new path is measured afresh. */
  reset() {
    this.sent = 0; // bytes published on this connection
    this.acked = 0; // of those, bytes the server is known to have read
    this.probes = 0; // outstanding
    this.lastProbeAt = -Infinity;
    this.lastProbeBytes = 0;
    this.acks = []; // [at, acked] for delivery-rate samples
    this.srtt = null;
    this.cleanAt = null; // when a probe last met (nearly) no queue
    this.draining = false;
    this.lastAck = null; // {at, slow}: when the last probe came back, and whether it was far late
    this.startWindow = this.initialWindow; // slow start: doubles with each clean probe until a queue
    this.rates.reset();
    this.capacity.reset();
    this.rtts.reset();
  }

  get inFlight() {
    return this.sent - this.acked;
  }

  /** Delivered bytes per second (the best of the last two seconds), null before any sample. */
  rate(now) {
    return this.rates.value(now);
  }

  /** What the link carried while it was the bottleneck (the best of 10 s), null: never seen. */
  linkCapacity(now) {
    return this.capacity.value(now);
  }

  rttMin(now) {
    return this.rtts.value(now);
  }

  /** Queueing delay the last probes met: smoothed round trip minus the path's own. */
  queueMs(now) {
    const min = this.rttMin(now);
    return this.srtt === null || min === null ? 0 : Math.max(0, this.srtt - min);
  }

  /** Bytes allowed on their way when frames weigh `frameBytes`; from a small start window that
   *  doubles with each probe that met no queue (a TCP connection's slow start), until the link
   *  has been seen to be the bottleneck. */
  window(now, frameBytes) {
    const min = this.rttMin(now);
    if (min === null) return Math.max(this.minWindow, this.startWindow);
    const rtt = Math.min(min, this.maxRttMs);
    const need = this.fps * frameBytes;
    const cap = this.linkCapacity(now);
    const bps = cap === null ? need : Math.min(cap, need);
    const w = (bps * (rtt + 2 * this.probeMs + this.allowanceMs)) / 1000;
    return Math.max(this.minWindow, Math.min(w, this.startWindow));
  }

  /** May a frame of about `bytes` go now? Nothing on its way: always (one frame is never held
   *  back). A refusal counts as a dropped frame. */
  admit(now, bytes) {
    // A queue that stood for as long as the round-trip minimum remembers would pass for the path
    // itself, and the window would grow on it: every `drainEveryMs` without a clean probe, send
    // nothing until everything is acknowledged (BBR's ProbeRTT, for a few frames).
    if (this.cleanAt !== null && now - this.cleanAt > this.drainEveryMs) this.draining = true;
    if (this.draining && this.inFlight === 0) {
      this.draining = false;
      this.cleanAt = now; // the next probe goes out behind at most this one frame
    }
    if (!this.draining && (this.inFlight === 0 || this.inFlight + bytes <= this.window(now, bytes))) return true;
    this.framesDropped += 1;
    return false;
  }
  onSent(bytes) {
    this.sent += bytes;
    this.bytesTotal += bytes;
    this.framesSent += 1;
  }

  /** A probe is due: new bytes since the last one and `probeMs` passed (none while nothing moves);
   *  and one before the first frame, to learn the path's own round trip with nothing ahead of it. */
  wantProbe(now) {
    if (this.rttMin(now) === null && this.probes === 0) return true;
    return this.sent > this.lastProbeBytes && now - this.lastProbeAt >= this.probeMs && this.probes < this.maxProbes;
  }

  /** Mark a probe sent now; hand the token back to `onAck` when its PONG arrives. */
  probeSent(now) {
    this.lastProbeAt = now;
    this.lastProbeBytes = this.sent;
    this.probes += 1;
    return { at: now, bytes: this.sent, generation: this.generation };
  }

  /** A probe's PONG. Returns whether it measured the link. A probe that took over `outageMs`
   *  longer than the path's round trip either waited out a stall (Wi-Fi or radio dropout: what
   *  queued meanwhile then arrives at once, and the link is as fast as before) or crossed a
   *  slow link (the next probes are as slow, spread out by the bytes between them). Only the
   *  second case is a reason to send less, so such a probe counts once the next probe, answered
   *  at least 250 ms later, is slow too; until then it acknowledges bytes and measures nothing. */
  onAck(token, now) {
    if (token.generation !== this.generation) return false; // a probe from before a reset
    this.probes = Math.max(0, this.probes - 1);
    this.acked = Math.max(this.acked, token.bytes);
    const rtt = Math.max(0.1, now - token.at);
    const min = this.rttMin(now);
    const slow = min !== null && rtt > min + this.outageMs;
    const previous = this.lastAck;
    this.lastAck = { at: now, slow };
    if (slow && !(previous?.slow && now - previous.at >= 250)) {
      this.acks = [[now, this.acked]]; // rates are measured afresh from here
      return false;
    }
    if (min === null || rtt <= 1.2 * min + 5) {
      this.cleanAt = now;
      if (this.capacity.value(now) === null) this.startWindow = Math.min(this.startWindow * 2, 1 << 30);
    }
    this.rtts.add(now, rtt);
    this.srtt = this.srtt === null ? rtt : 0.75 * this.srtt + 0.25 * rtt;
    // delivery rate over at least 250 ms of acks (two PONGs arriving together say nothing)
    this.acks.push([now, this.acked]);
    while (this.acks.length > 1 && this.acks[1][0] <= now - 250) this.acks.shift();
    const [at, bytes] = this.acks[0];
    if (now - at >= 250) {
      const rate = ((this.acked - bytes) * 1000) / (now - at);
      this.rates.add(now, rate);
      if (this.queueMs(now) > this.queuedMs) this.capacity.add(now, rate);
    }
    return true;
  }

  /** A new connection: outstanding probes will never be answered. */
  reconnected() {
    this.generation += 1;
    this.reset();
  }
}

/**
 * Link fitting: a byte-rate target from the link (cut to 85 % of the delivered rate when the probes
 * meet a queue or the window drops frames; raised 15 % a second while the link is clear), and the
 * frame size that fits it per frame: JPEG quality first, then resolution, within the session's
 * bounds; back up in the reverse order (resolution first) when there is room.
 */
export class LinkFitter {
  constructor({
    fps = 15,
    width = 640,
    height = 480,
    minWidth = 320,
    minHeight = 240,
    maxQuality = 0.85,
    minQuality = 0.4,
    qualityStep = 0.1,
    congestedQueueMs = 80,
    clearQueueMs = 30,
    cutFactor = 0.85,
    growPerS = 0.15,
    stepEveryMs = 250,
    scaleEveryMs = 1500,
  } = {}) {
    Object.assign(this, { fps, width, height, maxQuality, minQuality, qualityStep });
    Object.assign(this, { congestedQueueMs, clearQueueMs, cutFactor, growPerS, stepEveryMs, scaleEveryMs });
    // resolutions the session allows: full, 3/4, 1/2 … down to its minimum (even sizes)
    this.scales = [1, 0.75, 0.5, 0.375, 0.25].filter(
      (s) => s === 1 || (width * s >= minWidth && height * s >= minHeight),
    );
    this.scaleIndex = 0;
    this.quality = maxQuality;
    this.targetBps = null; // bytes/s the frames should fit in; null: no limit seen
    this.frameBytes = null; // EWMA of encoded frame sizes at the current settings
    this.lastCut = -Infinity;
    this.lastLinkAt = null;
    this.lastStep = -Infinity;
    this.lastScale = -Infinity;
    this.changes = 0;
  }

  get scale() {
    return this.scales[this.scaleIndex];
  }

  /** The size to capture and encode at now (even, as the pipeline wants). */
  get size() {
    const even = (v) => Math.max(2, Math.round((v * this.scale) / 2) * 2);
    return { width: even(this.width), height: even(this.height) };
  }

  /** What a frame is expected to weigh (for the pacer's admission), before encoding it. */
  expectedBytes() {
    return this.frameBytes ?? 0;
  }

  get budgetBytes() {
    return this.targetBps === null ? Infinity : this.targetBps / this.fps;
  }

  /** After each acknowledgement: `rateBps` delivered, `queueMs` met, `dropped` frames since the
   *  last call, `sendingBps` what the page is putting out now. */
  onLink(now, { rateBps, queueMs, dropped = 0, sendingBps = 0 }) {
    const dt = this.lastLinkAt === null ? 0 : Math.min(1000, now - this.lastLinkAt);
    this.lastLinkAt = now;
    const congested = queueMs > this.congestedQueueMs || dropped > 0;
    if (congested && rateBps) {
      if (now - this.lastCut >= 500) {
        // one cut per half second: the queue answers a round trip later
        const cut = this.cutFactor * rateBps;
        this.targetBps = this.targetBps === null ? cut : Math.min(this.targetBps, cut);
        this.lastCut = now;
      }
    } else if (this.targetBps !== null && queueMs < this.clearQueueMs && now - this.lastCut >= 1000) {
      this.targetBps *= 1 + (this.growPerS * dt) / 1000;
      // far above what the best settings need: no limit any more
      const atBest = this.quality >= this.maxQuality && this.scaleIndex === 0;
      if (atBest && sendingBps > 0 && this.targetBps > 2 * sendingBps) this.targetBps = null;
    }
  }

  /** After each encoded frame: its size steers quality, then resolution. */
  onFrame(now, bytes) {
    this.frameBytes = this.frameBytes === null ? bytes : 0.7 * this.frameBytes + 0.3 * bytes;
    if (now - this.lastStep < this.stepEveryMs) return;
    const budget = this.budgetBytes;
    const size = this.frameBytes;
    if (size > budget * 1.1) {
      if (this.quality > this.minQuality + 1e-9) {
        const steps = size > budget * 2 ? 2 : 1; // far over: two steps at once
        this.setQuality(now, this.quality - steps * this.qualityStep);
      } else if (this.scaleIndex < this.scales.length - 1 && now - this.lastScale >= this.scaleEveryMs) {
        this.setScale(now, this.scaleIndex + 1);
      }
    } else if (size < budget * 0.75) {
      const up = this.scaleIndex - 1;
      const grown = up >= 0 ? size * (this.scales[up] / this.scale) ** 2 : Infinity;
      if (up >= 0 && grown < budget * 0.9 && now - this.lastScale >= this.scaleEveryMs) {
        this.setScale(now, up);
      } else if (this.quality < this.maxQuality - 1e-9) {
        this.setQuality(now, this.quality + this.qualityStep / 2);
      }
    }
  }

  setQuality(now, q) {
    this.quality = Math.round(Math.min(this.maxQuality, Math.max(this.minQuality, q)) * 100) / 100;
    this.lastStep = now;
    this.changes += 1;
  }

  setScale(now, index) {
    const ratio = this.scales[index] / this.scale;
    this.scaleIndex = index;
    if (this.frameBytes !== null) this.frameBytes *= ratio * ratio; // expected at the new size
    this.lastStep = now;
    this.lastScale = now;
    this.changes += 1;
  }
}

/** Bytes/s over the last `windowMs` (what the page is sending, for the overlay and the fitter). */
export class RateMeter {
  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
    this.items = [];
    this.total = 0;
  }
  add(now, bytes) {
    this.items.push([now, bytes]);
    this.total += bytes;
    this.expire(now);
  }
  expire(now) {
    while (this.items.length && this.items[0][0] <= now - this.windowMs) this.total -= this.items.shift()[1];
  }
  bps(now) {
    this.expire(now);
    return (this.total * 1000) / this.windowMs;
  }
  fps(now) {
    this.expire(now);
    return (this.items.length * 1000) / this.windowMs;
  }
}

/** What the output stream's downlink carries, for the receiver reports: frames and bytes since the
 *  last report, and how much later than the best of the last 10 s they arrived (arrival on this
 *  clock minus the producer's `out` stamp: the clocks' offset is in both, and cancels). */
export class ReceiveMeter {
  constructor(windowMs = 10_000) {
    this.best = new WindowedExtreme(windowMs, (a, b) => a <= b);
    this.since = null;
    this.frames = 0;
    this.bytes = 0;
    this.delays = [];
  }
  onFrame(now, bytes, deliveryMs) {
    this.since ??= now;
    this.frames += 1;
    this.bytes += bytes;
    if (deliveryMs !== null && Number.isFinite(deliveryMs)) {
      this.best.add(now, deliveryMs);
      this.delays.push(deliveryMs);
    }
  }
  /** The report since the last one (null when nothing arrived), and a new window begun. */
  report(now) {
    if (this.since === null) return null;
    const sorted = this.delays.sort((a, b) => a - b);
    const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
    const best = this.best.value(now);
    const out = {
      windowMs: Math.max(1, now - this.since),
      frames: this.frames,
      bytes: this.bytes,
      queueMs: median === null || best === null ? 0 : Math.max(0, median - best),
    };
    this.since = now;
    this.frames = 0;
    this.bytes = 0;
    this.delays = [];
    return out;
  }
}
