import assert from "node:assert/strict";
import { ManualClock, systemClock } from "../../lib/core/clock.ts";
import { PreciseTimer, Sleeper } from "../../lib/core/precise_timer.ts";

Deno.test("PreciseTimer fires once at its time on a manual clock, fractions of a ms included", () => {
  const clock = new ManualClock(1000);
  const fired: number[] = [];
  const t = new PreciseTimer(clock, () => fired.push(clock.nowUs()), { toleranceUs: 0 });
  t.arm(1_003_250);
  assert.equal(t.armedUs, 1_003_250);
  clock.advance(3.2);
  assert.deepEqual(fired, []);
  clock.advance(1);
  assert.deepEqual(fired, [1_003_250]);
  assert.equal(t.armedUs, null);
  t.arm(1_010_000);
  t.cancel();
  clock.advance(20);
  assert.equal(fired.length, 1);
  assert.equal(clock.pending, 0);
});

// How close to its time the timer fires is a figure, not a test: tests/bench/precise_timer_bench.ts prints it.
Deno.test("PreciseTimer on the system clock fires each arming once and never early", async () => {
  const errors: number[] = [];
  for (let i = 0; i < 40; i++) {
    const at = systemClock.nowUs() + 3000 + (i % 7) * 300;
    await new Promise<void>((resolve) => {
      new PreciseTimer(systemClock, () => {
        errors.push(systemClock.nowUs() - at);
        resolve();
      }).arm(at);
    });
  }
  assert.equal(errors.length, 40);
  assert.ok(errors.every((e) => e >= -50), `never early beyond the tolerance: ${Math.min(...errors)} µs`);
});

Deno.test("PreciseTimer with a Sleeper fires each arming once and never early", async () => {
  const sleeper = Sleeper.open();
  assert.ok(sleeper, "the tests run with --allow-ffi on Linux: a Sleeper opens");
  try {
    const errors: number[] = [];
    for (let i = 0; i < 40; i++) {
      const at = systemClock.nowUs() + 500 + (i % 7) * 300;
      await new Promise<void>((resolve) => {
        new PreciseTimer(systemClock, () => {
          errors.push(systemClock.nowUs() - at);
          resolve();
        }, { sleeper }).arm(at);
      });
    }
    assert.equal(errors.length, 40);
    assert.ok(errors.every((e) => e >= -50), `never early beyond the tolerance: ${Math.min(...errors)} µs`);
  } finally {
    await sleeper.close();
  }
});

Deno.test("PreciseTimer with a Sleeper: re-armed earlier during a sleep fires at the earlier time; cancelled, never", async () => {
  const sleeper = Sleeper.open()!;
  try {
    const fired: number[] = [];
    const t = new PreciseTimer(systemClock, () => fired.push(systemClock.nowUs()), { sleeper });
    const late = systemClock.nowUs() + 2000;
    t.arm(late);
    assert.equal(sleeper.pending, 1, "the last 2 ms are slept");
    const early = systemClock.nowUs() + 600;
    t.arm(early);
    while (fired.length === 0) await new Promise((r) => setTimeout(r, 0));
    assert.equal(fired.length, 1);
    assert.ok(
      fired[0] >= early - 50 && fired[0] < late - 50,
      `fired at the earlier time (${fired[0] - early} µs)`,
    );
    // Armed and cancelled while a sleep is in flight: the sleep ends without firing.
    t.arm(systemClock.nowUs() + 1500);
    t.cancel();
    // Every sleep in flight has ended (close waits for them, and their wake-up runs first): none fired.
    await sleeper.close();
    assert.equal(fired.length, 1);
    assert.equal(t.armedUs, null);
  } finally {
    await sleeper.close();
  }
  assert.equal(sleeper.pending, 0, "close waits for the sleeps in flight");
});
