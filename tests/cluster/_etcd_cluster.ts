/**
 * Three edgenode processes (brno, prague, liberec) on 127.0.0.1 sharing one real etcd (tests/_support/etcd.ts), as
 * the multi-process etcd tests start them.
 */
import assert from "node:assert/strict";
import { EtcdClient } from "../../lib/cluster/etcd.ts";
import { clusterId } from "../../lib/cluster/etcd_sync.ts";
import { etcdSecrets } from "../../lib/cluster/etcd_seal.ts";
import { ClusterStore } from "../../lib/cluster/store.ts";
import { type EdgenodeProcess, LISTENING, startEdgenode, tempConfig } from "../e2e/_process.ts";
import { EtcdServer } from "../_support/etcd.ts";
import { freeTcpPort, freeUdpPort } from "../_support/ports.ts";
import { clusterConfig } from "./_split.ts";

export const TOKEN = "e2e-token-0123456789";
export const LO = "127.0.0.1";
export const NAMES = ["brno", "prague", "liberec"] as const;
export type Name = typeof NAMES[number];
export const auth = { authorization: `Bearer ${TOKEN}` };

export interface EtcdCluster {
  /** The cluster's keys in etcd, read as the nodes read them. */
  readonly store: ClusterStore;
  api(n: Name): string;
  /** Starts (or starts again) node `n` with its config and waits until it listens. */
  start(n: Name): Promise<EdgenodeProcess>;
  /** SIGKILL to node `n`, and waits for its exit. */
  kill(n: Name): Promise<void>;
  // deno-lint-ignore no-explicit-any -- /status is JSON the test reads by path, as the other process tests do
  status(n: Name): Promise<Record<string, any>>;
  running(n: Name): Promise<string[]>;
}

export interface EtcdClusterOptions {
  readonly clusterToken: string;
  /** More lines of node.cluster (heartbeat, loss_timeout, ...); the etcd endpoint is added. */
  readonly extra: readonly string[];
  /** node.allow_loopback_output (a session that sends to the test's socket). */
  readonly allowLoopbackOutput?: boolean;
}

/** Three nodes with one etcd; every process and etcd stopped and removed at the end, also on failure. */
export async function withEtcdCluster(
  o: EtcdClusterOptions,
  body: (c: EtcdCluster) => Promise<void>,
): Promise<void> {
  await using etcd = await EtcdServer.start();
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_etcd_cluster_" });
  const addr = Object.fromEntries(
    NAMES.map((n) => [n, { api: freeTcpPort(), data: freeUdpPort() }]),
  ) as Record<
    Name,
    { api: number; data: number }
  >;
  await using c0 = await tempConfig("");
  await using c1 = await tempConfig("");
  await using c2 = await tempConfig("");
  const paths = { brno: c0.path, prague: c1.path, liberec: c2.path };
  for (const name of NAMES) {
    const text = clusterConfig({
      name,
      names: NAMES,
      addr,
      dataDir,
      statusToken: TOKEN,
      clusterToken: o.clusterToken,
      extra: [...o.extra, `etcd: ["${etcd.url}"]`],
    });
    await Deno.writeTextFile(
      paths[name],
      o.allowLoopbackOutput
        ? text.replace(`  bind: ${LO}\n`, `  bind: ${LO}\n  allow_loopback_output: true\n`)
        : text,
    );
  }
  const processes: EdgenodeProcess[] = [];
  const current = new Map<Name, EdgenodeProcess>();
  const store = new ClusterStore({
    etcd: new EtcdClient({ endpoints: [etcd.url] }),
    cluster: await clusterId(o.clusterToken),
    valueKey: etcdSecrets(o.clusterToken).valueKey,
  });
  const api = (n: Name) => `http://${LO}:${addr[n].api}`;
  const status = async (n: Name) => {
    const r = await fetch(`${api(n)}/status`);
    assert.equal(r.status, 200);
    return (await r.json()).roles.node;
  };
  const cluster: EtcdCluster = {
    store,
    api,
    async start(n) {
      const p = startEdgenode(["--config", paths[n], "--status", `${LO}:${addr[n].api}`]);
      processes.push(p);
      current.set(n, p);
      await p.waitForLine(LISTENING);
      return p;
    },
    async kill(n) {
      const p = current.get(n)!;
      p.kill("SIGKILL");
      await p.waitForExit();
    },
    status,
    running: async (n) => Object.keys((await status(n)).sessions),
  };
  try {
    await body(cluster);
  } finally {
    for (const p of processes.reverse()) await p[Symbol.asyncDispose]();
    await Deno.remove(dataDir, { recursive: true });
  }
}
