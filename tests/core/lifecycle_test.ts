import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Lifecycle } from "../../lib/core/lifecycle.ts";

/** Lets pending promise callbacks run; no time passes. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

/** A stop function that holds on until its deadline aborts, recording the signal it was given. */
function drainUntilDeadline(seen: AbortSignal[]): (signal: AbortSignal) => Promise<void> {
  return (signal) => {
    seen.push(signal);
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
  };
}

Deno.test("Lifecycle.stop stops parts in reverse order of start", async () => {
  const life = new Lifecycle(new ManualClock());
  const stopped: string[] = [];
  for (const name of ["config", "relay", "status"]) {
    life.add(name, () => {
      stopped.push(name);
      return Promise.resolve();
    });
  }
  assert.equal(life.size, 3);
  const results = await life.stop(1_000);
  assert.deepEqual(stopped, ["status", "relay", "config"]);
  assert.deepEqual(results, [{ name: "status" }, { name: "relay" }, { name: "config" }]);
});

Deno.test("Lifecycle.stop reports a failing stop and still stops the others", async () => {
  const life = new Lifecycle(new ManualClock());
  const stopped: string[] = [];
  const boom = new Error("socket already closed");
  life.add("first", () => {
    stopped.push("first");
    return Promise.resolve();
  });
  life.add("broken", () => Promise.reject(boom));
  life.add("sync-throw", () => {
    throw new Error("thrown before any await");
  });
  life.add("last", () => {
    stopped.push("last");
    return Promise.resolve();
  });
  const results = await life.stop(1_000);
  assert.deepEqual(stopped, ["last", "first"]);
  assert.deepEqual(results.map((r) => r.name), ["last", "sync-throw", "broken", "first"]);
  assert.equal(results[0].error, undefined);
  assert.match((results[1].error as Error).message, /thrown before any await/);
  assert.equal(results[2].error, boom);
  assert.equal(results[3].error, undefined);
});

Deno.test("Lifecycle.stop gives every part one deadline that the clock releases after drainMs", async () => {
  const clock = new ManualClock();
  const life = new Lifecycle(clock);
  const seen: AbortSignal[] = [];
  life.add("a", drainUntilDeadline(seen));
  life.add("b", drainUntilDeadline(seen));
  let done = false;
  const stopping = life.stop(5_000).then((r) => {
    done = true;
    return r;
  });
  await settle();
  assert.equal(seen.length, 1, "the second part waits for the first");
  clock.advance(4_999);
  await settle();
  assert.equal(done, false, "parts drain until the deadline");
  assert.equal(seen.length, 1);
  clock.advance(1);
  const results = await stopping;
  assert.deepEqual(results, [{ name: "b" }, { name: "a" }]);
  assert.equal(seen.length, 2);
  assert.equal(seen[0], seen[1], "both parts get the same signal");
  assert.equal(seen[1].aborted, true, "a later part does not get a fresh drain period");
  assert.equal(clock.now(), 5_000);
});

Deno.test("Lifecycle.stop releases its deadline timer when parts finish early", async () => {
  const clock = new ManualClock();
  const life = new Lifecycle(clock);
  life.add("quick", () => Promise.resolve());
  await life.stop(5_000);
  assert.equal(clock.pending, 0);
});

Deno.test("Lifecycle.stop cuts the drain short when the force signal aborts", async () => {
  const clock = new ManualClock();
  const life = new Lifecycle(clock);
  const seen: AbortSignal[] = [];
  life.add("a", drainUntilDeadline(seen));
  const force = new AbortController();
  const stopping = life.stop(60_000, force.signal);
  await settle();
  const reason = new Error("second SIGTERM");
  force.abort(reason);
  const results = await stopping;
  assert.deepEqual(results, [{ name: "a" }]);
  assert.equal(seen[0].reason, reason);
  assert.equal(clock.now(), 0, "no time had to pass");
  assert.equal(clock.pending, 0);
});

Deno.test("Lifecycle.stop called twice returns the same promise and stops each part once", async () => {
  const life = new Lifecycle(new ManualClock());
  let stops = 0;
  life.add("a", () => {
    stops++;
    return Promise.resolve();
  });
  const first = life.stop(1_000);
  const second = life.stop(1);
  assert.equal(first, second);
  await first;
  assert.equal(stops, 1);
  assert.equal(life.stop(1_000), first);
});

Deno.test("Lifecycle.add refuses a part once stopping has begun", async () => {
  const life = new Lifecycle(new ManualClock());
  const stopping = life.stop(1_000);
  assert.throws(() => life.add("late", () => Promise.resolve()), {
    message: 'Cannot add "late": stopping has begun',
  });
  assert.deepEqual(await stopping, []);
});
