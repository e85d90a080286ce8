/**
 * Sharing through etcd (scheduler.share.etcd) with a real etcd from Debian: two hubs made by shareHubFor from a
 * config section with etcd and no peers, a ManualClock driving the pushes, etcd's watch delivering what the other
 * box wrote, and a box that starts later reading it all from the prefix.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { EtcdClient } from "../../lib/cluster/etcd.ts";
import { Logger } from "../../lib/core/logger.ts";
import type { ShareSection } from "../../lib/scheduler/config.ts";
import { PersistenceTable } from "../../lib/scheduler/persistence.ts";
import { serverChangeOf, servicesShareLocal, type ShareHub, shareHubFor } from "../../lib/scheduler/share.ts";
import { EtcdServer } from "../_support/etcd.ts";
import { until } from "../_support/until.ts";
import { FakeServer, FakeService } from "./_fakes.ts";

const S1 = "10.0.1.1:80";
const S2 = "10.0.1.2:80";

function section(url: string, prefix: string): ShareSection {
  return {
    peers: [],
    token: null,
    etcd: [url],
    etcd_prefix: prefix,
    etcd_ttl: 60_000,
    interval: 100,
    timeout: 2000,
    max_batch: 1000,
    max_queue: 1000,
  };
}

function box(name: string, clock: ManualClock, cfg: ShareSection) {
  const table = new PersistenceTable(clock, {
    timeoutMs: 600_000,
    onSet: (client, key) => hub.persisted("web", client, key),
  });
  const web = new FakeService("web", [
    new FakeServer(S1, { state: "ready", weight: 1 }),
    new FakeServer(S2, { state: "ready", weight: 1 }),
  ], table);
  const hub: ShareHub = shareHubFor(cfg, {
    name,
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    local: servicesShareLocal(() => [web]),
  });
  return { hub, table, web };
}

Deno.test("shareHubFor with etcd shares persistence and server state through etcd, without echo", async () => {
  await using etcd = await EtcdServer.start();
  const prefix = `/edgenode-test/${crypto.randomUUID()}/`;
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const a = box("a", clock, section(etcd.url, prefix));
  const b = box("b", clock, section(etcd.url, prefix));
  a.hub.start();
  b.hub.start();
  try {
    a.table.set("192.0.2.7", S2);
    a.hub.serverChanged(serverChangeOf("web", a.web.servers[0], { state: "drain" }));
    const peer = () => (a.hub.status().peers as Record<string, unknown>[])[0];
    // b may see the watch's events before a has heard back from its transaction: wait for both.
    await until("b holding a's entry and drain, through etcd's watch, and a's push counted", () => {
      clock.advance(100);
      return b.table.get("192.0.2.7") === S2 && b.web.servers[0].admin === "drain" &&
        (peer().pushed_changes as number) >= 2;
    });
    assert.equal(peer().peer, "etcd");
    // What a wrote came back to a through its own watch and was left alone: a applied nothing.
    assert.equal(a.hub.counts.applied, 0);

    // A box that starts later reads everything under the prefix.
    const c = box("c", clock, section(etcd.url, prefix));
    c.hub.start();
    try {
      await until("c holding what a wrote before it started", () => {
        clock.advance(100);
        return c.table.get("192.0.2.7") === S2 && c.web.servers[0].admin === "drain";
      });
    } finally {
      c.hub.stop();
    }
    // Persistence keys live under a lease; server keys do not.
    const client = new EtcdClient({ endpoints: [etcd.url] });
    const { kvs } = await client.range(prefix);
    const byKey = new Map(kvs.map((kv) => [kv.key.slice(prefix.length), kv]));
    assert.notEqual(byKey.get("p/web/192.0.2.7")?.lease, "0");
    assert.equal(byKey.get(`s/web/${S1}`)?.lease, "0");
    assert.deepEqual(JSON.parse(byKey.get("p/web/192.0.2.7")!.value), { server: S2, from: "a" });
    // A server's key holds its whole runtime state, not the last change alone.
    assert.deepEqual(JSON.parse(byKey.get(`s/web/${S1}`)!.value), {
      state: "drain",
      weight: 1,
      config: { state: "ready", weight: 1 },
      from: "a",
    });
  } finally {
    a.hub.stop();
    b.hub.stop();
  }
});
