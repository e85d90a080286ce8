/**
 * The syncer's pure core (lib/media/sync.ts) against hostile or extreme input: falling sequence numbers, a forged
 * late datagram, sender reports of SSRCs that never send RTP, floods of tiny datagrams.
 */
import assert from "node:assert/strict";
import { MAX_REORDER, MAX_STREAMS_PER_INPUT, RING_SLOT_BYTES, Synchronizer } from "../../lib/media/sync.ts";
import { writeSenderReport } from "../../lib/media/rtcp.ts";

const T0 = 1_700_000_000_000_000;

/** A 12-byte RTP datagram (header only), payload type 0 (PCMU, 8 kHz). */
function rtp(seq: number, ts: number, ssrc: number): Uint8Array {
  const d = new Uint8Array(12);
  const v = new DataView(d.buffer);
  d[0] = 0x80;
  d[1] = 0;
  v.setUint16(2, seq & 0xffff);
  v.setUint32(4, ts >>> 0);
  v.setUint32(8, ssrc >>> 0);
  return d;
}

function sync(o: { inputs?: number; offsetsUs?: number[]; maxBytes?: number } = {}) {
  return new Synchronizer<null>({
    inputs: o.inputs ?? 1,
    precisionUs: 1000,
    maxDelayUs: 2_000_000,
    marginUs: 20_000,
    offsetsUs: o.offsetsUs ?? [],
    maxBytes: o.maxBytes ?? 64 * 1024 * 1024,
  });
}

const drop = () => {};

Deno.test("Synchronizer drops datagrams reordered beyond MAX_REORDER instead of walking the queue", () => {
  const s = sync();
  const n = 40_000;
  const started = performance.now();
  // Falling sequence numbers, timestamps rising with arrival (125 µs a tick at 8 kHz): each would go first.
  for (let i = 0; i < n; i++) s.push(0, rtp(50_000 - i, i, 0x1234), false, T0 + i * 125, null);
  const ms = performance.now() - started;
  const c = s.counts(0);
  assert.equal(c.packets_in, n);
  assert.equal(c.dropped_reorder, n - 1 - MAX_REORDER, "beyond MAX_REORDER places back: dropped");
  assert.equal(s.held.packets, MAX_REORDER + 1);
  assert.equal(s.flush(drop), MAX_REORDER + 1);
  console.log(`${n} falling sequence numbers in ${ms.toFixed(0)} ms`);
});

Deno.test("Synchronizer keeps a reordered datagram within MAX_REORDER and puts it in place", () => {
  const s = sync();
  for (let i = 1; i <= MAX_REORDER; i++) s.push(0, rtp(i, i, 1), false, T0 + i * 125, null);
  s.push(0, rtp(0, 0, 1), false, T0 + 40_000, null);
  assert.equal(s.counts(0).dropped_reorder, 0);
  const seqs: number[] = [];
  s.flush((data) => seqs.push(...data.map((d) => (d[2] << 8) | d[3])));
  assert.deepEqual(seqs, Array.from({ length: MAX_REORDER + 1 }, (_, i) => i));
});

Deno.test("Synchronizer does not let one forged late datagram of a new SSRC raise D", () => {
  // Input 1 is configured 1 s late but silent: after max_delay, D follows input 0 alone.
  const s = sync({ inputs: 2, offsetsUs: [0, 1_000_000] });
  let now = T0;
  for (let i = 0; i < 200; i++) {
    now = T0 + i * 20_000;
    s.push(0, rtp(i, i * 160, 0xa0), false, now, null);
    s.release(now, drop);
  }
  const d = s.delayUs!;
  assert.ok(d !== null && d < 100_000, `D ${d} µs`);
  // One datagram of an unknown SSRC on input 1 is 1 s late by its input's offset.
  s.push(1, rtp(7, 1234, 0xbad), false, now + 1000, null);
  assert.equal(s.delayUs, d, "D not raised");
  assert.equal(s.counts(1).late, 1);
  assert.equal(s.counts(1).dropped_late, 1);
  // A stream that goes on becomes established after ESTABLISHED_AFTER datagrams and then may raise D.
  for (let i = 1; i <= 60; i++) {
    s.push(1, rtp(7 + i, 1234 + i * 160, 0xbad), false, now + 1000 + i * 20_000, null);
  }
  assert.ok(s.delayUs! > 1_000_000, `D ${s.delayUs} µs after the stream was established`);
});

Deno.test("Synchronizer makes streams from RTP only and keeps a few pending reports per unknown SSRC", () => {
  const s = sync();
  for (let k = 0; k < 100; k++) {
    const sr = writeSenderReport({
      ssrc: 0x5000 + k,
      ntpUs: T0 - 1000,
      rtpTimestamp: 0,
      packets: 0,
      octets: 0,
    });
    s.push(0, sr, true, T0 + k, null);
  }
  assert.deepEqual(s.status(T0 + 100).inputs[0].ssrcs, [], "no stream made by a sender report");
  assert.equal(s.counts(0).rtcp_in, 100);
  // The last MAX_STREAMS_PER_INPUT SSRCs' reports wait; older ones were let go.
  const kept = 0x5000 + 100 - MAX_STREAMS_PER_INPUT;
  for (const ssrc of [0x5000 + 99, kept, kept - 1]) s.push(0, rtp(1, 8, ssrc), false, T0 + 1000, null);
  const st = s.status(T0 + 1000).inputs[0];
  assert.deepEqual(st.ssrcs, [0x5000 + 99, kept, kept - 1]);
  assert.equal(st.reports, 2, "the waiting reports of the last SSRCs were taken, not the one let go");
});

Deno.test("Synchronizer memory stays under max_bytes with 12-byte datagrams, queue rings counted", () => {
  const cap = 1024 * 1024;
  const s = sync({ maxBytes: cap });
  const n = 200_000;
  let maxMemory = 0;
  // All within one D (nothing released): far more tiny datagrams than the cap can hold.
  for (let i = 0; i < n; i++) {
    s.push(0, rtp(i, i, 0x77), false, T0 + i, null);
    if (i % 1000 === 0) maxMemory = Math.max(maxMemory, s.held.memory);
  }
  maxMemory = Math.max(maxMemory, s.held.memory);
  const c = s.counts(0);
  assert.ok(c.dropped_cap > 0, "beyond the cap dropped");
  assert.equal(c.dropped_cap + s.held.packets, n);
  assert.ok(maxMemory <= cap, `memory ${maxMemory}`);
  // The ring of the held datagrams is in the figure, not just the slab's bytes.
  assert.ok(s.held.memory >= s.held.packets * RING_SLOT_BYTES + s.held.bytes, `memory ${s.held.memory}`);
  const held = s.held.packets;
  assert.equal(s.flush(drop), held);
  assert.equal(s.held.packets, 0);
});

/** A 12-byte RTP datagram of dynamic payload type 96 (no rate configured). */
function rtp96(seq: number, ts: number, ssrc: number): Uint8Array {
  const d = rtp(seq, ts, ssrc);
  d[1] = 96;
  return d;
}

Deno.test("Synchronizer: datagrams waiting for their clock rate keep to their share of max_bytes and go when it is not found", () => {
  const cap = 1024 * 1024;
  const s = sync({ maxBytes: cap });
  let maxMemory = 0;
  // 30 kHz is no common rate: it is never named from arrivals. 10k datagrams a second for 3 s.
  for (let i = 0; i < 30_000; i++) {
    s.push(0, rtp96(i, i * 3, 0x96), false, T0 + i * 100, null);
    maxMemory = Math.max(maxMemory, s.held.memory);
  }
  const c = s.counts(0);
  // Its share (an eighth), and the empty queue rings every stream has.
  const rings = 8 * 1024;
  assert.ok(maxMemory <= cap / 8 + rings, `waiting took ${maxMemory} bytes`);
  assert.equal(c.unknown_clock_rate, 30_000, "every one counted, none sent at a guessed rate");
  assert.ok(s.held.memory <= rings, "given up after LEARN_MAX_US: nothing waits any more");
  assert.deepEqual(s.status(T0 + 3_000_000).inputs[0].clock_rates, [null]);
});

Deno.test("Synchronizer: a stream still waiting for its rate when the syncer stops is counted, not lost silently", () => {
  const s = sync();
  for (let i = 0; i < 5; i++) s.push(0, rtp96(i, i * 320, 0x97), false, T0 + i * 20_000, null);
  assert.equal(s.flush(drop), 0);
  assert.equal(s.counts(0).unknown_clock_rate, 5);
  assert.ok(s.held.memory <= 8 * 1024, `${s.held.memory} bytes after the flush: the empty rings only`);
});

Deno.test("Synchronizer: what was held while the last input was awaited leaves on time, within 250 ms of waiting", () => {
  for (const [startsAfterUs, late] of [[200_000, false], [1_000_000, true]] as const) {
    const s = sync({ inputs: 2 });
    const out: number[] = [];
    let sent = 0;
    // PCMU (8 kHz) on both inputs, 20 ms packets, no lateness; input 1 begins startsAfterUs after input 0.
    for (let t = 0; t <= 3_000_000; t += 1000) {
      const now = T0 + t;
      if (t % 20_000 === 0) {
        s.push(0, rtp(t / 20_000, t * 0.008, 0xa0), false, now, null);
        if (t >= startsAfterUs) s.push(1, rtp(t / 20_000, t * 0.008, 0xa1), false, now, null);
      }
      sent = s.release(now, (d) => out.push(...d.map(() => now)));
    }
    assert.ok(out.length > 100 && sent >= 0);
    const st = s.status(T0 + 3_000_000);
    if (late) {
      assert.ok(st.release_late > 0, "a second of waiting is more than D may start above its target");
      assert.ok(st.delay_ms! <= 20 + 250 + 1, `D ${st.delay_ms} ms`);
    } else {
      assert.equal(st.release_late, 0, `D ${st.delay_ms} ms`);
      // It started above the 200 ms waited and comes down at 5 ms a second.
      assert.ok(st.delay_ms! >= 180, `D ${st.delay_ms} ms`);
    }
  }
});

Deno.test("Synchronizer: a stream let go while it waits for its rate gives its share back", () => {
  const big = (seq: number, ts: number, ssrc: number) => {
    const d = new Uint8Array(1000);
    d.set(rtp96(seq, ts, ssrc));
    return d;
  };
  /** A steady 16 kHz stream of 100 datagrams from `t`: how many of them are dropped for want of their rate. */
  const steady = (s: Synchronizer<null>, t: number) => {
    const before = s.counts(0).unknown_clock_rate;
    for (let i = 0; i < 100; i++) s.push(0, big(i, i * 320, 0x999), false, t + i * 20_000, null);
    return s.counts(0).unknown_clock_rate - before;
  };
  // A share of 128 KiB for waiting datagrams (1000 bytes each): what a stream let go held must come back.
  const s = sync({ maxBytes: 1024 * 1024 });
  // Nine SSRCs of a dynamic type in turn on one input that keeps eight: each new one lets the quietest go.
  let t = T0;
  for (let round = 0; round < 4; round++) {
    for (let ssrc = 0; ssrc < 9; ssrc++) {
      for (let i = 0; i < 5; i++) s.push(0, big(i, i * 320, 0x100 + ssrc), false, t += 10, null);
    }
  }
  s.flush(drop); // what still waits is counted and let go too
  assert.equal(s.counts(0).unknown_clock_rate, 4 * 9 * 5, "every one of them counted");
  // The steady stream then fares as on a fresh syncer: no share is still taken by streams that are gone.
  assert.equal(steady(s, t), steady(sync({ maxBytes: 1024 * 1024 }), t));
});

Deno.test("Synchronizer releases what is due in order of capture time across its inputs, not one input after another", () => {
  const s = sync({ inputs: 2 });
  // PCMU on both inputs, captured alternately 10 ms apart (input 0 at 0, 20, 40, 60 ms; input 1 at 10, 30, 50,
  // 70 ms), each arriving as it is captured: one release takes them all.
  for (let i = 0; i < 4; i++) {
    s.push(0, rtp(i, i * 160, 0xa0), false, T0 + i * 20_000, null);
    s.push(1, rtp(i, 80 + i * 160, 0xa1), false, T0 + 10_000 + i * 20_000, null);
  }
  const order: string[] = [];
  s.flush((data) => {
    for (const d of data) {
      order.push(
        `${d[11] === 0xa0 ? "in0" : "in1"}@${new DataView(d.buffer, d.byteOffset).getUint32(4) / 8} ms`,
      );
    }
  });
  assert.deepEqual(order, [
    "in0@0 ms",
    "in1@10 ms",
    "in0@20 ms",
    "in1@30 ms",
    "in0@40 ms",
    "in1@50 ms",
    "in0@60 ms",
    "in1@70 ms",
  ]);
});
