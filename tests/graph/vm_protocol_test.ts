/**
 * The batch link between the main isolate and a VM group's worker, with a fake `post`: what is posted and not yet
 * acknowledged stays within the limit, more is dropped and counted by datagram, acknowledgements free room, and the
 * receiving side acknowledges in steps of bytes or messages.
 */
import assert from "node:assert/strict";
import { BatchLink, LINK_LIMIT_BYTES } from "../../lib/graph/vm/protocol.ts";

function fakeLink(limit?: number) {
  const posted: (ArrayBuffer | { type: "ack"; bytes: number })[] = [];
  const transferred: Transferable[][] = [];
  const link = new BatchLink((m, transfer) => {
    posted.push(m);
    transferred.push(transfer ?? []);
  }, limit);
  return { link, posted, transferred };
}

Deno.test("BatchLink posts batches with their buffer transferred until the limit, then drops and counts datagrams", () => {
  const { link, posted, transferred } = fakeLink(1000);
  const a = new ArrayBuffer(600);
  assert.equal(link.send(a, 3), true);
  assert.deepEqual([posted[0], transferred[0]], [a, [a]]);
  assert.equal(link.inFlight, 600);
  assert.equal(link.send(new ArrayBuffer(400), 2), true, "up to the limit exactly");
  assert.equal(link.send(new ArrayBuffer(1), 7), false);
  assert.equal(link.send(new ArrayBuffer(50), 5), false);
  assert.deepEqual([posted.length, link.dropped, link.inFlight], [2, 12, 1000]);
});

Deno.test("BatchLink takes more only as the other side acknowledges", () => {
  const { link, posted } = fakeLink(1000);
  link.send(new ArrayBuffer(1000), 1);
  assert.equal(link.send(new ArrayBuffer(300), 1), false);
  link.acked(200);
  assert.equal(link.send(new ArrayBuffer(300), 1), false, "200 bytes of room is not 300");
  link.acked(100);
  assert.equal(link.send(new ArrayBuffer(300), 1), true);
  assert.equal(link.inFlight, 1000);
  link.acked(5000);
  assert.equal(link.inFlight, 0, "an acknowledgement of more than is in flight empties it, no further");
  assert.deepEqual([posted.length, link.dropped], [2, 2]);
});

Deno.test("BatchLink sends a batch larger than the limit when nothing is in flight", () => {
  const { link } = fakeLink(100);
  assert.equal(link.send(new ArrayBuffer(500), 4), true, "else a large batch could never cross");
  assert.equal(link.send(new ArrayBuffer(1), 1), false);
  assert.equal(link.dropped, 1);
});

Deno.test("BatchLink acknowledges what it took every 32 messages or every MiB", () => {
  const { link, posted } = fakeLink();
  for (let i = 0; i < 31; i++) link.took(10);
  assert.equal(posted.length, 0);
  link.took(10);
  assert.deepEqual(posted, [{ type: "ack", bytes: 320 }]);
  link.took(1024 * 1024 - 1);
  assert.equal(posted.length, 1);
  link.took(1);
  assert.deepEqual(posted[1], { type: "ack", bytes: 1024 * 1024 });
});

Deno.test("BatchLink of two sides bounds what crosses at LINK_LIMIT_BYTES and accounts for every datagram", () => {
  // Side A sends to side B; B takes everything and its acknowledgements reach A only when `deliver` runs.
  let toA: { type: "ack"; bytes: number }[] = [];
  const b = new BatchLink((m) => toA.push(m as { type: "ack"; bytes: number }));
  const inB: ArrayBuffer[] = [];
  const a = new BatchLink((m) => inB.push(m as ArrayBuffer));
  const deliver = () => {
    for (const buffer of inB.splice(0)) b.took(buffer.byteLength);
    for (const ack of toA) a.acked(ack.bytes);
    toA = [];
  };
  const MiB = 1024 * 1024;
  let sent = 0;
  for (let i = 0; i < 40; i++) if (a.send(new ArrayBuffer(MiB), 10)) sent++;
  assert.equal(sent * MiB, LINK_LIMIT_BYTES, "no more than the limit before B took any");
  assert.equal(a.dropped, (40 - sent) * 10);
  deliver();
  assert.equal(a.inFlight, 0, "B acknowledged all it took (each batch is a MiB)");
  assert.equal(a.send(new ArrayBuffer(MiB), 10), true);
});
