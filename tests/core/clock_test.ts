import assert from "node:assert/strict";
import { deadline, ManualClock } from "../../lib/core/clock.ts";

Deno.test("ManualClock starts at the given time and moves only on advance", () => {
  const clock = new ManualClock(1_000);
  assert.equal(clock.now(), 1_000);
  clock.advance(250);
  assert.equal(clock.now(), 1_250);
});

Deno.test("ManualClock fires timers in due order, not in the order they were set", () => {
  const clock = new ManualClock();
  const fired: string[] = [];
  clock.setTimeout(() => fired.push("c"), 30);
  clock.setTimeout(() => fired.push("a"), 10);
  clock.setTimeout(() => fired.push("b"), 20);
  clock.advance(100);
  assert.deepEqual(fired, ["a", "b", "c"]);
});

Deno.test("ManualClock fires timers due at the same time in the order they were set", () => {
  const clock = new ManualClock();
  const fired: number[] = [];
  for (let i = 0; i < 5; i++) clock.setTimeout(() => fired.push(i), 10);
  clock.advance(10);
  assert.deepEqual(fired, [0, 1, 2, 3, 4]);
});

Deno.test("ManualClock shows each timer the time it fell due", () => {
  const clock = new ManualClock(100);
  const seen: number[] = [];
  clock.setTimeout(() => seen.push(clock.now()), 5);
  clock.setTimeout(() => seen.push(clock.now()), 40);
  clock.advance(60);
  assert.deepEqual(seen, [105, 140]);
  assert.equal(clock.now(), 160);
});

Deno.test("ManualClock fires nothing before its time", () => {
  const clock = new ManualClock();
  let fired = false;
  clock.setTimeout(() => fired = true, 10);
  clock.advance(9);
  assert.equal(fired, false);
  assert.equal(clock.pending, 1);
  clock.advance(1);
  assert.equal(fired, true);
  assert.equal(clock.pending, 0);
});

Deno.test("ManualClock treats a negative delay as zero", () => {
  const clock = new ManualClock(50);
  let firedAt = -1;
  clock.setTimeout(() => firedAt = clock.now(), -20);
  clock.advance(0);
  assert.equal(firedAt, 50);
});

Deno.test("ManualClock.clearTimeout stops a timer from firing", () => {
  const clock = new ManualClock();
  const fired: string[] = [];
  const id = clock.setTimeout(() => fired.push("cleared"), 10);
  clock.setTimeout(() => fired.push("kept"), 10);
  clock.clearTimeout(id);
  assert.equal(clock.pending, 1);
  clock.advance(20);
  assert.deepEqual(fired, ["kept"]);
});

Deno.test("ManualClock.clearTimeout from inside a callback cancels a timer due in the same advance", () => {
  const clock = new ManualClock();
  const fired: string[] = [];
  let later = 0;
  clock.setTimeout(() => {
    fired.push("first");
    clock.clearTimeout(later);
  }, 10);
  later = clock.setTimeout(() => fired.push("second"), 20);
  clock.advance(30);
  assert.deepEqual(fired, ["first"]);
});

Deno.test("ManualClock.advance fires timers set from callbacks when they fall due within the same advance", () => {
  const clock = new ManualClock();
  const fired: [string, number][] = [];
  clock.setTimeout(() => {
    fired.push(["outer", clock.now()]);
    clock.setTimeout(() => fired.push(["nested-now", clock.now()]), 0);
    clock.setTimeout(() => {
      fired.push(["nested", clock.now()]);
      clock.setTimeout(() => fired.push(["too-late", clock.now()]), 100);
    }, 15);
  }, 10);
  clock.setTimeout(() => fired.push(["sibling", clock.now()]), 20);
  clock.advance(50);
  assert.deepEqual(fired, [["outer", 10], ["nested-now", 10], ["sibling", 20], ["nested", 25]]);
  assert.equal(clock.now(), 50);
  assert.equal(clock.pending, 1);
  clock.advance(75);
  assert.deepEqual(fired.at(-1), ["too-late", 125]);
});

Deno.test("deadline aborts its signal when the time passes", () => {
  const clock = new ManualClock();
  const d = deadline(clock, 100);
  clock.advance(99);
  assert.equal(d.signal.aborted, false);
  clock.advance(1);
  assert.equal(d.signal.aborted, true);
  assert.ok(d.signal.reason instanceof Error);
  assert.equal(d.signal.reason.message, "Deadline of 100 ms passed");
  assert.equal(clock.pending, 0);
});

Deno.test("deadline aborts with the parent's reason when the parent aborts", () => {
  const clock = new ManualClock();
  const parent = new AbortController();
  const d = deadline(clock, 100, parent.signal);
  const reason = new Error("forced");
  parent.abort(reason);
  assert.equal(d.signal.aborted, true);
  assert.equal(d.signal.reason, reason);
  assert.equal(clock.pending, 0, "the timer is released once the parent aborted");
});

Deno.test("deadline is aborted at once when the parent is already aborted", () => {
  const clock = new ManualClock();
  const parent = new AbortController();
  parent.abort("gone");
  const d = deadline(clock, 100, parent.signal);
  assert.equal(d.signal.aborted, true);
  assert.equal(d.signal.reason, "gone");
  assert.equal(clock.pending, 0);
});

Deno.test("deadline.cancel releases the timer and never aborts", () => {
  const clock = new ManualClock();
  const parent = new AbortController();
  const d = deadline(clock, 100, parent.signal);
  assert.equal(clock.pending, 1);
  d.cancel();
  assert.equal(clock.pending, 0);
  clock.advance(1_000);
  parent.abort();
  assert.equal(d.signal.aborted, false);
});
