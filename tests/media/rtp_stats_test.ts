import assert from "node:assert/strict";
import { MAX_DROPOUT, MAX_MISORDER, RtpSequenceStats } from "../../lib/media/rtp_stats.ts";

function feed(seqs: Iterable<number>): RtpSequenceStats {
  const s = new RtpSequenceStats();
  for (const seq of seqs) s.add(seq);
  return s;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

Deno.test("RtpSequenceStats reports nothing before the first packet", () => {
  assert.deepEqual(new RtpSequenceStats().snapshot(), {
    received: 0,
    expected: 0,
    lost: 0,
    reordered: 0,
    duplicates: 0,
    highest: -1,
    wraps: 0,
    restarts: 0,
  });
});

Deno.test("RtpSequenceStats counts an in-order stream without loss", () => {
  assert.deepEqual(feed(range(0, 99)).snapshot(), {
    received: 100,
    expected: 100,
    lost: 0,
    reordered: 0,
    duplicates: 0,
    highest: 99,
    wraps: 0,
    restarts: 0,
  });
});

Deno.test("RtpSequenceStats counts loss in the middle and a late packet lowers it", () => {
  const s = feed([0, 1, 2, 5, 6, 8, 9]);
  assert.deepEqual(
    [s.snapshot().received, s.snapshot().expected, s.snapshot().lost],
    [7, 10, 3],
  );
  s.add(4);
  const r = s.snapshot();
  assert.equal(r.lost, 2);
  assert.equal(r.reordered, 1);
});

Deno.test("RtpSequenceStats counts reordering, not loss", () => {
  const r = feed([0, 1, 3, 2, 4, 7, 5, 6, 8]).snapshot();
  assert.equal(r.received, 9);
  assert.equal(r.expected, 9);
  assert.equal(r.lost, 0);
  assert.equal(r.reordered, 3);
  assert.equal(r.duplicates, 0);
});

Deno.test("RtpSequenceStats counts duplicates once each and not as received or reordered", () => {
  // 2 repeated at once, 1 repeated late, 3 repeated after it was reordered.
  const r = feed([1, 2, 2, 4, 3, 1, 3, 5]).snapshot();
  assert.equal(r.received, 5);
  assert.equal(r.duplicates, 3);
  assert.equal(r.reordered, 1);
  assert.equal(r.lost, 0);
});

Deno.test("RtpSequenceStats wraps past 65535 without false loss", () => {
  const r = feed([...range(65530, 65535), ...range(0, 10)]).snapshot();
  assert.equal(r.received, 17);
  assert.equal(r.expected, 17);
  assert.equal(r.lost, 0);
  assert.equal(r.highest, 65536 + 10);
  assert.equal(r.wraps, 1);
  assert.equal(r.reordered, 0);
});

Deno.test("RtpSequenceStats takes a late packet from before the wrap as reordered", () => {
  const r = feed([65533, 65535, 0, 1, 65534]).snapshot();
  assert.equal(r.lost, 0);
  assert.equal(r.reordered, 1);
  assert.equal(r.duplicates, 0);
  assert.equal(r.wraps, 1);
});

Deno.test("RtpSequenceStats keeps counting across many wraps", () => {
  const s = new RtpSequenceStats();
  for (let i = 0; i < 3 * 65536 + 5; i++) s.add(i & 0xffff);
  const r = s.snapshot();
  assert.equal(r.wraps, 3);
  assert.equal(r.highest, 3 * 65536 + 4);
  assert.equal(r.lost, 0);
  assert.equal(r.duplicates, 0);
});

Deno.test("RtpSequenceStats resyncs after a restart instead of counting the jump as loss", () => {
  const r = feed([...range(0, 9), 60000, 60001, 60002]).snapshot();
  assert.equal(r.received, 13);
  assert.equal(r.expected, 13);
  assert.equal(r.lost, 0);
  assert.equal(r.restarts, 1);
  assert.equal(r.highest, 60002);
});

Deno.test("RtpSequenceStats keeps loss from before a restart", () => {
  const r = feed([0, 1, 3, 40000, 40001, 40003]).snapshot();
  assert.equal(r.expected, 4 + 4);
  assert.equal(r.lost, 2);
  assert.equal(r.restarts, 1);
});

Deno.test("RtpSequenceStats resyncs backwards, further behind than MAX_MISORDER", () => {
  const r = feed([...range(5000, 5009), 100, 101, 102]).snapshot();
  assert.equal(r.restarts, 1);
  assert.equal(r.lost, 0);
  assert.equal(r.reordered, 0);
  assert.equal(r.highest, 102);
});

Deno.test("RtpSequenceStats ignores a lone stray packet", () => {
  // 30000 is a jump with nothing after it; 150 behind the highest is too late to be reordering.
  const r = feed([...range(0, 4), 30000, ...range(5, 199), 199 - MAX_MISORDER - 50, 200]).snapshot();
  assert.equal(r.received, 201);
  assert.equal(r.expected, 201);
  assert.equal(r.lost, 0);
  assert.equal(r.reordered, 0);
  assert.equal(r.restarts, 0);
  assert.equal(r.highest, 200);
});

Deno.test("RtpSequenceStats counts a gap just under MAX_DROPOUT as loss", () => {
  const r = feed([0, MAX_DROPOUT - 1]).snapshot();
  assert.equal(r.lost, MAX_DROPOUT - 2);
  assert.equal(r.restarts, 0);
});

Deno.test("RtpSequenceStats accepts a first packet at any number", () => {
  for (const first of [0, 1, 12345, 40000, 65535]) {
    const r = feed([first, (first + 1) & 0xffff, (first + 2) & 0xffff]).snapshot();
    assert.equal(r.received, 3, `first ${first}`);
    assert.equal(r.expected, 3, `first ${first}`);
    assert.equal(r.lost, 0, `first ${first}`);
    assert.equal(r.restarts, 0, `first ${first}`);
  }
  assert.equal(feed([65535, 0]).snapshot().highest, 65536);
});

Deno.test("RtpSequenceStats counts sequence numbers sent before a late first packet", () => {
  // 1000 arrived first, 999 late, 1001 lost: the sender used 999..1002.
  const r = feed([1000, 999, 1002]).snapshot();
  assert.equal(r.expected, 4);
  assert.equal(r.lost, 1);
  assert.equal(r.reordered, 1);
  const across = feed([2, 65534, 3]).snapshot();
  assert.equal(across.expected, 6);
  assert.equal(across.lost, 3);
});

Deno.test("RtpSequenceStats reads only the low 16 bits of a sequence number", () => {
  assert.deepEqual(feed([65536 + 7, 8]).snapshot(), feed([7, 8]).snapshot());
});

Deno.test("RtpSequenceStats tells a late packet from a duplicate after the window has moved on", () => {
  // 1950 and 3090 reuse window bits that 926 and 2066 once set: they must read as late packets, not duplicates.
  // The step from 1999 to 3100 moves the window by more than its size at once.
  const r = feed([...range(0, 1949), ...range(1951, 1999), 1950, 3100, 3090, 3090]).snapshot();
  assert.equal(r.received, 2002);
  assert.equal(r.reordered, 2);
  assert.equal(r.duplicates, 1);
  assert.equal(r.lost, 3101 - 2002);
});
