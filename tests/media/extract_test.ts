/** RTP payloads back to elementary streams: RFC 3016, RFC 2250, RFC 6184 and L16, in sequence order. */
import assert from "node:assert/strict";
import { extractPcap, extractRtp } from "../../lib/media/extract.ts";
import { pcapFileHeader, pcapRecordSize, writePcapRecord } from "../../lib/media/pcap.ts";
import { writeRtpHeader } from "../../lib/media/rtp.ts";

function rtp(seq: number, payload: number[], pt = 96, ssrc = 7): Uint8Array {
  const d = new Uint8Array(12 + payload.length);
  writeRtpHeader(d, 0, { marker: false, payloadType: pt, sequence: seq & 0xffff, timestamp: 0, ssrc });
  d.set(payload, 12);
  return d;
}

Deno.test("extractRtp puts the MP4V-ES config first and payloads in sequence order across wrap", () => {
  const out = extractRtp([rtp(0, [3]), rtp(65535, [2]), rtp(65535, [2]), rtp(1, [4])], {
    encoding: "MP4V-ES",
    fmtp: "profile-level-id=1; config=000001B0",
  });
  assert.deepEqual([...out.data], [0, 0, 1, 0xb0, 2, 3, 4]);
  assert.equal(out.duplicates, 1);
  assert.equal(out.lost, 0);
  assert.equal(out.format, "m4v");
});

Deno.test("extractRtp strips the RFC 2250 video header, 8 bytes with the MPEG-2 extension", () => {
  const out = extractRtp([
    rtp(1, [0, 0, 0, 0, 9, 9], 32),
    rtp(2, [4, 0, 0, 0, 1, 1, 1, 1, 8], 32),
    rtp(4, [0], 32),
  ], {
    encoding: "MPV",
  });
  assert.deepEqual([...out.data], [9, 9, 8]);
  assert.equal(out.lost, 1);
  assert.equal(out.malformed, 1);
});

Deno.test("extractRtp turns single NAL, STAP-A and FU-A into Annex B and drops a NAL that lost a fragment", () => {
  const out = extractRtp([
    rtp(1, [0x65, 1, 2]),
    rtp(2, [24, 0, 2, 0x67, 5, 0, 1, 0x68]),
    rtp(3, [0x7c, 0x85, 10]), // FU-A start of an IDR (type 5)
    rtp(4, [0x7c, 0x45, 11]), // end
    rtp(5, [0x7c, 0x81, 20]), // start of another, then a gap
    rtp(7, [0x7c, 0x41, 21]),
  ], { encoding: "H264", fmtp: "packetization-mode=1;sprop-parameter-sets=Z0I=,aM4=" });
  const S = [0, 0, 0, 1];
  assert.deepEqual([...out.data], [
    ...S,
    0x67,
    0x42,
    ...S,
    0x68,
    0xce, // sprop
    ...S,
    0x65,
    1,
    2,
    ...S,
    0x67,
    5,
    ...S,
    0x68,
    ...S,
    0x65,
    10,
    11,
  ]);
  assert.equal(out.lost, 1);
});

Deno.test("extractPcap takes the RTP port of a saver's capture and skips other SSRCs", () => {
  const packets = [rtp(1, [0, 1]), rtp(2, [0, 2], 96, 8), rtp(3, [0, 3])];
  const buf = new Uint8Array(24 + packets.length * pcapRecordSize(14, false) + pcapRecordSize(8, false));
  buf.set(pcapFileHeader());
  let off = 24;
  for (const data of packets) {
    off = writePcapRecord(buf, off, {
      timeUs: 1e15,
      from: { host: "127.0.0.1", port: 1 },
      to: { host: "127.0.0.1", port: 5004 },
      data,
    });
  }
  off = writePcapRecord(buf, off, {
    timeUs: 1e15,
    from: { host: "127.0.0.1", port: 1 },
    to: { host: "127.0.0.1", port: 5005 },
    data: new Uint8Array([0x80, 200, 0, 1, 0, 0, 0, 7]),
  });
  const out = extractPcap(buf.subarray(0, off), { encoding: "L16", port: 5004 });
  assert.deepEqual([...out.data], [0, 1, 0, 3]);
  assert.equal(out.skipped, 1);
  assert.equal(out.format, "s16be");
});
