/**
 * The Synchronizer's held queues (parallel arrays in a ring): many datagrams held at once, out of order, released
 * in order and intact; the ring wraps, grows and shrinks back without losing or reordering anything.
 */
import assert from "node:assert/strict";
import { writeRtpHeader } from "../../lib/media/rtp.ts";
import { Synchronizer } from "../../lib/media/sync.ts";

const T0 = 1.8e15;
const RATE = 90_000;

function datagram(seq: number, captureUs: number): Uint8Array {
  const d = new Uint8Array(12 + 8);
  writeRtpHeader(d, 0, {
    marker: false,
    payloadType: 32,
    sequence: seq & 0xffff,
    timestamp: Math.round(((captureUs - T0) * RATE) / 1e6) >>> 0,
    ssrc: 0x1234,
  });
  new DataView(d.buffer).setUint32(12, seq);
  return d;
}

function make(): Synchronizer<number> {
  return new Synchronizer<number>({
    inputs: 1,
    precisionUs: 1000,
    maxDelayUs: 3e6,
    marginUs: 20_000,
    offsetsUs: [],
    maxBytes: 64 * 1024 * 1024,
  });
}

Deno.test("Synchronizer holds thousands of datagrams, reordered, and releases them in order and intact", () => {
  const sync = make();
  const out: { seq: number; from: number }[] = [];
  const emit = (data: Uint8Array[], from: number[]) => {
    data.forEach((d, i) =>
      out.push({ seq: new DataView(d.buffer, d.byteOffset).getUint32(12), from: from[i] })
    );
  };
  let seq = 0;
  let now = T0;
  // Three rounds: 10k datagrams held at once (the ring grows to 16k), released, then the ring is small again.
  for (let round = 0; round < 3; round++) {
    const first = seq;
    for (let i = 0; i < 10_000; i++, seq++) {
      // Every 100th pair arrives swapped.
      const s = i % 100 === 0 ? seq + 1 : i % 100 === 1 ? seq - 1 : seq;
      sync.push(0, datagram(s, now), false, now, s);
      now += 1;
    }
    assert.equal(sync.held.packets, 10_000);
    now += 1_000_000;
    sync.release(now, emit);
    assert.equal(sync.held.packets, 0);
    const got = out.splice(0);
    assert.deepEqual(got.map((g) => g.seq), Array.from({ length: 10_000 }, (_, i) => first + i));
    assert.ok(got.every((g) => g.from === g.seq), "each datagram keeps its sender");
  }
});

Deno.test("Synchronizer releases a queue that wrapped around its ring in order", () => {
  const sync = make();
  const out: number[] = [];
  const emit = (data: Uint8Array[]) => {
    for (const d of data) out.push(new DataView(d.buffer, d.byteOffset).getUint32(12));
  };
  let now = T0;
  let seq = 0;
  // Up to 40 held at a time (under the ring's first 64 slots), released and refilled: the head walks round the ring.
  for (let step = 0; step < 200; step++) {
    while (sync.held.packets < 40) {
      sync.push(0, datagram(seq, now), false, now, 0);
      seq++;
    }
    now += 25;
    sync.release(now + 40_000, emit);
  }
  assert.deepEqual(out, Array.from({ length: out.length }, (_, i) => i));
  assert.ok(out.length > 1000);
});
