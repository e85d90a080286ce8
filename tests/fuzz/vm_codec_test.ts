/**
 * Property tests of the VM batch codec. A VM group's worker runs a session's active programs and posts batches
 * back to the main isolate, so the main side decodes buffers a program could have forged: any buffer gives a batch
 * whose every view lies inside it, or a VmCodecError; and every batch encoded decodes to the same datagrams.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { type Crossing, decodeBatch, encodeBatch, VmCodecError } from "../../lib/graph/vm/codec.ts";
import { ipv6Bytes, isIPv4, isIPv6 } from "../../lib/net/address.ts";
import type { Batch, Endpoint } from "../../lib/net/udp.ts";
import { nearBytes, onlyThrows, params } from "./_fuzz.ts";

class TestBatch implements Batch {
  constructor(readonly items: { data: Uint8Array; from: Endpoint; truncated: boolean }[]) {}
  get count(): number {
    return this.items.length;
  }
  data(i: number): Uint8Array {
    return this.items[i].data;
  }
  length(i: number): number {
    return this.items[i].data.length;
  }
  from(i: number): Endpoint {
    return this.items[i].from;
  }
  truncated(i: number): boolean {
    return this.items[i].truncated;
  }
}

const sender = fc.record({
  host: fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain()),
  port: fc.integer({ min: 0, max: 65535 }),
});
const crossing: fc.Arbitrary<Crossing> = fc.record({
  kind: fc.constantFrom("deliver" as const, "emitted" as const),
  ap: fc.integer({ min: 0, max: 0xffff_ffff }),
  port: fc.integer({ min: 0, max: 0xffff }),
  rtcp: fc.boolean(),
});
const batch = fc.array(sender, { minLength: 1, maxLength: 4 }).chain((senders) =>
  fc.array(
    fc.record({
      data: fc.uint8Array({ maxLength: 64 }),
      // Consecutive datagrams often share one sender object, as they do from a socket.
      from: fc.nat({ max: senders.length - 1 }).map((i) => senders[i]),
      truncated: fc.boolean(),
    }),
    { maxLength: 8 },
  )
).map((items) => new TestBatch(items));

Deno.test("decodeBatch gives a batch inside the buffer or a VmCodecError for any bytes", () => {
  const encoded = fc.tuple(crossing, batch).map(([to, b]) => new Uint8Array(encodeBatch(to, b)));
  fc.assert(
    fc.property(nearBytes(encoded, 200), (bytes) => {
      const buffer = bytes.slice().buffer;
      const got = onlyThrows(() => decodeBatch(buffer), VmCodecError);
      if (!got) return;
      assert.equal(got.size, buffer.byteLength);
      let sum = 0;
      for (let i = 0; i < got.batch.count; i++) {
        const d = got.batch.data(i);
        assert.equal(d.buffer, buffer, "a view into the buffer, not a copy");
        assert.ok(d.byteOffset + d.length <= buffer.byteLength);
        assert.equal(got.batch.length(i), d.length);
        assert.equal(typeof got.batch.from(i).host, "string");
        sum += d.length;
      }
      assert.equal(got.bytes, sum);
    }),
    params(4000),
  );
});

Deno.test("decodeBatch reads back what encodeBatch packed", () => {
  fc.assert(
    fc.property(crossing, batch, (to, b) => {
      const got = decodeBatch(encodeBatch(to, b));
      assert.deepEqual(got.to, to);
      assert.equal(got.batch.count, b.count);
      for (let i = 0; i < b.count; i++) {
        assert.deepEqual(got.batch.data(i), b.data(i));
        assert.equal(got.batch.truncated(i), b.truncated(i));
        const from = got.batch.from(i);
        assert.equal(from.port, b.from(i).port);
        assert.equal(hostKey(from.host), hostKey(b.from(i).host));
      }
    }),
    params(3000),
  );
});

/** IPv6 texts of one address compare equal; other hosts as written. */
function hostKey(host: string): string {
  return isIPv6(host) && !isIPv4(host) ? ipv6Bytes(host).join(",") : host;
}
