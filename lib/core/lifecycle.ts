/**
 * Start parts in order, stop them in reverse. A part that failed to start leaves the ones before it to be stopped;
 * stopping gives every part the same drain deadline, after which it must let go of what it holds.
 */
import type { Clock } from "./clock.ts";
import { deadline as makeDeadline } from "./clock.ts";

/** Stops a running part: stop accepting at once, drain until `deadline` aborts, then release everything. */
export type StopFn = (deadline: AbortSignal) => Promise<void>;

export interface StopResult {
  name: string;
  error?: unknown;
}

export class Lifecycle {
  readonly #parts: { name: string; stop: StopFn }[] = [];
  #stopping?: Promise<StopResult[]>;

  constructor(private readonly clock: Clock) {}

  /** Records a started part; it will be stopped before every part added earlier. */
  add(name: string, stop: StopFn): void {
    if (this.#stopping) throw new Error(`Cannot add "${name}": stopping has begun`);
    this.#parts.push({ name, stop });
  }

  get size(): number {
    return this.#parts.length;
  }

  /**
   * Stops every part in reverse order of start, all sharing one deadline of `drainMs` (cut short by `force`).
   * Never throws: each part's failure is returned. Calling it again returns the same promise.
   */
  stop(drainMs: number, force?: AbortSignal): Promise<StopResult[]> {
    this.#stopping ??= (async () => {
      const deadline = makeDeadline(this.clock, drainMs, force);
      const results: StopResult[] = [];
      for (const part of [...this.#parts].reverse()) {
        try {
          await part.stop(deadline.signal);
          results.push({ name: part.name });
        } catch (error) {
          results.push({ name: part.name, error });
        }
      }
      deadline.cancel();
      return results;
    })();
    return this.#stopping;
  }
}
