import assert from "node:assert/strict";
import {
  isRtp,
  parseRtp,
  rtpPayloadType,
  rtpSequence,
  rtpSsrc,
  rtpTimestamp,
  setRtpSequence,
  setRtpSsrc,
  setRtpTimestamp,
  writeRtpHeader,
} from "../../lib/media/rtp.ts";
import { RTP_FULL, RTP_PLAIN } from "./_samples.ts";

Deno.test("parseRtp reads a plain header with unsigned 32-bit fields", () => {
  assert.deepEqual(parseRtp(RTP_PLAIN), {
    marker: true,
    payloadType: 96,
    sequence: 0xfffe,
    timestamp: 0xfffffff0,
    ssrc: 0x89abcdef,
    headerLength: 12,
    payloadLength: 4,
  });
});

Deno.test("parseRtp skips CSRCs and the extension and leaves out padding", () => {
  assert.deepEqual(parseRtp(RTP_FULL), {
    marker: false,
    payloadType: 33,
    sequence: 0x1234,
    timestamp: 0x80000001,
    ssrc: 0xdeadbeef,
    headerLength: 12 + 8 + 8,
    payloadLength: 3,
  });
});

Deno.test("parseRtp returns null for RTCP, short and wrong-version datagrams", () => {
  assert.equal(parseRtp(new Uint8Array(0)), null);
  assert.equal(parseRtp(new Uint8Array(11).fill(0x80)), null);
  const v1 = RTP_PLAIN.slice();
  v1[0] = 0x40;
  assert.equal(parseRtp(v1), null);
  const rtcpLike = RTP_PLAIN.slice();
  rtcpLike[1] = 200; // marker + PT 72: an SR's packet type
  assert.equal(parseRtp(rtcpLike), null);
});

Deno.test("parseRtp on every truncation gives null or the same header with a shorter payload", () => {
  for (const sample of [RTP_PLAIN, RTP_FULL]) {
    const whole = parseRtp(sample)!;
    for (let k = 0; k < sample.length; k++) {
      const h = parseRtp(sample.subarray(0, k));
      if (k < whole.headerLength) {
        assert.equal(h, null, `prefix ${k} of ${sample.length}`);
        continue;
      }
      // RTP has no length field: a prefix past the header is a shorter packet (or null when padding no longer fits).
      if (h === null) continue;
      assert.deepEqual({ ...h, payloadLength: 0 }, { ...whole, payloadLength: 0 });
      assert.ok(h.payloadLength >= 0 && h.payloadLength <= k - h.headerLength);
    }
  }
});

Deno.test("parseRtp never throws on any single-byte corruption and keeps the payload inside the datagram", () => {
  for (const sample of [RTP_PLAIN, RTP_FULL]) {
    for (let i = 0; i < sample.length; i++) {
      for (let v = 0; v < 256; v++) {
        const d = sample.slice();
        d[i] = v;
        const h = parseRtp(d);
        assert.equal(h !== null, isRtp(d));
        if (h) assert.ok(h.headerLength + h.payloadLength <= d.length && h.payloadLength >= 0);
      }
    }
  }
});

Deno.test("the unchecked readers agree with parseRtp", () => {
  assert.equal(rtpTimestamp(RTP_FULL), 0x80000001);
  assert.equal(rtpSsrc(RTP_FULL), 0xdeadbeef);
  assert.equal(rtpPayloadType(RTP_PLAIN), 96);
  assert.equal(rtpSequence(RTP_PLAIN), 0xfffe);
});

Deno.test("the setters rewrite fields in place and wrap extended values", () => {
  const d = RTP_FULL.slice();
  setRtpTimestamp(d, 0x1_0000_0005);
  setRtpSsrc(d, 0xfedcba98);
  setRtpSequence(d, 0x1_0007);
  assert.equal(rtpTimestamp(d), 5);
  assert.equal(rtpSsrc(d), 0xfedcba98);
  assert.equal(rtpSequence(d), 7);
  setRtpTimestamp(d, -1);
  assert.equal(rtpTimestamp(d), 0xffffffff);
  // Everything else is untouched.
  assert.deepEqual(d.subarray(12), RTP_FULL.subarray(12));
  assert.equal(d[0], RTP_FULL[0]);
  assert.equal(d[1], RTP_FULL[1]);
});

Deno.test("writeRtpHeader writes a header parseRtp reads back", () => {
  const buf = new Uint8Array(20);
  const h = { marker: true, payloadType: 33, sequence: 65535, timestamp: 0xfffffffe, ssrc: 0x80000000 };
  assert.equal(writeRtpHeader(buf, 4, h), 12);
  assert.deepEqual(parseRtp(buf.subarray(4)), { ...h, headerLength: 12, payloadLength: 4 });
  assert.deepEqual(buf.subarray(0, 4), new Uint8Array(4));
});

Deno.test("parseRtp never throws on random datagrams", () => {
  let seed = 5;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let i = 0; i < 20_000; i++) {
    const d = new Uint8Array(Math.floor(random() * 48));
    for (let k = 0; k < d.length; k++) d[k] = random() * 256;
    if (d.length > 0) d[0] = 0x80 | (d[0] & 0x3f);
    const h = parseRtp(d);
    if (h) assert.ok(h.payloadLength >= 0 && h.headerLength + h.payloadLength <= d.length);
  }
});
