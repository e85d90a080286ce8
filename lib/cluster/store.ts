/**
 * What a cluster keeps in etcd when one is configured (`node.cluster.etcd`), so that several control units agree on
 * members and sessions, a restarted node gets its parts back, and a session outlives the node that received it.
 * Without etcd nothing uses this module: the single-box default needs nothing external.
 *
 * Keys, all under one prefix per cluster, `/edgenode/<cluster>/` (values are UTF-8 JSON unless said otherwise):
 *
 *   members/<node>                 {name, api, data, joined_ms, ...}: the node's own info, put under the node's
 *                                  lease (TTL `leaseSeconds`, kept alive at a third of it). A node that stops
 *                                  renewing (dead, cut off) disappears when the lease expires; a clean leave
 *                                  revokes it at once.
 *   sessions/<name>/program        the session's program, as text (not JSON)
 *   sessions/<name>/placement      {AP name: node name} for every AP of the session
 *   sessions/<name>/source         {file, format, on_node_loss}: how to read the program and what a node loss does
 *   sessions/<name>/state          {state, node, at_ms, reason?, attempt?}: "starting", "running", ... as the
 *                                  control unit that acts on the session last wrote it; `node` is that control
 *                                  unit (the session's coordinator), `attempt` the start attempt its parts run
 *   parts/<node>/<session>         {aps: [AP names]}: the node's part of the session (an index by node, written
 *                                  in the same transaction as the placement, so the two never disagree)
 *   uploads/<session>              {modules: {file: source}, kinds: {ref: {entry, info}}}: the modules uploaded
 *                                  with the program and the kinds they declared; only for a session with modules.
 *                                  Outside sessions/, which every node watches: a watch would carry every module
 *                                  to every node. Read where a part is restored or a session adopted; removed with
 *                                  the session.
 *
 * A session's creation puts all its keys in one transaction of at most MAX_SESSION_WRITE bytes.
 *
 * Every value is sealed (lib/cluster/etcd_seal.ts: an HMAC over key and text under a key derived from the cluster
 * token); one that does not verify is refused as if absent, counted in `values_refused` (a session with any leaf
 * refused is refused whole).
 *
 * A session is created in one transaction that requires sessions/<name>/program to be absent (create revision 0):
 * two control units racing on one name get one success and one SessionExistsError. Placement and state changes
 * compare the mod revision they read, so an update based on stale data is refused rather than lost.
 */

import { type Clock, systemClock } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { type EtcdClient, type KeyValue, type TxnOp, type Watch, type WatchEvent } from "./etcd.ts";
import { seal, unseal } from "./etcd_seal.ts";
import type { UploadedKind } from "../node/sessions.ts";

/**
 * The most bytes a session's creation may put in its one etcd transaction: its program, its uploaded modules with
 * their kinds, and the small keys (placement, source, state, parts), each counted as key plus sealed value. etcd
 * refuses a request over its `--max-request-bytes`, 1.5 MiB by default; the quarter MiB left is for the request's
 * own framing. Checked before etcd is asked.
 */
export const MAX_SESSION_WRITE = 1.25 * 1024 * 1024;

/** A session's uploaded modules and their kinds, as kept in etcd. */
export interface StoredUpload {
  readonly modules: Readonly<Record<string, string>>;
  readonly kinds: Readonly<Record<string, UploadedKind>>;
}

/** A session's keys would take more than MAX_SESSION_WRITE bytes in the transaction that creates it. */
export class SessionTooLarge extends Error {
  override name = "SessionTooLarge";
  constructor(readonly session: string, readonly bytes: number) {
    super(
      `Cannot keep session ${session} in etcd: its program, modules and keys take ${bytes} bytes in one transaction, at most ${MAX_SESSION_WRITE} (MAX_SESSION_WRITE, under etcd's --max-request-bytes of 1.5 MiB by default)`,
    );
  }
}

/** What a session's creation writes besides its program and placement. */
export interface NewSession {
  readonly node?: string;
  readonly state?: string;
  readonly attempt?: string;
  readonly source?: SessionSource;
  readonly upload?: StoredUpload;
}

/** A node or session name that cannot be part of a key (empty, a "/", control characters, too long). */
export class StoreKeyError extends Error {
  override name = "StoreKeyError";
  constructor(readonly what: string, readonly value: string) {
    super(
      `Cannot use ${what} ${
        JSON.stringify(value)
      } in an etcd key: 1-128 characters, no "/" or control characters`,
    );
  }
}

/** putSession found the session already in etcd (another control unit created it, or this one did before). */
export class SessionExistsError extends Error {
  override name = "SessionExistsError";
  constructor(readonly session: string) {
    super(`Cannot create session ${session}: it already exists in etcd`);
  }
}

/** An update compared a revision that someone else's write has since replaced. */
export class StaleWriteError extends Error {
  override name = "StaleWriteError";
  constructor(readonly key: string) {
    super(`Cannot update ${key}: it changed since it was read`);
  }
}

export interface MemberInfo {
  readonly api?: string;
  readonly data?: string;
  readonly [more: string]: unknown;
}

export interface Member {
  readonly name: string;
  readonly info: MemberInfo;
  /** When it (re)joined, by its own clock. */
  readonly joinedMs: number;
}

export interface SessionState {
  readonly state: string;
  /** The node whose control unit wrote this state. */
  readonly node: string;
  readonly at_ms: number;
  readonly reason?: string;
  /** The start attempt the parts run (lib/cluster/parts.ts): a restored part takes it again. */
  readonly attempt?: string;
}

/** How the program reads and what the loss of a node does to the session. */
export interface SessionSource {
  readonly file: string;
  readonly format: string;
  readonly on_node_loss: string;
}

/** What the store did, for /status. */
export interface StoreFigures {
  sessions_created: number;
  sessions_refused: number;
  sessions_removed: number;
  placements_updated: number;
  states_written: number;
  stale_writes: number;
  /** Values read that carry no valid seal (written by someone without the cluster token), refused. */
  values_refused: number;
  /** The key of the last value refused. */
  last_refused_key: string | null;
}

export interface StoredSession {
  readonly name: string;
  readonly program: string;
  readonly placement: Readonly<Record<string, string>>;
  readonly state: SessionState | undefined;
  readonly source: SessionSource | undefined;
  /** The modules uploaded with the program, when there were any and the session was read with them. */
  readonly upload?: StoredUpload;
  /** Mod revision of the placement key: pass it back to updatePlacement. */
  readonly placementRevision: number;
  /** Mod revision of the state key (0 when there is none). */
  readonly stateRevision: number;
}

export interface NodePart {
  readonly session: string;
  /** The node's APs in it. */
  readonly aps: readonly string[];
  readonly program: string;
  readonly placement: Readonly<Record<string, string>>;
  readonly state: SessionState | undefined;
  readonly source: SessionSource | undefined;
  readonly upload?: StoredUpload;
}

export interface StoreOptions {
  readonly etcd: EtcdClient;
  readonly cluster: string;
  /** Seals every value written and checks every value read (etcdSecrets(token).valueKey). */
  readonly valueKey: Uint8Array;
  readonly clock?: Clock;
  /** A member's lease TTL in seconds (etcd's minimum is about 2). Default 10. */
  readonly leaseSeconds?: number;
  /** Key prefix root; default "/edgenode". */
  readonly root?: string;
  /** A failed keepalive or rejoin is reported here (it is retried on the next tick). */
  readonly onError?: (error: Error) => void;
}

/** A membership kept alive; `leave()` revokes the lease so the node is gone at once. */
export interface Membership {
  readonly node: string;
  /** The lease now held (changes when an expired lease is replaced). */
  readonly lease: () => string;
  /** Renewals and rejoins so far. */
  readonly counts: { renewals: number; rejoins: number; failures: number };
  leave(): Promise<void>;
  /** Stops renewing and keeps the lease: the member stays listed until it expires (a node stopping to restart). */
  halt(): void;
}

// deno-lint-ignore no-control-regex -- control characters are exactly what a key part may not hold
const KEY_PART = /^[^/\x00-\x1f\x7f]{1,128}$/;
/** How many sessions one listing takes in (a bound on what one call holds). */
const MAX_LIST = 10_000;

export class ClusterStore {
  readonly prefix: string;
  readonly figures: StoreFigures = {
    sessions_created: 0,
    sessions_refused: 0,
    sessions_removed: 0,
    placements_updated: 0,
    states_written: 0,
    stale_writes: 0,
    values_refused: 0,
    last_refused_key: null,
  };
  readonly #etcd: EtcdClient;
  readonly #valueKey: Uint8Array;
  readonly #clock: Clock;
  readonly #leaseSeconds: number;
  readonly #onError: (error: Error) => void;

  constructor(o: StoreOptions) {
    checkPart("cluster name", o.cluster);
    this.prefix = `${o.root ?? "/edgenode"}/${o.cluster}/`;
    this.#etcd = o.etcd;
    this.#valueKey = o.valueKey;
    this.#clock = o.clock ?? systemClock;
    this.#leaseSeconds = o.leaseSeconds ?? 10;
    this.#onError = o.onError ?? (() => {});
  }

  memberKey(node: string): string {
    return `${this.prefix}members/${checkPart("node name", node)}`;
  }

  sessionKey(name: string, leaf: "program" | "placement" | "state" | "source"): string {
    return `${this.prefix}sessions/${checkPart("session name", name)}/${leaf}`;
  }

  uploadKey(name: string): string {
    return `${this.prefix}uploads/${checkPart("session name", name)}`;
  }

  partKey(node: string, session: string): string {
    return `${this.prefix}parts/${checkPart("node name", node)}/${checkPart("session name", session)}`;
  }

  /**
   * Puts `members/<node>` under a fresh lease and keeps the lease alive every third of its TTL. If the lease was lost
   * (etcd unreachable longer than the TTL), the node joins again with a new one. Resolves once the first put is done.
   */
  async join(node: string, info: MemberInfo): Promise<Membership> {
    const key = this.memberKey(node);
    const value = JSON.stringify({ ...info, name: node, joined_ms: this.#clock.now() });
    let lease = await this.#grantAndPut(key, value);
    const counts = { renewals: 0, rejoins: 0, failures: 0 };
    let timer: number | undefined;
    let left = false;
    const tick = async () => {
      try {
        const ttl = await this.#etcd.leaseKeepAlive(lease);
        if (left) return;
        if (ttl > 0) counts.renewals++;
        else {
          lease = await this.#grantAndPut(key, value);
          counts.rejoins++;
        }
      } catch (error) {
        counts.failures++;
        this.#onError(error instanceof Error ? error : new Error(errorMessage(error)));
      }
      if (!left) timer = this.#clock.setTimeout(tick, this.#renewMs());
    };
    timer = this.#clock.setTimeout(tick, this.#renewMs());
    return {
      node,
      lease: () => lease,
      counts,
      leave: async () => {
        left = true;
        if (timer !== undefined) this.#clock.clearTimeout(timer);
        await this.#etcd.leaseRevoke(lease);
      },
      halt: () => {
        left = true;
        if (timer !== undefined) this.#clock.clearTimeout(timer);
      },
    };
  }

  /** The members whose leases are alive, by name. */
  async members(): Promise<Member[]> {
    const { kvs } = await this.#etcd.range(`${this.prefix}members/`, { limit: MAX_LIST });
    return kvs.map((kv) => this.#member(kv.key.slice(`${this.prefix}members/`.length), kv))
      .filter((m): m is Member => m !== undefined);
  }

  /**
   * Calls `onChange` with the whole member list now and after every join, leave or lease expiry. Returns once the
   * watch runs. A watch that breaks for good (etcd compacted past it) starts over with a fresh listing.
   */
  async watchMembers(
    onChange: (members: Member[]) => void,
  ): Promise<{ close(): void }> {
    const dir = `${this.prefix}members/`;
    return await this.#restartingWatch(async (onEnd) => {
      const { kvs, revision } = await this.#etcd.range(dir, { limit: MAX_LIST });
      const known = new Map<string, Member>();
      for (const kv of kvs) {
        const m = this.#member(kv.key.slice(dir.length), kv);
        if (m) known.set(m.name, m);
      }
      onChange([...known.values()]);
      return this.#etcd.watch(dir, (events: WatchEvent[]) => {
        for (const e of events) {
          const name = e.key.slice(dir.length);
          const m = e.type === "put" ? this.#member(name, e) : undefined;
          if (m) known.set(name, m);
          else known.delete(name);
        }
        onChange([...known.values()].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      }, { startRevision: revision + 1, onEnd });
    });
  }

  /**
   * Creates the session: its program, placement, first state and every node's part, in one transaction that
   * requires the session to be new. Throws SessionExistsError when it is not.
   */
  async putSession(
    name: string,
    program: string,
    placement: Readonly<Record<string, string>>,
    o: NewSession = {},
  ): Promise<StoredSession> {
    const programKey = this.sessionKey(name, "program");
    const { ops, state } = this.#newSession(name, program, placement, o);
    const bytes = opBytes(ops);
    if (bytes > MAX_SESSION_WRITE) throw new SessionTooLarge(name, bytes);
    const r = await this.#etcd.txn({
      compare: [{ key: programKey, target: "create", value: 0 }],
      success: ops,
    });
    if (!r.succeeded) {
      this.figures.sessions_refused++;
      throw new SessionExistsError(name);
    }
    this.figures.sessions_created++;
    return {
      name,
      program,
      placement,
      state,
      source: o.source,
      ...(o.upload ? { upload: o.upload } : {}),
      placementRevision: r.revision,
      stateRevision: r.revision,
    };
  }

  /** The bytes `putSession` would write in its transaction (see MAX_SESSION_WRITE). */
  sessionWriteBytes(
    name: string,
    program: string,
    placement: Readonly<Record<string, string>>,
    o: NewSession = {},
  ): number {
    return opBytes(this.#newSession(name, program, placement, o).ops);
  }

  #newSession(
    name: string,
    program: string,
    placement: Readonly<Record<string, string>>,
    o: NewSession,
  ): { ops: TxnOp[]; state: SessionState } {
    const state: SessionState = {
      state: o.state ?? "starting",
      node: o.node ?? "",
      at_ms: this.#clock.now(),
      ...(o.attempt ? { attempt: o.attempt } : {}),
    };
    const ops: TxnOp[] = [
      this.#put(this.sessionKey(name, "program"), program),
      this.#put(this.sessionKey(name, "placement"), JSON.stringify(placement)),
      this.#put(this.sessionKey(name, "state"), JSON.stringify(state)),
      ...(o.source ? [this.#put(this.sessionKey(name, "source"), JSON.stringify(o.source))] : []),
      ...(o.upload ? [this.#put(this.uploadKey(name), JSON.stringify(o.upload))] : []),
      ...this.#partOps(name, placement),
    ];
    return { ops, state };
  }

  /**
   * The session as stored, or undefined; with `upload`, its uploaded modules too, read in the same revision (a
   * restore or an adoption needs them, other readers not).
   */
  async session(name: string, o: { upload?: boolean } = {}): Promise<StoredSession | undefined> {
    const dir = `${this.prefix}sessions/${checkPart("session name", name)}/`;
    if (!o.upload) return this.#storedSession(name, dir, (await this.#etcd.range(dir)).kvs);
    const r = await this.#etcd.txn({
      compare: [],
      success: [{ get: { key: dir, prefix: true } }, { get: { key: this.uploadKey(name) } }],
    });
    const stored = this.#storedSession(name, dir, r.gets[0] ?? []);
    const kv = r.gets[1]?.[0];
    if (!stored || !kv) return stored;
    // An upload that does not verify refuses the session whole, as any of its values would.
    const upload = this.#upload(kv);
    return upload ? { ...stored, upload } : undefined;
  }

  /** The modules uploaded with a session, or undefined (none, or a value that does not verify). */
  async upload(name: string): Promise<StoredUpload | undefined> {
    const kv = await this.#etcd.get(this.uploadKey(name));
    return kv ? this.#upload(kv) : undefined;
  }

  /** Every stored session, by name, without their modules (`upload(name)` reads a session's). */
  async sessions(): Promise<StoredSession[]> {
    const dir = `${this.prefix}sessions/`;
    const { kvs } = await this.#etcd.range(dir, { limit: MAX_LIST * 3 });
    const byName = new Map<string, KeyValue[]>();
    for (const kv of kvs) {
      const name = kv.key.slice(dir.length).split("/")[0];
      const list = byName.get(name) ?? [];
      list.push(kv);
      byName.set(name, list);
    }
    return [...byName].map(([name, list]) => this.#storedSession(name, `${dir}${name}/`, list))
      .filter((s): s is StoredSession => s !== undefined);
  }

  /** The parts `node` runs: what a node restarted (or taking over) starts again, with each session's program. */
  async sessionsOf(node: string): Promise<NodePart[]> {
    const dir = `${this.prefix}parts/${checkPart("node name", node)}/`;
    const { kvs } = await this.#etcd.range(dir, { limit: MAX_LIST });
    const parts: NodePart[] = [];
    for (const kv of kvs) {
      const name = kv.key.slice(dir.length);
      if (this.#open(kv.key, kv.value) === undefined) continue;
      const stored = await this.session(name, { upload: true });
      // A part whose session went in between (removed by another control unit) is no part any more.
      if (!stored) continue;
      const aps = Object.entries(stored.placement).filter(([, n]) => n === node).map(([ap]) => ap).sort();
      parts.push({
        session: name,
        aps,
        program: stored.program,
        placement: stored.placement,
        state: stored.state,
        source: stored.source,
        ...(stored.upload ? { upload: stored.upload } : {}),
      });
    }
    return parts;
  }

  /**
   * Replaces the placement (a part moved to another node) if it is still the one read at `revision`; the parts
   * index follows in the same transaction. Returns the new revision; StaleWriteError when someone changed it first.
   */
  async updatePlacement(
    name: string,
    placement: Readonly<Record<string, string>>,
    revision: number,
  ): Promise<number> {
    const key = this.sessionKey(name, "placement");
    const old = await this.session(name);
    const oldNodes = new Set(Object.values(old?.placement ?? {}));
    const newNodes = new Set(Object.values(placement));
    const ops: TxnOp[] = [
      this.#put(key, JSON.stringify(placement)),
      ...[...oldNodes].filter((n) => !newNodes.has(n)).map((n) => ({
        delete: { key: this.partKey(n, name) },
      })),
      ...this.#partOps(name, placement),
    ];
    const r = await this.#etcd.txn({ compare: [{ key, target: "mod", value: revision }], success: ops });
    if (!r.succeeded) {
      this.figures.stale_writes++;
      throw new StaleWriteError(key);
    }
    this.figures.placements_updated++;
    return r.revision;
  }

  /** Writes the session's state; with `revision`, only if the state is still the one read then. */
  async setState(
    name: string,
    state: Omit<SessionState, "at_ms">,
    o: { revision?: number } = {},
  ): Promise<number> {
    const key = this.sessionKey(name, "state");
    const value = seal(this.#valueKey, key, JSON.stringify({ ...state, at_ms: this.#clock.now() }));
    const r = await this.#etcd.txn({
      compare: [
        { key: this.sessionKey(name, "program"), target: "create", result: "not_equal", value: 0 },
        ...(o.revision !== undefined ? [{ key, target: "mod" as const, value: o.revision }] : []),
      ],
      success: [{ put: { key, value } }],
    });
    if (!r.succeeded) {
      this.figures.stale_writes++;
      throw new StaleWriteError(key);
    }
    this.figures.states_written++;
    return r.revision;
  }

  /** Removes the session and every node's part of it; false when there was none. */
  async removeSession(name: string): Promise<boolean> {
    const stored = await this.session(name);
    if (!stored) return false;
    const dir = `${this.prefix}sessions/${name}/`;
    const nodes = new Set(Object.values(stored.placement));
    const r = await this.#etcd.txn({
      compare: [{ key: this.sessionKey(name, "program"), target: "create", result: "not_equal", value: 0 }],
      success: [
        { delete: { key: dir, prefix: true } },
        { delete: { key: this.uploadKey(name) } },
        ...[...nodes].map((n) => ({ delete: { key: this.partKey(n, name) } })),
      ],
    });
    if (r.succeeded) this.figures.sessions_removed++;
    return r.succeeded;
  }

  /**
   * Calls `onEvent` for every change of a session's state (`state`) and for every session removed (`removed`), as
   * they happen, until `close()`. A watch that breaks for good starts over from now.
   */
  async watchSessions(
    onEvent: (
      e: { type: "state"; name: string; state: SessionState } | { type: "removed"; name: string },
    ) => void,
  ): Promise<{ close(): void }> {
    const dir = `${this.prefix}sessions/`;
    return await this.#restartingWatch((onEnd) =>
      Promise.resolve(this.#etcd.watch(dir, (events: WatchEvent[]) => {
        for (const e of events) {
          const [name, leaf] = e.key.slice(dir.length).split("/");
          if (!name || !KEY_PART.test(name)) continue;
          if (leaf === "program" && e.type === "delete") onEvent({ type: "removed", name });
          else if (leaf === "state" && e.type === "put") {
            const state = parseObject(this.#open(e.key, e.value) ?? "") as SessionState | undefined;
            if (state && typeof state.node === "string") onEvent({ type: "state", name, state });
          }
        }
      }, { onEnd }))
    );
  }

  /**
   * Runs the watch `open` makes and, each time it ends in error (etcd compacted past it), reports the error and opens
   * it again, until `close()`. Returns once the first one runs.
   */
  async #restartingWatch(
    open: (onEnd: (error?: Error) => void) => Promise<Watch>,
  ): Promise<{ close(): void }> {
    let closed = false;
    let current: Watch | undefined;
    const onEnd = (error?: Error) => {
      if (closed || !error) return;
      this.#onError(error);
      start().catch((e) => this.#onError(e instanceof Error ? e : new Error(errorMessage(e))));
    };
    const start = async (): Promise<void> => {
      const watch = await open(onEnd);
      current = watch;
      await watch.ready;
    };
    await start();
    return {
      close: () => {
        closed = true;
        current?.close();
      },
    };
  }

  #partOps(name: string, placement: Readonly<Record<string, string>>): TxnOp[] {
    const byNode = new Map<string, string[]>();
    for (const [ap, node] of Object.entries(placement)) {
      const list = byNode.get(node) ?? [];
      list.push(ap);
      byNode.set(node, list);
    }
    return [...byNode].map(([node, aps]) =>
      this.#put(this.partKey(node, name), JSON.stringify({ aps: aps.sort() }))
    );
  }

  #put(key: string, text: string): TxnOp {
    return { put: { key, value: seal(this.#valueKey, key, text) } };
  }

  /** The text of a value read at `key`; undefined (counted) when its seal does not verify. */
  #open(key: string, value: string): string | undefined {
    const text = unseal(this.#valueKey, key, value);
    if (text === undefined) {
      this.figures.values_refused++;
      this.figures.last_refused_key = key;
    }
    return text;
  }

  #member(name: string, kv: { key: string; value: string }): Member | undefined {
    if (!KEY_PART.test(name)) return undefined;
    const text = this.#open(kv.key, kv.value);
    return text === undefined ? undefined : member(name, text);
  }

  /** A session from its keys; undefined when its program is absent or any of its values does not verify. */
  #storedSession(name: string, dir: string, kvs: readonly KeyValue[]): StoredSession | undefined {
    const opened: KeyValue[] = [];
    for (const kv of kvs) {
      const text = this.#open(kv.key, kv.value);
      if (text === undefined) return undefined;
      opened.push({ ...kv, value: text });
    }
    return storedSession(name, dir, opened);
  }

  /** An upload value read; undefined (a value refused is counted) when it does not verify or is no upload. */
  #upload(kv: KeyValue): StoredUpload | undefined {
    const upload = parseObject(this.#open(kv.key, kv.value) ?? "");
    if (!upload || typeof upload.modules !== "object" || typeof upload.kinds !== "object") return undefined;
    return upload as unknown as StoredUpload;
  }

  async #grantAndPut(key: string, value: string): Promise<string> {
    const { id } = await this.#etcd.leaseGrant(this.#leaseSeconds);
    await this.#etcd.put(key, seal(this.#valueKey, key, value), { lease: id });
    return id;
  }

  #renewMs(): number {
    return Math.max(200, Math.floor(this.#leaseSeconds * 1000 / 3));
  }
}

function checkPart(what: string, value: string): string {
  if (!KEY_PART.test(value)) throw new StoreKeyError(what, value);
  return value;
}

function member(name: string, value: string): Member | undefined {
  if (!KEY_PART.test(name)) return undefined;
  const info = parseObject(value);
  if (!info) return undefined;
  return { name, info: info as MemberInfo, joinedMs: Number(info.joined_ms ?? 0) };
}

function storedSession(name: string, dir: string, kvs: readonly KeyValue[]): StoredSession | undefined {
  const leaf = (l: string) => kvs.find((kv) => kv.key === dir + l);
  const program = leaf("program");
  if (!program) return undefined;
  const placementKv = leaf("placement");
  const stateKv = leaf("state");
  const source = parseObject(leaf("source")?.value ?? "") as SessionSource | undefined;
  const placement: Record<string, string> = {};
  for (const [ap, node] of Object.entries(parseObject(placementKv?.value ?? "") ?? {})) {
    if (typeof node === "string") placement[ap] = node;
  }
  const state = parseObject(stateKv?.value ?? "") as SessionState | undefined;
  return {
    name,
    program: program.value,
    placement,
    state,
    source,
    placementRevision: placementKv?.modRevision ?? 0,
    stateRevision: stateKv?.modRevision ?? 0,
  };
}

/** What a transaction's puts weigh: every key and value, in UTF-8 bytes. */
function opBytes(ops: readonly TxnOp[]): number {
  const encoder = new TextEncoder();
  let bytes = 0;
  for (const op of ops) {
    if ("put" in op) bytes += encoder.encode(op.put.key).length + encoder.encode(op.put.value).length;
  }
  return bytes;
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(text);
    return v && typeof v === "object" && !Array.isArray(v) ? v : undefined;
  } catch {
    return undefined;
  }
}
