/**
 * Shared state between schedulers that back each other up (two boxes on one VRRP address): what one box learns that
 * the other needs to carry on where it left off when the address moves. That is the persistence table (client
 * address -> server) and the operator's runtime server state and weight (drain, maint, ready; weight).
 *
 * Peer to peer over the status API, full mesh: each box queues its own changes per peer and pushes them in batches
 * every `interval` (POST /scheduler/share, with the peer's bearer token), one push per peer at a time (a push that
 * timed out still holds its peer until its call has ended). Only changes made here are pushed: what a peer sent is
 * applied without being queued again, so nothing echoes back. Every bound is explicit: a push holds at most
 * `maxBatch` changes, a peer's queue at most `maxQueue` (a new change beyond it is dropped and counted; a change to a
 * queued item replaces it in place and costs nothing), and a failed push puts its changes back only where there is
 * room (merged into a newer change to the same server). On start a box asks each peer for a snapshot of all it holds
 * (POST /scheduler/share/snapshot), again every few seconds until one answers: a box that comes back after a failure
 * learns the clients the other served meanwhile. After changes for a peer were dropped, the next time it answers
 * the box asks it for a snapshot again and then queues everything it holds for it. A snapshot is read up to a byte
 * cap, holds at most `snapshotMax` entries and applies in chunks; an item pushed while the snapshot was on its way
 * is newer, and the snapshot leaves it alone.
 *
 * What a received change does: a persistence entry lives for what it had left at the sender (a pushed one was just
 * used: the local timeout) plus half a timeout (see PersistenceTable.import); a server's state or weight applies only
 * where the receiver's config says the same as the sender's for that item (the sender sends its config value with
 * the change), so a box whose config deliberately differs keeps its own. Concurrent changes to one item on two boxes:
 * the last to arrive wins on each box (no clocks are compared). An item that is not what a peer sends is skipped and
 * counted; the rest of its batch applies.
 *
 * With `etcd` configured, etcd is one more peer (`EtcdShare`): changes are written as keys under a prefix, a snapshot
 * is a range read of it, and a watch from there brings what the other boxes write; it works alongside the peers or
 * alone.
 *
 * The class is pure apart from its transport and clock, both injected; `httpShareTransport` and `EtcdShare` are the
 * real transports, `shareHubFor` makes the hub a config section asks for.
 */
import type { Hono } from "hono";
import type { Clock, TimerId } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import { type CounterSet, declareSeries, type MetricsRegistry } from "../core/metrics.ts";
import { EtcdClient, type TxnOp, type Watch } from "../cluster/etcd.ts";
import { ADMIN_STATES, type AdminState, MAX_SERVERS, MAX_WEIGHT, type ShareSection } from "./config.ts";
import type { PersistenceEntry, PersistenceTable } from "./persistence.ts";

/**
 * A server's runtime state and weight, with the sender's config for the item. A change made here (`serverChangeOf`)
 * and a snapshot carry the server's whole runtime state, both fields; a peer may send one field alone.
 */
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
  /** Per service: [client, server] pairs, or [client, server, ms left] (see PersistenceEntry). */
  readonly persistence: Readonly<Record<string, readonly PersistenceEntry[]>>;
  readonly servers: readonly ServerChange[];
}

export interface ShareTransport {
  /** Delivers `batch` to `peer`; rejects when the peer did not take it. Stops early once `signal` aborts. */
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
  /**
   * Persistence entries (at most `max` in all, the most recently used first, each with the ms it has left) and the
   * runtime state of every server whose state or weight differs from its config.
   */
  snapshot(max: number): { persistence: Record<string, PersistenceEntry[]>; servers: ServerChange[] };
  /** The longest persistence timeout of the services, in ms (0: none); etcd's lease is at least that long. */
  longestPersistence?(): number;
}

/** A source of batches that come without a request (an etcd watch), tied to the peer that stands for it. */
export interface ShareFeed {
  readonly peer: string;
  /**
   * Started with the hub: `receive` takes a batch as a push; `resync` asks the peer for a snapshot again (what the
   * feed missed). Returns how to stop it.
   */
  start(hooks: { receive(body: unknown): void; resync(): void }): () => void;
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
  /** Most persistence entries a snapshot holds, sent or taken. Default 100000. */
  readonly snapshotMax?: number;
  /** How long to wait before asking a peer for a snapshot again after it failed to answer. Default 2000 ms. */
  readonly snapshotRetryMs?: number;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly transport: ShareTransport;
  readonly local: ShareLocal;
  /** Where the share's counters go (`edgenode_scheduler_share_*`, `edgenode_scheduler_share_peer_*{peer}`). */
  readonly metrics?: MetricsRegistry;
  readonly feeds?: readonly ShareFeed[];
  /** Lets the event loop run between the chunks of a snapshot being applied. Default: a macrotask. */
  readonly pause?: () => Promise<void>;
}

/** A received batch that is not what a peer sends. */
export class ShareFormatError extends TypeError {
  constructor(readonly detail: string) {
    super(`Cannot read a shared batch: ${detail}`);
    this.name = "ShareFormatError";
  }
}

/** Most persistence entries in a snapshot unless `snapshotMax` says otherwise. */
export const DEFAULT_SNAPSHOT_MAX = 100_000;
/** Most server changes a snapshot holds: every server of every service (config: 256 services of 256 servers). */
export const MAX_SERVER_CHANGES = 256 * MAX_SERVERS;
/** Most changes a push may hold (`max_batch`'s bound). */
export const MAX_PUSH_ENTRIES = 10_000;
/** The most bytes one entry of a snapshot takes as JSON with every field at its length cap, rounded up. */
const ENTRY_BYTES = 256;
/** Changes applied at once from a snapshot before the event loop gets a turn. */
const CHUNK = 1000;
/** Length caps of what a batch names: a service (config: 63 characters), an address (`[IPv6]:port` or an IP). */
const MAX_SERVICE = 64;
const MAX_ADDRESS = 64;
const MAX_FROM = 128;

/** The bytes a snapshot of at most `snapshotMax` persistence entries may take as JSON (the reader's cap). */
export function snapshotByteCap(snapshotMax = DEFAULT_SNAPSHOT_MAX): number {
  return (snapshotMax + MAX_SERVER_CHANGES) * ENTRY_BYTES + 64 * 1024;
}

type Item =
  | {
    readonly kind: "p";
    readonly service: string;
    readonly client: string;
    readonly server: string;
    /** Ms the entry had left at `at` (clock ms) when it came from a snapshot; absent: just used. */
    readonly ttl?: number;
    readonly at?: number;
  }
  | { readonly kind: "s"; readonly change: ServerChange };

function keyOf(item: Item): string {
  return item.kind === "p"
    ? `p\0${item.service}\0${item.client}`
    : `s\0${item.change.service}\0${item.change.server}`;
}

/** A received batch, checked: the items that passed, and how many did not. */
export interface ParsedBatch {
  readonly from: string;
  readonly items: readonly Item[];
  readonly skipped: number;
}

/** Item keys pushed to this box while a snapshot request is out: the snapshot does not undo them. */
interface Window {
  readonly keys: Set<string>;
  overflow: boolean;
}

interface Peer {
  readonly url: string;
  /** Changes waiting, by item (a later change to one item replaces the earlier in place). */
  readonly queue: Map<string, Item>;
  /** An exchange with the peer runs (until its call has ended, even after it timed out). */
  inFlight: boolean;
  /** Whether a snapshot of this peer has been applied; when not, when to ask next. */
  synced: boolean;
  snapshotAt: number;
  /** Changes for the peer were dropped since it was last synced: once it answers, both sides exchange snapshots. */
  lost: boolean;
  /** After the next snapshot from the peer, queue ours for it. */
  resend: boolean;
  /** Ours for the peer after a resync, fed into its queue as there is room (at most a snapshot's worth). */
  backlog: Item[];
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
    resyncs: number;
  };
}

export class ShareHub {
  readonly #o: ShareOptions;
  readonly #peers: Peer[];
  readonly #abort = new AbortController();
  #timer: TimerId | null = null;
  #running = false;
  readonly #sets: CounterSet[] = [];
  readonly #stopFeeds: (() => void)[] = [];
  readonly #windows = new Set<Window>();
  readonly counts = {
    received_changes: 0,
    applied: 0,
    ignored: 0,
    skipped: 0,
    superseded: 0,
    rejected_batches: 0,
  };
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
      lost: false,
      resend: false,
      backlog: [],
      failing: false,
      lastError: null,
      counts: {
        pushes: 0,
        pushed_changes: 0,
        failed_pushes: 0,
        dropped: 0,
        snapshots: 0,
        failed_snapshots: 0,
        resyncs: 0,
      },
    }));
  }

  get #snapshotMax(): number {
    return this.#o.snapshotMax ?? DEFAULT_SNAPSHOT_MAX;
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
      const peer = this.#peers.find((p) => p.url === feed.peer);
      this.#stopFeeds.push(feed.start({
        receive: (body) => {
          try {
            this.receive(body);
          } catch (error) {
            this.#o.logger.warn("shared batch refused", { error: String(error) });
          }
        },
        resync: () => {
          if (!peer || !this.#running) return;
          peer.synced = false;
          peer.snapshotAt = 0;
        },
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
    const item: Item = { kind: "p", service, client, server };
    for (const peer of this.#peers) this.#put(peer, keyOf(item), item);
  }

  /** The operator changed a server's state or weight here: queued for every peer. */
  serverChanged(change: ServerChange): void {
    const key = keyOf({ kind: "s", change });
    for (const peer of this.#peers) {
      const queued = peer.queue.get(key);
      // A state and a weight set one after the other travel as one change.
      const merged = queued?.kind === "s" ? { ...queued.change, ...change } : change;
      this.#put(peer, key, { kind: "s", change: merged });
    }
  }

  /**
   * Applies a batch a peer pushed; throws ShareFormatError when it is not one. Items that are not what a peer sends
   * are skipped and counted; the rest apply.
   */
  receive(body: unknown): { applied: number; ignored: number; skipped: number } {
    const batch = this.#parse(body, MAX_PUSH_ENTRIES);
    for (const window of this.#windows) {
      for (const item of batch.items) {
        if (window.keys.size >= this.#snapshotMax) {
          window.overflow = true;
          break;
        }
        window.keys.add(keyOf(item));
      }
    }
    return { ...this.#apply(batch.from, batch.items), skipped: batch.skipped };
  }

  /** Everything this box holds, as a peer asks for it on start. */
  snapshot(): ShareBatch {
    const { persistence, servers } = this.#o.local.snapshot(this.#snapshotMax);
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

  #parse(body: unknown, maxEntries: number): ParsedBatch {
    try {
      const batch = parseBatch(body, maxEntries);
      this.counts.skipped += batch.skipped;
      return batch;
    } catch (error) {
      this.counts.rejected_batches++;
      throw error;
    }
  }

  #apply(from: string, items: readonly Item[]): { applied: number; ignored: number } {
    const persistence = new Map<string, PersistenceEntry[]>();
    let applied = 0;
    for (const item of items) {
      if (item.kind === "p") {
        let entries = persistence.get(item.service);
        if (!entries) persistence.set(item.service, entries = []);
        entries.push(
          item.ttl === undefined ? [item.client, item.server] : [item.client, item.server, item.ttl],
        );
      } else if (this.#o.local.applyServer(item.change)) applied++;
    }
    for (const [service, entries] of persistence) {
      applied += this.#o.local.importPersistence(service, entries);
    }
    this.counts.received_changes += items.length;
    this.counts.applied += applied;
    this.counts.ignored += items.length - applied;
    this.#lastFrom = { name: from, at: this.#o.clock.now() };
    return { applied, ignored: items.length - applied };
  }

  /**
   * Applies a snapshot in chunks, the event loop running between them. An item pushed here since the request went
   * out is newer than (or as new as) the snapshot's, so the snapshot leaves it alone: a push made before the snapshot
   * that arrives after the request went out is older, but then the sender's newer change to that item is still
   * queued for this box and follows it (one push per peer at a time, in order).
   */
  async #applySnapshot(body: unknown, window: Window, signal: AbortSignal): Promise<void> {
    const batch = this.#parse(body, this.#snapshotMax + MAX_SERVER_CHANGES);
    // A snapshot lists the most recently used first; set them last, so that a smaller table keeps them.
    const items = [...batch.items].reverse();
    for (let i = 0; i < items.length; i += CHUNK) {
      if (i > 0) {
        await (this.#o.pause ?? macrotask)();
        signal.throwIfAborted();
      }
      if (window.overflow) {
        throw new Error("more pushes came in meanwhile than a snapshot can be checked against");
      }
      const chunk = items.slice(i, i + CHUNK);
      const fresh = chunk.filter((item) => !window.keys.has(keyOf(item)));
      this.counts.superseded += chunk.length - fresh.length;
      this.#apply(batch.from, fresh);
    }
  }

  #put(peer: Peer, key: string, item: Item): void {
    if (peer.queue.has(key) || peer.queue.size < this.#o.maxQueue) peer.queue.set(key, item);
    else {
      peer.counts.dropped++;
      peer.lost = true;
    }
  }

  #tick(): void {
    this.#timer = null;
    if (!this.#running) return;
    const now = this.#o.clock.now();
    for (const peer of this.#peers) {
      if (peer.inFlight) continue;
      if (!peer.synced && now >= peer.snapshotAt) this.#askSnapshot(peer);
      else {
        this.#refill(peer);
        if (peer.queue.size > 0) this.#push(peer);
      }
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
    const now = this.#o.clock.now();
    const persistence = new Map<string, PersistenceEntry[]>();
    const servers: ServerChange[] = [];
    for (const [, item] of taken) {
      if (item.kind === "s") {
        servers.push(item.change);
        continue;
      }
      let entries = persistence.get(item.service);
      if (!entries) persistence.set(item.service, entries = []);
      entries.push(
        item.ttl === undefined
          ? [item.client, item.server]
          : [item.client, item.server, Math.max(0, item.ttl - (now - (item.at ?? now)))],
      );
    }
    const batch: ShareBatch = { from: this.#o.name, persistence: Object.fromEntries(persistence), servers };
    this.#exchange(peer, "push", (signal) => this.#o.transport.push(peer.url, batch, signal))
      .then((ok) => {
        if (ok) {
          peer.counts.pushes++;
          peer.counts.pushed_changes += taken.length;
          // The peer answers again after changes for it were dropped: both sides send each other everything.
          if (peer.lost) {
            peer.synced = false;
            peer.snapshotAt = 0;
            peer.resend = true;
          }
          return;
        }
        peer.counts.failed_pushes++;
        // Back in the queue where there is room. A newer change to the same server queued meanwhile keeps what it
        // sets, and takes from the failed one what it does not (a weight after an earlier drain).
        for (const [key, item] of taken) {
          const queued = peer.queue.get(key);
          if (queued) {
            if (queued.kind === "s" && item.kind === "s") {
              peer.queue.set(key, { kind: "s", change: { ...item.change, ...queued.change } });
            }
            continue;
          }
          if (peer.queue.size < this.#o.maxQueue) peer.queue.set(key, item);
          else {
            peer.counts.dropped++;
            peer.lost = true;
          }
        }
      });
  }

  #askSnapshot(peer: Peer): void {
    const window: Window = { keys: new Set(), overflow: false };
    this.#windows.add(window);
    this.#exchange(peer, "snapshot", async (signal) => {
      try {
        await this.#applySnapshot(await this.#o.transport.snapshot(peer.url, signal), window, signal);
      } finally {
        this.#windows.delete(window);
      }
    }).then((ok) => {
      if (!ok) {
        peer.counts.failed_snapshots++;
        peer.snapshotAt = this.#o.clock.now() + (this.#o.snapshotRetryMs ?? 2000);
        return;
      }
      peer.synced = true;
      peer.counts.snapshots++;
      if (peer.resend || peer.lost) {
        peer.resend = false;
        peer.lost = false;
        peer.counts.resyncs++;
        this.#queueOurs(peer);
      }
    });
  }

  /**
   * Takes everything held here for `peer`, after changes for it were dropped: fed into its queue as there is room,
   * behind the changes made meanwhile (an item already queued is newer and stays).
   */
  #queueOurs(peer: Peer): void {
    const { persistence, servers } = this.#o.local.snapshot(this.#snapshotMax);
    const at = this.#o.clock.now();
    const items: Item[] = [];
    for (const [service, entries] of Object.entries(persistence)) {
      for (const [client, server, ttl] of entries) {
        items.push({ kind: "p", service, client, server, ttl, at });
      }
    }
    for (const change of servers) items.push({ kind: "s", change });
    // Taken from the back: the most recently used go first.
    peer.backlog = items.reverse();
    this.#refill(peer);
  }

  #refill(peer: Peer): void {
    while (peer.backlog.length > 0 && peer.queue.size < this.#o.maxQueue) {
      const item = peer.backlog.pop()!;
      const key = keyOf(item);
      if (!peer.queue.has(key)) peer.queue.set(key, item);
    }
  }

  /**
   * Runs one exchange with `peer`, aborted after the timeout (on the injected clock) or on stop; true when it worked.
   * The peer stays busy until the call itself has ended, even after it timed out: a late push must not overlap (and
   * then overwrite) the next one. Logs when a peer starts or stops failing, not every failure.
   */
  async #exchange(peer: Peer, what: string, run: (signal: AbortSignal) => Promise<void>): Promise<boolean> {
    peer.inFlight = true;
    const abort = new AbortController();
    const onStop = () => abort.abort(new Error("stopped"));
    this.#abort.signal.addEventListener("abort", onStop, { once: true });
    if (this.#abort.signal.aborted) onStop();
    const timeout = new Promise<never>((_, reject) =>
      abort.signal.addEventListener("abort", () => reject(abort.signal.reason), { once: true })
    );
    const timer = this.#o.clock.setTimeout(
      () => abort.abort(new Error(`no answer within ${this.#o.timeoutMs} ms`)),
      this.#o.timeoutMs,
    );
    const call = run(abort.signal);
    call.catch(() => {}).finally(() => {
      peer.inFlight = false;
      this.#abort.signal.removeEventListener("abort", onStop);
    });
    try {
      await Promise.race([call, timeout]);
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
    }
  }
}

function macrotask(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** The share's series, for /metrics (the same names as in /status, without `_total`). */
const SHARE_SERIES = declareSeries<ShareHub["counts"]>({
  received_changes: { help: "Changes received from peer schedulers", read: (c) => c.received_changes },
  applied: { help: "Received changes applied here", read: (c) => c.applied },
  ignored: {
    help: "Received changes not applied (unknown service or server, or the local config differs)",
    read: (c) => c.ignored,
  },
  skipped: {
    help: "Received changes left out as malformed (the rest of their batch applied)",
    read: (c) => c.skipped,
  },
  superseded: {
    help: "Snapshot items left out because a push of the same item came in while the snapshot was on its way",
    read: (c) => c.superseded,
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
  resyncs: {
    help: "Times everything held here was queued for the peer again after changes for it were dropped",
    read: (p) => p.counts.resyncs,
  },
});

/**
 * Checks a received batch: it comes from the network. The frame (an object with `from`, `persistence` and `servers`,
 * at most `maxEntries` items) must hold, else ShareFormatError; an item that is not what a peer sends is skipped and
 * counted, so one bad item does not cost the rest.
 */
export function parseBatch(body: unknown, maxEntries = MAX_PUSH_ENTRIES): ParsedBatch {
  if (!isRecord(body)) throw new ShareFormatError("expected a JSON object");
  const { from, persistence, servers } = body;
  if (typeof from !== "string" || from.length > MAX_FROM) throw new ShareFormatError('"from" must be a name');
  if (!isRecord(persistence)) {
    throw new ShareFormatError('"persistence" must be an object of service -> pairs');
  }
  if (!Array.isArray(servers)) throw new ShareFormatError('"servers" must be a list');
  let count = servers.length;
  for (const entries of Object.values(persistence)) count += Array.isArray(entries) ? entries.length : 1;
  if (count > maxEntries) {
    throw new ShareFormatError(`${count} changes are more than the ${maxEntries} a batch may hold`);
  }
  const items: Item[] = [];
  let skipped = 0;
  for (const [service, entries] of Object.entries(persistence)) {
    if (!isText(service, MAX_SERVICE) || !Array.isArray(entries)) {
      skipped += Array.isArray(entries) ? entries.length : 1;
      continue;
    }
    for (const e of entries) {
      const ok = Array.isArray(e) && (e.length === 2 || (e.length === 3 && isTtl(e[2]))) &&
        isText(e[0], MAX_ADDRESS) && isText(e[1], MAX_ADDRESS);
      if (!ok) {
        skipped++;
        continue;
      }
      items.push(
        e.length === 3
          ? { kind: "p", service, client: e[0], server: e[1], ttl: e[2] }
          : { kind: "p", service, client: e[0], server: e[1] },
      );
    }
  }
  for (const c of servers) {
    const ok = isRecord(c) && isText(c.service, MAX_SERVICE) && isText(c.server, MAX_ADDRESS) &&
      isRecord(c.config) && isState(c.config.state) && isWeight(c.config.weight) &&
      (c.state === undefined || isState(c.state)) && (c.weight === undefined || isWeight(c.weight));
    if (!ok) {
      skipped++;
      continue;
    }
    const config = c.config as Record<string, unknown>;
    items.push({
      kind: "s",
      change: {
        service: c.service as string,
        server: c.server as string,
        ...(c.state !== undefined ? { state: c.state as AdminState } : {}),
        ...(c.weight !== undefined ? { weight: c.weight as number } : {}),
        config: { state: config.state as AdminState, weight: config.weight as number },
      },
    });
  }
  return { from, items, skipped };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isText(v: unknown, max: number): v is string {
  return typeof v === "string" && v.length > 0 && v.length <= max;
}

function isTtl(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 7 * 24 * 3_600_000;
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
      const persistence = new Map<string, PersistenceEntry[]>();
      const servers: ServerChange[] = [];
      let left = max;
      for (const s of services()) {
        if (s.persistence && left > 0) {
          const entries = s.persistence.export(left);
          left -= entries.length;
          if (entries.length) persistence.set(s.name, entries);
        }
        for (const v of s.servers) {
          // Only servers whose runtime state differs from the config: the rest says nothing a peer's config does not.
          if (v.admin === v.spec.state && v.configuredWeight === v.spec.weight) continue;
          servers.push(serverChangeOf(s.name, v, {}));
        }
      }
      return { persistence: Object.fromEntries(persistence), servers };
    },
    longestPersistence() {
      let longest = 0;
      for (const s of services()) longest = Math.max(longest, s.persistence?.timeoutMs ?? 0);
      return longest;
    },
  };
}

/**
 * The change a server's API route made, for `ShareHub.serverChanged`: the server's whole runtime state (state and
 * weight) once `set` applies, so that a record that holds only the last change (etcd's) still holds all of it.
 */
export function serverChangeOf(
  service: string,
  server: SharedServer,
  set: { readonly state?: AdminState; readonly weight?: number },
): ServerChange {
  return {
    service,
    server: server.key,
    state: set.state ?? server.admin,
    weight: set.weight ?? server.configuredWeight,
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

/** A snapshot's answer was larger than the reader takes. */
export class ShareTooLargeError extends RangeError {
  constructor(readonly url: string, readonly maxBytes: number) {
    super(`Cannot take a snapshot from ${url}: it is larger than ${maxBytes} bytes`);
    this.name = "ShareTooLargeError";
  }
}

/**
 * Pushes and snapshot requests over HTTP with the peers' bearer token. A snapshot's answer is read up to
 * `maxSnapshotBytes` (default: what `snapshotByteCap()` gives) and refused beyond.
 */
export function httpShareTransport(
  token: string,
  fetchFn: typeof fetch = (input, init) => fetch(input, init),
  o: { readonly maxSnapshotBytes?: number } = {},
): ShareTransport {
  const maxBytes = o.maxSnapshotBytes ?? snapshotByteCap();
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
      const url = `${base(peer)}/scheduler/share/snapshot`;
      const response = await post(url, "{}", signal);
      const declared = Number(response.headers.get("content-length") ?? NaN);
      if (declared > maxBytes) {
        await response.body?.cancel();
        throw new ShareTooLargeError(url, maxBytes);
      }
      const chunks: Uint8Array[] = [];
      let size = 0;
      if (response.body) {
        const reader = response.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          size += value.byteLength;
          if (size > maxBytes) {
            await reader.cancel();
            throw new ShareTooLargeError(url, maxBytes);
          }
          chunks.push(value);
        }
      }
      const all = new Uint8Array(size);
      let at = 0;
      for (const chunk of chunks) {
        all.set(chunk, at);
        at += chunk.byteLength;
      }
      return JSON.parse(new TextDecoder().decode(all));
    },
  };
}

/** The name etcd has among a hub's peers. */
export const ETCD_PEER = "etcd";

/** How long after a watch ended with an error the hub is asked to read the prefix again (and watch on from there). */
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
  /** The longest persistence timeout here, in ms, read at each lease grant: the lease is never shorter. */
  readonly longestPersistence?: () => number;
  readonly clock: Clock;
  /** Most persistence keys a snapshot reads. Default 100000. */
  readonly snapshotMax?: number;
}

/**
 * Sharing through etcd: a push writes each change as a key (`<prefix>p/<service>/<client>` holding the server,
 * `<prefix>s/<service>/<server>` holding the server's whole runtime state: state, weight and the writer's config for
 * both), a snapshot reads the server keys and then the persistence keys (each its own range, so that 100,000
 * persistence keys never crowd out server state), and a watch from the revision after the first of those reads feeds
 * the hub what the other boxes write. Persistence keys live under a lease of one and a half times the longer of
 * `ttlMs` and the longest persistence timeout here (one lease serves the writes of half that time), so an entry
 * nobody refreshes leaves etcd but never before a box would forget it; server keys stay until changed, so runtime
 * server state outlives a restart of both boxes while etcd keeps it. Writes go one transaction after another, never
 * two pushes at once, and stop between transactions once the push's signal aborts.
 */
export class EtcdShare implements ShareTransport {
  readonly #o: EtcdShareOptions;
  #lease: { id: string; until: number } | null = null;
  /** The push under way: the next one starts after it. */
  #writing: Promise<void> = Promise.resolve();
  #hooks: { receive(body: unknown): void; resync(): void } | null = null;
  #watch: Watch | null = null;
  #timer: TimerId | null = null;

  constructor(options: EtcdShareOptions) {
    if (!/^\/.*\/$/.test(options.prefix)) {
      throw new RangeError(`Cannot share through etcd: prefix "${options.prefix}" must run from "/" to "/"`);
    }
    this.#o = options;
  }

  async push(_peer: string, batch: ShareBatch, signal: AbortSignal): Promise<void> {
    const before = this.#writing;
    let done!: () => void;
    this.#writing = new Promise((resolve) => done = resolve);
    try {
      await before;
      signal.throwIfAborted();
      await this.#write(batch, signal);
    } finally {
      done();
    }
  }

  async #write(batch: ShareBatch, signal: AbortSignal): Promise<void> {
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
    for (const { service, server, state, weight, config } of batch.servers) {
      ops.push({
        put: {
          key: this.#key("s", service, server),
          value: JSON.stringify({ state, weight, config, from: name }),
        },
      });
    }
    for (let i = 0; i < ops.length; i += TXN_OPS) {
      signal.throwIfAborted();
      await client.txn({ compare: [], success: ops.slice(i, i + TXN_OPS) });
    }
  }

  /** Everything under the prefix; (re)starts the hub's watch from the revision after it when none runs. */
  async snapshot(): Promise<unknown> {
    const { client, prefix } = this.#o;
    const servers = await client.range(`${prefix}s/`, { limit: MAX_SERVER_CHANGES });
    const persistence = await client.range(`${prefix}p/`, {
      limit: this.#o.snapshotMax ?? DEFAULT_SNAPSHOT_MAX,
    });
    // From the first read on: what changed between the reads comes again through the watch, in order.
    this.#watchFrom(servers.revision + 1);
    return this.#batchOf([...servers.kvs, ...persistence.kvs], null);
  }

  /**
   * The hub's feed: what the other boxes write, as it happens. The watch starts once a snapshot has been read, from
   * the revision after it; a watch that ends with an error (etcd unreachable, a compacted revision) makes the hub
   * ask for a snapshot again a second later, which starts a new watch from there.
   */
  readonly feed: ShareFeed = {
    peer: ETCD_PEER,
    start: (hooks) => {
      this.#hooks = hooks;
      return () => {
        this.#hooks = null;
        if (this.#timer !== null) this.#o.clock.clearTimeout(this.#timer);
        this.#timer = null;
        this.#watch?.close();
        this.#watch = null;
      };
    },
  };

  #watchFrom(revision: number): void {
    const hooks = this.#hooks;
    if (!hooks || this.#watch) return;
    const { client, clock, prefix, name } = this.#o;
    const watch: Watch = client.watch(prefix, (events) => {
      const puts = events.filter((e) => e.type === "put");
      // One watch message may carry many transactions: handed on as batches a push may be.
      for (let i = 0; i < puts.length; i += MAX_PUSH_ENTRIES) {
        const batch = this.#batchOf(puts.slice(i, i + MAX_PUSH_ENTRIES), name);
        if (batch.servers.length || Object.keys(batch.persistence).length) hooks.receive(batch);
      }
    }, {
      startRevision: revision,
      onEnd: (error) => {
        if (this.#watch === watch) this.#watch = null;
        if (error && this.#hooks === hooks && this.#timer === null) {
          this.#timer = clock.setTimeout(() => {
            this.#timer = null;
            hooks.resync();
          }, WATCH_RESTART_MS);
        }
      },
    });
    this.#watch = watch;
    watch.ready.catch(() => {});
  }

  #key(kind: "p" | "s", service: string, item: string): string {
    return `${this.#o.prefix}${kind}/${service}/${item}`;
  }

  async #leaseId(): Promise<string> {
    const now = this.#o.clock.now();
    if (this.#lease && now < this.#lease.until) return this.#lease.id;
    const ttl = Math.max(this.#o.ttlMs, this.#o.longestPersistence?.() ?? 0);
    const half = ttl / 2;
    const { id } = await this.#o.client.leaseGrant(Math.ceil((ttl + half) / 1000));
    this.#lease = { id, until: now + half };
    return id;
  }

  /**
   * The changes under the prefix as a batch (the hub checks each item), skipping those written by `skip`; keys that
   * are not `p/` or `s/` with two parts of at most the caps' length, and values that are not JSON objects, are left
   * out. Per-service buckets are a Map: a service named `__proto__` is just a name.
   */
  #batchOf(kvs: readonly { key: string; value: string }[], skip: string | null): ShareBatch {
    const persistence = new Map<string, [string, string][]>();
    const servers: ServerChange[] = [];
    for (const { key, value } of kvs) {
      const m = /^([ps])\/([^/]{1,64})\/([^/]{1,64})$/.exec(key.slice(this.#o.prefix.length));
      if (!m) continue;
      let v: unknown;
      try {
        v = JSON.parse(value);
      } catch {
        continue;
      }
      if (!isRecord(v) || (skip !== null && v.from === skip)) continue;
      const [, kind, service, item] = m;
      if (kind === "p") {
        let entries = persistence.get(service);
        if (!entries) persistence.set(service, entries = []);
        entries.push([item, v.server as string]);
      } else {
        servers.push({
          service,
          server: item,
          ...(v.state !== undefined ? { state: v.state as AdminState } : {}),
          ...(v.weight !== undefined ? { weight: v.weight as number } : {}),
          config: v.config as ServerChange["config"],
        });
      }
    }
    return {
      from: skip === null ? "etcd" : "etcd watch",
      persistence: Object.fromEntries(persistence),
      servers,
    };
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
      longestPersistence: () => deps.local.longestPersistence?.() ?? 0,
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
