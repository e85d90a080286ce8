import assert from "node:assert/strict";
import { PROBE_HEADER, readProbe, writeProbe } from "../../lib/probe/packet.ts";
import { percentile, Reservoir } from "../../lib/probe/reservoir.ts";
import { ProbeStats } from "../../lib/probe/stats.ts";

Deno.test("writeProbe and readProbe round-trip a header; other bytes are not a probe", () => {
  const buf = new Uint8Array(100);
  writeProbe(buf, 4_000_000_000, 7, 1_700_000_000_123_456);
  assert.deepEqual(readProbe(buf), { seq: 4_000_000_000, stream: 7, sentUs: 1_700_000_000_123_456 });
  assert.equal(readProbe(new Uint8Array(PROBE_HEADER - 1)), null);
  assert.equal(readProbe(new TextEncoder().encode("EDGENODE-WELCOME 30 padding")), null);
});

Deno.test("ProbeStats counts loss, reordering and duplicates from sequence numbers", () => {
  const s = new ProbeStats();
  // Sent 0..9; 3 and 7 lost, 5 arrives after 6, 8 arrives twice.
  for (const [i, seq] of [0, 1, 2, 4, 6, 5, 8, 8, 9].entries()) s.add(seq, 0, 1000 + i, 100);
  const r = s.report();
  assert.equal(r.received, 8);
  assert.equal(r.expected, 10);
  assert.equal(r.lost, 2);
  assert.equal(r.loss_percent, 20);
  assert.equal(r.reordered, 1);
  assert.equal(r.duplicates, 1);
  assert.equal(r.bytes, 800);
});

Deno.test("ProbeStats gives delay percentiles and throughput", () => {
  const s = new ProbeStats();
  for (let i = 0; i < 100; i++) s.add(i, i * 1000, i * 1000 + (i + 1) * 10, 125); // delays 10..1000 us
  const r = s.report();
  assert.deepEqual(r.delay_us, { p50: 510, p90: 910, p99: 1000, max: 1000 });
  // 100 datagrams of 125 bytes from the first arrival (10 us) to the last (99 ms + 1000 us).
  assert.equal(Math.round(r.packets_per_s), Math.round(100 / 0.09999));
  assert.equal(r.mbit_per_s.toFixed(3), ((100 * 125 * 8) / 0.09999 / 1e6).toFixed(3));
});

Deno.test("ProbeStats reports nothing measured before any datagram", () => {
  const r = new ProbeStats().report();
  assert.equal(r.received, 0);
  assert.equal(r.lost, 0);
  assert.equal(r.delay_us, null);
});

Deno.test("ProbeStats keeps the sequence numbers of each stream apart and sums them in the report", () => {
  const s = new ProbeStats();
  // Streams 1 and 2 both send 0..4; stream 2 loses 3.
  for (let seq = 0; seq < 5; seq++) {
    s.add(seq, 0, 10, 100, 1);
    if (seq !== 3) s.add(seq, 0, 10, 100, 2);
  }
  const r = s.report();
  assert.equal(r.received, 9);
  assert.equal(r.duplicates, 0);
  assert.equal(r.expected, 10);
  assert.equal(r.lost, 1);
});

Deno.test("Reservoir keeps a bounded uniform sample and sorts it", () => {
  const r = new Reservoir(4, () => 0.99);
  for (const v of [5, 1, 4, 2]) r.add(v);
  assert.deepEqual([...r.sorted()], [1, 2, 4, 5]);
  assert.deepEqual([...r.sorted(Math.abs)], [1, 2, 4, 5]);
  for (let i = 0; i < 100; i++) r.add(-1000); // random 0.99: j >= capacity, never kept
  assert.equal(r.seen, 104);
  assert.equal(r.sorted().length, 4);
  assert.equal(percentile(r.sorted(), 50), 4);
});
