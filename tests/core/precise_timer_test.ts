import assert from "node:assert/strict";
import { ManualClock, systemClock } from "../../lib/core/clock.ts";
import { PreciseTimer } from "../../lib/core/precise_timer.ts";

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

Deno.test("PreciseTimer on the system clock fires within half a millisecond, mostly", async () => {
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
  assert.ok(errors.every((e) => e >= -50), `never early beyond the tolerance: ${Math.min(...errors)} µs`);
  const within = errors.filter((e) => e <= 500).length;
  // A shared machine may schedule the process out now and then; setTimeout alone is late by 1.1 ms every time.
  assert.ok(within >= 20, `${within} of 40 within 0.5 ms`);
});
