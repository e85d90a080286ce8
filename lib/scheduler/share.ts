/**
 * Shared state between schedulers that back each other up (two boxes on one VRRP address): what one box learns that
 * the other needs to carry on where it left off when the address moves. That is the persistence table (client
 * address -> server) and the operator's runtime server state and weight (drain, maint, ready; weight).
 *
 * Peer to peer over the status API, full mesh: each box queues its own changes per peer and pushes them in batches
 * every `interval` (POST /scheduler/share, with the peer's bearer token), one push per peer at a time. Only changes
 * made here are pushed: what a peer sent is applied without being queued again, so nothing echoes back. Every bound
 * is explicit: a push holds at most `maxBatch` changes, a peer's queue at most `maxQueue` (a new change beyond it is
 * dropped and counted; a change to a queued item replaces it in place and costs nothing), and a failed push puts its
 * changes back only where there is room. On start a box asks each peer for a snapshot of all it holds
 * (POST /scheduler/share/snapshot), again every few seconds until one answers: a box that comes back after a failure
 * learns the clients the other served meanwhile.
 *
 * What a received change does: a persistence entry is set with the local timeout (the receiving table's own);
 * a server's state or weight applies only where the receiver's config says the same as the sender's for that item
 * (the sender sends its config value with the change), so a box whose config deliberately differs keeps its own.
 * Concurrent changes to one item on two boxes: the last to arrive wins on each box (no clocks are compared).
 *
 * With `etcd` configured, etcd is one more peer (`EtcdShare`): changes are written as keys under a prefix, a snapshot
 * is a range read of it, and a watch brings what the other boxes write; it works alongside the peers or alone.
 *
 * The class is pure apart from its transport and clock, both injected; `httpShareTransport` and `EtcdShare` are the
 * real transports, `shareHubFor` makes the hub a config section asks for.
 */
import type { Hono } from "hono";
import type { Clock, TimerId } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import { type CounterSet, declareSeries, type MetricsRegistry } from "../core/metrics.ts";
import { EtcdClient, type TxnOp, type Watch } from "../cluster/etcd.ts";
import { ADMIN_STATES, type AdminState, MAX_WEIGHT, type ShareSection } from "./config.ts";
import type { PersistenceEntry, PersistenceTable } from "./persistence.ts";

/** A server's runtime state or weight as set over the API, with the sender's config for the item. */
export interface ServerChange {
  readonly service: string;
  /** The server's key (`IP:PORT`). */
  readonly server: string;
  readonly state?: AdminState;
  readonly weight?: number;
  /** The sender's config values: the change applies only where the receiver's config has the same. */
  readonly config: { readonly state: AdminState; readonly weight: number };
}

/** What goes between peers, both in a push and as a snapshot. */
export interface ShareBatch {
  /** The sender's node name (for the log and /status). */
  readonly from: string;
  /** Per service: [client, server] pairs. */
  readonly persistence: Readonly<Record<string, readonly PersistenceEntry[]>>;
  readonly servers: readonly ServerChange[];
}

export interface ShareTransport {
  /** Delivers `batch` to `peer`; rejects when the peer did not take it. */
  push(peer: string, batch: ShareBatch, signal: AbortSignal): Promise<void>;
  /** Everything `peer` holds. */
  snapshot(peer: string, signal: AbortSignal): Promise<unknown>;
}

/** What the scheduler lets the share read and change. */
export interface ShareLocal {
  /** Sets the entries whose service and server are known here; returns how many. */
  importPersistence(service: string, entries: readonly PersistenceEntry[]): number;
  /** Applies a peer's server change where the local config agrees; false when it did not apply. */
  applyServer(change: ServerChange): boolean;
  /** Persistence entries (at most `max` in all, the most recently used first) and runtime server state. */
  snapshot(max: number): { persistence: Record<string, PersistenceEntry[]>; servers: ServerChange[] };
}

export interface ShareOptions {
  /** This node's name, sent as `from`. */
  readonly name: string;
  /** The peers' status API base URLs. */
  readonly peers: readonly string[];
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly maxBatch: number;
  readonly maxQueue: number;
  /** Most persistence entries a snapshot holds. Default 100000. */
  readonly snapshotMax?: number;
  /** How long to wait before asking a peer for a snapshot again after it failed to answer. Default 2000 ms. */
  readonly snapshotRetryMs?: number;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly transport: ShareTransport;
  readonly local: ShareLocal;
  /** Where the share's counters go (`edgenode_scheduler_share_*`, `edgenode_scheduler_share_peer_*{peer}`). */
  readonly metrics?: MetricsRegistry;
  /**
   * Sources of batches that come without a request (an etcd watch): each is started with the hub and given what to
   * call with a batch; it returns how to stop it.
   */
  readonly feeds?: readonly ((receive: (body: unknown) => void) => () => void)[];
}

/** A received batch that is not what a peer sends. */
export class ShareFormatError extends TypeError {
  constructor(readonly detail: string) {
    super(`Cannot read a shared batch: ${detail}`);
    this.name = "ShareFormatError";
  }
}

type Item =
  | { readonly kind: "p"; readonly service: string; readonly client: string; readonly server: string }
  | { readonly kind: "s"; readonly change: ServerChange };

interface Peer {
  readonly url: string;
  /** Changes waiting, by item (a later change to one item replaces the earlier in place). */
  readonly queue: Map<string, Item>;
  inFlight: boolean;
  /** Whether a snapshot of this peer has been applied; when not, when to ask next. */
  synced: boolean;
  snapshotAt: number;
  /** Whether the last exchange failed (the log says so once per change). */
  failing: boolean;
  lastError: string | null;
  readonly counts: {
    pushes: number;
    pushed_changes: number;
    failed_pushes: number;
    dropped: number;
    snapshots: number;
    failed_snapshots: number;
  };
}

const MAX_TEXT = 128;

export class ShareHub {
  readonly #o: ShareOptions;
  readonly #peers: Peer[];
  readonly #abort = new AbortController();
  #timer: TimerId | null = null;
  #running = false;
  readonly #sets: CounterSet[] = [];
  readonly #stopFeeds: (() => void)[] = [];
  readonly counts = { received_changes: 0, applied: 0, ignored: 0, rejected_batches: 0 };
  /** Who sent the last batch applied here, and when (clock ms). */
  #lastFrom: { name: string; at: number } | null = null;

  constructor(options: ShareOptions) {
    for (const [k, v] of [["maxBatch", options.maxBatch], ["maxQueue", options.maxQueue]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new RangeError(`Cannot share: ${k} "${v}" is not a positive integer`);
      }
    }
    this.#o = options;
    this.#peers = options.peers.map((url) => ({
      url,
      queue: new Map(),
      inFlight: false,
      synced: false,
      snapshotAt: 0,
      failing: false,
      lastError: null,
      counts: {
        pushes: 0,
        pushed_changes: 0,
        failed_pushes: 0,
        dropped: 0,
        snapshots: 0,
        failed_snapshots: 0,
      },
    }));
  }

  /** Asks every peer for a snapshot and starts pushing every interval. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    const { metrics } = this.#o;
    if (metrics) {
      this.#sets.push(metrics.publish("scheduler_share", {}, SHARE_SERIES, () => this.counts));
      for (const peer of this.#peers) {
        this.#sets.push(metrics.publish("scheduler_share_peer", { peer: peer.url }, PEER_SERIES, () => peer));
      }
    }
    for (const feed of this.#o.feeds ?? []) {
      this.#stopFeeds.push(feed((body) => {
        try {
          this.receive(body);
        } catch (error) {
          this.#o.logger.warn("shared batch refused", { error: String(error) });
        }
      }));
    }
    this.#tick();
  }

  /** Stops pushing; a push or snapshot request under way is aborted. Queued changes are dropped (not counted). */
  stop(): void {
    this.#running = false;
    if (this.#timer !== null) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = null;
    this.#abort.abort();
    for (const stop of this.#stopFeeds.splice(0)) stop();
    for (const set of this.#sets.splice(0)) this.#o.metrics?.remove(set);
  }

  /** A persistence entry set here (PersistenceTable's onSet): queued for every peer. */
  persisted(service: string, client: string, server: string): void {
    this.#enqueue(`p\0${service}\0${client}`, { kind: "p", service, client, server });
  }

  /** The operator changed a server's state or weight here: queued for every peer. */
  serverChanged(change: ServerChange): void {
    const key = `s\0${change.service}\0${change.server}`;
    for (const peer of this.#peers) {
      const queued = peer.queue.get(key);
      // A state and a weight set one after the other travel as one change.
      const merged = queued?.kind === "s" ? { ...queued.change, ...change } : change;
      this.#put(peer, key, { kind: "s", change: merged });
    }
  }

  /** Applies a batch a peer pushed (or a snapshot); throws ShareFormatError when it is not one. */
  receive(body: unknown): { applied: number; ignored: number } {
    let batch: ShareBatch;
    try {
      batch = parseBatch(body);
    } catch (error) {
      this.counts.rejected_batches++;
      throw error;
    }
    let applied = 0;
    let total = 0;
    for (const [service, entries] of Object.entries(batch.persistence)) {
      total += entries.length;
      applied += this.#o.local.importPersistence(service, entries);
    }
    for (const change of batch.servers) {
      total++;
      if (this.#o.local.applyServer(change)) applied++;
    }
    this.counts.received_changes += total;
    this.counts.applied += applied;
    this.counts.ignored += total - applied;
    this.#lastFrom = { name: batch.from, at: this.#o.clock.now() };
    return { applied, ignored: total - applied };
  }

  /** Everything this box holds, as a peer asks for it on start. */
  snapshot(): ShareBatch {
    const { persistence, servers } = this.#o.local.snapshot(this.#o.snapshotMax ?? 100_000);
    return { from: this.#o.name, persistence, servers };
  }

  status(): Record<string, unknown> {
    return {
      ...this.counts,
      last_from: this.#lastFrom
        ? { name: this.#lastFrom.name, at: new Date(this.#lastFrom.at).toISOString() }
        : null,
      peers: this.#peers.map((p) => ({
        peer: p.url,
        queue: p.queue.size,
        synced: p.synced,
        ok: !p.failing,
        last_error: p.lastError,
        ...p.counts,
      })),
    };
  }

  #enqueue(key: string, item: Item): void {
    for (const peer of this.#peers) this.#put(peer, key, item);
  }

  #put(peer: Peer, key: string, item: Item): void {
    if (peer.queue.has(key) || peer.queue.size < this.#o.maxQueue) peer.queue.set(key, item);
    else peer.counts.dropped++;
  }

  #tick(): void {
    this.#timer = null;
    if (!this.#running) return;
    const now = this.#o.clock.now();
    for (const peer of this.#peers) {
      if (peer.inFlight) continue;
      if (!peer.synced && now >= peer.snapshotAt) this.#askSnapshot(peer);
      else if (peer.queue.size > 0) this.#push(peer);
    }
    this.#timer = this.#o.clock.setTimeout(() => this.#tick(), this.#o.intervalMs);
  }

  #push(peer: Peer): void {
    const taken: [string, Item][] = [];
    for (const entry of peer.queue) {
      if (taken.length >= this.#o.maxBatch) break;
      taken.push(entry);
    }
    for (const [key] of taken) peer.queue.delete(key);
    const persistence: Record<string, [string, string][]> = {};
    const servers: ServerChange[] = [];
    for (const [, item] of taken) {
      if (item.kind === "p") (persistence[item.service] ??= []).push([item.client, item.server]);
      else servers.push(item.change);
    }
    peer.inFlight = true;
    this.#exchange(
      peer,
      "push",
      (signal) => this.#o.transport.push(peer.url, { from: this.#o.name, persistence, servers }, signal),
    )
      .then((ok) => {
        if (ok) {
          peer.counts.pushes++;
          peer.counts.pushed_changes += taken.length;
          return;
        }
        peer.counts.failed_pushes++;
        // Back in the queue where there is room and no newer change to the same item came meanwhile.
        for (const [key, item] of taken) {
          if (peer.queue.has(key)) continue;
          if (peer.queue.size < this.#o.maxQueue) peer.queue.set(key, item);
          else peer.counts.dropped++;
        }
      });
  }

  #askSnapshot(peer: Peer): void {
    peer.inFlight = true;
    this.#exchange(peer, "snapshot", async (signal) => {
      this.receive(await this.#o.transport.snapshot(peer.url, signal));
    }).then((ok) => {
      if (ok) {
        peer.synced = true;
        peer.counts.snapshots++;
      } else {
        peer.counts.failed_snapshots++;
        peer.snapshotAt = this.#o.clock.now() + (this.#o.snapshotRetryMs ?? 2000);
      }
    });
  }

  /**
   * Runs one exchange with `peer`, aborted after the timeout (on the injected clock) or on stop; true when it worked.
   * Logs when a peer starts or stops failing, not every failure.
   */
  async #exchange(peer: Peer, what: string, run: (signal: AbortSignal) => Promise<void>): Promise<boolean> {
    const abort = new AbortController();
    const onStop = () => abort.abort(new Error("stopped"));
    this.#abort.signal.addEventListener("abort", onStop, { once: true });
    const timeout = new Promise<never>((_, reject) =>
      abort.signal.addEventListener("abort", () => reject(abort.signal.reason), { once: true })
    );
    const timer = this.#o.clock.setTimeout(
      () => abort.abort(new Error(`no answer within ${this.#o.timeoutMs} ms`)),
      this.#o.timeoutMs,
    );
    try {
      await Promise.race([run(abort.signal), timeout]);
      if (peer.failing) this.#o.logger.info("share peer answers again", { peer: peer.url });
      peer.failing = false;
      return true;
    } catch (error) {
      peer.lastError = `${what}: ${error instanceof Error ? error.message : String(error)}`;
      if (!peer.failing && this.#running) {
        this.#o.logger.warn("share peer failed", { peer: peer.url, error: peer.lastError });
      }
      peer.failing = true;
      return false;
    } finally {
      this.#o.clock.clearTimeout(timer);
      this.#abort.signal.removeEventListener("abort", onStop);
      peer.inFlight = false;
    }
  }
}

/** The share's series, for /metrics (the same names as in /status, without `_total`). */
const SHARE_SERIES = declareSeries<ShareHub["counts"]>({
  received_changes: { help: "Changes received from peer schedulers", read: (c) => c.received_changes },
  applied: { help: "Received changes applied here", read: (c) => c.applied },
  ignored: {
    help: "Received changes not applied (unknown service or server, or the local config differs)",
    read: (c) => c.ignored,
  },
  rejected_batches: { help: "Received batches refused as malformed", read: (c) => c.rejected_batches },
});

const PEER_SERIES = declareSeries<Peer>({
  queue: { kind: "gauge", help: "Changes waiting to be pushed to the peer", read: (p) => p.queue.size },
  pushes: { help: "Batches the peer took", read: (p) => p.counts.pushes },
  pushed_changes: { help: "Changes the peer took", read: (p) => p.counts.pushed_changes },
  failed_pushes: {
    help: "Pushes the peer did not take (their changes queued again)",
    read: (p) => p.counts.failed_pushes,
  },
  dropped: { help: "Changes dropped because the peer's queue was full", read: (p) => p.counts.dropped },
  snapshots: { help: "Snapshots received from the peer", read: (p) => p.counts.snapshots },
  failed_snapshots: {
    help: "Snapshot requests the peer did not answer",
    read: (p) => p.counts.failed_snapshots,
  },
});

/** Checks a received batch field by field: it comes from the network. */
export function parseBatch(body: unknown): ShareBatch {
  if (!isRecord(body)) throw new ShareFormatError("expected a JSON object");
  const { from, persistence, servers } = body;
  if (typeof from !== "string" || from.length > MAX_TEXT) throw new ShareFormatError('"from" must be a name');
  if (!isRecord(persistence)) {
    throw new ShareFormatError('"persistence" must be an object of service -> pairs');
  }
  for (const [service, entries] of Object.entries(persistence)) {
    if (!Array.isArray(entries)) throw new ShareFormatError(`persistence of "${service}" must be a list`);
    for (const e of entries) {
      if (!Array.isArray(e) || e.length !== 2 || !isText(e[0]) || !isText(e[1])) {
        throw new ShareFormatError(
          `persistence of "${service}" holds ${JSON.stringify(e)}, not [client, server]`,
        );
      }
    }
  }
  if (!Array.isArray(servers)) throw new ShareFormatError('"servers" must be a list');
  for (const c of servers) {
    const bad = () => new ShareFormatError(`server change ${JSON.stringify(c).slice(0, 200)} is malformed`);
    if (!isRecord(c) || !isText(c.service) || !isText(c.server) || !isRecord(c.config)) throw bad();
    if (c.state !== undefined && !isState(c.state)) throw bad();
    if (c.weight !== undefined && !isWeight(c.weight)) throw bad();
    if (!isState(c.config.state) || !isWeight(c.config.weight)) throw bad();
  }
  return body as unknown as ShareBatch;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isText(v: unknown): v is string {
  return typeof v === "string" && v.length > 0 && v.length <= MAX_TEXT;
}

function isState(v: unknown): v is AdminState {
  return ADMIN_STATES.includes(v as AdminState);
}

function isWeight(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 0 && (v as number) <= MAX_WEIGHT;
}

/** What share needs of a service (lib/scheduler/service.ts's Service has it). */
export interface SharedService {
  readonly name: string;
  readonly servers: readonly SharedServer[];
  readonly persistence: PersistenceTable | null;
  /** Called after a server's state or weight changed (wakes the queue). */
  changed(): void;
}

export interface SharedServer {
  readonly key: string;
  readonly spec: { readonly state: AdminState; readonly weight: number };
  readonly admin: AdminState;
  configuredWeight: number;
  setAdmin(state: AdminState): void;
}

/** The scheduler's side of sharing, over its running services (read each time: a reload changes them). */
export function servicesShareLocal(services: () => Iterable<SharedService>): ShareLocal {
  const find = (name: string) => {
    for (const s of services()) if (s.name === name) return s;
    return undefined;
  };
  return {
    importPersistence(name, entries) {
      const s = find(name);
      if (!s?.persistence) return 0;
      const keys = new Set(s.servers.map((v) => v.key));
      return s.persistence.import(entries.filter(([, server]) => keys.has(server)));
    },
    applyServer(change) {
      const s = find(change.service);
      const server = s?.servers.find((v) => v.key === change.server);
      if (!s || !server) return false;
      let applied = false;
      if (change.weight !== undefined && server.spec.weight === change.config.weight) {
        server.configuredWeight = change.weight;
        applied = true;
      }
      if (change.state !== undefined && server.spec.state === change.config.state) {
        server.setAdmin(change.state);
        applied = true;
      }
      if (applied) s.changed();
      return applied;
    },
    snapshot(max) {
      const persistence: Record<string, PersistenceEntry[]> = {};
      const servers: ServerChange[] = [];
      let left = max;
      for (const s of services()) {
        if (s.persistence && left > 0) {
          const entries = s.persistence.export(left);
          left -= entries.length;
          if (entries.length) persistence[s.name] = entries;
        }
        for (const v of s.servers) {
          // Only what differs from the config: the rest says nothing a peer's own config does not.
          const state = v.admin !== v.spec.state ? v.admin : undefined;
          const weight = v.configuredWeight !== v.spec.weight ? v.configuredWeight : undefined;
          if (state === undefined && weight === undefined) continue;
          servers.push({
            service: s.name,
            server: v.key,
            ...(state !== undefined ? { state } : {}),
            ...(weight !== undefined ? { weight } : {}),
            config: { state: v.spec.state, weight: v.spec.weight },
          });
        }
      }
      return { persistence, servers };
    },
  };
}

/** The change a server's API route made, for `ShareHub.serverChanged`. */
export function serverChangeOf(
  service: string,
  server: SharedServer,
  set: { readonly state?: AdminState; readonly weight?: number },
): ServerChange {
  return {
    service,
    server: server.key,
    ...(set.state !== undefined ? { state: set.state } : {}),
    ...(set.weight !== undefined ? { weight: set.weight } : {}),
    config: { state: server.spec.state, weight: server.spec.weight },
  };
}

/**
 * The share's routes on the status API, behind its bearer token like every mutating route: POST /scheduler/share
 * applies a peer's batch, POST /scheduler/share/snapshot answers with everything held here.
 */
export function shareRoutes(app: Hono, hub: ShareHub): void {
  app.post("/scheduler/share", async (c) => {
    const body = await c.req.json().catch(() => undefined);
    try {
      return c.json(hub.receive(body));
    } catch (error) {
      if (error instanceof ShareFormatError) return c.json({ error: error.message }, 400);
      throw error;
    }
  });
  app.post("/scheduler/share/snapshot", (c) => c.json(hub.snapshot()));
}

/** Pushes and snapshot requests over HTTP with the peers' bearer token. */
export function httpShareTransport(
  token: string,
  fetchFn: typeof fetch = (input, init) => fetch(input, init),
): ShareTransport {
  const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  const post = async (url: string, body: string, signal: AbortSignal): Promise<Response> => {
    const response = await fetchFn(url, { method: "POST", body, headers, signal });
    if (!response.ok) {
      const text = (await response.text().catch(() => "")).slice(0, 200);
      throw new Error(`${url} answered ${response.status} ${text}`.trim());
    }
    return response;
  };
  const base = (peer: string) => peer.replace(/\/$/, "");
  return {
    async push(peer, batch, signal) {
      const response = await post(`${base(peer)}/scheduler/share`, JSON.stringify(batch), signal);
      await response.body?.cancel();
    },
    async snapshot(peer, signal) {
      return await (await post(`${base(peer)}/scheduler/share/snapshot`, "{}", signal)).json();
    },
  };
}

/** The name etcd has among a hub's peers. */
export const ETCD_PEER = "etcd";

/** How long after a watch ended with an error it is started again. */
const WATCH_RESTART_MS = 1000;

/** Puts in one etcd transaction (etcd's --max-txn-ops is 128 by default). */
const TXN_OPS = 100;

/** What sharing through etcd needs of lib/cluster/etcd.ts's client. */
export type EtcdShareClient = Pick<EtcdClient, "txn" | "range" | "leaseGrant" | "watch">;

export interface EtcdShareOptions {
  readonly client: EtcdShareClient;
  /** Key prefix of this pair of schedulers, from "/" to "/". */
  readonly prefix: string;
  /** This node's name, written with each change (a box skips its own changes when they come back). */
  readonly name: string;
  /** How long a persistence entry stays after it was last written, in ms. */
  readonly ttlMs: number;
  readonly clock: Clock;
  /** Most keys a snapshot reads. Default 100000. */
  readonly snapshotMax?: number;
}

/**
 * Sharing through etcd: a push writes each change as a key (`<prefix>p/<service>/<client>` holding the server,
 * `<prefix>s/<service>/<server>` holding the state and weight), a snapshot is a range read of the prefix, and a watch
 * of the prefix feeds the hub what the other boxes write. Persistence keys live under a lease of `ttlMs` and a half
 * (one lease serves the writes of half a TTL), so an entry nobody refreshes leaves etcd; server keys stay until
 * changed, so runtime server state outlives a restart of both boxes while etcd keeps it.
 */
export class EtcdShare implements ShareTransport {
  readonly #o: EtcdShareOptions;
  #lease: { id: string; until: number } | null = null;

  constructor(options: EtcdShareOptions) {
    if (!/^\/.*\/$/.test(options.prefix)) {
      throw new RangeError(`Cannot share through etcd: prefix "${options.prefix}" must run from "/" to "/"`);
    }
    this.#o = options;
  }

  async push(_peer: string, batch: ShareBatch): Promise<void> {
    const { client, name } = this.#o;
    const lease = await this.#leaseId();
    const ops: TxnOp[] = [];
    for (const [service, entries] of Object.entries(batch.persistence)) {
      for (const [c, server] of entries) {
        ops.push({
          put: { key: this.#key("p", service, c), value: JSON.stringify({ server, from: name }), lease },
        });
      }
    }
    for (const change of batch.servers) {
      ops.push({
        put: {
          key: this.#key("s", change.service, change.server),
          value: JSON.stringify({ ...change, from: name }),
        },
      });
    }
    for (let i = 0; i < ops.length; i += TXN_OPS) {
      await client.txn({ compare: [], success: ops.slice(i, i + TXN_OPS) });
    }
  }

  async snapshot(): Promise<unknown> {
    const { kvs } = await this.#o.client.range(this.#o.prefix, { limit: this.#o.snapshotMax ?? 100_000 });
    return this.#batchOf(kvs, null);
  }

  /**
   * A hub's feed: what the other boxes write, as it happens. A watch that ends with an error (etcd unreachable at
   * start, a compacted revision) is started again a second later, after reading the prefix anew (what it missed).
   */
  readonly feed = (receive: (body: unknown) => void): () => void => {
    const { client, clock, prefix, name } = this.#o;
    let watch: Watch | null = null;
    let timer: TimerId | null = null;
    let stopped = false;
    const begin = (again: boolean) => {
      timer = null;
      if (again) this.snapshot().then(receive, () => {});
      watch = client.watch(prefix, (events) => {
        const batch = this.#batchOf(events.filter((e) => e.type === "put"), name);
        if (batch.servers.length || Object.keys(batch.persistence).length) receive(batch);
      }, {
        onEnd: (error) => {
          if (!stopped && error) timer = clock.setTimeout(() => begin(true), WATCH_RESTART_MS);
        },
      });
      watch.ready.catch(() => {});
    };
    begin(false);
    return () => {
      stopped = true;
      if (timer !== null) clock.clearTimeout(timer);
      watch?.close();
    };
  };

  #key(kind: "p" | "s", service: string, item: string): string {
    return `${this.#o.prefix}${kind}/${service}/${item}`;
  }

  async #leaseId(): Promise<string> {
    const now = this.#o.clock.now();
    if (this.#lease && now < this.#lease.until) return this.#lease.id;
    const half = this.#o.ttlMs / 2;
    const { id } = await this.#o.client.leaseGrant(Math.ceil((this.#o.ttlMs + half) / 1000));
    this.#lease = { id, until: now + half };
    return id;
  }

  /** The changes under the prefix as a batch, skipping those written by `skip`; unreadable keys are left out. */
  #batchOf(kvs: readonly { key: string; value: string }[], skip: string | null): ShareBatch {
    const persistence: Record<string, [string, string][]> = {};
    const servers: ServerChange[] = [];
    for (const { key, value } of kvs) {
      const m = /^([ps])\/([^/]+)\/([^/]+)$/.exec(key.slice(this.#o.prefix.length));
      let v: Record<string, unknown>;
      try {
        v = JSON.parse(value);
      } catch {
        continue;
      }
      if (!m || !isRecord(v) || (skip !== null && v.from === skip)) continue;
      const [, kind, service, item] = m;
      if (kind === "p" && isText(v.server)) (persistence[service] ??= []).push([item, v.server]);
      if (kind === "s" && isRecord(v.config)) {
        servers.push({
          service,
          server: item,
          ...(v.state !== undefined ? { state: v.state as AdminState } : {}),
          ...(v.weight !== undefined ? { weight: v.weight as number } : {}),
          config: v.config as ServerChange["config"],
        });
      }
    }
    return { from: skip === null ? "etcd" : "etcd watch", persistence, servers };
  }
}

/** What a scheduler's hub is made with besides its config section. */
export interface ShareHubDeps {
  readonly name: string;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics?: MetricsRegistry;
  readonly local: ShareLocal;
  /** Replaces the etcd client (tests). */
  readonly etcd?: EtcdShareClient;
}

/** The hub a `scheduler.share` section asks for: its peers over HTTP, and etcd as one more peer when configured. */
export function shareHubFor(cfg: ShareSection, deps: ShareHubDeps): ShareHub {
  const http = cfg.token !== null ? httpShareTransport(cfg.token) : null;
  const etcd = cfg.etcd.length
    ? new EtcdShare({
      client: deps.etcd ?? new EtcdClient({ endpoints: cfg.etcd, clock: deps.clock, timeoutMs: cfg.timeout }),
      prefix: cfg.etcd_prefix,
      name: deps.name,
      ttlMs: cfg.etcd_ttl,
      clock: deps.clock,
    })
    : null;
  const pick = (peer: string): ShareTransport => (peer === ETCD_PEER ? etcd : http)!;
  return new ShareHub({
    name: deps.name,
    peers: [...cfg.peers, ...(etcd ? [ETCD_PEER] : [])],
    intervalMs: cfg.interval,
    timeoutMs: cfg.timeout,
    maxBatch: cfg.max_batch,
    maxQueue: cfg.max_queue,
    clock: deps.clock,
    logger: deps.logger,
    metrics: deps.metrics,
    local: deps.local,
    transport: {
      push: (peer, batch, signal) => pick(peer).push(peer, batch, signal),
      snapshot: (peer, signal) => pick(peer).snapshot(peer, signal),
    },
    feeds: etcd ? [etcd.feed] : [],
  });
}
