// Real-time rules for the page's two frame paths. Pure, so Node's tests can check them.

/** Latest frame wins: a frame that arrives while one waits to be drawn replaces it. */
export class LatestSlot {
  constructor() {
    this.item = null;
    this.replaced = 0;
  }
  put(item) {
    if (this.item !== null) this.replaced += 1;
    this.item = item;
  }
  take() {
    const item = this.item;
    this.item = null;
    return item;
  }
  get full() {
    return this.item !== null;
  }
}

/** Frame ticks on an absolute schedule: after a stall it skips ahead instead of bursting. */
export class Ticker {
  constructor(fps, startMs) {
    this.period = 1000 / fps;
    this.next = startMs;
    this.skipped = 0;
  }
  /** ms to wait before the next tick (0: now), skipping ticks more than one period late. */
  due(nowMs) {
    const late = nowMs - this.next;
    if (late > this.period) {
      const missed = Math.floor(late / this.period);
      this.skipped += missed;
      this.next += missed * this.period;
    }
    return Math.max(0, this.next - nowMs);
  }
  advance() {
    this.next += this.period;
  }
}

/** Frames of a replaced owner are never shown: a frame whose epoch is older than the newest one
 *  seen is stale (docs/fleet.md); epoch 0 (a server without the fleet) is always accepted. */
export class EpochFilter {
  constructor() {
    this.max = 0;
    this.stale = 0;
  }
  accept(epoch) {
    if (epoch < this.max) {
      this.stale += 1;
      return false;
    }
    this.max = epoch;
    return true;
  }
}

/** Output frames far older than the stream's usual latency are not drawn: after a stall the link
 *  delivers what queued meanwhile in a burst, seconds old, and showing it would replay the past.
 *  Usual = the lowest latency drawn over the last `windowMs`; a frame more than `marginMs` above
 *  it is skipped, unless frames have been skipped for `giveUpMs` in a row (the path got slower
 *  for good: the new latency becomes the usual one). Latency here is the page's own clock on
 *  both ends (it stamped the capture), so it needs no clock agreement with the servers. */
export class FreshnessFilter {
  constructor({ marginMs = 500, windowMs = 5000, giveUpMs = 1000 } = {}) {
    Object.assign(this, { marginMs, windowMs, giveUpMs });
    this.recent = []; // [at, latency] of drawn frames, latency increasing (a min filter)
    this.skippingSince = null;
    this.stale = 0;
  }
  accept(latencyMs, nowMs) {
    while (this.recent.length && this.recent[0][0] <= nowMs - this.windowMs) this.recent.shift();
    const usual = this.recent.length ? this.recent[0][1] : null;
    if (usual !== null && latencyMs > usual + this.marginMs) {
      if (this.skippingSince === null) this.skippingSince = nowMs;
      if (nowMs - this.skippingSince < this.giveUpMs) {
        this.stale += 1;
        return false;
      }
      this.recent = []; // slower for good: start again from this frame
    }
    this.skippingSince = null;
    while (this.recent.length && this.recent[this.recent.length - 1][1] >= latencyMs) this.recent.pop();
    this.recent.push([nowMs, latencyMs]);
    return true;
  }
}
