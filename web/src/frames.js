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

/** One camera frame in flight (encoded, published and flushed to the server); a tick that finds
 *  the gate closed drops its frame instead of queueing it: a slow link gets fewer, fresh frames. */
export class SendGate {
  constructor() {
    this.busy = false;
    this.dropped = 0;
    this.sent = 0;
  }
  tryEnter() {
    if (this.busy) {
      this.dropped += 1;
      return false;
    }
    this.busy = true;
    return true;
  }
  leave(sent) {
    this.busy = false;
    if (sent) this.sent += 1;
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
