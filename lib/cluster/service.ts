/**
 * A node's cluster membership, built when the node section has `cluster:`: the signed peer client, this node's part
 * host, the coordinator of the sessions started here, usage sampling and heartbeats, with their counters declared
 * once for /status and /metrics. With `etcd` endpoints, also the node's life in etcd (lib/cluster/etcd_sync.ts):
 * membership under a lease, sessions written there, parts brought back after a restart, coordination taken over.
 */
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import { type CounterSet, declareSeries, type MetricsRegistry } from "../core/metrics.ts";
import type { SessionTable } from "../node/sessions.ts";
import { clusterKey, type Refusal, REFUSALS, ReplayTable } from "./auth.ts";
import { type ClusterSection, clusterSummary } from "./config.ts";
import { Coordinator, type CoordinatorOptions, type NodeLossAction } from "./coordinator.ts";
import { Heartbeats } from "./heartbeat.ts";
import { EtcdClient } from "./etcd.ts";
import { EtcdSync } from "./etcd_sync.ts";
import { etcdSecrets } from "./etcd_seal.ts";
import { ClusterStore } from "./store.ts";
import { formatHostPort } from "../net/address.ts";
import type { Outcome } from "./coordinator.ts";
import { LocalMember, type Member, RemoteMember } from "./members.ts";
import { PartHost } from "./parts.ts";
import { type Fetch, PeerClient } from "./peers.ts";
import { type HostReaders, UsageSampler } from "./usage.ts";

/** The cluster's counters, by their /status names. */
export interface ClusterFigures {
  refused: Record<Refusal, number>;
  heartbeats_sent: number;
  heartbeats_received: number;
  nodes_lost: number;
  starts: number;
  starts_failed: number;
  prepares: number;
  prepares_refused: number;
  /** Parts stopped here because their coordinator was lost (no etcd to hand them to another member). */
  parts_orphaned: number;
  /** With etcd: its figures (lib/cluster/etcd_sync.ts). */
  etcd?: { parts_restored: number; takeovers: number; errors: number };
}

const refusalSeries = Object.fromEntries(
  REFUSALS.map((r) => [`auth_refused_${r}`, {
    help: `Cluster requests refused: ${r.replaceAll("_", " ")}`,
    read: (f: ClusterFigures) => f.refused[r],
  }]),
);

export const CLUSTER_SERIES = declareSeries<ClusterFigures>({
  ...refusalSeries,
  heartbeats_sent: { help: "Heartbeats sent to peers holding parts of sessions with this node" },
  heartbeats_received: { help: "Heartbeats received from peers" },
  nodes_lost: { help: "Peers declared lost (silent past the loss timeout)" },
  starts: { help: "Starts across nodes coordinated here" },
  starts_failed: { help: "Starts across nodes coordinated here that failed (nothing left running)" },
  prepares: { help: "Parts this node was asked to prepare" },
  prepares_refused: { help: "Parts this node refused to prepare" },
  parts_orphaned: { help: "Parts stopped here because their coordinator was lost (without etcd)" },
  etcd_parts_restored: {
    help: "Parts brought back from etcd (a restarted node)",
    read: (f) => f.etcd?.parts_restored ?? 0,
  },
  etcd_takeovers: {
    help: "Sessions whose coordination this node took over (etcd)",
    read: (f) => f.etcd?.takeovers ?? 0,
  },
  etcd_errors: { help: "Failed etcd joins, restores and takeovers", read: (f) => f.etcd?.errors ?? 0 },
});

export interface ClusterServiceOptions {
  readonly cfg: ClusterSection;
  readonly token: string;
  readonly table: SessionTable;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly fetch?: Fetch;
  readonly host?: HostReaders;
  readonly place?: CoordinatorOptions["place"];
  /** For sessions whose program does not say. Default: stop. */
  readonly onNodeLoss?: NodeLossAction;
  /** Etcd's fetch (tests); default the global one. */
  readonly etcdFetch?: typeof fetch;
}

export class ClusterService {
  readonly figures: ClusterFigures = {
    refused: Object.fromEntries(REFUSALS.map((r) => [r, 0])) as Record<Refusal, number>,
    heartbeats_sent: 0,
    heartbeats_received: 0,
    nodes_lost: 0,
    starts: 0,
    starts_failed: 0,
    prepares: 0,
    prepares_refused: 0,
    parts_orphaned: 0,
  };
  readonly replays = new ReplayTable();
  readonly peerNames: ReadonlySet<string>;
  readonly #counters: CounterSet;
  readonly #metrics: MetricsRegistry;

  private constructor(
    readonly cfg: ClusterSection,
    readonly key: CryptoKey,
    readonly clock: Clock,
    readonly logger: Logger,
    readonly parts: PartHost,
    readonly sampler: UsageSampler,
    readonly members: ReadonlyMap<string, Member>,
    readonly coordinator: Coordinator,
    readonly heartbeats: Heartbeats,
    metrics: MetricsRegistry,
    readonly etcd: EtcdSync | undefined,
  ) {
    this.#metrics = metrics;
    this.peerNames = new Set(cfg.peers.map((p) => p.name));
    this.#counters = metrics.publish("cluster", { node: cfg.name }, CLUSTER_SERIES, () => this.figures);
  }

  static async create(o: ClusterServiceOptions): Promise<ClusterService> {
    const { cfg, clock } = o;
    const logger = o.logger.child("cluster");
    const key = await clusterKey(o.token);
    const client = new PeerClient({ self: cfg.name, key, clock, fetch: o.fetch });
    const parts = new PartHost(cfg.name, o.table, logger);
    const sampler = new UsageSampler(cfg.name, clock, () => o.table.figures(), o.host);
    const members: Member[] = [
      new LocalMember(cfg.name, parts, () => sampler.sample()),
      ...cfg.peers.map((p) => new RemoteMember(p, client)),
    ];
    const byName = new Map(members.map((m) => [m.name, m]));
    const etcdClient = cfg.etcd.length
      ? new EtcdClient({ endpoints: cfg.etcd, clock, timeoutMs: cfg.prepare_timeout, fetch: o.etcdFetch })
      : undefined;
    const store = etcdClient
      ? new ClusterStore({
        etcd: etcdClient,
        // The directory and the seal on every value, both derived from the token (lib/cluster/etcd_seal.ts).
        cluster: etcdSecrets(o.token).prefix,
        valueKey: etcdSecrets(o.token).valueKey,
        clock,
        // etcd's shortest useful TTL is about 2 s; a lease outlives a loss timeout's worth of silence.
        leaseSeconds: Math.max(2, Math.ceil(cfg.loss_timeout / 1000)),
        onError: (error) => logger.warn("etcd", { error: error.message }),
      })
      : undefined;
    // The etcd side is made after the coordinator it drives: the coordinator reaches it through this box.
    const synced: { etcd?: EtcdSync } = {};
    const coordinator = new Coordinator({
      store,
      member: store ? (node) => synced.etcd?.isMember(node) ?? false : undefined,
      gone: store ? (node) => !(synced.etcd?.alive(node) ?? true) : undefined,
      self: cfg.name,
      members,
      clock,
      logger,
      stepTimeoutMs: cfg.prepare_timeout,
      loadThreshold: cfg.load_threshold,
      place: o.place,
      onNodeLoss: o.onNodeLoss,
      inspect: (text, source) => o.table.uploadedKinds(text, source),
    });
    // The service is made after the heartbeats it owns: they reach it through this box.
    const box: { svc?: ClusterService } = {};
    const etcd = store && etcdClient
      ? new EtcdSync({
        self: cfg.name,
        info: { data: formatHostPort(cfg.data) },
        store,
        client: etcdClient,
        clock,
        logger,
        coordinator,
        parts,
        retryMs: Math.max(cfg.heartbeat, 1000),
      })
      : undefined;
    synced.etcd = etcd;
    const heartbeats = new Heartbeats({
      clock,
      intervalMs: cfg.heartbeat,
      lossMs: cfg.loss_timeout,
      watch: () => new Set([...coordinator.partNodes(), ...parts.coordinators()]),
      send: (peer) => {
        box.svc!.figures.heartbeats_sent++;
        return byName.get(peer)?.heartbeat(cfg.heartbeat) ?? Promise.reject(new Error(`No peer ${peer}`));
      },
      onLost: (peer) => {
        box.svc!.figures.nodes_lost++;
        coordinator.nodeLost(peer).catch((error) =>
          logger.error("recovery from a lost node failed", { node: peer, error: String(error) })
        );
        // With etcd another member takes the lost coordinator's sessions over; without, nobody can stop or
        // restart them, so this node's parts of them stop here.
        if (!etcd) {
          parts.coordinatorLost(
            peer,
            `coordinator ${peer} lost (no etcd to hand the session to another node)`,
          )
            .then((stopped) => void (box.svc!.figures.parts_orphaned += stopped.length))
            .catch((error) =>
              logger.error("stopping the parts of a lost coordinator failed", {
                node: peer,
                error: String(error),
              })
            );
        }
      },
      alive: etcd ? (peer) => etcd.alive(peer) : undefined,
      onHeard: (peer) => {
        coordinator.retryStale(peer).catch((error) =>
          logger.error("stopping stale parts failed", { node: peer, error: String(error) })
        );
      },
      onBack: (peer) => {
        coordinator.nodeBack(peer).catch((error) =>
          logger.error("stopping stale parts failed", { node: peer, error: String(error) })
        );
      },
    });
    const svc = new ClusterService(
      cfg,
      key,
      clock,
      logger,
      parts,
      sampler,
      byName,
      coordinator,
      heartbeats,
      o.metrics,
      etcd,
    );
    box.svc = svc;
    if (etcd) svc.figures.etcd = etcd.figures;
    heartbeats.start();
    svc.etcdReady = etcd?.start() ?? Promise.resolve();
    return svc;
  }

  /** Settles once the node joined etcd the first time (and brought its parts back); at once without etcd. */
  etcdReady: Promise<void> = Promise.resolve();

  /**
   * Stops a session across nodes: the one coordinated here, or (with etcd) one any other control unit started,
   * adopted here to be stopped. Null when there is no such session.
   */
  async stopSession(name: string): Promise<Outcome | null> {
    const here = this.coordinator.get(name);
    if (here && here.state !== "stopped" && here.state !== "failed") return this.coordinator.stop(name);
    if (this.etcd) {
      const stored = await this.etcd.session(name);
      if (stored) {
        this.coordinator.adopt(name, stored, { reason: `stop asked on ${this.cfg.name}` });
        return this.coordinator.stop(name);
      }
    }
    return this.coordinator.stop(name);
  }

  refused(reason: Refusal): void {
    this.figures.refused[reason]++;
  }

  status(): Record<string, unknown> {
    return {
      ...clusterSummary(this.cfg),
      counters: this.#counters.values(),
      peers_heard: this.heartbeats.status(),
      parts: this.parts.status(),
      parts_orphaned: this.parts.orphaned(),
      coordinated: this.coordinator.status(),
      ...(this.etcd ? { etcd: this.etcd.status() } : {}),
    };
  }

  stop(): void {
    this.heartbeats.stop();
    this.etcd?.stop();
    // Its series go with it: a node role added again by a reload publishes them afresh.
    this.#metrics.remove(this.#counters);
  }
}
