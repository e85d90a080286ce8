/**
 * Property tests of the RTP and RTCP readers, which see every datagram a relay, reflector or session port receives:
 * any bytes give a header or null (never an exception, never a length past the datagram), and what the writers make
 * reads back to the fields written.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { isRtcp, isRtp, parseRtp, writeRtpHeader } from "../../lib/media/rtp.ts";
import { parseRtcp, writeSenderReport } from "../../lib/media/rtcp.ts";
import { nearBytes, onlyThrows, params } from "./_fuzz.ts";

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
/** Unix µs from 1968 to 2104: the span NTP timestamps round-trip (see lib/media/ntp.ts). */
const ntpUs = fc.integer({ min: -50_000_000_000_000, max: 4_000_000_000_000_000 });
const rtpFields = fc.record({
  marker: fc.boolean(),
  payloadType: fc.integer({ min: 0, max: 127 }),
  sequence: fc.integer({ min: 0, max: 0xffff }),
  timestamp: u32,
  ssrc: u32,
});
const rtpDatagram = fc.tuple(rtpFields, fc.uint8Array({ maxLength: 64 })).map(([h, payload]) => {
  const d = new Uint8Array(12 + payload.length);
  writeRtpHeader(d, 0, h);
  d.set(payload, 12);
  return d;
});
const report = fc.record({
  ssrc: u32,
  ntpUs,
  rtpTimestamp: u32,
  packets: u32,
  octets: u32,
  cname: fc.option(fc.string({ maxLength: 300 }), { nil: undefined }),
});
/** Compounds of a few parts with arbitrary types, counts and lengths, to reach the part and SDES walks. */
const parts = fc.array(
  fc.tuple(
    fc.integer({ min: 190, max: 225 }),
    fc.nat({ max: 31 }),
    fc.boolean(),
    fc.uint8Array({ maxLength: 40 }),
  ),
  { minLength: 1, maxLength: 4 },
).map((ps) => {
  const chunks = ps.map(([type, count, pad, body]) => {
    const len = (body.length + 3) & ~3;
    const c = new Uint8Array(4 + len);
    c[0] = 0x80 | (pad ? 0x20 : 0) | count;
    c[1] = type;
    c[2] = ((len / 4) >> 8) & 0xff;
    c[3] = (len / 4) & 0xff;
    c.set(body, 4);
    return c;
  });
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
});
const datagram = nearBytes(fc.oneof(rtpDatagram, report.map(writeSenderReport), parts), 200);

Deno.test("parseRtp and parseRtcp give a header or null for any datagram, within its bytes", () => {
  fc.assert(
    fc.property(datagram, (d) => {
      const rtp = onlyThrows(() => parseRtp(d));
      assert.equal(rtp !== null, isRtp(d));
      if (rtp) {
        assert.ok(rtp.headerLength >= 12 && rtp.payloadLength >= 0);
        assert.ok(rtp.headerLength + rtp.payloadLength <= d.length);
      }
      const rtcp = onlyThrows(() => parseRtcp(d));
      if (rtcp) assert.ok(isRtcp(d), "what parses as RTCP passes isRtcp");
    }),
    params(5000),
  );
});

Deno.test("parseRtp reads back what writeRtpHeader wrote, except the payload types RTCP claims", () => {
  fc.assert(
    fc.property(rtpFields, fc.uint8Array({ maxLength: 64 }), (h, payload) => {
      const d = new Uint8Array(12 + payload.length);
      assert.equal(writeRtpHeader(d, 0, h), 12);
      d.set(payload, 12);
      const got = parseRtp(d);
      if (h.payloadType >= 72 && h.payloadType <= 76) return assert.equal(got, null);
      assert.deepEqual(got, { ...h, headerLength: 12, payloadLength: payload.length });
    }),
    params(3000),
  );
});

Deno.test("parseRtcp reads back what writeSenderReport wrote", () => {
  fc.assert(
    fc.property(report, (r) => {
      const d = writeSenderReport(r);
      const got = parseRtcp(d);
      assert.ok(got);
      assert.equal(got.senderReports.length, 1);
      const sr = got.senderReports[0];
      assert.deepEqual([sr.ssrc, sr.rtpTimestamp, sr.packets, sr.octets], [
        r.ssrc,
        r.rtpTimestamp,
        r.packets,
        r.octets,
      ]);
      assert.ok(Math.abs(sr.ntpUs - r.ntpUs) < 1, `NTP time ${sr.ntpUs} for ${r.ntpUs}`);
      if (r.cname === undefined) assert.deepEqual(got.cnames, []);
      else {
        assert.equal(got.cnames.length, 1);
        assert.equal(got.cnames[0].ssrc, r.ssrc);
        const cname = got.cnames[0].cname;
        assert.ok(r.cname.startsWith(cname) && new TextEncoder().encode(cname).length <= 255);
        if (new TextEncoder().encode(r.cname).length <= 255) assert.equal(cname, r.cname);
      }
    }),
    params(3000),
  );
});
