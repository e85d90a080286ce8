/**
 * Node roles with a cluster section, all in this process, their status APIs joined through `app.request()`: each
 * node's cluster fetch is routed to the peer's app by the port of its API address (no HTTP sockets; the link port is
 * real UDP on loopback). Used by routes_test.ts (three nodes), uploads_test.ts and uploads_member_test.ts (two, with sandboxes).
 */
import type { Hono } from "hono";
import { roleApp } from "../api/_role_app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { defineNodeRole, nodeRole } from "../../lib/node/role.ts";
import type { ClusterSection } from "../../lib/cluster/config.ts";
import type { HostReaders } from "../../lib/cluster/usage.ts";
import type { RunningRole } from "../../lib/roles/role.ts";
import { freeUdpPort } from "../_support/ports.ts";

export const TOKEN = "node-token-0123456789";
export const CLUSTER_TOKEN = "cluster-token-0123456789";
export const auth = { authorization: `Bearer ${TOKEN}` };
export const LO = "127.0.0.1";

/** A host that is never busy, so that placement follows the pins alone. */
const quietHost: HostReaders = {
  cpuTimes: () => null,
  loadavg: () => 0.2,
  cores: 2,
  memory: () => ({ total: 1000, available: 800 }),
};

/** A cluster section for node `name` with the token and timings these tests use (heartbeat 1 s, loss 3 s, ...). */
export function testClusterSection(
  name: string,
  data: ClusterSection["data"],
  peers: ClusterSection["peers"],
  over: Partial<ClusterSection> = {},
): ClusterSection {
  return {
    name,
    token: CLUSTER_TOKEN,
    token_file: null,
    data,
    peers,
    heartbeat: 1000,
    loss_timeout: 3000,
    prepare_timeout: 5000,
    reservation_timeout: 30_000,
    clock_skew: 30_000,
    load_threshold: 0.85,
    etcd: [],
    ...over,
  };
}

export interface InProcessNode {
  readonly app: Hono;
  readonly role: RunningRole;
  readonly metrics: MetricsRegistry;
}

/** The node role's part of a node's GET /status. */
// deno-lint-ignore no-explicit-any
export async function nodeStatus(node: InProcessNode): Promise<any> {
  return (await (await node.app.request("/status")).json()).roles.node;
}

export interface InProcessOptions<N extends string> {
  /** Cluster keys over the defaults here (heartbeat 1 s, loss 3 s, prepare 5 s, reservation 30 s). */
  readonly cluster?: Partial<ClusterSection>;
  /** Per node, node.uploads keys over the section's defaults. */
  readonly uploads?: Partial<Record<N, Record<string, unknown>>>;
  /** Per node, status.max_body (bytes; 1 MiB, the default, when absent). */
  readonly maxBody?: Partial<Record<N, number>>;
}

/** Nodes named `names`, started in order; dispose stops those still running and removes their data directory. */
export async function inProcessNodes<N extends string>(
  names: readonly N[],
  options: InProcessOptions<N> = {},
) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const apps = new Map<string, Hono>();
  const fetch = (url: string, init: RequestInit) => {
    const app = apps.get(new URL(url).port);
    return app
      ? Promise.resolve(app.request(url, init))
      : Promise.reject(new TypeError("connection refused"));
  };
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_cluster_nodes_" });
  const addr = Object.fromEntries(
    names.map((n, i) => [n, { api: { host: LO, port: i + 1 }, data: { host: LO, port: freeUdpPort() } }]),
  ) as Record<N, { api: { host: string; port: number }; data: { host: string; port: number } }>;
  const nodes = {} as Record<N, InProcessNode>;
  const defaults = nodeRole.section.default as Record<string, unknown>;
  const stopped = new Set<string>();
  const stopAll = async () => {
    for (const [name, n] of Object.entries(nodes) as [N, InProcessNode][]) {
      if (!stopped.has(name)) await n.role.stop(new AbortController().signal);
    }
    await Deno.remove(dataDir, { recursive: true });
  };
  try {
    for (const name of names) {
      const cluster = testClusterSection(
        name,
        addr[name].data,
        names.filter((n) => n !== name).map((n) => ({ name: n, ...addr[n] })),
        options.cluster,
      );
      const logger = new Logger({ level: "error", clock, sink: () => {} });
      const metrics = new MetricsRegistry();
      const uploads = options.uploads?.[name];
      const role = await defineNodeRole({ fetch, host: quietHost }).start(
        {
          ...defaults,
          bind: LO,
          data_dir: dataDir,
          cluster,
          ...(uploads ? { uploads: { ...(defaults.uploads as object), ...uploads } } : {}),
        } as never,
        { nodeName: name, logger, metrics, clock },
      );
      const maxBody = options.maxBody?.[name];
      const app = roleApp("node", role, {
        clock,
        metrics,
        logger,
        token: TOKEN,
        ...(maxBody ? { maxBody } : {}),
      });
      apps.set(String(addr[name].api.port), app);
      nodes[name] = { app, role, metrics };
    }
  } catch (error) {
    await stopAll();
    throw error;
  }
  return {
    clock,
    nodes,
    /** The node's process dies: its API stops answering and its sessions end. */
    async kill(name: N) {
      apps.delete(String(addr[name].api.port));
      stopped.add(name);
      await nodes[name].role.stop(new AbortController().signal);
    },
    [Symbol.asyncDispose]: stopAll,
  };
}
