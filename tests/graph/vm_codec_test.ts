/**
 * The buffer a batch crosses isolates in: every datagram, its sender, its truncated flag and where the batch goes
 * come back as they went, for IPv4, IPv6 and named senders, empty batches and 64 KiB datagrams; a damaged buffer is
 * refused; and the buffer really moves (transferred, not copied) through postMessage.
 */
import assert from "node:assert/strict";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import { type Crossing, decodeBatch, encodeBatch, VmCodecError } from "../../lib/graph/vm/codec.ts";
import type { Batch, Endpoint } from "../../lib/net/udp.ts";

function bytes(n: number, seed: number): Uint8Array {
  const d = new Uint8Array(n);
  for (let i = 0; i < n; i++) d[i] = (i * 31 + seed) & 0xff;
  return d;
}

/** Every field of every datagram, for comparing batches. */
function contents(batch: Batch) {
  return Array.from({ length: batch.count }, (_, i) => ({
    data: [...batch.data(i)],
    length: batch.length(i),
    from: batch.from(i),
    truncated: batch.truncated(i),
  }));
}

function roundTrip(to: Crossing, batch: Batch) {
  const decoded = decodeBatch(encodeBatch(to, batch));
  assert.deepEqual(decoded.to, to);
  assert.deepEqual(contents(decoded.batch), contents(batch));
  let total = 0;
  for (let i = 0; i < batch.count; i++) total += batch.length(i);
  assert.equal(decoded.bytes, total);
  return decoded;
}

class TruncatingBatch extends ArrayBatch {
  constructor(items: Uint8Array[], senders: Endpoint[], readonly cut: Set<number>) {
    super(items, senders);
  }
  override truncated(i: number): boolean {
    return this.cut.has(i);
  }
}

Deno.test("encodeBatch and decodeBatch carry datagrams, IPv4 senders and where the batch goes", () => {
  const a = { host: "192.0.2.10", port: 5004 };
  const b = { host: "10.0.0.1", port: 65535 };
  roundTrip(
    { kind: "deliver", ap: 7, port: 2, rtcp: false },
    new ArrayBatch([bytes(100, 1), bytes(1, 2), bytes(1450, 3)], [a, b, a]),
  );
  roundTrip({ kind: "emitted", ap: 255, port: 0, rtcp: true }, new ArrayBatch([bytes(8, 4)], [b]));
});

Deno.test("encodeBatch writes each distinct sender once", () => {
  const one = { host: "192.0.2.10", port: 5004 };
  const many = new ArrayBatch(Array.from({ length: 64 }, (_, i) => bytes(10, i)), Array(64).fill(one));
  const buffer = encodeBatch({ kind: "deliver", ap: 0, port: 0, rtcp: false }, many);
  // header 16 + one IPv4 sender 8 + 64 entries of 6 + 640 bytes of data
  assert.equal(buffer.byteLength, 16 + 8 + 64 * 6 + 640);
  const copies = Array.from({ length: 64 }, () => ({ ...one }));
  const equalButNotSame = encodeBatch(
    { kind: "deliver", ap: 0, port: 0, rtcp: false },
    new ArrayBatch(many.items, copies),
  );
  assert.equal(equalButNotSame.byteLength, buffer.byteLength);
});

Deno.test("encodeBatch asks a batch that can tell (a socket's) whether a datagram has the sender before it, instead of building it", () => {
  // As a fast socket's batch: from() builds a new object each time; sameSource() compares addresses in place.
  const hosts = ["192.0.2.1", "192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2", "192.0.2.1"];
  let built = 0;
  const items = hosts.map((_, i) => bytes(20, i));
  const batch: Batch = {
    count: hosts.length,
    data: (i) => items[i],
    length: (i) => items[i].length,
    from: (i) => (built++, { host: hosts[i], port: 5004 }),
    sameSource: (i, j) => hosts[i] === hosts[j],
    truncated: () => false,
  };
  const decoded = roundTrip({ kind: "deliver", ap: 1, port: 0, rtcp: false }, batch);
  assert.deepEqual(Array.from({ length: 6 }, (_, i) => decoded.batch.from(i).host), hosts);
  built = 0;
  const buffer = encodeBatch({ kind: "deliver", ap: 1, port: 0, rtcp: false }, batch);
  assert.equal(built, 3, "built for the first datagram and where the sender changed");
  assert.equal(buffer.byteLength, 16 + 2 * 8 + 6 * 6 + 6 * 20, "each distinct sender written once");
});

Deno.test("encodeBatch and decodeBatch carry IPv6 senders, IPv4-mapped ones and host names", () => {
  const senders = [
    { host: "2001:db8::1", port: 1 },
    { host: "::1", port: 2 },
    { host: "fe80::1:2:3:4", port: 3 },
    { host: "::ffff:192.0.2.1", port: 4 },
    { host: "2001:db8:0:0:1:0:0:1", port: 5 },
    { host: "localhost", port: 6 },
  ];
  const decoded = decodeBatch(
    encodeBatch(
      { kind: "deliver", ap: 1, port: 1, rtcp: false },
      new ArrayBatch(senders.map((_, i) => bytes(20, i)), senders),
    ),
  );
  // IPv6 comes back in its canonical text (RFC 5952), the rest as it went.
  assert.deepEqual(
    Array.from({ length: decoded.batch.count }, (_, i) => decoded.batch.from(i)),
    [
      { host: "2001:db8::1", port: 1 },
      { host: "::1", port: 2 },
      { host: "fe80::1:2:3:4", port: 3 },
      { host: "::ffff:c000:201", port: 4 },
      { host: "2001:db8::1:0:0:1", port: 5 },
      { host: "localhost", port: 6 },
    ],
  );
});

Deno.test("encodeBatch and decodeBatch carry an empty batch and empty datagrams", () => {
  const empty = roundTrip({ kind: "emitted", ap: 3, port: 1, rtcp: true }, new ArrayBatch([], []));
  assert.equal(empty.batch.count, 0);
  roundTrip(
    { kind: "deliver", ap: 0, port: 0, rtcp: false },
    new ArrayBatch(
      [new Uint8Array(0), bytes(3, 9), new Uint8Array(0)],
      Array(3).fill({ host: "::", port: 0 }),
    ),
  );
});

Deno.test("encodeBatch and decodeBatch carry 64 KiB datagrams and the truncated flag", () => {
  const from = { host: "2001:db8::7", port: 4242 };
  const batch = new TruncatingBatch(
    [bytes(65535, 1), bytes(65536, 2), bytes(65507, 3), bytes(12, 4)],
    Array(4).fill(from),
    new Set([1, 3]),
  );
  const decoded = roundTrip({ kind: "deliver", ap: 2, port: 0, rtcp: false }, batch);
  assert.equal(decoded.batch.length(1), 65536);
  assert.deepEqual([0, 1, 2, 3].map((i) => decoded.batch.truncated(i)), [false, true, false, true]);
});

Deno.test("encodeBatch switches to a wide sender index beyond 65535 senders", () => {
  const n = 66_000;
  const senders = Array.from(
    { length: n },
    (_, i) => ({ host: `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, port: 9 }),
  );
  const batch = new ArrayBatch(Array.from({ length: n }, () => new Uint8Array(1)), senders);
  const decoded = decodeBatch(encodeBatch({ kind: "deliver", ap: 0, port: 0, rtcp: false }, batch));
  assert.deepEqual(decoded.batch.from(n - 1), senders[n - 1]);
  assert.deepEqual(decoded.batch.from(65_536), senders[65_536]);
});

Deno.test("decodeBatch refuses a buffer that is not a whole crossing batch", () => {
  const good = encodeBatch(
    { kind: "deliver", ap: 0, port: 0, rtcp: false },
    new ArrayBatch([bytes(50, 1), bytes(50, 2)], [{ host: "192.0.2.1", port: 1 }, { host: "::1", port: 2 }]),
  );
  // Cut at every byte: each shorter buffer is refused with VmCodecError (never another error, never a batch).
  for (let n = 0; n < good.byteLength; n++) {
    assert.throws(() => decodeBatch(good.slice(0, n)), VmCodecError, `cut at ${n}`);
  }
  const longer = new Uint8Array(good.byteLength + 1);
  longer.set(new Uint8Array(good));
  assert.throws(() => decodeBatch(longer.buffer), /1 bytes left over/);
  const version = new Uint8Array(good.slice(0));
  version[0] = 9;
  assert.throws(() => decodeBatch(version.buffer), /format version 9/);
  const badSender = new Uint8Array(good.slice(0));
  new DataView(badSender.buffer).setUint16(16 + 8 + 20 + 6 + 4, 7, true); // datagram 1 names sender 7
  assert.throws(() => decodeBatch(badSender.buffer), /names sender 7 of 2/);
});

Deno.test("a crossing buffer moves through postMessage without a copy", async () => {
  const channel = new MessageChannel();
  const buffer = encodeBatch(
    { kind: "deliver", ap: 1, port: 0, rtcp: false },
    new ArrayBatch([bytes(1000, 5)], [{ host: "192.0.2.1", port: 1 }]),
  );
  const size = buffer.byteLength;
  const arrived = new Promise<ArrayBuffer>((resolve) => channel.port2.onmessage = (e) => resolve(e.data));
  channel.port1.postMessage(buffer, [buffer]);
  assert.equal(buffer.byteLength, 0, "the sender's buffer is detached: it was moved");
  const got = await arrived;
  assert.equal(got.byteLength, size);
  assert.deepEqual([...decodeBatch(got).batch.data(0)], [...bytes(1000, 5)]);
  channel.port1.close();
  channel.port2.close();
});
