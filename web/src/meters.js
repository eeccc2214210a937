// What the overlay shows, computed in the page from the frames' own headers: output fps,
// glass-to-glass latency (capture stamp to draw) and swap latency (click to the first frame drawn
// with the new garment). Pure, so Node's tests can check the arithmetic.

/** Nearest-rank percentile, as shared/metrics.py computes it. */
export function percentile(values, q) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const k = Math.max(0, Math.min(sorted.length - 1, Math.ceil((q / 100) * sorted.length) - 1));
  return sorted[k];
}

/** Frames per second over the last `windowMs`. */
export class FpsMeter {
  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
    this.times = [];
  }
  tick(nowMs) {
    this.times.push(nowMs);
    while (this.times.length && this.times[0] <= nowMs - this.windowMs) this.times.shift();
  }
  fps(nowMs) {
    while (this.times.length && this.times[0] <= nowMs - this.windowMs) this.times.shift();
    if (this.times.length < 2) return 0;
    const span = Math.max(nowMs - this.times[0], 1);
    return ((this.times.length - 1) * 1000) / span;
  }
}

/** The last `size` samples, with their percentiles. */
export class Samples {
  constructor(size = 300) {
    this.size = size;
    this.values = [];
    this.all = [];
  }
  add(v) {
    this.values.push(v);
    this.all.push(v);
    if (this.values.length > this.size) this.values.shift();
  }
  p(q) {
    return percentile(this.values, q);
  }
  get count() {
    return this.all.length;
  }
}

/** Swaps in flight: click time per garment until a frame with that garment is drawn. */
export class SwapTimer {
  constructor() {
    this.pending = new Map(); // garment id -> click time (ms)
    this.done = new Samples(1000);
    this.last = null;
    this.lastFor = null; // the garment of `last`
  }
  clicked(garmentId, nowMs) {
    this.pending.clear(); // only the newest click can still be shown
    this.pending.set(garmentId, nowMs);
    this.lastFor = null; // `last` belongs to an earlier click
  }
  drawn(garmentId, nowMs) {
    const at = this.pending.get(garmentId);
    if (at === undefined) return null;
    this.pending.delete(garmentId);
    this.last = nowMs - at;
    this.lastFor = garmentId;
    this.done.add(this.last);
    return this.last;
  }
}
