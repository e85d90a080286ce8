/** Many timeouts on one clock timer, driven by a ManualClock. */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Deadlines } from "../../lib/core/deadlines.ts";

Deno.test("Deadlines run in time order on one clock timer, each once", () => {
  const clock = new ManualClock(1_000);
  const deadlines = Deadlines.of(clock);
  const ran: string[] = [];
  for (const [name, ms] of [["c", 300], ["a", 100], ["b", 200], ["a2", 100]] as const) {
    deadlines.add(ms, () => ran.push(name));
  }
  assert.equal(clock.pending, 1, "one clock timer for all four");
  clock.advance(150);
  assert.deepEqual(ran, ["a", "a2"]);
  clock.advance(1_000);
  assert.deepEqual(ran, ["a", "a2", "b", "c"]);
  assert.equal(clock.pending, 0, "nothing armed once all ran");
});

Deno.test("Deadlines: a cancelled entry never runs, and cancelling the last one disarms the clock", () => {
  const clock = new ManualClock();
  const deadlines = Deadlines.of(clock);
  let ran = 0;
  const a = deadlines.add(100, () => ran++);
  const b = deadlines.add(600_000, () => ran++);
  deadlines.cancel(a);
  deadlines.cancel(a); // twice is harmless
  assert.equal(clock.pending, 1);
  deadlines.cancel(b);
  assert.equal(clock.pending, 0, "no 10-minute timer left armed for nothing");
  clock.advance(700_000);
  assert.equal(ran, 0);
});

Deno.test("Deadlines: an earlier entry re-arms the clock, and one added while running runs in its turn", () => {
  const clock = new ManualClock();
  const deadlines = Deadlines.of(clock);
  const ran: number[] = [];
  deadlines.add(1_000, () => ran.push(1_000));
  deadlines.add(10, () => {
    ran.push(10);
    deadlines.add(5, () => ran.push(15));
  });
  clock.advance(10);
  assert.deepEqual(ran, [10]);
  clock.advance(5);
  assert.deepEqual(ran, [10, 15]);
  clock.advance(1_000);
  assert.deepEqual(ran, [10, 15, 1_000]);
});

Deno.test("Deadlines: cancelled long entries are dropped from the heap, the live ones kept", () => {
  const clock = new ManualClock();
  const deadlines = Deadlines.of(clock);
  let ran = 0;
  const keep = Array.from({ length: 10 }, (_, i) => deadlines.add(1_000 + i, () => ran++));
  const drop = Array.from({ length: 1_000 }, () => deadlines.add(600_000, () => ran += 1_000));
  for (const d of drop) deadlines.cancel(d);
  assert.ok(deadlines.size < 200, `heap holds ${deadlines.size} entries after 1000 cancels`);
  clock.advance(2_000);
  assert.equal(ran, keep.length);
  assert.equal(clock.pending, 0);
});

Deno.test("Deadlines keeps one heap per clock", () => {
  const one = new ManualClock();
  const two = new ManualClock();
  assert.equal(Deadlines.of(one), Deadlines.of(one));
  assert.notEqual(Deadlines.of(one), Deadlines.of(two));
});
