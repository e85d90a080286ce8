/**
 * The contract every picker kind keeps, as one suite each kind runs (like Hono's router common.case.test.ts).
 * `pickerContract(kind)` registers the tests for one kind. As the interface promises, a server that is eligible has
 * a weight above 0; the rest (weights, connections, capacities, eligibility) is drawn at random from a fixed seed.
 */
import assert from "node:assert/strict";
import type { PickerKind, ServerView } from "../../lib/scheduler/pickers/mod.ts";
import { random } from "../_support/random.ts";

export interface MutableServer {
  key: string;
  weight: number;
  active: number;
  capacity: number;
}

/** `n` servers 10.0.x.y:80 of weight 1, no connections, full capacity. */
export function makeServers(n: number, first = 0): MutableServer[] {
  return Array.from({ length: n }, (_, i) => ({
    key: `10.0.${(first + i) >> 8}.${(first + i) & 255}:80`,
    weight: 1,
    active: 0,
    capacity: 100,
  }));
}

export { random };

/** Client address number `n`. */
export function clientAddress(n: number): string {
  return `172.${16 + ((n >> 16) & 15)}.${(n >> 8) & 255}.${n & 255}`;
}

const all = () => true;
const none = () => false;

/** A pick checked to be a valid, eligible index (or -1, which the caller then checks). */
function checkedPick(
  kind: PickerKind,
  picker: ReturnType<PickerKind["create"]>,
  servers: readonly ServerView[],
  eligible: (i: number) => boolean,
  client: string,
): number {
  const i = picker.pick(servers, eligible, client);
  assert.ok(Number.isInteger(i), `${kind.name} returned ${i}, not an integer`);
  assert.ok(i >= -1 && i < servers.length, `${kind.name} returned ${i} for ${servers.length} servers`);
  if (i >= 0) assert.ok(eligible(i), `${kind.name} returned ineligible server ${i}`);
  return i;
}

/** Random weights, connections, capacities and eligibility (eligible servers have weight > 0). */
function shuffleState(servers: MutableServer[], rand: () => number, share: number): boolean[] {
  return servers.map((s) => {
    s.active = Math.floor(rand() * 20);
    s.capacity = Math.floor(rand() * 101);
    const ok = rand() < share;
    s.weight = ok ? 1 + Math.floor(rand() * 10) : Math.floor(rand() * 3);
    return ok && s.weight > 0;
  });
}

export function pickerContract(kind: PickerKind): void {
  const name = kind.name;

  Deno.test(`${name} picker returns -1 when no server is eligible`, () => {
    const picker = kind.create();
    assert.equal(picker.pick([], all, "192.0.2.1"), -1);
    const servers = makeServers(5);
    for (let n = 0; n < 20; n++) assert.equal(picker.pick(servers, none, clientAddress(n)), -1);
    // Weight 0 everywhere: the interface makes such servers ineligible, and no kind picks one anyway.
    for (const s of servers) s.weight = 0;
    assert.equal(picker.pick(servers, (i) => servers[i].weight > 0, "192.0.2.1"), -1);
  });

  Deno.test(`${name} picker only returns valid, eligible indexes`, () => {
    const picker = kind.create();
    const rand = random(1);
    const servers = makeServers(12);
    for (let round = 0; round < 300; round++) {
      const ok = shuffleState(servers, rand, round % 3 === 0 ? 0.1 : 0.6);
      for (let n = 0; n < 10; n++) {
        const i = checkedPick(kind, picker, servers, (j) => ok[j], clientAddress(round * 10 + n));
        assert.equal(i === -1, !ok.includes(true), `${name} returned ${i} with eligible ${ok}`);
      }
    }
  });

  Deno.test(`${name} picker always chooses the single eligible server`, () => {
    const picker = kind.create();
    const rand = random(2);
    const servers = makeServers(9);
    for (let only = 0; only < servers.length; only++) {
      for (let n = 0; n < 30; n++) {
        shuffleState(servers, rand, 0.5);
        servers[only].weight = 1 + n % 4;
        assert.equal(picker.pick(servers, (i) => i === only, clientAddress(n)), only);
      }
    }
  });

  Deno.test(`${name} picker works with one server`, () => {
    const picker = kind.create();
    const servers = makeServers(1);
    for (let n = 0; n < 50; n++) {
      servers[0].active = n;
      assert.equal(picker.pick(servers, all, clientAddress(n)), 0);
    }
  });

  Deno.test(`${name} picker spreads new clients over all of 256 servers`, () => {
    const picker = kind.create();
    const servers = makeServers(256);
    const seen = new Set<number>();
    for (let n = 0; n < 256 * 40; n++) {
      const i = checkedPick(kind, picker, servers, all, clientAddress(n));
      assert.ok(i >= 0);
      seen.add(i);
    }
    assert.equal(seen.size, 256);
  });

  Deno.test(`${name} picker survives the server list growing and shrinking between picks`, () => {
    const picker = kind.create();
    const rand = random(3);
    for (const n of [3, 10, 1, 0, 256, 2, 7, 7, 40, 5, 0, 1, 12]) {
      const servers = makeServers(n, n * 3);
      for (let round = 0; round < 20; round++) {
        const ok = shuffleState(servers, rand, 0.7);
        const i = checkedPick(kind, picker, servers, (j) => ok[j], clientAddress(round));
        assert.equal(i === -1, !ok.includes(true));
        assert.ok(checkedPick(kind, picker, servers, (j) => servers[j].weight > 0, "10.9.8.7") >= -1);
      }
    }
  });

  Deno.test(`${name} picker instances do not share state`, () => {
    const servers = makeServers(6);
    const sequence = (picker: ReturnType<PickerKind["create"]>) =>
      Array.from({ length: 30 }, (_, n) => picker.pick(servers, all, clientAddress(n)));
    const expected = sequence(kind.create());
    const busy = kind.create();
    const other = kind.create();
    for (let n = 0; n < 17; n++) busy.pick(servers, (i) => i !== 2, clientAddress(n + 100));
    assert.deepEqual(sequence(other), expected);
  });
}
