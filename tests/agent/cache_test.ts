/**
 * The agent's reading cache on a ManualClock: at most one computation per interval, shared by concurrent
 * callers, and a stale value given only when the new one is slow.
 */
import assert from "node:assert/strict";
import { Cached } from "../../lib/agent/cache.ts";
import { ManualClock } from "../../lib/core/clock.ts";

function counter(clock: ManualClock) {
  let n = 0;
  return new Cached(() => Promise.resolve(++n), { clock, ttlMs: 1000, maxWaitMs: 500 });
}

Deno.test("Cached computes once per interval however often it is asked", async () => {
  const clock = new ManualClock();
  const cache = counter(clock);
  assert.equal(await cache.get(), 1);
  for (let i = 0; i < 100; i++) assert.equal(await cache.get(), 1);
  clock.advance(999);
  assert.equal(await cache.get(), 1);
  assert.equal(cache.computations, 1);
  clock.advance(1);
  assert.equal(await cache.get(), 2);
  assert.equal(cache.computations, 2);
  assert.deepEqual(cache.peek(), { value: 2, at: 1000 });
  assert.equal(clock.pending, 0, "no timer left behind");
});

Deno.test("Cached shares one computation among callers that ask while it runs", async () => {
  const clock = new ManualClock();
  let release!: (v: string) => void;
  let calls = 0;
  const cache = new Cached(() => {
    calls++;
    return new Promise<string>((resolve) => release = resolve);
  }, { clock, ttlMs: 1000, maxWaitMs: 500 });
  const waiting = Array.from({ length: 50 }, () => cache.get());
  assert.equal(calls, 1);
  release("done");
  assert.deepEqual(await Promise.all(waiting), Array(50).fill("done"));
});

Deno.test("Cached gives the stale value when the new one takes longer than maxWaitMs", async () => {
  const clock = new ManualClock();
  const resolvers: ((v: string) => void)[] = [];
  const cache = new Cached(
    () => new Promise<string>((resolve) => resolvers.push(resolve)),
    { clock, ttlMs: 1000, maxWaitMs: 500 },
  );
  const first = cache.get();
  resolvers[0]("old");
  assert.equal(await first, "old");
  clock.advance(1000);
  const slow = cache.get();
  assert.equal(resolvers.length, 2, "a new computation started");
  clock.advance(500);
  assert.equal(await slow, "old");
  // The computation goes on; when it ends, its value is served fresh.
  resolvers[1]("new");
  await Promise.resolve();
  assert.equal(await cache.get(), "new");
  assert.equal(cache.computations, 2);
});

Deno.test("Cached waits for a quick new value rather than serving the stale one", async () => {
  const clock = new ManualClock();
  const cache = counter(clock);
  await cache.get();
  clock.advance(5000);
  assert.equal(await cache.get(), 2);
  assert.equal(clock.pending, 0, "the wait timer was released");
});
