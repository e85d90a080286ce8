/**
 * A value worked out at most once per interval however many ask for it, so a flood of checks does not fork a
 * command per connection. Callers asking while a computation runs share it. Once the value is older than the
 * interval the next caller starts a new computation and waits for it up to `maxWaitMs`; if it is still
 * running by then (a slow command) the caller gets the previous value, so checks are answered promptly. Time
 * is the injected clock's.
 */
import type { Clock } from "../core/clock.ts";

export interface CachedOptions {
  readonly clock: Clock;
  /** How long a computed value is fresh. */
  readonly ttlMs: number;
  /** How long a caller holding a stale value waits for the new one before taking the stale one. */
  readonly maxWaitMs: number;
}

export class Cached<T> {
  #value: { readonly value: T; readonly at: number } | undefined;
  #running: Promise<T> | undefined;
  #computations = 0;

  /** `compute` must not throw: failures are values of T (a cache of errors is not a cache of values). */
  constructor(private readonly compute: () => Promise<T>, private options: CachedOptions) {}

  /** New intervals (a reload); the value held stays, fresh for the new `ttlMs` from when it was computed. */
  reconfigure(options: Omit<CachedOptions, "clock">): void {
    this.options = { ...options, clock: this.options.clock };
  }

  /** Holds `value`, computed now elsewhere (a reload's first reading of a new source), as the fresh value. */
  prime(value: T): void {
    // A computation still under way was of the old source: its value is not kept, and the next get starts anew.
    this.#generation++;
    this.#running = undefined;
    this.#value = { value, at: this.options.clock.now() };
  }

  #generation = 0;

  /** The value, fresh or shared with a computation under way; see the module doc for stale values. */
  get(): Promise<T> {
    const { clock, ttlMs } = this.options;
    const held = this.#value;
    if (held && clock.now() - held.at < ttlMs) return Promise.resolve(held.value);
    const running = this.#start();
    return held ? this.#within(running, held.value) : running;
  }

  /** The last computed value and when (on the clock) it was computed, without computing. */
  peek(): { readonly value: T; readonly at: number } | undefined {
    return this.#value;
  }

  /** How many computations have started. */
  get computations(): number {
    return this.#computations;
  }

  #start(): Promise<T> {
    if (this.#running) return this.#running;
    this.#computations++;
    const generation = this.#generation;
    const running = this.compute().then((value) => {
      if (generation === this.#generation) this.#value = { value, at: this.options.clock.now() };
      return value;
    }).finally(() => {
      if (this.#running === running) this.#running = undefined;
    });
    this.#running = running;
    return running;
  }

  #within(running: Promise<T>, stale: T): Promise<T> {
    const { clock, maxWaitMs } = this.options;
    return new Promise<T>((resolve, reject) => {
      const timer = clock.setTimeout(() => resolve(stale), maxWaitMs);
      running.then((value) => {
        clock.clearTimeout(timer);
        resolve(value);
      }, (error) => {
        clock.clearTimeout(timer);
        reject(error);
      });
    });
  }
}
