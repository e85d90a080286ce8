/**
 * The persistence table, Central Dispatch's "shadow scheduling": a client address that reached a server keeps going
 * to that server while it comes back within an idle timeout. A service consults it before its picker and records the
 * picker's choice after a successful connect.
 *
 * Entries sit in a Map in the order they were last used. Since every entry lives for the same timeout, that is also
 * the order they expire in: expiry and the `maxEntries` bound both remove from the front, so a sweep costs only the
 * entries it removes. A second index from server key to its clients makes `forget(key)` cost that server's entries.
 *
 * Entries a peer sent (`import`) live for other times (what they had left at the sender, plus half a timeout), so
 * they sit in a second Map, in order of expiry as long as imports come in that order (pushes do); an import out of
 * order marks it unsorted and the next full sweep (`size`, `export`, `sweep()`) sorts it once. A copy used here moves
 * to the first Map with the local timeout.
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

/**
 * One client's entry as `export` gives it and `import` takes it: the client address, its server's key, and the ms the
 * entry has left (`export` always gives it; without it `import` takes the full timeout: the entry was just used).
 */
export type PersistenceEntry = readonly [client: string, key: string, ttl?: number];

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
  /** client -> entry used here, least recently used first (so in order of expiry). */
  readonly #entries = new Map<string, Entry>();
  /** client -> entry a peer sent and not used here since; in order of expiry while `#copiesSorted`. */
  #copies = new Map<string, Entry>();
  #copiesSorted = true;
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
    return this.#entries.size + this.#copies.size;
  }

  /** The server key `client` persists to, refreshing its timeout; undefined when there is none or it expired. */
  get(client: string): string | undefined {
    const entry = this.#entries.get(client) ?? this.#copies.get(client);
    if (!entry) return undefined;
    const now = this.#clock.now();
    if (entry.expires <= now) {
      this.#remove(client, entry);
      return undefined;
    }
    entry.expires = now + this.timeoutMs;
    // Re-inserting moves the entry to the back: the Map stays in order of last use.
    this.#entries.delete(client);
    this.#copies.delete(client);
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
   * Sets entries a peer sent, without telling `onSet`; returns how many. A copy lives for what the entry had left at
   * the sender (the third field; without it the local timeout: a pushed entry was just used), at most the local
   * timeout, plus half a timeout: the sender tells a client in use again only every half timeout, so its uses in
   * between never reach the copy, and without that half the copy would expire up to half a timeout before the
   * sender's entry. A copy may outlive the sender's entry by as much; it never goes before it. An entry that came
   * from a peer is not told back, but if it is used here later it is told as usual.
   */
  import(entries: Iterable<PersistenceEntry>): number {
    const now = this.#clock.now();
    let n = 0;
    for (const [client, key, ttl] of entries) {
      const left = Math.min(Math.max(ttl ?? this.timeoutMs, 0), this.timeoutMs);
      this.#putCopy(client, key, now + left + this.timeoutMs / 2, now);
      n++;
    }
    return n;
  }

  /**
   * The live entries, most recently used first (the most time left first), at most `max` of them, each with the ms
   * it has left (a copy: what it had left at its sender, aged, without the half timeout `import` added).
   */
  export(max = Infinity): PersistenceEntry[] {
    this.sweep();
    const now = this.#clock.now();
    const all: [string, string, number][] = [];
    const half = this.timeoutMs / 2;
    for (const [client, e] of this.#copies) all.push([client, e.key, Math.max(0, e.expires - half - now)]);
    for (const [client, e] of this.#entries) all.push([client, e.key, e.expires - now]);
    // Most recently used first: each Map from its back, then both by time left (a stable sort keeps ties in order).
    all.reverse().sort((a, b) => b[2] - a[2]);
    return all.slice(0, Math.min(max, all.length));
  }

  /** Sets or refreshes an entry used here; `told` is what a new entry, or one whose server changes, starts with. */
  #put(client: string, key: string, told: number): Entry {
    const expires = this.#clock.now() + this.timeoutMs;
    const entry = this.#entries.get(client) ?? this.#copies.get(client);
    if (entry) {
      this.#entries.delete(client);
      this.#copies.delete(client);
      this.#rekey(client, entry, key, told);
      entry.expires = expires;
      this.#entries.set(client, entry);
      return entry;
    }
    // Expired entries go first so that a table full of stale entries does not evict a live one.
    this.#sweepFront();
    this.#makeRoom();
    const fresh = { key, expires, told };
    this.#entries.set(client, fresh);
    this.#index(client, key);
    return fresh;
  }

  /** Sets a copy from a peer: a client used here keeps its own entry's timing unless the copy lives longer. */
  #putCopy(client: string, key: string, expires: number, told: number): void {
    const entry = this.#entries.get(client) ?? this.#copies.get(client);
    if (entry) {
      this.#rekey(client, entry, key, told);
      entry.told = told;
      if (this.#entries.has(client) && entry.expires >= expires) return;
      this.#entries.delete(client);
      this.#copies.delete(client);
      entry.expires = expires;
      this.#appendCopy(client, entry);
      return;
    }
    this.#sweepFront();
    this.#makeRoom();
    const fresh = { key, expires, told };
    this.#appendCopy(client, fresh);
    this.#index(client, key);
  }

  #appendCopy(client: string, entry: Entry): void {
    if (entry.expires < this.#tailExpires) this.#copiesSorted = false;
    this.#copies.set(client, entry);
    this.#tailExpires = Math.max(this.#tailExpires, entry.expires);
  }

  /** The latest expiry a copy was appended with since the copies were last sorted (never lower than the last's). */
  #tailExpires = -Infinity;

  #rekey(client: string, entry: Entry, key: string, told: number): void {
    if (entry.key === key) return;
    this.#unindex(client, entry.key);
    this.#index(client, key);
    entry.key = key;
    entry.told = told;
  }

  /** At the bound, the entry that would expire first makes room. */
  #makeRoom(): void {
    if (this.#entries.size + this.#copies.size < this.maxEntries) return;
    this.sweep(); // sorts the copies when an import left them out of order, once
    if (this.#entries.size + this.#copies.size < this.maxEntries) return;
    const local = this.#entries.entries().next().value;
    const copy = this.#copies.entries().next().value;
    const [client, entry] = !copy || (local && local[1].expires <= copy[1].expires) ? local! : copy;
    this.#remove(client, entry);
  }

  /** Drops `client`'s entry, as when its server could not take it; true when there was one. */
  delete(client: string): boolean {
    const entry = this.#entries.get(client) ?? this.#copies.get(client);
    if (!entry) return false;
    this.#remove(client, entry);
    return true;
  }

  /** Drops every entry for server `key` (it went down or left the service); returns how many. */
  forget(key: string): number {
    const clients = this.#byServer.get(key);
    if (!clients) return 0;
    for (const client of clients) {
      this.#entries.delete(client);
      this.#copies.delete(client);
    }
    this.#byServer.delete(key);
    return clients.size;
  }

  /** Removes the expired entries now; returns how many. */
  sweep(): number {
    if (!this.#copiesSorted) {
      const sorted = [...this.#copies].sort((a, b) => a[1].expires - b[1].expires);
      this.#copies = new Map(sorted);
      this.#copiesSorted = true;
      this.#tailExpires = sorted.at(-1)?.[1].expires ?? -Infinity;
    }
    return this.#sweepFront();
  }

  /** Removes expired entries from the front of each Map (all of them while both are in order). */
  #sweepFront(): number {
    const now = this.#clock.now();
    let removed = 0;
    for (const map of this.#copiesSorted ? [this.#entries, this.#copies] : [this.#entries]) {
      for (const [client, entry] of map) {
        if (entry.expires > now) break;
        this.#remove(client, entry);
        removed++;
      }
    }
    return removed;
  }

  /** Drops every entry. */
  clear(): void {
    this.#entries.clear();
    this.#copies.clear();
    this.#copiesSorted = true;
    this.#tailExpires = -Infinity;
    this.#byServer.clear();
  }

  #remove(client: string, entry: Entry): void {
    this.#entries.delete(client);
    this.#copies.delete(client);
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
