/**
 * ShareHub between two schedulers, in memory: a fake transport joins two hubs (JSON on the way, as over HTTP), a
 * ManualClock drives the pushes, and real persistence tables stand in the services.
 */
import assert from "node:assert/strict";
import { createApp } from "../../lib/api/app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { PersistenceTable } from "../../lib/scheduler/persistence.ts";
import { FakeEtcd, FakeServer, FakeService } from "./_fakes.ts";
import { loadConfig } from "../../lib/config/load.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import {
  ETCD_PEER,
  EtcdShare,
  httpShareTransport,
  MAX_PUSH_ENTRIES,
  MAX_SERVER_CHANGES,
  type ServerChange,
  serverChangeOf,
  servicesShareLocal,
  type ShareBatch,
  ShareFormatError,
  ShareHub,
  shareRoutes,
  ShareTooLargeError,
  type ShareTransport,
  snapshotByteCap,
} from "../../lib/scheduler/share.ts";

const INTERVAL = 100;
const S1 = "10.0.1.1:80";
const S2 = "10.0.1.2:80";

/** Lets promise callbacks run (the fake transport answers at once). */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

/** A box: one service "web" over S1 and S2 with persistence, and its hub. */
function box(
  name: string,
  clock: ManualClock,
  transport: ShareTransport,
  o: {
    timeoutMs?: number;
    maxBatch?: number;
    maxQueue?: number;
    weight?: number;
    peers?: string[];
    snapshotMax?: number;
    pause?: () => Promise<void>;
  } = {},
) {
  const logs: string[] = [];
  const table = new PersistenceTable(clock, {
    timeoutMs: 60_000,
    onSet: (client, key) => hub.persisted("web", client, key),
  });
  const web = new FakeService("web", [
    new FakeServer(S1, { state: "ready", weight: o.weight ?? 1 }),
    new FakeServer(S2, { state: "ready", weight: 1 }),
  ], table);
  const hub: ShareHub = new ShareHub({
    name,
    peers: o.peers ?? [name === "a" ? "http://b" : "http://a"],
    intervalMs: INTERVAL,
    timeoutMs: o.timeoutMs ?? 1000,
    maxBatch: o.maxBatch ?? 1000,
    maxQueue: o.maxQueue ?? 1000,
    snapshotRetryMs: 2000,
    ...(o.snapshotMax ? { snapshotMax: o.snapshotMax } : {}),
    ...(o.pause ? { pause: o.pause } : {}),
    clock,
    logger: new Logger({ level: "info", clock, sink: (line) => logs.push(line) }),
    transport,
    local: servicesShareLocal(() => [web]),
  });
  return { hub, table, web, logs };
}

/** Joins hubs by URL ("http://a"); each call is recorded; `down` peers refuse. */
class Wire implements ShareTransport {
  readonly hubs = new Map<string, ShareHub>();
  readonly pushes: { peer: string; batch: ShareBatch }[] = [];
  readonly down = new Set<string>();
  /** Peers that never answer (until aborted). */
  readonly silent = new Set<string>();
  push(peer: string, batch: ShareBatch, signal: AbortSignal): Promise<void> {
    return this.#call(peer, signal, (hub) => {
      this.pushes.push({ peer, batch });
      hub.receive(JSON.parse(JSON.stringify(batch)));
    });
  }
  /** While set, a snapshot is taken when asked for but delivered only once this resolves (a slow answer). */
  snapshotGate: Promise<void> | null = null;
  async snapshot(peer: string, signal: AbortSignal): Promise<unknown> {
    const taken = await this.#call(peer, signal, (hub) => JSON.parse(JSON.stringify(hub.snapshot())));
    if (this.snapshotGate) await this.snapshotGate;
    return taken;
  }
  #call<T>(peer: string, signal: AbortSignal, f: (hub: ShareHub) => T): Promise<T> {
    if (this.silent.has(peer)) {
      return new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)));
    }
    const hub = this.hubs.get(peer);
    if (!hub || this.down.has(peer)) return Promise.reject(new Error(`connection refused by ${peer}`));
    return Promise.resolve().then(() => f(hub));
  }
}

function pair(o: Parameters<typeof box>[3] = {}) {
  const clock = new ManualClock(1_000_000);
  const wire = new Wire();
  const a = box("a", clock, wire, o);
  const b = box("b", clock, wire, o);
  wire.hubs.set("http://a", a.hub);
  wire.hubs.set("http://b", b.hub);
  return { clock, wire, a, b };
}

async function tick(clock: ManualClock, ms = INTERVAL): Promise<void> {
  clock.advance(ms);
  await settle();
}

Deno.test("ShareHub pushes a persistence entry to its peer, which keeps it with its own timeout and sends nothing back", async () => {
  const { clock, wire, a, b } = pair();
  a.hub.start();
  b.hub.start();
  await settle(); // the start-up snapshots (both empty)
  a.table.set("192.0.2.7", S2);
  assert.equal(b.table.get("192.0.2.7"), undefined, "nothing before the interval");
  await tick(clock);
  assert.equal(b.table.get("192.0.2.7"), S2);
  await tick(clock);
  await tick(clock);
  assert.deepEqual(wire.pushes.map((p) => p.peer), ["http://b"], "one push, none echoed back to a");
  assert.equal(b.hub.counts.applied, 1);
  // b's copy lives for b's timeout from when it arrived.
  clock.advance(59_000);
  assert.equal(b.table.get("192.0.2.7"), S2);
  a.hub.stop();
  b.hub.stop();
});

Deno.test("ShareHub sends a busy client again only every half timeout, and a moved client at once", async () => {
  const { clock, wire, a, b } = pair();
  a.hub.start();
  b.hub.start();
  await settle();
  a.table.set("192.0.2.7", S1);
  await tick(clock);
  for (let i = 0; i < 10; i++) {
    a.table.get("192.0.2.7");
    a.table.set("192.0.2.7", S1);
    await tick(clock);
  }
  assert.equal(wire.pushes.length, 1, "refreshes within half the timeout are not sent");
  clock.advance(30_000);
  a.table.set("192.0.2.7", S1);
  await tick(clock);
  assert.equal(wire.pushes.length, 2, "a refresh after half the timeout is sent");
  a.table.set("192.0.2.7", S2);
  await tick(clock);
  assert.equal(wire.pushes.length, 3);
  assert.equal(b.table.get("192.0.2.7"), S2);
  a.hub.stop();
  b.hub.stop();
});

Deno.test("ShareHub batches at most maxBatch changes per push", async () => {
  const { clock, wire, a, b } = pair({ maxBatch: 2 });
  a.hub.start();
  b.hub.start();
  await settle();
  for (let i = 1; i <= 5; i++) a.table.set(`192.0.2.${i}`, i % 2 ? S1 : S2);
  for (let i = 0; i < 3; i++) await tick(clock);
  assert.deepEqual(wire.pushes.map((p) => p.batch.persistence.web.length), [2, 2, 1]);
  assert.equal(b.table.size, 5);
  assert.equal(b.table.get("192.0.2.2"), S2);
  a.hub.stop();
  b.hub.stop();
});

Deno.test("ShareHub bounds a dead peer's queue, counts what it drops, and delivers the rest when the peer is back", async () => {
  const { clock, wire, a, b } = pair({ maxQueue: 3 });
  wire.down.add("http://b");
  a.hub.start();
  await settle();
  for (let i = 1; i <= 5; i++) a.table.set(`192.0.2.${i}`, S1);
  a.table.set("192.0.2.1", S2); // an item already queued is replaced, not dropped
  await tick(clock);
  const peer = () => (a.hub.status().peers as Record<string, unknown>[])[0];
  assert.equal(peer().dropped, 2);
  assert.equal(peer().queue, 3, "a failed push put its changes back");
  assert.equal(peer().ok, false);
  assert.equal(a.logs.filter((l) => l.includes("share peer failed")).length, 1);
  await tick(clock);
  assert.equal(a.logs.filter((l) => l.includes("share peer failed")).length, 1, "logged once, not per push");
  wire.down.delete("http://b");
  await tick(clock);
  assert.equal(b.table.get("192.0.2.1"), S2);
  assert.equal(b.table.get("192.0.2.3"), S1);
  assert.equal(b.table.get("192.0.2.4"), undefined, "dropped");
  assert.equal(peer().queue, 0);
  assert.equal(peer().ok, true);
  assert.ok(a.logs.some((l) => l.includes("share peer answers again")));
  a.hub.stop();
});

Deno.test("ShareHub aborts a push that gets no answer after the timeout, on its clock", async () => {
  const { clock, wire, a } = pair({ timeoutMs: 500 });
  a.hub.start();
  await settle();
  wire.silent.add("http://b");
  a.table.set("192.0.2.1", S1);
  await tick(clock);
  const peer = () => (a.hub.status().peers as Record<string, unknown>[])[0];
  assert.equal(peer().failed_pushes, 0, "still waiting");
  await tick(clock, 500);
  assert.equal(peer().failed_pushes, 1);
  assert.match(String(peer().last_error), /push: no answer within 500 ms/);
  assert.equal(peer().queue, 1);
  a.hub.stop();
});

Deno.test("ShareHub applies a server's state and weight where the peer's config agrees, and only there", async () => {
  const { clock, a, b } = pair();
  // b's config gives S1 weight 5 where a's says 1: a's weight for S1 does not apply on b, its state does.
  const b5 = box("b", clock, new Wire(), { weight: 5 });
  const wire = new Wire();
  const a2 = box("a", clock, wire);
  wire.hubs.set("http://b", b5.hub);
  a2.hub.start();
  await settle();
  const [s1] = a2.web.servers;
  a2.hub.serverChanged(serverChangeOf("web", s1, { weight: 9 }));
  a2.hub.serverChanged(serverChangeOf("web", s1, { state: "drain" }));
  await tick(clock);
  assert.equal(wire.pushes.length, 1);
  assert.equal(wire.pushes[0].batch.servers.length, 1, "state and weight of one server travel as one change");
  assert.equal(b5.web.servers[0].admin, "drain");
  assert.equal(b5.web.servers[0].configuredWeight, 5, "b's own config for the weight wins");
  assert.equal(b5.web.changes, 1);
  a2.hub.stop();

  // With the same config everything applies; an unknown server or service is ignored and counted.
  a.hub.start();
  await settle();
  a.hub.serverChanged(serverChangeOf("web", a.web.servers[1], { state: "maint", weight: 3 }));
  a.hub.serverChanged({
    service: "web",
    server: "10.9.9.9:80",
    state: "drain",
    config: { state: "ready", weight: 1 },
  });
  await tick(clock);
  assert.equal(b.web.servers[1].admin, "maint");
  assert.equal(b.web.servers[1].configuredWeight, 3);
  assert.equal(b.hub.counts.ignored, 1);
  a.hub.stop();
});

Deno.test("ShareHub asks its peers for a snapshot on start, and again later when they did not answer", async () => {
  const { clock, wire, a, b } = pair();
  a.table.set("192.0.2.1", S1);
  a.table.set("192.0.2.2", S2);
  a.web.servers[0].setAdmin("drain");
  a.web.servers[1].configuredWeight = 4;
  wire.down.add("http://a");
  b.hub.start();
  await settle();
  assert.equal(b.table.size, 0);
  await tick(clock, 1000);
  assert.equal(b.table.size, 0, "no second ask before the retry delay");
  wire.down.delete("http://a");
  await tick(clock, 1000);
  assert.equal(b.table.get("192.0.2.1"), S1);
  assert.equal(b.table.get("192.0.2.2"), S2);
  assert.equal(b.web.servers[0].admin, "drain");
  assert.equal(b.web.servers[1].configuredWeight, 4);
  assert.equal(b.web.servers[1].admin, "ready", "only what differs from the config travels");
  const peer = (b.hub.status().peers as Record<string, unknown>[])[0];
  assert.equal(peer.synced, true);
  assert.equal(peer.failed_snapshots, 1);
  b.hub.stop();
});

Deno.test("ShareHub snapshot holds the most recently used entries first, at most snapshotMax", () => {
  const clock = new ManualClock(0);
  const table = new PersistenceTable(clock, { timeoutMs: 10_000 });
  for (let i = 1; i <= 4; i++) {
    table.set(`192.0.2.${i}`, S1);
    clock.advance(1);
  }
  table.get("192.0.2.1");
  const web = new FakeService("web", [new FakeServer(S1, { state: "ready", weight: 1 })], table);
  const hub = new ShareHub({
    name: "a",
    peers: [],
    intervalMs: INTERVAL,
    timeoutMs: 100,
    maxBatch: 10,
    maxQueue: 10,
    snapshotMax: 2,
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    transport: new Wire(),
    local: servicesShareLocal(() => [web]),
  });
  assert.deepEqual(hub.snapshot(), {
    from: "a",
    persistence: { web: [["192.0.2.1", S1, 10_000], ["192.0.2.4", S1, 9_999]] },
    servers: [],
  });
});

Deno.test("ShareHub refuses a batch whose frame is malformed with ShareFormatError and counts it", () => {
  const { a } = pair();
  const bad: unknown[] = [
    null,
    [],
    { from: "b", persistence: [], servers: [] },
    { from: "b", persistence: {}, servers: {} },
    { from: 7, persistence: {}, servers: [] },
  ];
  for (const body of bad) assert.throws(() => a.hub.receive(body), ShareFormatError, JSON.stringify(body));
  assert.equal(a.hub.counts.rejected_batches, bad.length);
  assert.equal(a.table.size, 0);
});

Deno.test("ShareHub skips and counts the bad items of a batch and applies the rest", () => {
  const { a } = pair();
  const config = { state: "ready", weight: 1 };
  const result = a.hub.receive({
    from: "b",
    persistence: {
      web: [["192.0.2.1"], ["192.0.2.2", S1], ["192.0.2.3", "x".repeat(65)], ["192.0.2.4", S2, -5]],
      ["__proto__"]: [["192.0.2.5", S1]],
      ["s".repeat(65)]: [["192.0.2.6", S1]],
      other: "nope",
    },
    servers: [
      { service: "web", server: S1, state: "gone", config },
      { service: "web", server: S1, weight: 999, config },
      { service: "web", server: S1, state: "drain" },
      { service: "web", server: S2, state: "maint", weight: 2, config },
    ],
  });
  assert.deepEqual(result, { applied: 2, ignored: 1, skipped: 8 });
  assert.equal(a.hub.counts.skipped, 8);
  assert.equal(a.hub.counts.rejected_batches, 0);
  assert.equal(a.table.get("192.0.2.2"), S1);
  assert.equal(a.web.servers[1].admin, "maint");
  assert.equal(a.web.servers[1].configuredWeight, 2);
  assert.equal(a.web.servers[0].admin, "ready");
  // A service named __proto__ is a name like any other (unknown here: ignored), never Object.prototype.
  assert.equal(({} as Record<string, unknown>)["192.0.2.5"], undefined);
  assert.equal(Object.getPrototypeOf({}), Object.prototype);
});

Deno.test("shareRoutes take a batch and give a snapshot behind the status API's bearer token", async () => {
  const { a } = pair();
  const clock = new ManualClock(0);
  const token = "share-token-0123456789";
  const app = createApp({
    name: "a",
    version: "test",
    clock,
    startedAt: 0,
    metrics: new MetricsRegistry(),
    roles: () => ({}),
    token,
    maxBody: 64 * 1024,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    mount: [(app) => shareRoutes(app, a.hub)],
  });
  const batch = { from: "b", persistence: { web: [["192.0.2.9", S2]] }, servers: [] as ServerChange[] };
  const post = (path: string, body: unknown, auth = true) =>
    app.request(path, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "content-type": "application/json", ...(auth ? { authorization: `Bearer ${token}` } : {}) },
    });
  assert.equal((await post("/scheduler/share", batch, false)).status, 401);
  assert.equal(
    (await post("/scheduler/share/snapshot", {}, false)).status,
    401,
    "the snapshot holds client addresses",
  );
  const res = await post("/scheduler/share", batch);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { applied: 1, ignored: 0, skipped: 0 });
  assert.equal(a.table.get("192.0.2.9"), S2);
  const bad = await post("/scheduler/share", { from: "b" });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /^Cannot read a shared batch: "persistence" must be/);
  const snap = await post("/scheduler/share/snapshot", {});
  assert.deepEqual((await snap.json()).persistence, { web: [["192.0.2.9", S2, 60_000]] });
});

Deno.test("httpShareTransport posts with the peer's bearer token and fails on an answer that is not 2xx", async () => {
  const calls: { url: string; init: RequestInit }[] = [];
  let status = 200;
  const transport = httpShareTransport("peer-token-0123456789", (input, init) => {
    calls.push({ url: String(input), init: init! });
    const body = String(input).endsWith("/snapshot") ? '{"from":"b","persistence":{},"servers":[]}' : "{}";
    return Promise.resolve(new Response(status === 200 ? body : "nope", { status }));
  });
  const signal = new AbortController().signal;
  const batch: ShareBatch = { from: "a", persistence: { web: [["192.0.2.1", S1]] }, servers: [] };
  await transport.push("http://10.0.0.12:8080/", batch, signal);
  assert.equal(calls[0].url, "http://10.0.0.12:8080/scheduler/share");
  assert.equal(calls[0].init.method, "POST");
  assert.equal(new Headers(calls[0].init.headers).get("authorization"), "Bearer peer-token-0123456789");
  assert.deepEqual(JSON.parse(String(calls[0].init.body)), batch);
  assert.equal(calls[0].init.signal, signal);
  assert.deepEqual(await transport.snapshot("http://10.0.0.12:8080", signal), {
    from: "b",
    persistence: {},
    servers: [],
  });
  assert.equal(calls[1].url, "http://10.0.0.12:8080/scheduler/share/snapshot");
  status = 401;
  await assert.rejects(
    transport.push("http://10.0.0.12:8080", batch, signal),
    /http:\/\/10\.0\.0\.12:8080\/scheduler\/share answered 401 nope/,
  );
});

Deno.test("ShareHub puts a failed push's server change back merged with a newer change to the same server", async () => {
  const { clock, wire, a, b } = pair({ timeoutMs: 500 });
  a.hub.start();
  b.hub.start();
  await settle();
  const config = { state: "ready" as const, weight: 1 };
  wire.silent.add("http://b");
  a.hub.serverChanged({ service: "web", server: S1, state: "drain", config });
  await tick(clock); // the push with the drain is under way and gets no answer
  a.hub.serverChanged({ service: "web", server: S1, weight: 3, config });
  await tick(clock, 500); // it times out: the drain goes back, into the queued weight change
  wire.silent.delete("http://b");
  await tick(clock);
  await tick(clock);
  assert.equal(b.web.servers[0].configuredWeight, 3);
  assert.equal(b.web.servers[0].admin, "drain", "the older half of the two changes arrived too");
  a.hub.stop();
  b.hub.stop();
});

Deno.test("ShareHub does not let a snapshot that arrives late undo what a push brought meanwhile", async () => {
  const { clock, wire, a, b } = pair();
  a.table.set("192.0.2.7", S1);
  a.hub.start();
  await settle();
  // b starts and asks a for a snapshot; a answers (x -> S1) but the answer is slow to arrive.
  let release!: () => void;
  wire.snapshotGate = new Promise((resolve) => release = resolve);
  b.hub.start();
  await settle();
  // Meanwhile the client moves on a, and a's push gets to b first.
  a.table.set("192.0.2.7", S2);
  await tick(clock);
  assert.equal(b.table.get("192.0.2.7"), S2);
  release();
  await settle();
  const peer = (b.hub.status().peers as Record<string, unknown>[])[0];
  assert.equal(peer.synced, true, "the snapshot was applied");
  assert.equal(b.table.get("192.0.2.7"), S2, "the older snapshot left the newer push alone");
  assert.equal(b.hub.counts.superseded, 1);
  a.hub.stop();
  b.hub.stop();
});

Deno.test("ShareHub refuses a snapshot of more entries than it takes, and applies a large one in chunks", async () => {
  const clock = new ManualClock(1_000_000);
  const wire = new Wire();
  let pauses = 0;
  const b = box("b", clock, wire, { snapshotMax: 2, pause: () => (pauses++, Promise.resolve()) });
  const entries = (n: number) => Array.from({ length: n }, (_, i) => [`10.1.${i >> 8}.${i & 255}`, S1]);
  const huge = { from: "a", persistence: { web: entries(2 + MAX_SERVER_CHANGES + 1) }, servers: [] };
  const big = { from: "a", persistence: { web: entries(2500) }, servers: [] };
  let answer: unknown = huge;
  const transport: ShareTransport = {
    push: () => Promise.resolve(),
    snapshot: () => Promise.resolve(answer),
  };
  const hub = new ShareHub({
    name: "b",
    peers: ["http://a"],
    intervalMs: INTERVAL,
    timeoutMs: 1000,
    maxBatch: 10,
    maxQueue: 10,
    snapshotMax: 2,
    snapshotRetryMs: 100,
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    transport,
    local: servicesShareLocal(() => [b.web]),
    pause: () => (pauses++, Promise.resolve()),
  });
  hub.start();
  await settle();
  const peer = () => (hub.status().peers as Record<string, unknown>[])[0];
  assert.equal(peer().failed_snapshots, 1);
  assert.match(String(peer().last_error), /more than the \d+ a batch may hold/);
  assert.equal(hub.counts.rejected_batches, 1);
  assert.equal(b.table.size, 0);
  answer = big;
  await tick(clock);
  assert.equal(peer().synced, true);
  assert.equal(pauses, 2, "2500 entries apply in three chunks with the event loop between them");
  assert.equal(hub.counts.applied, 2500);
  hub.stop();
});

Deno.test("httpShareTransport refuses a snapshot answer larger than its byte cap", async () => {
  const big = JSON.stringify({ from: "b", persistence: { web: [["192.0.2.1", S1]] }, servers: [] });
  for (const declare of [true, false]) {
    const transport = httpShareTransport("peer-token-0123456789", () => {
      // A stream without a length: the cap holds while reading, not only on the header.
      const body = declare ? big : new Blob([big]).stream();
      return Promise.resolve(new Response(body, { status: 200 }));
    }, { maxSnapshotBytes: 20 });
    await assert.rejects(
      transport.snapshot("http://10.0.0.12:8080", new AbortController().signal),
      ShareTooLargeError,
    );
  }
  assert.ok(snapshotByteCap(100_000) > snapshotByteCap(10), "the cap follows the snapshot's entry cap");
});

Deno.test("ShareHub after dropping changes for a peer exchanges snapshots with it once it answers again", async () => {
  const { clock, wire, a, b } = pair({ maxQueue: 2 });
  a.hub.start();
  b.hub.start();
  await settle();
  wire.down.add("http://b");
  for (let i = 1; i <= 4; i++) a.table.set(`192.0.2.${i}`, S1);
  const peer = () => (a.hub.status().peers as Record<string, unknown>[])[0];
  assert.equal(peer().dropped, 2);
  await tick(clock);
  wire.down.delete("http://b");
  for (let i = 0; i < 5; i++) await tick(clock);
  for (let i = 1; i <= 4; i++) assert.equal(b.table.get(`192.0.2.${i}`), S1, `192.0.2.${i}`);
  assert.equal(peer().resyncs, 1);
  assert.equal(peer().snapshots, 2, "a asked b again");
  await tick(clock);
  assert.equal(peer().resyncs, 1, "once");
  a.hub.stop();
  b.hub.stop();
});

/** A hub sharing through EtcdShare over FakeEtcd (no peers), with one service "web" over S1 and S2. */
function etcdBox(name: string, clock: ManualClock, etcd: FakeEtcd, o: { snapshotMax?: number } = {}) {
  const table = new PersistenceTable(clock, {
    timeoutMs: 60_000,
    onSet: (client, key) => hub.persisted("web", client, key),
  });
  const web = new FakeService("web", [
    new FakeServer(S1, { state: "ready", weight: 1 }),
    new FakeServer(S2, { state: "ready", weight: 1 }),
  ], table);
  const local = servicesShareLocal(() => [web]);
  const share = new EtcdShare({
    client: etcd,
    prefix: "/p/",
    name,
    ttlMs: 10_000,
    longestPersistence: () => local.longestPersistence!(),
    clock,
    ...(o.snapshotMax ? { snapshotMax: o.snapshotMax } : {}),
  });
  const hub: ShareHub = new ShareHub({
    name,
    peers: [ETCD_PEER],
    intervalMs: INTERVAL,
    timeoutMs: 500,
    maxBatch: 1000,
    maxQueue: 10_000,
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    transport: share,
    local,
    feeds: [share.feed],
  });
  const persisted = (client: string, server: string) => hub.persisted("web", client, server);
  return { hub, web, table, share, persisted };
}

Deno.test("EtcdShare writes a server's whole runtime state each time: a weight after a drain keeps the drain", async () => {
  const clock = new ManualClock(1_000_000);
  const etcd = new FakeEtcd();
  const a = etcdBox("a", clock, etcd);
  a.hub.start();
  await settle();
  const [s1] = a.web.servers;
  s1.setAdmin("drain");
  a.hub.serverChanged(serverChangeOf("web", s1, { state: "drain" }));
  await tick(clock);
  s1.configuredWeight = 4;
  a.hub.serverChanged(serverChangeOf("web", s1, { weight: 4 }));
  await tick(clock);
  const record = JSON.parse(etcd.kvs.get(`/p/s/web/${S1}`)!.value);
  assert.deepEqual(record, { state: "drain", weight: 4, config: { state: "ready", weight: 1 }, from: "a" });
  // A box that starts later gets both.
  const c = etcdBox("c", clock, etcd);
  c.hub.start();
  await settle();
  assert.equal(c.web.servers[0].admin, "drain");
  assert.equal(c.web.servers[0].configuredWeight, 4);
  a.hub.stop();
  c.hub.stop();
});

Deno.test("EtcdShare snapshot reads server state apart from persistence keys, so these never crowd it out", async () => {
  const clock = new ManualClock(1_000_000);
  const etcd = new FakeEtcd();
  const a = etcdBox("a", clock, etcd);
  a.hub.start();
  await settle();
  for (let i = 1; i <= 3; i++) a.table.set(`192.0.2.${i}`, S2);
  a.web.servers[0].setAdmin("maint");
  a.hub.serverChanged(serverChangeOf("web", a.web.servers[0], { state: "maint" }));
  await tick(clock);
  // A lease at least one and a half times the longest persistence here (60 s), over etcd_ttl (10 s).
  assert.deepEqual(etcd.leases, [90]);
  const c = etcdBox("c", clock, etcd, { snapshotMax: 2 });
  c.hub.start();
  await settle();
  assert.equal(
    c.web.servers[0].admin,
    "maint",
    "server state is read even with more p/ keys than snapshotMax",
  );
  assert.equal(c.table.size, 2);
  a.hub.stop();
  c.hub.stop();
});

Deno.test("EtcdShare watches from the revision after its snapshot's read, only once that read is done", async () => {
  const clock = new ManualClock(1_000_000);
  const etcd = new FakeEtcd();
  const a = etcdBox("a", clock, etcd);
  const b = etcdBox("b", clock, etcd);
  a.hub.start();
  await settle();
  assert.deepEqual(etcd.watches.map((w) => w.startRevision), [etcd.revision + 1]);
  a.table.set("192.0.2.1", S1);
  await tick(clock);
  // b reads the prefix; a writes right after b's read and before b's watch starts: the watch replays it.
  const range = etcd.range.bind(etcd);
  etcd.range = async (prefix, o) => {
    const r = await range(prefix, o);
    if (prefix.endsWith("p/")) {
      a.table.set("192.0.2.2", S2);
      await tick(clock);
    }
    return r;
  };
  b.hub.start();
  for (let i = 0; i < 3; i++) await settle();
  assert.equal(etcd.watches.length, 2);
  assert.ok(
    etcd.watches[1].startRevision! <= etcd.revision,
    "b's watch starts at the revision after its read",
  );
  await settle();
  assert.equal(b.table.get("192.0.2.1"), S1);
  assert.equal(b.table.get("192.0.2.2"), S2, "written between the read and the watch, still seen");
  a.hub.stop();
  b.hub.stop();
  assert.ok(etcd.watches.every((w) => w.closed));
});

Deno.test("EtcdShare stops a push between transactions on abort, and a timed-out push holds its peer until it ends", async () => {
  const clock = new ManualClock(1_000_000);
  const etcd = new FakeEtcd();
  const a = etcdBox("a", clock, etcd);
  a.hub.start();
  await settle();
  let open!: () => void;
  etcd.gate = new Promise((resolve) => open = resolve);
  for (let i = 0; i < 250; i++) a.persisted(`10.2.0.${i}`, S1); // three transactions
  await tick(clock);
  await tick(clock, 500); // the push times out within its first transaction
  const peer = () => (a.hub.status().peers as Record<string, unknown>[])[0];
  assert.equal(peer().failed_pushes, 1);
  assert.equal(peer().queue, 250, "its changes are queued again");
  await tick(clock);
  await tick(clock);
  assert.equal(peer().pushes, 0, "no second push while the first one's transaction is still under way");
  const before = etcd.txns.length;
  etcd.gate = null;
  open();
  await settle();
  assert.equal(
    etcd.txns.length,
    before + 1,
    "the aborted push wrote its transaction under way and stopped there",
  );
  await tick(clock);
  await settle();
  assert.equal(peer().pushes, 1);
  // After stop() nothing more is written.
  for (let i = 0; i < 250; i++) a.persisted(`10.3.0.${i}`, S1);
  etcd.gate = new Promise((resolve) => open = resolve);
  await tick(clock);
  const atStop = etcd.txns.length;
  a.hub.stop();
  etcd.gate = null;
  open();
  await settle();
  assert.equal(etcd.txns.length, atStop + 1, "only the transaction already sent");
});

Deno.test("the config check refuses scheduler.share.peers without status.token, at the peers", () => {
  const text = `roles: [scheduler]
scheduler:
  share:
    peers: [http://10.0.0.2:8080]
    token: share-token-0123456789
`;
  let lines = "";
  try {
    loadConfig(text, { file: "share.yaml", roles: builtinRoles() });
  } catch (error) {
    assert.ok(error instanceof ErrorList, String(error));
    lines = error.errors.map((e) => e.format()).join("\n");
  }
  assert.match(
    lines,
    /^share\.yaml:4:\d+: scheduler\.share\.peers: Expected status\.token with share\.peers/,
  );
  const withToken = `status:\n  token: status-token-0123456789\n${text}`;
  loadConfig(withToken, { file: "ok.yaml", roles: builtinRoles() });
  // etcd alone needs no token: nobody pushes to this box.
  loadConfig("roles: [scheduler]\nscheduler:\n  share:\n    etcd: [http://10.0.0.9:2379]\n", {
    file: "etcd.yaml",
    roles: builtinRoles(),
  });
});

Deno.test("ShareHub applying a snapshot larger than the table keeps the most recently used entries", async () => {
  const clock = new ManualClock(1_000_000);
  const table = new PersistenceTable(clock, { timeoutMs: 60_000, maxEntries: 2 });
  const web = new FakeService("web", [new FakeServer(S1, { state: "ready", weight: 1 })], table);
  const hub = new ShareHub({
    name: "b",
    peers: ["http://a"],
    intervalMs: INTERVAL,
    timeoutMs: 1000,
    maxBatch: 10,
    maxQueue: 10,
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    transport: {
      push: () => Promise.resolve(),
      snapshot: () =>
        Promise.resolve({
          from: "a",
          persistence: {
            web: [["192.0.2.1", S1, 60_000], ["192.0.2.2", S1, 50_000], ["192.0.2.3", S1, 40_000]],
          },
          servers: [],
        }),
    },
    local: servicesShareLocal(() => [web]),
  });
  hub.start();
  await settle();
  assert.deepEqual(table.export().map(([client]) => client), ["192.0.2.1", "192.0.2.2"]);
  hub.stop();
});

Deno.test("EtcdShare hands a watch message of more changes than a push holds on in several batches", async () => {
  const clock = new ManualClock(1_000_000);
  const etcd = new FakeEtcd();
  const b = etcdBox("b", clock, etcd);
  b.hub.start();
  await settle();
  const success = Array.from({ length: MAX_PUSH_ENTRIES + 5 }, (_, i) => ({
    put: { key: `/p/p/web/10.4.${i >> 8}.${i & 255}`, value: JSON.stringify({ server: S1, from: "a" }) },
  }));
  await etcd.txn({ compare: [], success });
  assert.equal(b.hub.counts.rejected_batches, 0);
  assert.equal(b.table.size, MAX_PUSH_ENTRIES + 5);
  b.hub.stop();
});
