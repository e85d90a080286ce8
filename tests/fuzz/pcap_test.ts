/**
 * Property tests of the capture reader, which the player feeds with uploaded or saved files: any bytes give records
 * or a PcapFormatError (never another exception), reading in chunks of any size gives what reading whole gives, and
 * what writePcapRecord writes reads back record for record.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ipv6Bytes, isIPv4 } from "../../lib/net/address.ts";
import {
  type PcapCapture,
  pcapFileHeader,
  PcapFormatError,
  PcapReader,
  type PcapRecord,
  pcapRecordSize,
  readPcap,
  writePcapRecord,
} from "../../lib/media/pcap.ts";
import { chunked, nearBytes, onlyThrows, params } from "./_fuzz.ts";

const endpoint = fc.record({
  host: fc.oneof(fc.ipV4(), fc.ipV6()),
  port: fc.integer({ min: 0, max: 65535 }),
});
const record = fc.record({
  timeUs: fc.integer({ min: 0, max: 2 ** 32 * 1e6 - 1 }),
  from: endpoint,
  to: endpoint,
  data: fc.uint8Array({ maxLength: 80 }),
});

function capture(records: readonly PcapRecord[]): Uint8Array {
  const size = records.reduce(
    (n, r) => n + pcapRecordSize(r.data.length, r.from.host.includes(":") || r.to.host.includes(":")),
    24,
  );
  const out = new Uint8Array(size);
  out.set(pcapFileHeader());
  let off = 24;
  for (const r of records) off = writePcapRecord(out, off, r);
  assert.equal(off, size);
  return out;
}

/** Big-endian and nanosecond headers too, so the reader's other branches see bytes. */
const header = fc.constantFrom(
  [0xd4, 0xc3, 0xb2, 0xa1],
  [0xa1, 0xb2, 0xc3, 0xd4],
  [0x4d, 0x3c, 0xb2, 0xa1],
  [0x0a, 0x0d, 0x0d, 0x0a],
);
const files = nearBytes(
  fc.oneof(
    fc.array(record, { maxLength: 4 }).map(capture),
    fc.tuple(header, fc.uint8Array({ maxLength: 120 })).map(([magic, rest]) =>
      Uint8Array.from([...magic, ...rest])
    ),
  ),
  300,
);

function read(bytes: Uint8Array, cuts: readonly number[] | null): Omit<PcapCapture, "info"> | "error" {
  const work = () => {
    if (!cuts) return readPcap(bytes);
    const reader = new PcapReader();
    const records = chunked(bytes, cuts).flatMap((c) => reader.push(c.slice()));
    return { ...reader.finish(), records, stats: { ...reader.stats } };
  };
  const got = onlyThrows(work, PcapFormatError);
  if (!got) return "error";
  const { info: _, ...rest } = got as PcapCapture;
  return rest;
}

Deno.test("readPcap gives records or a PcapFormatError for any bytes, the same read whole or in chunks", () => {
  fc.assert(
    fc.property(files, fc.array(fc.nat(), { maxLength: 6 }), (bytes, cuts) => {
      const whole = read(bytes, null);
      const pieces = read(bytes, cuts);
      assert.deepEqual(pieces, whole);
      if (whole !== "error") {
        assert.equal(whole.records.length, whole.stats.records);
        for (const r of whole.records) assert.ok(Number.isFinite(r.timeUs) && r.data.length <= bytes.length);
      }
    }),
    params(3000),
  );
});

Deno.test("readPcap reads back every record writePcapRecord wrote", () => {
  fc.assert(
    fc.property(fc.array(record, { maxLength: 5 }), (records) => {
      const got = readPcap(capture(records));
      assert.equal(got.truncated, false);
      assert.equal(got.records.length, records.length);
      got.records.forEach((r, i) => {
        const w = records[i];
        assert.equal(r.timeUs, Math.floor(w.timeUs));
        assert.deepEqual(addressOf(r.from.host), addressOf(w.from.host));
        assert.deepEqual(addressOf(r.to.host), addressOf(w.to.host));
        assert.deepEqual([r.from.port, r.to.port], [w.from.port, w.to.port]);
        assert.deepEqual(r.data, w.data);
      });
    }),
    params(2000),
  );
});

/** An address as its 16 IPv6 bytes (IPv4 mapped), so texts of one address compare equal. */
function addressOf(host: string): number[] {
  return [...ipv6Bytes(isIPv4(host) ? `::ffff:${host}` : host)];
}
