/**
 * Source hash with consistent hashing: the same client address keeps reaching the same server (affinity), and a
 * change to one server moves only the clients of that server.
 *
 * The rule. Each server of weight > 0 owns points on a 32-bit hash ring, placed by hashing its key with the point's
 * number (`hashPoint`), so a server's points depend on its key alone and never on the other servers or on list order.
 * It owns `max(1, round(weight * scale))` points: the heaviest server gets 1024, or fewer when the ring would pass
 * 2^17 points (256 servers of equal weight get 512 each). The client address hashes to a ring position; the first
 * point at or after it (wrapping) names the server. When that server is not eligible (down, full, already tried), the
 * next points clockwise are tried in turn, so only that server's clients go elsewhere, and a retry after a failed
 * connect lands on a predictable neighbour.
 *
 * The ring changes only when a key changes or a weight moves by 12.5% or more from the one its points were counted
 * for: weights carry the agent's percentage, and a reading that wobbles from poll to poll should not move clients.
 * Then only the points of the servers concerned are replaced (a merge, not a new sort), so a server whose agent goes
 * from 100% to 50% loses half its points and half its clients, which move to its neighbours, and no one else moves.
 * `scale` is chosen at a build and kept while the heaviest server has between 512 and 2048 points (and the ring at
 * most 2^17): a new scale moves every server's points.
 */
import { fnv1a32, hashAddress, hashPoint } from "./_hash.ts";
import type { Picker, PickerKind, ServerView } from "./picker.ts";

/** Points of the heaviest server when the scale is chosen. */
const POINTS = 1024;
/** Bound on the ring's total size: 256 servers of equal weight get 512 points each. */
const MAX_POINTS = 1 << 17;
/** A server's point count follows its weight once the two differ by 1/TOLERANCE (12.5%) or more. */
const TOLERANCE = 8;
/** A ring entry packs point hash and server index into one float64 for sorting: hash * 2^20 + index. */
const INDEX_SPAN = 2 ** 20;

export interface SourceHashOptions {
  /**
   * Ring points tried one by one before searching each eligible server's own points for the nearest one (same
   * answer, O(servers · log points) instead of a walk that could cross most of the ring when few are eligible).
   */
  walkLimit?: number;
}

export class SourceHashPicker implements Picker {
  readonly #walkLimit: number;
  /** What the ring was built from. */
  #keys: string[] = [];
  #weights = new Float64Array(0);
  #counts = new Uint32Array(0);
  #scale = 0;
  /** Sorted point hashes and, at the same position, the server owning the point. */
  #ring = new Uint32Array(0);
  #owner = new Uint32Array(0);
  /** Each server's points, sorted, server after server; server i's are at #starts[i] .. #starts[i + 1]. */
  #byServer = new Uint32Array(0);
  #starts = new Uint32Array(1);
  #builds = 0;

  constructor(options: SourceHashOptions = {}) {
    this.#walkLimit = Math.max(0, options.walkLimit ?? 16);
  }

  /** How many times the ring has been built. */
  get builds(): number {
    return this.#builds;
  }

  /** Points on the ring. */
  get ringSize(): number {
    return this.#ring.length;
  }

  pick(servers: readonly ServerView[], eligible: (i: number) => boolean, client: string): number {
    this.#refresh(servers);
    const ring = this.#ring;
    const size = ring.length;
    if (size === 0) return -1;
    const h = hashAddress(client);
    let p = firstAtOrAfter(ring, 0, size, h);
    if (p === size) p = 0;
    const owner = this.#owner;
    const steps = Math.min(this.#walkLimit, size);
    for (let step = 0; step < steps; step++) {
      const i = owner[p];
      if (eligible(i)) return i;
      p = p + 1 === size ? 0 : p + 1;
    }
    return steps === size ? -1 : this.#nearestEligible(h, eligible);
  }

  /** The eligible server owning the first point at or after `h`, found server by server. */
  #nearestEligible(h: number, eligible: (i: number) => boolean): number {
    const points = this.#byServer;
    const starts = this.#starts;
    let best = -1;
    let bestDistance = Infinity;
    for (let i = 0; i + 1 < starts.length; i++) {
      const start = starts[i];
      const end = starts[i + 1];
      if (start === end || !eligible(i)) continue;
      let p = firstAtOrAfter(points, start, end, h);
      if (p === end) p = start;
      const distance = (points[p] - h) >>> 0;
      // Strictly nearer only: on equal points the lower index wins, as it comes first on the ring.
      if (distance < bestDistance) {
        best = i;
        bestDistance = distance;
      }
    }
    return best;
  }

  /** Updates the ring when the servers' keys or weights changed since the last pick. */
  #refresh(servers: readonly ServerView[]): void {
    const n = servers.length;
    const oldKeys = this.#keys;
    let same = n === oldKeys.length;
    for (let i = 0; same && i < n; i++) {
      same = servers[i].key === oldKeys[i] && servers[i].weight === this.#weights[i];
    }
    if (same) return;
    let max = 0;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const weight = servers[i].weight;
      if (weight > 0) {
        max = Math.max(max, weight);
        sum += weight;
      }
    }
    let scale = this.#scale;
    const top = max * scale;
    if (max > 0 && !(top >= POINTS / 2 && top <= POINTS * 2 && sum * scale <= MAX_POINTS)) {
      scale = Math.min(POINTS / max, MAX_POINTS / sum);
    }
    const keys = new Array<string>(n);
    const weights = new Float64Array(n);
    // With the same keys in the same places and the same scale, only servers whose point count changed are redone.
    let keep = scale === this.#scale && n === oldKeys.length;
    for (let i = 0; i < n; i++) {
      keys[i] = servers[i].key;
      weights[i] = servers[i].weight;
      keep &&= keys[i] === oldKeys[i];
    }
    const counts = new Uint32Array(n);
    const changed = new Uint8Array(n);
    let anyChanged = !keep;
    for (let i = 0; i < n; i++) {
      const old = keep ? this.#counts[i] : 0;
      const ideal = weights[i] > 0 ? Math.max(1, Math.round(weights[i] * scale)) : 0;
      // An agent's reading wobbles from poll to poll; following it would move clients for nothing.
      counts[i] = old > 0 && ideal > 0 && Math.abs(ideal - old) * TOLERANCE < old ? old : ideal;
      changed[i] = !keep || counts[i] !== old ? 1 : 0;
      anyChanged ||= changed[i] === 1;
    }
    this.#keys = keys;
    this.#weights = weights;
    this.#scale = scale;
    if (!anyChanged) return;
    this.#counts = counts;
    this.#rebuild(changed, keep);
  }

  /**
   * Replaces the points of the `changed` servers: the others' points are kept in order and the new ones merged in,
   * O(ring) instead of sorting the whole ring again, since agent reports change one server's weight at a time.
   */
  #rebuild(changed: Uint8Array, keepOld: boolean): void {
    const keys = this.#keys;
    const counts = this.#counts;
    const n = keys.length;
    if (n >= INDEX_SPAN) throw new RangeError(`Cannot hash over ${n} servers: at most ${INDEX_SPAN - 1}`);
    const starts = new Uint32Array(n + 1);
    let added = 0;
    for (let i = 0; i < n; i++) {
      starts[i + 1] = starts[i] + counts[i];
      if (changed[i]) added += counts[i];
    }
    // A point sorts by hash, then by server index: hash * 2^20 + index, exact in a float64.
    const fresh = new Float64Array(added);
    let k = 0;
    for (let i = 0; i < n; i++) {
      if (!changed[i]) continue;
      const keyHash = fnv1a32(keys[i]);
      for (let point = 0; point < counts[i]; point++) fresh[k++] = hashPoint(keyHash, point) * INDEX_SPAN + i;
    }
    fresh.sort();
    const oldRing = keepOld ? this.#ring : new Uint32Array(0);
    const oldOwner = keepOld ? this.#owner : new Uint32Array(0);
    const size = starts[n];
    const ring = new Uint32Array(size);
    const owner = new Uint32Array(size);
    const byServer = new Uint32Array(size);
    const fill = starts.slice(0, n);
    let a = 0;
    let b = 0;
    for (let p = 0; p < size; p++) {
      while (a < oldRing.length && changed[oldOwner[a]]) a++;
      let hash: number;
      let i: number;
      if (a < oldRing.length && (b === added || oldRing[a] * INDEX_SPAN + oldOwner[a] < fresh[b])) {
        hash = oldRing[a];
        i = oldOwner[a++];
      } else {
        i = fresh[b] % INDEX_SPAN;
        hash = (fresh[b++] - i) / INDEX_SPAN;
      }
      ring[p] = hash;
      owner[p] = i;
      byServer[fill[i]++] = hash;
    }
    this.#ring = ring;
    this.#owner = owner;
    this.#byServer = byServer;
    this.#starts = starts;
    this.#builds++;
  }
}

/** First position in `sorted[from..to)` holding a value >= `h`, or `to`. */
function firstAtOrAfter(sorted: Uint32Array, from: number, to: number, h: number): number {
  let lo = from;
  let hi = to;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid] < h) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export const sourceHash: PickerKind = {
  name: "sourcehash",
  description: "Consistent hashing on the client address: a client keeps its server while it is eligible",
  create: () => new SourceHashPicker(),
};
