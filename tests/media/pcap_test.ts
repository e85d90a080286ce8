import assert from "node:assert/strict";
import { ipv6Bytes } from "../../lib/net/address.ts";
import {
  PCAP_HEADER_SIZE,
  PCAP_MAX_RECORD_SIZE,
  pcapFileHeader,
  PcapFormatError,
  pcapNeedsIPv6,
  PcapReader,
  type PcapRecord,
  pcapRecordSize,
  readPcap,
  writePcapRecord,
} from "../../lib/media/pcap.ts";

const T0 = 1_700_000_000_123_456;
const A4 = { host: "192.0.2.1", port: 5004 };
const B4 = { host: "198.51.100.23", port: 40000 };
const A6 = { host: "2001:db8::1", port: 6000 };
const B6 = { host: "fe80::1:2:3:4", port: 65535 };

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** A capture file as the saver writes it: header, then records through one reused buffer. */
function capture(records: PcapRecord[]): Uint8Array {
  const parts: Uint8Array[] = [pcapFileHeader()];
  const buf = new Uint8Array(PCAP_MAX_RECORD_SIZE);
  for (const rec of records) parts.push(buf.slice(0, writePcapRecord(buf, 0, rec)));
  return concat(parts);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** The IP packet of one written record (what follows the 16-byte record header). */
function ipPacket(rec: PcapRecord): Uint8Array {
  const v6 = pcapNeedsIPv6(rec.from, rec.to);
  const buf = new Uint8Array(pcapRecordSize(rec.data.length, v6));
  assert.equal(writePcapRecord(buf, 0, rec), buf.length);
  return buf.subarray(16);
}

/** Ones-complement sum of 16-bit big-endian words, written independently of the module's. */
function onesSum(parts: Uint8Array[]): number {
  const all = concat(parts);
  let sum = 0;
  for (let i = 0; i < all.length; i += 2) {
    sum += (all[i] << 8) | (all[i + 1] ?? 0);
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  return sum;
}

/** Sum over the pseudo-header and UDP segment of an IP packet; 0xffff when the checksum verifies. */
function udpCheckSum(ip: Uint8Array): number {
  const udpLen = new Uint8Array(4);
  if (ip[0] >> 4 === 4) {
    const u = ip.subarray(20);
    udpLen.set(u.subarray(4, 6), 2);
    return onesSum([ip.subarray(12, 20), new Uint8Array([0, 17]), udpLen.subarray(2), u]);
  }
  const u = ip.subarray(40);
  udpLen.set(u.subarray(4, 6), 2);
  return onesSum([ip.subarray(8, 40), udpLen, new Uint8Array([0, 0, 0, 17]), u]);
}

/** A file built field by field, for byte orders, timestamp units and link types the writer does not make. */
function handFile(
  options: { bigEndian: boolean; nanoseconds: boolean; linktype: number },
  packets: { sec: number; frac: number; ip: Uint8Array; origLen?: number }[],
): Uint8Array {
  const le = !options.bigEndian;
  const head = new DataView(new ArrayBuffer(24));
  head.setUint32(0, options.nanoseconds ? 0xa1b23c4d : 0xa1b2c3d4, le);
  head.setUint16(4, 2, le);
  head.setUint16(6, 4, le);
  head.setUint32(16, 65535, le);
  head.setUint32(20, options.linktype, le);
  const parts: Uint8Array[] = [new Uint8Array(head.buffer)];
  for (const p of packets) {
    const rh = new DataView(new ArrayBuffer(16));
    rh.setUint32(0, p.sec, le);
    rh.setUint32(4, p.frac, le);
    rh.setUint32(8, p.ip.length, le);
    rh.setUint32(12, p.origLen ?? p.ip.length, le);
    parts.push(new Uint8Array(rh.buffer), p.ip);
  }
  return concat(parts);
}

function assertRecords(actual: PcapRecord[], expected: PcapRecord[]): void {
  assert.equal(actual.length, expected.length);
  actual.forEach((r, i) => {
    const e = expected[i];
    assert.equal(r.timeUs, Math.floor(e.timeUs), `record ${i} time`);
    assert.deepEqual(r.from, e.from, `record ${i} from`);
    assert.deepEqual(r.to, e.to, `record ${i} to`);
    assert.deepEqual(r.data, e.data, `record ${i} data`);
  });
}

Deno.test("pcap pcapFileHeader writes a little-endian microsecond v2.4 raw-IP header", () => {
  const h = new DataView(pcapFileHeader().buffer);
  assert.equal(h.byteLength, PCAP_HEADER_SIZE);
  assert.equal(h.getUint32(0, true), 0xa1b2c3d4);
  assert.equal(h.getUint16(4, true), 2);
  assert.equal(h.getUint16(6, true), 4);
  assert.equal(h.getUint32(16, true), 65535 + 48);
  assert.equal(h.getUint32(20, true), 101);
});

Deno.test("pcap writePcapRecord and readPcap round trip IPv4 records", () => {
  const records: PcapRecord[] = [
    { timeUs: T0, from: A4, to: B4, data: bytes(172) },
    { timeUs: T0 + 20_000.7, from: B4, to: A4, data: new Uint8Array(0) },
    { timeUs: T0 + 999_999, from: { host: "0.0.0.0", port: 0 }, to: B4, data: bytes(65507, 7) },
    { timeUs: 0, from: { host: "255.255.255.255", port: 65535 }, to: A4, data: bytes(1) },
  ];
  const file = capture(records);
  assert.equal(file.length, 24 + records.reduce((n, r) => n + pcapRecordSize(r.data.length, false), 0));
  const read = readPcap(file);
  assertRecords(read.records, records);
  assert.equal(read.records[0].timeUs, 1_700_000_000_123_456);
  assert.equal(read.truncated, false);
  assert.deepEqual(read.stats, { bytes: file.length, records: 4, skipped: 0, cut: 0 });
});

Deno.test("pcap writePcapRecord and readPcap round trip IPv6 and mixed-family records", () => {
  const records: PcapRecord[] = [
    { timeUs: T0, from: A6, to: B6, data: bytes(1200) },
    { timeUs: T0 + 1, from: B6, to: A6, data: new Uint8Array(0) },
    { timeUs: T0 + 2, from: A6, to: { host: "::", port: 1 }, data: bytes(65507) },
    { timeUs: T0 + 3, from: { host: "::1", port: 9 }, to: A6, data: bytes(65527, 3) },
    // An IPv4 endpoint beside an IPv6 one travels as ::ffff:a.b.c.d and comes back as the dotted quad.
    { timeUs: T0 + 4, from: A4, to: A6, data: bytes(33) },
    { timeUs: T0 + 5, from: A6, to: { host: "::ffff:10.1.2.3", port: 7 }, data: bytes(2) },
  ];
  const read = readPcap(capture(records));
  const expected = records.slice();
  expected[5] = { ...records[5], to: { host: "10.1.2.3", port: 7 } };
  assertRecords(read.records, expected);
  assert.deepEqual(read.stats.records, 6);
});

Deno.test("pcap writePcapRecord writes IPv6 addresses in every text form as ipv6Bytes reads them", () => {
  for (
    const host of [
      "::",
      "::1",
      "1::",
      "2001:db8::1",
      "2001:0DB8:0000:0000:0000:ff00:0042:8329",
      "1:2:3:4:5:6:7::",
      "::2:3:4:5:6:7:8",
      "1:2:3:4:5:6:1.2.3.4",
      "::ffff:192.0.2.1",
      "64:ff9b::198.51.100.7",
    ]
  ) {
    const ip = ipPacket({ timeUs: T0, from: { host, port: 1 }, to: A6, data: bytes(3) });
    assert.deepEqual(ip.subarray(8, 24), ipv6Bytes(host), host);
  }
});

Deno.test("pcap writePcapRecord rejects hosts that are not IP literals, bad ports and oversized payloads", () => {
  const buf = new Uint8Array(PCAP_MAX_RECORD_SIZE);
  const write = (rec: Partial<PcapRecord>) => () =>
    writePcapRecord(buf, 0, { timeUs: T0, from: A4, to: B4, data: bytes(4), ...rec });
  for (const host of ["localhost", "10.0.0", "10.0.0.256", "01.2.3.4", "1.2.3.4.5", ""]) {
    assert.throws(write({ from: { host, port: 1 } }), {
      name: "RangeError",
      message: /is not an IPv4 address/,
    });
  }
  for (
    const host of [":::", "1:2", "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::8", "12345::", "::g", "1:"]
  ) {
    assert.throws(write({ from: { host, port: 1 } }), { message: /is not an IPv6 address/ }, host);
  }
  assert.throws(write({ to: { host: "10.0.0.1", port: 65536 } }), /port 65536 is outside 0\.\.65535/);
  assert.throws(write({ data: bytes(65508) }), /65508 bytes exceeds the IPv4 maximum of 65507/);
  assert.throws(write({ from: A6, data: bytes(65528) }), /exceeds the IPv6 maximum of 65527/);
  assert.throws(write({ timeUs: -1 }), /outside the pcap range/);
  assert.throws(
    () => writePcapRecord(new Uint8Array(60), 10, { timeUs: T0, from: A4, to: B4, data: bytes(20) }),
    {
      name: "RangeError",
      message: "Cannot write capture record: it needs 64 bytes at offset 10, the buffer has 60",
    },
  );
});

Deno.test("pcap writePcapRecord writes records back to back and returns the offset after each", () => {
  const buf = new Uint8Array(1000);
  const first = { timeUs: T0, from: A4, to: B4, data: bytes(10) };
  const second = { timeUs: T0 + 5, from: A6, to: B6, data: bytes(11) };
  let off = writePcapRecord(buf, 0, first);
  assert.equal(off, pcapRecordSize(10, false));
  off = writePcapRecord(buf, off, second);
  assert.equal(off, pcapRecordSize(10, false) + pcapRecordSize(11, true));
  assertRecords(readPcap(concat([pcapFileHeader(), buf.subarray(0, off)])).records, [first, second]);
});

Deno.test("pcap writePcapRecord writes an IPv4 header whose checksum verifies", () => {
  for (const data of [new Uint8Array(0), bytes(1), bytes(1472), bytes(65507)]) {
    for (
      const [from, to] of [[A4, B4], [{ host: "255.255.255.255", port: 1 }, { host: "10.0.0.1", port: 2 }]]
    ) {
      const ip = ipPacket({ timeUs: T0, from, to, data });
      assert.equal(ip[0], 0x45);
      assert.equal(ip[8], 64, "TTL");
      assert.equal(ip[9], 17, "protocol");
      assert.equal((ip[2] << 8) | ip[3], ip.length, "total length");
      assert.equal(onesSum([ip.subarray(0, 20)]), 0xffff);
    }
  }
});

Deno.test("pcap writePcapRecord writes UDP checksums that verify for IPv4 and IPv6", () => {
  for (const data of [new Uint8Array(0), bytes(1), bytes(2), bytes(999), bytes(65507)]) {
    for (const [from, to] of [[A4, B4], [A6, B6], [A4, B6]]) {
      const ip = ipPacket({ timeUs: T0, from, to, data });
      const u = ip.subarray(ip[0] >> 4 === 4 ? 20 : 40);
      assert.notEqual((u[6] << 8) | u[7], 0, "a checksum is present");
      assert.equal(udpCheckSum(ip), 0xffff, `${from.host} -> ${to.host}, ${data.length} bytes`);
    }
  }
  const v6 = ipPacket({ timeUs: T0, from: A6, to: B6, data: bytes(5) });
  assert.equal(v6[0] >> 4, 6);
  assert.equal(v6[6], 17, "next header");
  assert.equal(v6[7], 64, "hop limit");
  assert.equal((v6[4] << 8) | v6[5], 13, "payload length");
});

Deno.test("pcap writePcapRecord's checksums verify wherever a record lands in its buffer, at every length", () => {
  // Records are packed, so a payload starts at any alignment, and long ones are summed by 32-bit words.
  const buf = new Uint8Array(8 + pcapRecordSize(1500, true) + 8);
  for (let at = 0; at < 8; at++) {
    for (const n of [0, 1, 2, 3, 63, 64, 65, 66, 67, 99, 1448, 1449, 1450, 1451]) {
      for (const [from, to] of [[A4, B4], [A6, B6]]) {
        const data = bytes(n, at + n);
        const view = buf.subarray(at & 3);
        const end = writePcapRecord(view, at & 4, { timeUs: T0, from, to, data });
        const ip = view.subarray((at & 4) + 16, end);
        assert.equal(udpCheckSum(ip), 0xffff, `${from.host}, ${n} bytes at ${at}`);
      }
    }
  }
});

Deno.test("pcap writePcapRecord sends a checksum that computes to 0 as 0xffff", () => {
  for (const [from, to] of [[A4, B4], [A6, B6]]) {
    // Choose the last payload word so that everything else sums to 0xffff, which makes the checksum 0.
    const data = bytes(8);
    data.fill(0, 6);
    const probe = ipPacket({ timeUs: T0, from, to, data });
    const u = probe.subarray(probe[0] >> 4 === 4 ? 20 : 40);
    const sum = 0xffff - ((u[6] << 8) | u[7]);
    const word = 0xffff - sum;
    data[6] = word >> 8;
    data[7] = word & 0xff;
    const ip = ipPacket({ timeUs: T0, from, to, data });
    const w = ip.subarray(ip[0] >> 4 === 4 ? 20 : 40);
    assert.equal((w[6] << 8) | w[7], 0xffff, from.host);
    assert.equal(udpCheckSum(ip), 0xffff);
  }
});

Deno.test("pcap PcapReader gives the same records when the file is split at every byte", () => {
  const records: PcapRecord[] = [
    { timeUs: T0, from: A4, to: B4, data: bytes(5) },
    { timeUs: T0 + 10, from: A6, to: B6, data: new Uint8Array(0) },
    { timeUs: T0 + 20, from: B4, to: A4, data: bytes(3) },
  ];
  const file = capture(records);
  for (let i = 0; i <= file.length; i++) {
    const reader = new PcapReader();
    const got = [...reader.push(file.subarray(0, i)), ...reader.push(file.subarray(i))];
    assertRecords(got, records);
    assert.deepEqual(reader.finish(), { truncated: false, trailingBytes: 0 }, `split at ${i}`);
  }
  const reader = new PcapReader();
  const got: PcapRecord[] = [];
  for (let i = 0; i < file.length; i++) got.push(...reader.push(file.slice(i, i + 1)));
  assertRecords(got, records);
  assert.equal(reader.stats.bytes, file.length);
});

Deno.test("pcap PcapReader records do not change when the caller reuses its chunk buffer", () => {
  const records = [{ timeUs: T0, from: A4, to: B4, data: bytes(100) }];
  const chunk = capture(records);
  const got = new PcapReader().push(chunk);
  chunk.fill(0);
  assertRecords(got, records);
});

Deno.test("pcap PcapReader keeps the complete records of a truncated file and reports the truncation", () => {
  const records: PcapRecord[] = [
    { timeUs: T0, from: A4, to: B4, data: bytes(40) },
    { timeUs: T0 + 1, from: A6, to: B4, data: bytes(40) },
    { timeUs: T0 + 2, from: B4, to: A4, data: bytes(40) },
  ];
  const file = capture(records);
  const lastStart = file.length - pcapRecordSize(40, false);
  for (let cut = lastStart + 1; cut < file.length; cut++) {
    const read = readPcap(file.subarray(0, cut));
    assertRecords(read.records, records.slice(0, 2));
    assert.equal(read.truncated, true);
    assert.equal(read.trailingBytes, cut - lastStart);
  }
  assert.equal(readPcap(file.subarray(0, lastStart)).truncated, false);
  assert.equal(readPcap(file.subarray(0, PCAP_HEADER_SIZE)).records.length, 0);
});

Deno.test("pcap PcapReader throws PcapFormatError for bytes that are not a pcap file", () => {
  const text = new TextEncoder().encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
  assert.throws(() => new PcapReader().push(text), (e) => {
    assert.ok(e instanceof PcapFormatError);
    assert.equal(e.message, "Cannot read capture: not a pcap file (magic 0x47455420)");
    assert.equal(e.offset, 0);
    return true;
  });
  // Too short for a header, but the magic is already wrong.
  const short = new PcapReader();
  short.push(text.subarray(0, 6));
  assert.throws(() => short.finish(), { name: "PcapFormatError", message: /not a pcap file/ });
  const empty = new PcapReader();
  assert.throws(() => empty.finish(), { name: "PcapFormatError", message: /ends after 0 bytes/ });
  const pcapng = new Uint8Array([0x0a, 0x0d, 0x0d, 0x0a, ...new Uint8Array(28)]);
  assert.throws(() => readPcap(pcapng), { name: "PcapFormatError", message: /pcapng is not supported/ });
  const ethernet = handFile({ bigEndian: false, nanoseconds: false, linktype: 1 }, []);
  assert.throws(() => readPcap(ethernet), {
    name: "PcapFormatError",
    message: /link type 1 is not supported/,
  });
});

Deno.test("pcap PcapReader throws PcapFormatError for a record longer than any capture record", () => {
  const file = capture([{ timeUs: T0, from: A4, to: B4, data: bytes(4) }]);
  new DataView(file.buffer).setUint32(24 + 8, 300_000, true);
  assert.throws(() => readPcap(file), (e) => {
    assert.ok(e instanceof PcapFormatError);
    assert.match(e.message, /record 1 at byte 24 claims 300000 bytes/);
    assert.equal(e.offset, 24);
    return true;
  });
});

Deno.test("pcap PcapReader reads big-endian and nanosecond files", () => {
  const r4 = { timeUs: T0, from: A4, to: B4, data: bytes(9) };
  const r6 = { timeUs: T0, from: A6, to: B6, data: bytes(10) };
  const packets = [{ sec: 1_700_000_000, frac: 123_456, ip: ipPacket(r4) }, {
    sec: 1_700_000_001,
    frac: 999_999,
    ip: ipPacket(r6),
  }];
  for (const bigEndian of [false, true]) {
    const read = readPcap(handFile({ bigEndian, nanoseconds: false, linktype: 101 }, packets));
    assert.equal(read.info.bigEndian, bigEndian);
    assert.equal(read.info.nanoseconds, false);
    assertRecords(read.records, [r4, { ...r6, timeUs: 1_700_000_001_999_999 }]);
  }
  const ns = [{ sec: 1_700_000_000, frac: 123_456_789, ip: ipPacket(r4) }];
  for (const bigEndian of [false, true]) {
    const read = readPcap(handFile({ bigEndian, nanoseconds: true, linktype: 101 }, ns));
    assert.equal(read.info.nanoseconds, true);
    assert.equal(read.records.length, 1);
    assert.ok(Math.abs(read.records[0].timeUs - 1_700_000_000_123_456.789) < 0.01);
    assert.deepEqual(read.records[0].data, r4.data);
  }
});

Deno.test("pcap PcapReader reads the LINKTYPE_IPV4 and LINKTYPE_IPV6 link types", () => {
  const r4 = { timeUs: T0, from: A4, to: B4, data: bytes(9) };
  const r6 = { timeUs: T0, from: A6, to: B6, data: bytes(10) };
  const packet = (rec: PcapRecord) => ({ sec: 1_700_000_000, frac: 123_456, ip: ipPacket(rec) });
  const v4 = readPcap(
    handFile({ bigEndian: false, nanoseconds: false, linktype: 228 }, [packet(r4), packet(r6)]),
  );
  assertRecords(v4.records, [r4]);
  assert.equal(v4.stats.skipped, 1, "an IPv6 packet in an IPv4 capture is skipped");
  const v6 = readPcap(
    handFile({ bigEndian: true, nanoseconds: false, linktype: 229 }, [packet(r4), packet(r6)]),
  );
  assertRecords(v6.records, [r6]);
  assert.equal(v6.stats.skipped, 1);
});

Deno.test("pcap PcapReader skips and counts records that are not whole UDP datagrams", () => {
  const rec = { timeUs: T0, from: A4, to: B4, data: bytes(30) };
  const udp = ipPacket(rec);
  const tcp = udp.slice();
  tcp[9] = 6;
  const fragment = udp.slice();
  fragment[6] = 0x20; // more fragments
  const v6Fragment = ipPacket({ ...rec, from: A6 }).slice();
  v6Fragment[6] = 44;
  const garbage = bytes(40);
  const p = (ip: Uint8Array, origLen?: number) => ({ sec: 1_700_000_000, frac: 123_456, ip, origLen });
  const snapped = udp.subarray(0, 40);
  const read = readPcap(
    handFile({ bigEndian: false, nanoseconds: false, linktype: 101 }, [
      p(tcp),
      p(udp),
      p(fragment),
      p(v6Fragment),
      p(garbage),
      p(new Uint8Array(0)),
      p(snapped, udp.length),
      p(udp),
    ]),
  );
  assertRecords(read.records, [rec, rec]);
  assert.deepEqual(read.stats, { bytes: read.stats.bytes, records: 2, skipped: 5, cut: 1 });
  assert.equal(read.truncated, false);
});
