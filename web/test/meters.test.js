import assert from "node:assert/strict";
import { test } from "node:test";
import { EpochFilter, LatestSlot, Ticker } from "../src/frames.js";
import { FpsMeter, Samples, SwapTimer, percentile } from "../src/meters.js";

test("percentiles are nearest-rank, as the Python side computes them", () => {
  const v = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted
  assert.equal(percentile(v, 50), 50);
  assert.equal(percentile(v, 95), 95);
  assert.equal(percentile([7], 95), 7);
  assert.equal(percentile([], 50), 0);
});

test("fps counts frames over the window", () => {
  const m = new FpsMeter(2000);
  for (let t = 0; t <= 3000; t += 100) m.tick(t); // 10 fps
  assert.ok(Math.abs(m.fps(3000) - 10) < 0.6, String(m.fps(3000)));
  assert.equal(m.fps(10_000), 0); // nothing for a long time: 0, not the old rate
});

test("samples keep the newest window for percentiles and every value for reports", () => {
  const s = new Samples(3);
  for (const v of [100, 1, 2, 3]) s.add(v);
  assert.equal(s.p(95), 3); // the 100 left the window
  assert.equal(s.count, 4);
});

test("a swap is timed from its click to the first frame with its garment", () => {
  const t = new SwapTimer();
  t.clicked("a", 1000);
  assert.equal(t.drawn("b", 1010), null); // an old garment's frame does not end it
  t.clicked("b", 1020); // a newer click replaces the pending one
  assert.equal(t.drawn("a", 1030), null);
  assert.equal(t.drawn("b", 1100), 80);
  assert.equal(t.drawn("b", 1200), null); // counted once
  assert.deepEqual(t.done.all, [80]);
  assert.equal(t.lastFor, "b");
  t.clicked("b", 1300); // clicked again: the old figure is not this click's
  assert.equal(t.lastFor, null);
  assert.equal(t.last, 80); // the overlay still shows the last measured swap
});

test("latest frame wins and the replaced ones are counted", () => {
  const s = new LatestSlot();
  s.put(1);
  s.put(2);
  s.put(3);
  assert.equal(s.take(), 3);
  assert.equal(s.take(), null);
  assert.equal(s.replaced, 2);
});

test("the ticker skips ticks after a stall instead of bursting", () => {
  const t = new Ticker(10, 0); // 100 ms period
  assert.equal(t.due(0), 0);
  t.advance();
  assert.equal(t.due(50), 50);
  assert.equal(t.due(450), 0); // 350 ms late: the ticks at 100..300 skipped, the one at 400 now
  assert.equal(t.skipped, 3);
  t.advance();
  assert.equal(t.due(450), 50); // then back on the schedule
});

test("frames of an older epoch than one seen are dropped", () => {
  const f = new EpochFilter();
  assert.equal(f.accept(0), true);
  assert.equal(f.accept(2), true);
  assert.equal(f.accept(1), false); // the replaced owner's late frame
  assert.equal(f.accept(2), true);
  assert.equal(f.accept(3), true);
  assert.equal(f.stale, 1);
});
