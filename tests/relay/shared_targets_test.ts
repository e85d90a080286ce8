/** The participant list a reflector's thread reads, and the per-participant counts it keeps (both sides here). */
import assert from "node:assert/strict";
import { SharedTargets, SharedTargetsReader } from "../../lib/relay/shared_targets.ts";

const ep = (port: number) => ({ host: "127.0.0.1", port });
const list = (...ports: number[]) => new Map(ports.map((p) => [`127.0.0.1:${p}`, ep(p)]));

/** What a thread does after sending one datagram to each participant it knows. */
function sendToAll(reader: SharedTargetsReader, dropEvery = 0): void {
  const n = reader.slots.length;
  const sent = new Float64Array(n).fill(1);
  const dropped = new Float64Array(n).map((_, j) => (dropEvery && j % dropEvery === 0 ? 1 : 0));
  reader.credit(sent, dropped);
  assert.ok(sent.every((x) => x === 0) && dropped.every((x) => x === 0), "credit zeroes what it took");
}

Deno.test("SharedTargets hands the reader a new list only when it changed", () => {
  const targets = new SharedTargets(4);
  const reader = new SharedTargetsReader(targets.memory);
  assert.equal(reader.changed(), null, "nothing written yet");
  targets.set(list(1000, 1001));
  assert.deepEqual(reader.changed(), [ep(1000), ep(1001)]);
  assert.equal(reader.changed(), null, "the same list is not handed twice");
  targets.set(list(1001, 1002));
  assert.deepEqual(reader.changed(), [ep(1001), ep(1002)]);
});

Deno.test("SharedTargets keeps a participant's counts across changes of the others", () => {
  const targets = new SharedTargets(4);
  const reader = new SharedTargetsReader(targets.memory);
  targets.set(list(1000));
  reader.changed();
  sendToAll(reader);
  sendToAll(reader, 1);
  targets.set(list(1000, 1001));
  reader.changed();
  sendToAll(reader);
  assert.deepEqual(targets.counts("127.0.0.1:1000"), { sent: 3, dropped: 1 });
  assert.deepEqual(targets.counts("127.0.0.1:1001"), { sent: 1, dropped: 0 });
  assert.equal(targets.counts("127.0.0.1:9"), undefined);
});

Deno.test("SharedTargets starts a returning participant, and one given a used slot, from zero", () => {
  const targets = new SharedTargets(1); // two slots: every reuse below lands on a slot that counted before
  const reader = new SharedTargetsReader(targets.memory);
  for (const port of [1000, 1001, 1000, 1002]) {
    targets.set(list(port));
    reader.changed();
    assert.deepEqual(
      targets.counts(`127.0.0.1:${port}`),
      { sent: 0, dropped: 0 },
      `port ${port} starts at 0`,
    );
    sendToAll(reader);
    sendToAll(reader);
    assert.deepEqual(targets.counts(`127.0.0.1:${port}`), { sent: 2, dropped: 0 });
  }
});

Deno.test("SharedTargets refuses more participants than it has room for and keeps the list it had", () => {
  const targets = new SharedTargets(2);
  const reader = new SharedTargetsReader(targets.memory);
  targets.set(list(1000, 1001));
  reader.changed();
  assert.throws(() => targets.set(list(1000, 1001, 1002)), /3 participants, room for 2/);
  assert.equal(reader.changed(), null, "nothing was written");
  assert.ok(targets.counts("127.0.0.1:1001"));
});

Deno.test("SharedTargets holds the longest addresses at full capacity", () => {
  const targets = new SharedTargets(3);
  const reader = new SharedTargetsReader(targets.memory);
  const host = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
  targets.set(new Map([0, 1, 2].map((i) => [`[${host}]:${65533 + i}`, { host, port: 65533 + i }])));
  assert.equal(reader.changed()?.length, 3);
});
