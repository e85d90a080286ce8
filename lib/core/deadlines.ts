/**
 * Many timeouts on one clock timer: a min-heap of deadlines with one clock timer armed for the earliest, instead of a
 * clock timer (a Deno timer, an op to set and one to clear) per entry. A proxy arms two per connection (connect and
 * idle) and cancels nearly all of them. Cancelling only clears the entry; the heap drops cleared entries as they come
 * to the top, and is rebuilt when they are more than half of it, so cancelled long timeouts do not pile up.
 */
import type { Clock, TimerId } from "./clock.ts";

/** One entry; `cancel` it with the Deadlines that made it. */
export interface Deadline {
  at: number;
  fn: (() => void) | null;
}

export class Deadlines {
  static #byClock = new WeakMap<Clock, Deadlines>();
  /** The deadlines of `clock` (one heap per clock, so a ManualClock in a test drives its own). */
  static of(clock: Clock): Deadlines {
    let d = Deadlines.#byClock.get(clock);
    if (!d) Deadlines.#byClock.set(clock, d = new Deadlines(clock));
    return d;
  }

  readonly #heap: Deadline[] = [];
  #cleared = 0;
  #timer: TimerId | undefined;
  #armedAt = Infinity;
  #firing = false;
  private constructor(readonly clock: Clock) {}

  /** Runs `fn` once `ms` have passed on the clock, unless cancelled before. */
  add(ms: number, fn: () => void): Deadline {
    const d: Deadline = { at: this.clock.now() + ms, fn };
    const h = this.#heap;
    let i = h.length;
    h.push(d);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p].at <= d.at) break;
      h[i] = h[p];
      i = p;
    }
    h[i] = d;
    if (!this.#firing && d.at < this.#armedAt) this.#arm();
    return d;
  }

  /** Entries not yet run nor cancelled, cancelled ones still in the heap included (for tests). */
  get size(): number {
    return this.#heap.length;
  }

  cancel(d: Deadline): void {
    if (d.fn === null) return;
    d.fn = null;
    if (++this.#cleared === this.#heap.length) this.#clear();
    else if (this.#cleared > 64 && this.#cleared * 2 > this.#heap.length) this.#compact();
  }

  /** Nothing left to run: no clock timer stays armed (it would keep a process, or a test, waiting). */
  #clear(): void {
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedAt = Infinity;
    this.#heap.length = 0;
    this.#cleared = 0;
  }

  #pop(): Deadline {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop()!;
    const n = h.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && h[r].at < h[l].at ? r : l;
        if (h[c].at >= last.at) break;
        h[i] = h[c];
        i = c;
      }
      h[i] = last;
    }
    return top;
  }

  #compact(): void {
    const live = this.#heap.filter((d) => d.fn !== null).sort((x, y) => x.at - y.at);
    this.#heap.length = 0;
    this.#heap.push(...live);
    this.#cleared = 0;
  }

  #arm(): void {
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedAt = Infinity;
    const h = this.#heap;
    while (h.length > 0 && h[0].fn === null) {
      this.#pop();
      this.#cleared--;
    }
    if (h.length === 0) return;
    this.#armedAt = h[0].at;
    this.#timer = this.clock.setTimeout(() => this.#fire(), Math.max(0, h[0].at - this.clock.now()));
  }

  #fire(): void {
    this.#timer = undefined;
    this.#armedAt = Infinity;
    this.#firing = true;
    try {
      const now = this.clock.now();
      const h = this.#heap;
      while (h.length > 0 && h[0].at <= now) {
        const d = this.#pop();
        const fn = d.fn;
        if (fn === null) {
          this.#cleared--;
          continue;
        }
        d.fn = null;
        fn();
      }
    } finally {
      this.#firing = false;
      this.#arm();
    }
  }
}
