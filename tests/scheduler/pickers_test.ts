import assert from "node:assert/strict";
import { UnknownNameError } from "../../lib/core/errors.ts";
import {
  builtinPickers,
  leastConn,
  leastLoad,
  roundRobin,
  sourceHash,
  SourceHashPicker,
  weighted,
} from "../../lib/scheduler/pickers/mod.ts";
import type { Picker, ServerView } from "../../lib/scheduler/pickers/mod.ts";
import {
  clientAddress,
  makeServers,
  type MutableServer,
  pickerContract,
  random,
} from "./pickers_contract.ts";

for (const kind of builtinPickers().values()) pickerContract(kind);

const all = (_i: number) => true;

function counts(picker: Picker, servers: readonly ServerView[], picks: number, eligible = all): number[] {
  const seen = new Array(servers.length).fill(0);
  for (let n = 0; n < picks; n++) seen[picker.pick(servers, eligible, clientAddress(n))]++;
  return seen;
}

Deno.test("builtinPickers registers every picker kind by its config name", () => {
  const pickers = builtinPickers();
  assert.deepEqual(pickers.names(), ["roundrobin", "weighted", "leastconn", "leastload", "sourcehash"]);
  for (const kind of pickers.values()) assert.ok(kind.description.length > 0);
  assert.throws(() => pickers.get("random"), (e: unknown) => {
    assert.ok(e instanceof UnknownNameError);
    assert.equal(
      e.message,
      'Unknown picker "random" (known: roundrobin, weighted, leastconn, leastload, sourcehash)',
    );
    return true;
  });
});

// roundrobin

Deno.test("roundrobin picker spreads 3000 picks exactly evenly over 3 servers, in order", () => {
  const picker = roundRobin.create();
  const servers = makeServers(3);
  assert.deepEqual([0, 1, 2, 3, 4].map(() => picker.pick(servers, all, "192.0.2.1")), [0, 1, 2, 0, 1]);
  assert.deepEqual(counts(roundRobin.create(), servers, 3000), [1000, 1000, 1000]);
});

Deno.test("roundrobin picker skips an ineligible server without giving anyone two turns", () => {
  const picker = roundRobin.create();
  const servers = makeServers(4);
  assert.deepEqual(counts(picker, servers, 3000, (i) => i !== 1), [1000, 0, 1000, 1000]);
  // A retry (the first choice no longer eligible) takes the next server's turn; the rotation then goes on from it.
  const retry = roundRobin.create();
  assert.equal(retry.pick(servers, all, "a"), 0);
  assert.equal(retry.pick(servers, (i) => i !== 1, "b"), 2);
  assert.equal(retry.pick(servers, all, "c"), 3);
  assert.equal(retry.pick(servers, all, "d"), 0);
});

// weighted

Deno.test("weighted picker gives weights 3:1 exactly 75% and 25%, never more than 3 in a row", () => {
  const picker = weighted.create();
  const servers = makeServers(2);
  servers[0].weight = 3;
  const picks = Array.from({ length: 4000 }, () => picker.pick(servers, all, "192.0.2.1"));
  assert.deepEqual([picks.filter((i) => i === 0).length, picks.filter((i) => i === 1).length], [3000, 1000]);
  for (let n = 0; n + 4 <= picks.length; n++) {
    assert.ok(picks.slice(n, n + 4).includes(1), `server 1 missing from picks ${n}..${n + 3}`);
  }
});

Deno.test("weighted picker interleaves turns as nginx's smooth weighted round-robin does", () => {
  const picker = weighted.create();
  const servers = makeServers(3);
  servers[0].weight = 5;
  const picks = Array.from({ length: 14 }, () => picker.pick(servers, all, "192.0.2.1"));
  assert.deepEqual(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
});

Deno.test("weighted picker follows weights changed at runtime", () => {
  const picker = weighted.create();
  const servers = makeServers(3);
  servers[0].weight = 4;
  assert.deepEqual(counts(picker, servers, 600), [400, 100, 100]);
  servers[0].weight = 1;
  servers[2].weight = 2;
  assert.deepEqual(counts(picker, servers, 400), [100, 100, 200]);
  // An agent's percentage makes weights fractional.
  servers[0].weight = 0.5;
  servers[1].weight = 1.5;
  servers[2].weight = 0;
  assert.deepEqual(counts(picker, servers, 400, (i) => servers[i].weight > 0), [100, 300, 0]);
});

Deno.test("weighted picker keeps the proportions of the eligible servers when one is ineligible", () => {
  const picker = weighted.create();
  const servers = makeServers(3);
  servers[0].weight = 2;
  servers[2].weight = 3;
  assert.deepEqual(counts(picker, servers, 500, (i) => i !== 1), [200, 0, 300]);
});

// leastconn

Deno.test("leastconn picker chooses the server with the fewest open connections", () => {
  const picker = leastConn.create();
  const servers = makeServers(3);
  [5, 2, 7].forEach((active, i) => servers[i].active = active);
  assert.equal(picker.pick(servers, all, "192.0.2.1"), 1);
  servers[1].active = 9;
  assert.equal(picker.pick(servers, all, "192.0.2.1"), 0);
  assert.equal(picker.pick(servers, (i) => i !== 0, "192.0.2.1"), 2);
});

Deno.test("leastconn picker weighs connections against the weight", () => {
  const picker = leastConn.create();
  const servers = makeServers(2);
  servers[1].weight = 3;
  servers[0].active = 2;
  servers[1].active = 4;
  assert.equal(picker.pick(servers, all, "192.0.2.1"), 1); // (4 + 1) / 3 < (2 + 1) / 1
  // Opening connections as picked fills the servers 1:3.
  servers[0].active = servers[1].active = 0;
  for (let n = 0; n < 400; n++) servers[picker.pick(servers, all, clientAddress(n))].active++;
  assert.deepEqual(servers.map((s) => s.active), [100, 300]);
});

Deno.test("leastconn picker breaks ties by rotation, not always index 0", () => {
  const picker = leastConn.create();
  const servers = makeServers(3);
  assert.deepEqual(Array.from({ length: 6 }, () => picker.pick(servers, all, "192.0.2.1")), [
    0,
    1,
    2,
    0,
    1,
    2,
  ]);
});

// leastload

Deno.test("leastload picker chooses the server with the most idle capacity", () => {
  const picker = leastLoad.create();
  const servers = makeServers(3);
  [30, 90, 60].forEach((capacity, i) => servers[i].capacity = capacity);
  [0, 12, 0].forEach((active, i) => servers[i].active = active);
  for (let n = 0; n < 5; n++) assert.equal(picker.pick(servers, all, clientAddress(n)), 1);
  assert.equal(picker.pick(servers, (i) => i !== 1, "192.0.2.1"), 2);
  servers[0].capacity = 95;
  assert.equal(picker.pick(servers, all, "192.0.2.1"), 0);
});

Deno.test("leastload picker breaks equal capacities by connections, then by rotation", () => {
  const picker = leastLoad.create();
  const servers = makeServers(3);
  [40, 80, 80].forEach((capacity, i) => servers[i].capacity = capacity);
  [0, 3, 1].forEach((active, i) => servers[i].active = active);
  assert.equal(picker.pick(servers, all, "192.0.2.1"), 2);
  servers[2].active = 3;
  assert.deepEqual(Array.from({ length: 4 }, () => picker.pick(servers, all, "192.0.2.1")), [1, 2, 1, 2]);
});

Deno.test("leastload picker without agent reports spreads like leastconn", () => {
  const picker = leastLoad.create();
  const servers = makeServers(3);
  servers[2].weight = 2;
  for (let n = 0; n < 400; n++) servers[picker.pick(servers, all, clientAddress(n))].active++;
  assert.deepEqual(servers.map((s) => s.active), [100, 100, 200]);
});

// sourcehash

function assignments(
  picker: Picker,
  servers: readonly ServerView[],
  clients: number,
  eligible = all,
): string[] {
  return Array.from(
    { length: clients },
    (_, n) => servers[picker.pick(servers, eligible, clientAddress(n))].key,
  );
}

function tally(keys: string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const key of keys) out.set(key, (out.get(key) ?? 0) + 1);
  return out;
}

Deno.test("sourcehash picker maps a client to the same server every time and in every instance", () => {
  const servers = makeServers(5);
  const picker = sourceHash.create();
  const first = assignments(picker, servers, 2000);
  const rand = random(4);
  for (let n = 0; n < 5000; n++) {
    const client = Math.floor(rand() * 2000);
    assert.equal(servers[picker.pick(servers, all, clientAddress(client))].key, first[client]);
  }
  // The ring depends on the keys alone: another worker, or a restart, maps clients the same way.
  assert.deepEqual(assignments(sourceHash.create(), servers, 2000), first);
  assert.deepEqual(assignments(sourceHash.create(), [...servers].reverse(), 2000), first);
});

Deno.test("sourcehash picker spreads 30000 clients over 3 servers within 10%", () => {
  const spread = tally(assignments(sourceHash.create(), makeServers(3), 30_000));
  assert.equal(spread.size, 3);
  for (const [key, count] of spread) {
    assert.ok(Math.abs(count - 10_000) <= 1000, `${key} got ${count} of 30000 clients`);
  }
});

Deno.test("sourcehash picker spreads clients in proportion to weight", () => {
  const servers = makeServers(2);
  servers[0].weight = 3;
  const spread = tally(assignments(sourceHash.create(), servers, 40_000));
  const share = spread.get(servers[0].key)! / 40_000;
  assert.ok(Math.abs(share - 0.75) < 0.03, `weight 3 of 4 got ${share}`);
});

Deno.test("sourcehash picker moves only the removed server's clients", () => {
  const picker = sourceHash.create();
  const servers = makeServers(3);
  const before = assignments(picker, servers, 30_000);
  const remaining = [servers[0], servers[2]];
  const after = assignments(picker, remaining, 30_000);
  let moved = 0;
  for (let n = 0; n < before.length; n++) {
    if (before[n] === servers[1].key) moved++;
    else assert.equal(after[n], before[n], `client ${clientAddress(n)} moved off ${before[n]}`);
  }
  // The removed server's clients spread over both others, not onto one.
  const movedTo = tally(after.filter((_, n) => before[n] === servers[1].key));
  for (const key of [servers[0].key, servers[2].key]) assert.ok(movedTo.get(key)! > moved / 3);
  // Back in the list, it gets exactly its clients back.
  assert.deepEqual(assignments(picker, servers, 30_000), before);
});

Deno.test("sourcehash picker sends an ineligible server's clients to the others and no one else's", () => {
  const picker = sourceHash.create();
  const servers = makeServers(4);
  const before = assignments(picker, servers, 10_000);
  const after = assignments(picker, servers, 10_000, (i) => i !== 2);
  for (let n = 0; n < before.length; n++) {
    if (before[n] === servers[2].key) assert.notEqual(after[n], servers[2].key);
    else assert.equal(after[n], before[n]);
  }
});

Deno.test("sourcehash picker moves only clients to or from a server whose weight changes", () => {
  const picker = sourceHash.create();
  const servers = makeServers(4);
  const before = assignments(picker, servers, 20_000);
  servers[1].weight = 0.5; // its agent says 50%
  const after = assignments(picker, servers, 20_000);
  let lost = 0;
  for (let n = 0; n < before.length; n++) {
    if (after[n] !== before[n]) {
      assert.equal(before[n], servers[1].key, `client ${clientAddress(n)} moved between unchanged servers`);
      lost++;
    }
  }
  const had = before.filter((key) => key === servers[1].key).length;
  assert.ok(lost > had * 0.35 && lost < had * 0.65, `server 1 lost ${lost} of ${had} clients at half weight`);
});

Deno.test("sourcehash picker rebuilds its ring only when keys or weights change", () => {
  const picker = new SourceHashPicker();
  const servers: MutableServer[] = makeServers(3);
  const rand = random(5);
  for (let n = 0; n < 1000; n++) {
    for (const s of servers) {
      s.active = Math.floor(rand() * 50);
      s.capacity = Math.floor(rand() * 101);
    }
    picker.pick(servers, (i) => rand() < 0.7 || i === 0, clientAddress(n));
  }
  assert.equal(picker.builds, 1);
  assert.equal(picker.ringSize, 3 * 1024);
  picker.pick([...servers], all, "192.0.2.1"); // same servers, another array
  assert.equal(picker.builds, 1);
  servers[0].weight = 2;
  picker.pick(servers, all, "192.0.2.1");
  assert.equal(picker.builds, 2);
  servers[0].key = "10.0.0.99:80";
  picker.pick(servers, all, "192.0.2.1");
  assert.equal(picker.builds, 3);
});

Deno.test("sourcehash picker finds the same server by walking the ring or by searching each server", () => {
  const walking = new SourceHashPicker({ walkLimit: Infinity });
  const searching = new SourceHashPicker({ walkLimit: 0 });
  const rand = random(6);
  const servers = makeServers(20);
  servers.forEach((s, i) => s.weight = 1 + (i % 4));
  for (let round = 0; round < 200; round++) {
    const ok = servers.map(() => rand() < (round % 2 ? 0.1 : 0.5));
    for (let n = 0; n < 20; n++) {
      const client = clientAddress(round * 20 + n);
      const eligible = (i: number) => ok[i];
      assert.equal(searching.pick(servers, eligible, client), walking.pick(servers, eligible, client));
    }
  }
});

Deno.test("sourcehash picker moves no one when an agent's reading wobbles by a few percent", () => {
  const picker = new SourceHashPicker();
  const servers = makeServers(3);
  const before = assignments(picker, servers, 5000);
  for (const weight of [0.97, 0.92, 1, 0.9, 0.95]) {
    servers[0].weight = weight;
    assert.deepEqual(assignments(picker, servers, 5000), before);
  }
  assert.equal(picker.builds, 1);
  // 100% down to 80% is no wobble: the server gives up about a fifth of its clients.
  servers[0].weight = 0.8;
  const after = assignments(picker, servers, 5000);
  assert.equal(picker.builds, 2);
  const lost = before.filter((key, n) => key !== after[n]).length;
  const had = before.filter((key) => key === servers[0].key).length;
  assert.ok(lost > had * 0.1 && lost < had * 0.3, `lost ${lost} of ${had}`);
});
