/**
 * A node's life in etcd when `node.cluster.etcd` is set (lib/cluster/store.ts has the keys): it joins with a lease
 * (kept alive; not revoked on a stop, so a restart within the lease's TTL looks like no loss at all), watches the
 * members (a peer whose lease expired is lost for the heartbeats too), brings back the parts etcd lists for it
 * (prepare and commit here, under the stored attempt and coordinator), and takes over coordination of sessions whose
 * coordinator is no member any more. The rule is simple on purpose: the lowest-named live member holding a part of
 * the session takes it over, by a compare-and-set of the session's state in etcd, so only one does. Its watch of the
 * sessions lets go of what another control unit stopped or coordinates now. Until etcd answers, it retries every
 * `retryMs` and /status shows the last error; nothing else of the node waits for it.
 */
import type { Clock, TimerId } from "../core/clock.ts";
import { etcdSecrets } from "./etcd_seal.ts";
import { errorMessage } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { PROGRAM_FORMATS, type ProgramFormat } from "../graph/program.ts";
import { attemptId, type Coordinator } from "./coordinator.ts";
import type { EtcdClient } from "./etcd.ts";
import type { PartHost } from "./parts.ts";
import {
  type ClusterStore,
  type MemberInfo,
  type Membership,
  type SessionState,
  StaleWriteError,
  type StoredSession,
} from "./store.ts";

/** Session states whose parts a restarted node brings back. */
const RESTORED_STATES = new Set(["running", "restarting"]);

export interface EtcdFigures {
  parts_restored: number;
  parts_restore_failed: number;
  takeovers: number;
  errors: number;
}

export interface EtcdSyncOptions {
  readonly self: string;
  readonly info: MemberInfo;
  readonly store: ClusterStore;
  readonly client: EtcdClient;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly coordinator: Coordinator;
  readonly parts: PartHost;
  /** After a failed join, try again this much later. */
  readonly retryMs: number;
}

/**
 * A cluster's directory in etcd from the shared token: clusters sharing one etcd stay apart, and nothing else is
 * configured. HMAC of the token under its own label (lib/cluster/etcd_seal.ts).
 */
export function clusterId(token: string): Promise<string> {
  return Promise.resolve(etcdSecrets(token).prefix);
}

const BUSY_HERE: ReadonlySet<string> = new Set(["running", "starting", "restarting", "stopping"]);

export class EtcdSync {
  readonly figures: EtcdFigures = { parts_restored: 0, parts_restore_failed: 0, takeovers: 0, errors: 0 };
  #state: "joining" | "joined" | "stopped" = "joining";
  #lastError: { at: string; message: string } | undefined;
  #membership: Membership | undefined;
  /** Live members as etcd lists them (undefined until the first listing). */
  #members: Set<string> | undefined;
  /** Peers seen as members whose lease has gone since. */
  readonly #gone = new Set<string>();
  readonly #watches: { close(): void }[] = [];
  #timer: TimerId | null = null;
  /** Takeover rounds run one at a time. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: EtcdSyncOptions) {}

  /** Joins in the background (retrying until etcd answers); `ready` settles after the first successful join. */
  start(): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    const attempt = async () => {
      this.#timer = null;
      if (this.#state === "stopped") return resolve();
      try {
        await this.#connect();
        resolve();
      } catch (error) {
        this.#error("joining etcd", error);
        this.#close();
        if (!this.#stopped()) this.#timer = this.o.clock.setTimeout(attempt, this.o.retryMs);
      }
    };
    attempt();
    return promise;
  }

  /** The session as etcd holds it (a stop asked on a node that does not coordinate it). */
  session(name: string): Promise<StoredSession | undefined> {
    return this.o.store.session(name);
  }

  /** Whether etcd lists `node` as a live member now. */
  isMember(node: string): boolean {
    return this.#members?.has(node) ?? false;
  }

  /** False when `peer`'s membership lease expired since it was seen (the heartbeats then call it lost). */
  alive(peer: string): boolean {
    return !this.#gone.has(peer);
  }

  status(): Record<string, unknown> {
    return {
      state: this.#state,
      endpoints: this.o.client.endpoints,
      prefix: this.o.store.prefix,
      lease: this.#membership?.lease() ?? null,
      membership: this.#membership?.counts ?? null,
      members: this.#members ? [...this.#members].sort() : null,
      gone: [...this.#gone].sort(),
      last_error: this.#lastError ?? null,
      ...this.figures,
      store: this.o.store.figures,
      client: this.o.client.status(),
    };
  }

  /** Stops renewing and watching; the lease is kept, so peers see no loss if the node is back within its TTL. */
  stop(): void {
    this.#state = "stopped";
    if (this.#timer !== null) this.o.clock.clearTimeout(this.#timer);
    this.#timer = null;
    this.#close();
  }

  async #connect(): Promise<void> {
    const { store, self } = this.o;
    this.#membership = await store.join(self, this.o.info);
    if (this.#state === "stopped") return this.#membership.halt();
    this.#watches.push(await store.watchMembers((list) => this.#onMembers(list.map((m) => m.name))));
    this.#watches.push(await store.watchSessions((e) => this.#onSession(e)));
    await this.#restore();
    this.#state = "joined";
    this.o.logger.info("joined etcd", { prefix: store.prefix, lease: this.#membership.lease() });
    // A failed round is retried at the next membership change; the node stays joined meanwhile.
    await this.#serial(() => this.#takeOver()).catch((error) => this.#error("taking over sessions", error));
  }

  #close(): void {
    for (const w of this.#watches.splice(0)) w.close();
    this.#membership?.halt();
  }

  #onMembers(names: string[]): void {
    const now = new Set(names);
    let lost = false;
    for (const n of this.#members ?? []) {
      if (!now.has(n) && n !== this.o.self) {
        this.#gone.add(n);
        lost = true;
        this.o.logger.warn("cluster member's lease gone", { node: n });
      }
    }
    for (const n of now) this.#gone.delete(n);
    this.#members = now;
    if (lost && this.#state === "joined") {
      this.#serial(() => this.#takeOver()).catch((error) => this.#error("taking over sessions", error));
    }
  }

  #onSession(
    e: { type: "state"; name: string; state: SessionState } | { type: "removed"; name: string },
  ): void {
    const { coordinator, parts, self } = this.o;
    if (e.type === "state") {
      if (e.state.node === self || !e.state.node) return;
      parts.setCoordinator(e.name, e.state.node);
      coordinator.release(e.name, `coordinated by ${e.state.node} now`, { to: e.state.node });
      return;
    }
    coordinator.release(e.name, "stopped by another control unit (removed from etcd)");
    if (!parts.has(e.name)) return;
    // A part whose session is gone from etcd stops here too (this node may have missed the stop), unless a new
    // session of the same name was written meanwhile.
    this.o.store.session(e.name).then(async (now) => {
      if (now && Object.values(now.placement).includes(self)) return;
      if (await parts.stop(e.name) !== "none") {
        this.o.logger.info("session part stopped: the session was removed from etcd", { session: e.name });
      }
    }).catch((error) => this.#error(`stopping part ${e.name}`, error));
  }

  /** Brings back this node's parts as etcd lists them. */
  async #restore(): Promise<void> {
    const { store, parts, self } = this.o;
    for (const part of await store.sessionsOf(self)) {
      if (!part.state || !RESTORED_STATES.has(part.state.state) || part.aps.length === 0) continue;
      const format = (PROGRAM_FORMATS as readonly string[]).includes(part.source?.format ?? "")
        ? part.source!.format as ProgramFormat
        : "dipronn";
      try {
        const restored = await parts.restore(part.session, {
          text: part.program,
          file: part.source?.file ?? "<etcd>",
          format,
          nodeOf: part.placement,
          coordinator: part.state.node || self,
          attempt: part.state.attempt ?? attemptId(),
          // The node loads only the uploaded APs it runs (the rest are checked by their kinds).
          ...(part.upload ? { modules: part.upload.modules, kinds: part.upload.kinds } : {}),
        });
        if (restored) {
          this.figures.parts_restored++;
          this.o.logger.info("session part restored from etcd", {
            session: part.session,
            aps: part.aps.join(","),
          });
        }
      } catch (error) {
        this.figures.parts_restore_failed++;
        this.#error(`restoring part ${part.session}`, error);
      }
    }
  }

  /**
   * Sessions whose coordinator is no live member: the lowest-named live member holding a part takes each over
   * (compare-and-set of its state, so one does). A session this node coordinated before a restart is resumed.
   * One left mid-start or mid-stop is stopped (all or nothing).
   */
  async #takeOver(): Promise<void> {
    const live = this.#members;
    if (!live || this.#state !== "joined") return;
    const { store, coordinator, self } = this.o;
    for (const s of await store.sessions()) {
      const old = s.state?.node ?? "";
      if (old === self) {
        // Running here, or this node's own start, restart or stop is under way: its outcome decides.
        if (BUSY_HERE.has(coordinator.get(s.name)?.state ?? "")) continue;
        coordinator.adopt(s.name, await this.#withUpload(s), {
          reason: "resumed from etcd after this node's restart",
        });
        if (s.state && !RESTORED_STATES.has(s.state.state)) await coordinator.stop(s.name);
        continue;
      }
      if (old && live.has(old)) continue;
      const holders = [...new Set(Object.values(s.placement))].filter((n) => live.has(n)).sort();
      if (holders[0] !== self) continue;
      const reason = `coordinator ${old || "(none)"} gone from etcd; taken over by ${self}`;
      try {
        await store.setState(
          s.name,
          { state: s.state?.state ?? "running", node: self, attempt: s.state?.attempt, reason },
          { revision: s.stateRevision },
        );
      } catch (error) {
        if (error instanceof StaleWriteError) continue; // another member was first
        throw error;
      }
      this.figures.takeovers++;
      const waiting = [...new Set(Object.values(s.placement))].filter((n) => !live.has(n));
      coordinator.adopt(s.name, await this.#withUpload(s), { reason, waiting });
      this.o.logger.warn("session coordination taken over", {
        session: s.name,
        from: old,
        waiting: waiting.join(","),
      });
      if (s.state && !RESTORED_STATES.has(s.state.state)) await coordinator.stop(s.name);
    }
  }

  /** A session listed from etcd with its uploaded modules, which a restart it coordinates sends again. */
  async #withUpload(s: StoredSession): Promise<StoredSession> {
    const upload = await this.o.store.upload(s.name);
    return upload ? { ...s, upload } : s;
  }

  #stopped(): boolean {
    return this.#state === "stopped";
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(fn, fn);
    this.#queue = next.catch(() => {});
    return next;
  }

  #error(what: string, error: unknown): void {
    this.figures.errors++;
    this.#lastError = {
      at: new Date(this.o.clock.now()).toISOString(),
      message: `${what}: ${errorMessage(error)}`,
    };
    this.o.logger.warn("etcd", { what, error: errorMessage(error) });
  }
}
