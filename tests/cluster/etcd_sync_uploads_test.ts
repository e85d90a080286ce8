/**
 * A node that comes back to a session with an uploaded AP only etcd remembers: EtcdSync restores its part with the
 * modules kept at uploads/<name> (a real sandbox child loads and runs them) and takes the session's coordination
 * over with them, since its coordinator is no member. Real etcd (tests/_support/etcd.ts), one process.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { Coordinator } from "../../lib/cluster/coordinator.ts";
import { EtcdClient } from "../../lib/cluster/etcd.ts";
import { etcdSecrets } from "../../lib/cluster/etcd_seal.ts";
import { EtcdSync } from "../../lib/cluster/etcd_sync.ts";
import type { Member } from "../../lib/cluster/members.ts";
import { PartHost } from "../../lib/cluster/parts.ts";
import { ClusterStore } from "../../lib/cluster/store.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { SessionTable } from "../../lib/node/sessions.ts";
import { EtcdServer } from "../_support/etcd.ts";
import { testNode } from "../_support/node.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { PASS_THROUGH } from "../sandbox/_programs.ts";

/** A member that is never asked anything here (the session is adopted as running). */
const idle = (name: string): Member => ({
  name,
  usage: () => Promise.reject(new Error("not asked")),
  prepare: () => Promise.reject(new Error("not asked")),
  commit: () => Promise.reject(new Error("not asked")),
  abort: () => Promise.resolve("none"),
  heartbeat: () => Promise.resolve(),
});

Deno.test("EtcdSync restores a part with an uploaded AP from the modules in etcd, and adopts the session with them", async () => {
  await using etcd = await EtcdServer.start();
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const client = new EtcdClient({ endpoints: [etcd.url], timeoutMs: 5000 });
  const store = new ClusterStore({
    etcd: client,
    cluster: "unit",
    valueKey: etcdSecrets("cluster-token-0123456789").valueKey,
    clock,
  });
  const upload = {
    modules: { "pass.ts": PASS_THROUGH },
    kinds: {
      "upload.pass": {
        entry: "pass.ts",
        info: {
          ports: { inputs: ["in"], outputs: ["out"] },
          params: { stamp: { type: "number" as const, default: 0, min: 0, max: 255 } },
          needs: {},
        },
      },
    },
  };
  const program = `Project up;
{ AP name="F" ref=upload.pass; inputs = in(DIPRONN_INPUT(${freeUdpPort()})); outputs = out(C.in); }
{ AP name="C" ref=localservice.counter; inputs = in; }
`;
  // prague coordinated it and is gone; brno ran both APs and restarts with nothing but etcd's address.
  await store.putSession("up", program, { F: "brno", C: "brno" }, {
    node: "prague",
    state: "running",
    attempt: "00aa11bb",
    source: { file: "up.dipronn", format: "dipronn", on_node_loss: "stop" },
    upload,
  });
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_etcd_sync_uploads_" });
  const table = new SessionTable(testNode(clock, { dataDir }), coreElements(), {
    maxSessions: 4,
    uploads: { limits: { maxModules: 8, maxBytes: 1 << 20 }, maxProcesses: 4, storageBytes: 0 },
  });
  const parts = new PartHost("brno", table, logger);
  const coordinator = new Coordinator({
    self: "brno",
    members: [idle("brno"), idle("prague")],
    clock,
    logger,
    stepTimeoutMs: 2000,
    store,
  });
  const sync = new EtcdSync({
    self: "brno",
    info: {},
    store,
    client,
    clock,
    logger,
    coordinator,
    parts,
    retryMs: 1000,
  });
  try {
    await sync.start();
    assert.equal(sync.figures.parts_restored, 1, JSON.stringify(sync.status()));
    assert.equal(table.get("up")?.plan.aps.length, 2);
    assert.deepEqual(table.processes().used, 1, "the uploaded AP runs in its sandbox process");
    const adopted = coordinator.get("up");
    assert.equal(sync.figures.takeovers, 1);
    assert.equal(adopted?.state, "running");
    assert.deepEqual(adopted?.upload, upload, "a restart it coordinates can send the modules again");
  } finally {
    sync.stop();
    await table.stopAll();
    await Deno.remove(dataDir, { recursive: true });
  }
});
