import assert from "node:assert/strict";
import { ntpToUnixUs } from "../../lib/media/ntp.ts";
import { parseRtcp, type RtcpCompound, writeSenderReport } from "../../lib/media/rtcp.ts";
import { isRtcp } from "../../lib/media/rtp.ts";
import {
  APP_PART,
  BYE_PART_PADDED,
  bytes,
  COMPOUND,
  COMPOUND_BOUNDARIES,
  RR_PART,
  SDES_PART,
  SR_PART,
  u32,
} from "./_samples.ts";

const EXPECTED: RtcpCompound = {
  senderReports: [{
    ssrc: 0xf0000001,
    ntpUs: ntpToUnixUs(0xe8000000, 0x80000000),
    rtpTimestamp: 0x90000000,
    packets: 7,
    octets: 1000,
  }],
  receiverReportSsrcs: [0xa0000002],
  cnames: [{ ssrc: 0xf0000001, cname: "cam@brno" }, { ssrc: 5, cname: "mic" }],
  byes: [0xf0000001, 5],
};

/** The parts of `c` that a compound made of a prefix of its parts shows, in order. */
function isPrefixOf(a: RtcpCompound, b: RtcpCompound): boolean {
  const prefix = <T>(x: T[], y: T[]) =>
    x.length <= y.length && x.every((v, i) => JSON.stringify(v) === JSON.stringify(y[i]));
  return prefix(a.senderReports, b.senderReports) && prefix(a.receiverReportSsrcs, b.receiverReportSsrcs) &&
    prefix(a.cnames, b.cnames) && prefix(a.byes, b.byes);
}

Deno.test("parseRtcp reads SR, RR, SDES CNAMEs and BYE, skips APP and padding", () => {
  assert.deepEqual(parseRtcp(COMPOUND), EXPECTED);
  assert.equal(EXPECTED.senderReports[0].ntpUs, (0xe8000000 - 2208988800) * 1e6 + 500_000);
});

Deno.test("parseRtcp reads each part alone", () => {
  assert.equal(parseRtcp(SR_PART)!.senderReports.length, 1);
  assert.deepEqual(parseRtcp(RR_PART)!.receiverReportSsrcs, [0xa0000002]);
  assert.deepEqual(parseRtcp(SDES_PART)!.cnames.map((c) => c.cname), ["cam@brno", "mic"]);
  assert.deepEqual(parseRtcp(APP_PART), { senderReports: [], receiverReportSsrcs: [], cnames: [], byes: [] });
  assert.deepEqual(parseRtcp(BYE_PART_PADDED)!.byes, [0xf0000001, 5]);
});

Deno.test("parseRtcp returns null for padding before the last part", () => {
  const padded = RR_PART.slice();
  padded[0] |= 0x20;
  assert.equal(parseRtcp(bytes([...padded], [...APP_PART])), null);
});

Deno.test("parseRtcp returns null for bodies that do not fit their parts", () => {
  // SR claiming one report block but only 28 bytes long.
  assert.equal(parseRtcp(bytes(0x81, 200, 0, 6, Array(24).fill(0))), null);
  // RR claiming a block it does not have.
  assert.equal(parseRtcp(bytes(0x81, 201, 0, 1, u32(1))), null);
  // SDES whose item runs past the part.
  assert.equal(parseRtcp(bytes(0x81, 202, 0, 2, u32(1), [1, 9, 65, 66])), null);
  // SDES chunk without its null item.
  assert.equal(parseRtcp(bytes(0x81, 202, 0, 2, u32(1), [1, 2, 65, 66])), null);
  // BYE whose reason runs past the part.
  assert.equal(parseRtcp(bytes(0x81, 203, 0, 2, u32(1), [9, 65, 0, 0])), null);
  // Not RTCP: an RTP packet type, version 1, trailing bytes, empty.
  assert.equal(parseRtcp(bytes(0x80, 96, 0, 1, u32(1))), null);
  assert.equal(parseRtcp(bytes(0x40, 201, 0, 1, u32(1))), null);
  assert.equal(parseRtcp(bytes([...RR_PART], [0, 0, 0, 0])), null);
  assert.equal(parseRtcp(new Uint8Array(0)), null);
  // Padding count of 0 or into the header.
  assert.equal(parseRtcp(bytes(0xa0, 201, 0, 1, u32(0))), null);
  assert.equal(parseRtcp(bytes(0xa0, 201, 0, 1, [0, 0, 0, 8])), null);
});

Deno.test("parseRtcp on every truncation gives null, or a prefix of the compound at a part boundary", () => {
  const whole = parseRtcp(COMPOUND)!;
  for (const sample of [COMPOUND, SR_PART, SDES_PART, BYE_PART_PADDED]) {
    for (let k = 0; k < sample.length; k++) {
      const c = parseRtcp(sample.subarray(0, k));
      if (sample === COMPOUND && COMPOUND_BOUNDARIES.includes(k)) {
        assert.ok(c !== null && isPrefixOf(c, whole), `prefix ${k} is a compound`);
      } else {
        assert.equal(c, null, `prefix ${k} of ${sample.length}`);
      }
    }
  }
});

Deno.test("parseRtcp never throws on any single-byte corruption and agrees with isRtcp", () => {
  for (let i = 0; i < COMPOUND.length; i++) {
    for (let v = 0; v < 256; v++) {
      const d = COMPOUND.slice();
      d[i] = v;
      const c = parseRtcp(d);
      // Whatever parseRtcp accepts, the looser isRtcp accepts too.
      if (c !== null) assert.ok(isRtcp(d));
    }
  }
});

Deno.test("writeSenderReport writes an SR and CNAME that parseRtcp reads back", () => {
  const sr = {
    ssrc: 0xffffffff,
    ntpUs: Date.UTC(2026, 0, 1) * 1000 + 123_456,
    rtpTimestamp: 0x80000000,
    packets: 2 ** 32 - 1,
    octets: 5,
  };
  const d = writeSenderReport({ ...sr, cname: "video@node" });
  assert.equal(d.length % 4, 0);
  const c = parseRtcp(d)!;
  assert.equal(c.senderReports.length, 1);
  const got = c.senderReports[0];
  assert.ok(Math.abs(got.ntpUs - sr.ntpUs) < 1);
  assert.deepEqual({ ...got, ntpUs: 0 }, { ...sr, ntpUs: 0 });
  assert.deepEqual(c.cnames, [{ ssrc: 0xffffffff, cname: "video@node" }]);
  assert.equal(writeSenderReport(sr).length, 28);
  // Every CNAME length pads to a whole word, up to the 255-byte item limit.
  for (let n = 0; n < 300; n += 1) {
    const parsed = parseRtcp(writeSenderReport({ ...sr, cname: "é".repeat(n) }));
    assert.ok(parsed, `cname of ${n} chars`);
    assert.ok(new TextEncoder().encode(parsed.cnames[0].cname).length <= 255);
  }
});

Deno.test("parseRtcp never throws on random RTCP-looking datagrams", () => {
  let seed = 3;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  let parsed = 0;
  for (let i = 0; i < 20_000; i++) {
    const d = new Uint8Array(Math.floor(random() * 64));
    for (let k = 0; k < d.length; k++) d[k] = random() * 256;
    // Mostly version 2, RTCP types and small lengths, so that the part parsers are reached.
    for (let off = 0; off + 4 <= d.length; off += 4 * (1 + (d[off + 3] & 3))) {
      d[off] = 0x80 | (d[off] & 0x3f);
      d[off + 1] = 200 + (d[off + 1] % 6);
      d[off + 2] = 0;
      d[off + 3] &= 3;
    }
    const c = parseRtcp(d);
    if (c) parsed++;
  }
  assert.ok(parsed > 100, `${parsed} random datagrams parsed`);
});
