/**
 * The persistence table, Central Dispatch's "shadow scheduling": a client address that reached a server keeps going
 * to that server while it comes back within an idle timeout. A service consults it before its picker and records the
 * picker's choice after a successful connect.
 *
 * Entries sit in a Map in the order they were last used. Since every entry lives for the same timeout, that is also
 * the order they expire in: expiry and the `maxEntries` bound both remove from the front, so a sweep costs only the
 * entries it removes. A second index from server key to its clients makes `forget(key)` cost that server's entries.
 */
import type { Clock } from "../core/clock.ts";

export interface PersistenceOptions {
  /** How long an entry lives after its last use, in ms (> 0). */
  readonly timeoutMs: number;
  /** Most entries held; at the bound the least recently used one makes room. Default 100000. */
  readonly maxEntries?: number;
  /**
   * Told of an entry a peer should learn: new, moved to another server, or in use and last told over half a timeout
   * ago. Not called for entries that came through `import`.
   */
  readonly onSet?: (client: string, key: string) => void;
}

/** One client's entry as `export` gives it and `import` takes it: the client address and its server's key. */
export type PersistenceEntry = readonly [client: string, key: string];

interface Entry {
  key: string;
  expires: number;
  /** When `onSet` was last told of this entry (-Infinity: never; an imported entry counts as told). */
  told: number;
}

export class PersistenceTable {
  readonly timeoutMs: number;
  readonly maxEntries: number;
  readonly #clock: Clock;
  readonly #onSet: ((client: string, key: string) => void) | undefined;
  /** client -> entry, least recently used first. */
  readonly #entries = new Map<string, Entry>();
  /** server key -> its clients. */
  readonly #byServer = new Map<string, Set<string>>();

  constructor(clock: Clock, options: PersistenceOptions) {
    const { timeoutMs, maxEntries = 100_000, onSet } = options;
    if (!(timeoutMs > 0) || !Number.isFinite(timeoutMs)) {
      throw new RangeError(
        `Cannot create a persistence table: timeout "${timeoutMs}" ms is not a positive number`,
      );
    }
    if (!Number.isInteger(maxEntries) || maxEntries < 1) {
      throw new RangeError(
        `Cannot create a persistence table: maxEntries "${maxEntries}" is not a positive integer`,
      );
    }
    this.#clock = clock;
    this.#onSet = onSet;
    this.timeoutMs = timeoutMs;
    this.maxEntries = maxEntries;
  }

  /** Entries not yet expired. */
  get size(): number {
    this.sweep();
    return this.#entries.size;
  }

  /** The server key `client` persists to, refreshing its timeout; undefined when there is none or it expired. */
  get(client: string): string | undefined {
    const entry = this.#entries.get(client);
    if (!entry) return undefined;
    const now = this.#clock.now();
    if (entry.expires <= now) {
      this.#remove(client, entry);
      return undefined;
    }
    entry.expires = now + this.timeoutMs;
    // Re-inserting moves the entry to the back: the Map stays in order of last use.
    this.#entries.delete(client);
    this.#entries.set(client, entry);
    return entry.key;
  }

  /** Makes `client` persist to server `key` for the next timeout, replacing what it persisted to before. */
  set(client: string, key: string): void {
    const entry = this.#put(client, key, -Infinity);
    const now = this.#clock.now();
    if (this.#onSet && now - entry.told >= this.timeoutMs / 2) {
      entry.told = now;
      this.#onSet(client, key);
    }
  }

  /**
   * Sets entries a peer sent, each with this table's own timeout, without telling `onSet`; returns how many. An
   * entry that came from a peer is not told back, but if it is used here later it is told as usual.
   */
  import(entries: Iterable<PersistenceEntry>): number {
    const now = this.#clock.now();
    let n = 0;
    for (const [client, key] of entries) {
      this.#put(client, key, now).told = now;
      n++;
    }
    return n;
  }

  /** The live entries, most recently used first, at most `max` of them. */
  export(max = Infinity): PersistenceEntry[] {
    this.sweep();
    const all = [...this.#entries];
    const out: PersistenceEntry[] = [];
    for (let i = all.length - 1; i >= 0 && out.length < max; i--) out.push([all[i][0], all[i][1].key]);
    return out;
  }

  /** Sets or refreshes an entry; `told` is what a new entry, or one whose server changes, starts with. */
  #put(client: string, key: string, told: number): Entry {
    const expires = this.#clock.now() + this.timeoutMs;
    const entry = this.#entries.get(client);
    if (entry) {
      this.#entries.delete(client);
      if (entry.key !== key) {
        this.#unindex(client, entry.key);
        this.#index(client, key);
        entry.key = key;
        entry.told = told;
      }
      entry.expires = expires;
      this.#entries.set(client, entry);
      return entry;
    }
    // Expired entries go first so that a table full of stale entries does not evict a live one.
    this.sweep();
    if (this.#entries.size >= this.maxEntries) {
      const [oldest, oldestEntry] = this.#entries.entries().next().value!;
      this.#remove(oldest, oldestEntry);
    }
    const fresh = { key, expires, told };
    this.#entries.set(client, fresh);
    this.#index(client, key);
    return fresh;
  }

  /** Drops `client`'s entry, as when its server could not take it; true when there was one. */
  delete(client: string): boolean {
    const entry = this.#entries.get(client);
    if (!entry) return false;
    this.#remove(client, entry);
    return true;
  }

  /** Drops every entry for server `key` (it went down or left the service); returns how many. */
  forget(key: string): number {
    const clients = this.#byServer.get(key);
    if (!clients) return 0;
    for (const client of clients) this.#entries.delete(client);
    this.#byServer.delete(key);
    return clients.size;
  }

  /** Removes the expired entries now; returns how many. */
  sweep(): number {
    const now = this.#clock.now();
    let removed = 0;
    for (const [client, entry] of this.#entries) {
      if (entry.expires > now) break;
      this.#remove(client, entry);
      removed++;
    }
    return removed;
  }

  /** Drops every entry. */
  clear(): void {
    this.#entries.clear();
    this.#byServer.clear();
  }

  #remove(client: string, entry: Entry): void {
    this.#entries.delete(client);
    this.#unindex(client, entry.key);
  }

  #index(client: string, key: string): void {
    const clients = this.#byServer.get(key);
    if (clients) clients.add(client);
    else this.#byServer.set(key, new Set([client]));
  }

  #unindex(client: string, key: string): void {
    const clients = this.#byServer.get(key);
    if (!clients) return;
    clients.delete(client);
    if (clients.size === 0) this.#byServer.delete(key);
  }
}
