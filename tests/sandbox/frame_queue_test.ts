import assert from "node:assert/strict";
import { FrameQueue } from "../../lib/sandbox/frame_queue.ts";

/** Writes everything queued, `step` bytes at most per write (a socket that takes part of what it is given). */
function drain(q: FrameQueue, step = Infinity): Uint8Array {
  const out: number[] = [];
  for (let bytes = q.next(); bytes; bytes = q.next()) {
    const n = Math.min(step, bytes.length);
    out.push(...bytes.subarray(0, n));
    q.advance(n);
  }
  return new Uint8Array(out);
}

const frame = (n: number, fill: number) => new Uint8Array(n).fill(fill);

Deno.test("FrameQueue writes frames in the order they were queued, reserved, pushed or copied, whatever each write takes", () => {
  for (const step of [1, 7, 100, Infinity]) {
    const q = new FrameQueue(64);
    const expected: number[] = [];
    for (let i = 0; i < 20; i++) {
      const size = [3, 10, 31, 32, 50, 100][i % 6];
      if (i % 3 === 0) q.reserve(size).fill(i);
      else if (i % 3 === 1) q.push(frame(size, i));
      else q.copy(frame(size, i));
      expected.push(...frame(size, i));
    }
    assert.equal(q.queuedBytes, expected.length);
    assert.deepEqual(drain(q, step), new Uint8Array(expected), `writes of ${step}`);
    assert.equal(q.queuedBytes, 0);
    assert.equal(q.next(), null);
  }
});

Deno.test("FrameQueue never hands out bytes that are being written, and reuses written chunks", () => {
  const q = new FrameQueue(64, 2);
  q.reserve(20).fill(1);
  const writing = q.next()!;
  assert.equal(writing.length, 20);
  // Reserved while the write is under way: after it, in the same chunk, not over it.
  const later = q.reserve(20);
  later.fill(2);
  assert.deepEqual([...writing], new Array(20).fill(1));
  q.advance(20);
  const next = q.next()!;
  assert.deepEqual([...next], new Array(20).fill(2));
  q.advance(20);
  // The last chunk, written out, is filled again from its start: the same memory.
  const again = q.reserve(10);
  assert.equal(again.buffer, later.buffer);
  assert.equal(again.byteOffset, 0);
  q.advance(q.next()!.length);
  // A chunk that fills up leaves for the free list once written, and the next chunk comes from there.
  const a = q.reserve(30);
  q.reserve(30);
  const b = q.reserve(30); // does not fit after the first two: a new chunk
  assert.notEqual(a.buffer, b.buffer);
  assert.equal(q.next()!.length, 60);
  q.advance(60);
  assert.equal(q.next()!.length, 30);
  q.advance(30);
  q.reserve(30); // where b was (the last chunk, emptied)
  q.reserve(30);
  const c = q.reserve(30); // a new chunk: the one a was in, from the free list
  assert.equal(c.buffer, a.buffer);
});

Deno.test("FrameQueue gives a large frame a buffer of its own and writes a pushed large frame from where it lies", () => {
  const q = new FrameQueue(64);
  const big = frame(40, 9);
  q.push(big);
  assert.equal(q.next()!.buffer, big.buffer, "not copied");
  const copied = frame(40, 8);
  q.copy(copied);
  q.advance(40);
  const next = q.next()!;
  assert.notEqual(next.buffer, copied.buffer, "copy copies");
  assert.deepEqual([...next], new Array(40).fill(8));
  q.clear();
  assert.equal(q.queuedBytes, 0);
  assert.equal(q.next(), null);
  assert.throws(() => q.advance(1), RangeError);
});

Deno.test("FrameQueue.trim keeps the spare chunks the busiest moment since the last trim needed, then lets them go", () => {
  const q = new FrameQueue(64, 10);
  // A burst: five chunks queued at once (two frames of 30 bytes each), then written.
  for (let i = 0; i < 10; i++) q.reserve(30);
  drain(q);
  assert.equal(q.spare, 4, "the fifth, last chunk is kept queued (empty) for the next frames");
  q.trim();
  assert.equal(q.spare, 4, "the burst was in this period: its chunks stay");
  // A quiet period: one chunk at a time.
  q.reserve(10);
  drain(q);
  q.trim();
  assert.equal(q.spare, 0, "a quiet period lets the spares go");
});

Deno.test("FrameQueue.copy spreads a large frame over pooled chunks, in order, with no buffer of its own", () => {
  const q = new FrameQueue(64, 10);
  q.reserve(10).fill(1);
  const big = Uint8Array.from({ length: 200 }, (_, i) => i);
  q.copy(big);
  q.copy(frame(5, 2));
  assert.equal(q.queuedBytes, 215);
  const written: Uint8Array[] = [];
  for (let bytes = q.next(); bytes; bytes = q.next()) {
    written.push(bytes);
    q.advance(bytes.length);
  }
  assert.ok(written.every((w) => w.buffer.byteLength === 64), "every span is a pooled chunk");
  const all = new Uint8Array(written.reduce((n, w) => n + w.length, 0));
  written.reduce((off, w) => (all.set(w, off), off + w.length), 0);
  assert.deepEqual(all, new Uint8Array([...frame(10, 1), ...big, ...frame(5, 2)]));
  assert.equal(q.queuedBytes, 0);
});

Deno.test("FrameQueue.unreserve takes back the last reservation only, pooled or its own, and nothing of it is written", () => {
  const q = new FrameQueue(64);
  q.reserve(10).fill(1);
  const half = q.reserve(20);
  q.unreserve(half);
  const own = q.reserve(40); // half the chunk or more: a buffer of its own
  assert.throws(() => q.unreserve(half), RangeError, "no longer the last");
  q.unreserve(own);
  q.reserve(5).fill(3);
  assert.equal(q.queuedBytes, 15);
  assert.deepEqual(drain(q), new Uint8Array([...frame(10, 1), ...frame(5, 3)]));
});

Deno.test("FrameQueue after clear() queues and writes as new, its chunks reused", () => {
  const q = new FrameQueue(64, 4);
  for (let i = 0; i < 6; i++) q.reserve(30).fill(i);
  q.next(); // a write was under way when the socket failed
  q.clear();
  assert.equal(q.queuedBytes, 0);
  assert.equal(q.next(), null);
  assert.equal(q.spare, 3, "the spares kept, up to the limit");
  q.reserve(30).fill(9);
  assert.equal(q.spare, 2);
  assert.deepEqual(drain(q), frame(30, 9));
  q.trim();
  assert.equal(q.spare, 2, "the busiest moment since the last trim (3 chunks) covers them");
  q.trim();
  assert.equal(
    q.spare,
    0,
    "a quiet period: one chunk in use, no spares (the cleared chunks counted out of use)",
  );
});
