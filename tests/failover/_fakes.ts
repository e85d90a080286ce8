/** Stand-ins for a service and its servers, as lib/scheduler/share.ts sees them (SharedService, SharedServer), and etcd. */
import type { AdminState } from "../../lib/scheduler/config.ts";
import type { PersistenceTable } from "../../lib/scheduler/persistence.ts";
import type { EtcdShareClient, SharedServer, SharedService } from "../../lib/scheduler/share.ts";
import type { KeyValue, TxnResult, Watch, WatchEvent, WatchOptions } from "../../lib/cluster/etcd.ts";

export class FakeServer implements SharedServer {
  admin: AdminState;
  configuredWeight: number;
  constructor(readonly key: string, readonly spec: { state: AdminState; weight: number }) {
    this.admin = spec.state;
    this.configuredWeight = spec.weight;
  }
  setAdmin(state: AdminState): void {
    this.admin = state;
  }
}

export class FakeService implements SharedService {
  changes = 0;
  constructor(
    readonly name: string,
    readonly servers: FakeServer[],
    readonly persistence: PersistenceTable | null,
  ) {}
  changed(): void {
    this.changes++;
  }
}

/**
 * An in-memory etcd for EtcdShare (what EtcdShareClient asks for): puts in transactions, each transaction one
 * revision; ranges in key order with a limit; watches that replay from `startRevision`. `gate`, while set, holds
 * every transaction until it resolves.
 */
export class FakeEtcd implements EtcdShareClient {
  revision = 1;
  readonly kvs = new Map<string, { value: string; lease: string; modRevision: number }>();
  readonly history: WatchEvent[] = [];
  readonly txns: number[] = [];
  readonly ranges: string[] = [];
  readonly leases: number[] = [];
  readonly watches: { prefix: string; startRevision: number | undefined; closed: boolean }[] = [];
  readonly #watchers = new Set<{ prefix: string; onEvents: (e: WatchEvent[]) => void }>();
  gate: Promise<void> | null = null;

  async txn(t: Parameters<EtcdShareClient["txn"]>[0]): Promise<TxnResult> {
    if (this.gate) await this.gate;
    const revision = ++this.revision;
    this.txns.push(revision);
    const events: WatchEvent[] = [];
    for (const op of t.success) {
      if (!("put" in op)) continue;
      const { key, value, lease } = op.put;
      this.kvs.set(key, { value, lease: lease ?? "0", modRevision: revision });
      events.push({ type: "put", key, value, modRevision: revision });
    }
    this.history.push(...events);
    for (const w of this.#watchers) {
      const mine = events.filter((e) => e.key.startsWith(w.prefix));
      if (mine.length) w.onEvents(mine);
    }
    return { succeeded: true, gets: [], revision };
  }

  range(prefix: string, o: { limit?: number } = {}): Promise<{ kvs: KeyValue[]; revision: number }> {
    this.ranges.push(prefix);
    const kvs = [...this.kvs].filter(([k]) => k.startsWith(prefix)).sort(([a], [b]) => (a < b ? -1 : 1))
      .slice(0, o.limit || undefined)
      .map(([key, v]) => ({
        key,
        value: v.value,
        createRevision: v.modRevision,
        modRevision: v.modRevision,
        version: 1,
        lease: v.lease,
      }));
    return Promise.resolve({ kvs, revision: this.revision });
  }

  leaseGrant(ttlSeconds: number): Promise<{ id: string; ttl: number }> {
    this.leases.push(ttlSeconds);
    return Promise.resolve({ id: String(this.leases.length), ttl: ttlSeconds });
  }

  watch(prefix: string, onEvents: (events: WatchEvent[]) => void, o: WatchOptions = {}): Watch {
    const record = { prefix, startRevision: o.startRevision, closed: false };
    this.watches.push(record);
    const past = this.history.filter((e) =>
      e.key.startsWith(prefix) && e.modRevision >= (o.startRevision ?? Infinity)
    );
    const w = { prefix, onEvents };
    this.#watchers.add(w);
    if (past.length) queueMicrotask(() => onEvents(past));
    return {
      ready: Promise.resolve(),
      close: () => {
        record.closed = true;
        this.#watchers.delete(w);
      },
    };
  }
}
