/**
 * Time as a dependency. Everything that waits, times out or measures age takes a `Clock`, so tests drive time with
 * `ManualClock` instead of sleeping.
 */

export type TimerId = number;

export interface Clock {
  /** Milliseconds since the epoch (wall clock for the system clock). */
  now(): number;
  /**
   * Microseconds since the epoch, fine-grained and never going back (for arrival times of datagrams). On the system
   * clock it is anchored to the wall clock at start-up and then follows the monotonic clock.
   */
  nowUs(): number;
  setTimeout(fn: () => void, ms: number): TimerId;
  clearTimeout(id: TimerId): void;
}

/** The real clock. */
export const systemClock: Clock = Object.freeze({
  now: () => Date.now(),
  nowUs: () => (performance.timeOrigin + performance.now()) * 1000,
  // Deno returns a number; the cast only quiets Node's typings, which npm packages pull in.
  setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms) as unknown as TimerId,
  clearTimeout: (id: TimerId) => clearTimeout(id),
});

/** A clock that moves only when a test calls `advance`; timers fire in due order. */
export class ManualClock implements Clock {
  #now: number;
  #nextId = 1;
  #timers = new Map<TimerId, { at: number; fn: () => void }>();

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  nowUs(): number {
    return this.#now * 1000;
  }

  setTimeout(fn: () => void, ms: number): TimerId {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(id: TimerId): void {
    this.#timers.delete(id);
  }

  /** Number of timers not yet fired. */
  get pending(): number {
    return this.#timers.size;
  }

  /** Moves time forward by `ms`, firing every timer that falls due, earliest first. */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      let nextId: TimerId | undefined;
      let nextAt = Infinity;
      for (const [id, t] of this.#timers) {
        if (t.at <= end && t.at < nextAt) [nextId, nextAt] = [id, t.at];
      }
      if (nextId === undefined) break;
      const timer = this.#timers.get(nextId)!;
      this.#timers.delete(nextId);
      this.#now = timer.at;
      timer.fn();
    }
    this.#now = end;
  }
}

/** A signal that aborts after `ms` on `clock` or when `parent` aborts; `cancel()` releases the timer. */
export interface Deadline {
  readonly signal: AbortSignal;
  cancel(): void;
}

export function deadline(clock: Clock, ms: number, parent?: AbortSignal): Deadline {
  const controller = new AbortController();
  const id = clock.setTimeout(() => controller.abort(new Error(`Deadline of ${ms} ms passed`)), ms);
  const onParent = () => controller.abort(parent!.reason);
  const cancel = () => {
    clock.clearTimeout(id);
    parent?.removeEventListener("abort", onParent);
  };
  controller.signal.addEventListener("abort", cancel, { once: true });
  if (parent?.aborted) controller.abort(parent.reason);
  else parent?.addEventListener("abort", onParent, { once: true });
  return { signal: controller.signal, cancel };
}
