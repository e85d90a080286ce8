/**
 * A timer that fires within a fraction of a millisecond of its time, for releases that must keep 1 ms. Measured on
 * this machine (Deno 2.9.6), `setTimeout(fn, ms)` fires at about floor(ms) + 1.1 ms: whole milliseconds only, and
 * one late (setTimeout(1): p50 +1.10, p99 +1.33 ms late; setTimeout(2.5): p50 +0.61 ms). So the timer is set to wake
 * up to LEAD_MS early, and the rest is waited finely, firing as soon as it is within `toleranceUs` of its time:
 *
 * - With a `Sleeper` (libc `usleep` called through FFI as a nonblocking call: it sleeps on one of Deno's blocking-pool
 *   threads, and its promise wakes the event loop), the rest is slept, aiming WAKE_LEAD_US early because the wake-up
 *   itself takes about 0.1 ms; a short spin covers a wake that came too early. The main thread stays idle meanwhile.
 * - Without one (no --allow-ffi, or not Linux), the rest is waited by `setImmediate` turns (about 2 µs each; the
 *   event loop polls timers and I/O in every turn, so nothing starves), which keeps the main thread busy for up to
 *   LEAD_MS + 1 ms before every firing: at a firing every millisecond or two (a syncer under dense traffic) that is a
 *   whole core, taken from everything else on the machine.
 *
 * Measured with tests/bench/precise_timer_bench.ts on the shared 2-core machine (two runs; error = fired - armed):
 *   random waits of 0.5..20.5 ms, tolerance 50 µs: spin p50 -47 µs, p99 +1.4..1.7 ms, 97 % within ±0.5 ms, 8 % of a
 *   core; sleep p50 -25..+38 µs, p90 +26..+153 µs, 96.5..99.5 % within ±0.5 ms, 1..3 % of a core.
 *   a firing every 1 ms, tolerance 250 µs (a syncer under dense traffic): spin p50 -240 µs, 99.9 % within ±0.5 ms,
 *   101 % of a core; sleep p50 -40 µs, p99 +81..+165 µs, 99.7 % within ±0.5 ms, 5 % of a core.
 * A plain setTimeout of the wait, for comparison: p50 +0.65..0.8 ms, and +1.8 ms at a firing every 1 ms.
 *
 * The fine wait reads the real monotonic clock, so it is used with the system clock only; on any other clock (a
 * test's ManualClock) the timer is one `setTimeout` of the exact, fractional, delay.
 */
import { setImmediate } from "node:timers";
import { type Clock, systemClock, type TimerId } from "./clock.ts";

/**
 * How early the underlying timer is set: setTimeout(n) fires 1..1.2 ms after n (and below n = 1 as late as n = 1),
 * so waits under LEAD_MS + 1 ms are waited finely.
 */
export const LEAD_MS = 1.2;
/** A sleep aims this early: the blocking-pool thread and then the event loop wake about 0.1 ms after it ends. */
export const WAKE_LEAD_US = 150;
/** Below this, a sleep is not worth its wake-up: the rest is spun. */
const MIN_SLEEP_US = 40;

const SLEEP_SYMBOLS = {
  usleep: { parameters: ["u32"], result: "i32", nonblocking: true },
} as const;

/** Sleeps off the main thread (libc usleep on Deno's blocking pool), so that waiting takes no CPU. Close it when done. */
export class Sleeper {
  readonly #lib: Deno.DynamicLibrary<typeof SLEEP_SYMBOLS>;
  readonly #pending = new Set<Promise<unknown>>();
  #closed = false;

  private constructor(lib: Deno.DynamicLibrary<typeof SLEEP_SYMBOLS>) {
    this.#lib = lib;
  }

  /** A sleeper, or null where FFI is not allowed or this is not Linux (the timer then spins). */
  static open(): Sleeper | null {
    if (Deno.build.os !== "linux") return null;
    try {
      if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
      return new Sleeper(Deno.dlopen("libc.so.6", SLEEP_SYMBOLS));
    } catch {
      return null;
    }
  }

  /** Whether it still sleeps (not closed). */
  get open(): boolean {
    return !this.#closed;
  }

  /** Sleeps in flight (each ends by itself: a sleep cannot be cut short). */
  get pending(): number {
    return this.#pending.size;
  }

  /** Resolves after at least `us` µs (usually about 0.1 ms more). */
  sleep(us: number): Promise<void> {
    if (this.#closed) throw new Error("Cannot sleep: the sleeper is closed");
    const p = this.#lib.symbols.usleep(Math.max(0, Math.min(0xffff_ffff, Math.round(us)))).then(() => {
      this.#pending.delete(p);
    });
    this.#pending.add(p);
    return p;
  }

  /** Waits for the sleeps in flight, then closes the library. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#pending);
    this.#lib.close();
  }
}

/** Share of the thread's time all holds of one thread (isolate) may take together, and the most they may take at once. */
export const HOLD_SHARE = 0.1;
export const HOLD_BURST_US = 2000;

/** This thread's timers armed on the system clock: a hold fires the others that come due while it lasts. */
const armedTimers = new Set<PreciseTimer>();
/** Whether a hold is going on (a timer fired from within it does not hold in turn). */
let holding = false;
let holdBudgetUs = HOLD_BURST_US;
let holdBudgetAt = 0;

/** What this thread's holds may take now (µs): refilled at HOLD_SHARE of the time passed, up to HOLD_BURST_US. */
function holdAllowance(nowUs: number): number {
  holdBudgetUs = Math.min(HOLD_BURST_US, holdBudgetUs + (nowUs - holdBudgetAt) * HOLD_SHARE);
  holdBudgetAt = nowUs;
  return holdBudgetUs;
}

export class PreciseTimer {
  readonly #clock: Clock;
  readonly #fn: () => void;
  readonly #spin: boolean;
  readonly #sleeper: Sleeper | null;
  readonly #toleranceUs: number;
  readonly #holdUs: number;
  #at: number | null = null;
  #heldUs = 0;
  /** When it last fired (µs), for the hold's bound. */
  #firedUs = -Infinity;
  #timer: TimerId | undefined;
  #spinning = false;
  /** When the sleep in flight is expected to wake us (µs), or null. */
  #sleepWake: number | null = null;

  /**
   * `fn` runs once per `arm`, at the armed time (never before it by more than `toleranceUs`). On the system clock the
   * last LEAD_MS + 1 ms are waited finely: slept with `sleeper` when given, else spun (`spin: false`: never fine).
   */
  constructor(
    clock: Clock,
    fn: () => void,
    o: { toleranceUs?: number; spin?: boolean; sleeper?: Sleeper | null; holdUs?: number } = {},
  ) {
    // `holdUs`: the last part of every wait is waited without yielding the thread (a busy loop), so that nothing
    // that would start meanwhile (an input's burst, a message from a worker) can make the firing late; other timers
    // of the thread that come due meanwhile are fired from within it. Only on the system clock, and bounded: at most
    // a quarter of the time since its own last firing, and all holds of the thread together at most HOLD_SHARE of
    // its time (in bursts of at most HOLD_BURST_US).
    this.#clock = clock;
    this.#fn = fn;
    this.#spin = o.spin ?? clock === systemClock;
    this.#sleeper = this.#spin ? o.sleeper ?? null : null;
    this.#toleranceUs = o.toleranceUs ?? 50;
    this.#holdUs = this.#spin && clock === systemClock ? Math.max(0, o.holdUs ?? 0) : 0;
  }

  /** Time the thread was held before firings (µs, in all; a busy loop, so about the CPU the hold cost). */
  get heldUs(): number {
    return this.#heldUs;
  }

  /** The time it is armed for (µs), or null. */
  get armedUs(): number | null {
    return this.#at;
  }

  /** Fires `fn` at `atUs` (µs on the clock), replacing any earlier arming. */
  arm(atUs: number): void {
    this.#at = atUs;
    if (this.#spin && this.#clock === systemClock) armedTimers.add(this);
    this.#wake();
  }

  cancel(): void {
    this.#at = null;
    armedTimers.delete(this);
    this.#stopWaiting();
    // A pending immediate finds #spinning false, a sleep in flight finds #at null: both end there.
  }

  #stopWaiting(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#spinning = false;
  }

  /** Fires when due, else waits by the cheapest way that still wakes in time; one way at a time. */
  readonly #wake = (): void => {
    this.#stopWaiting();
    if (this.#at === null) return;
    const nowUs = this.#clock.nowUs();
    const leftUs = this.#at - nowUs;
    const sleeper = this.#sleeper?.open ? this.#sleeper : null;
    // With a hold, the waits below aim at its start, and the hold itself (up to the firing, `toleranceUs` before the
    // time) is waited without yielding the thread; see the constructor for its bounds.
    const holdUs = this.#holdUs > 0 && !holding && leftUs > this.#toleranceUs
      ? Math.min(this.#holdUs, Math.max(0, (this.#at - this.#firedUs) / 4), holdAllowance(nowUs))
      : 0;
    const aimUs = holdUs > 0 ? leftUs - this.#toleranceUs - holdUs : leftUs;
    if (leftUs <= this.#toleranceUs) {
      this.#fire(nowUs);
    } else if (!this.#spin) {
      this.#timer = this.#clock.setTimeout(this.#wake, leftUs / 1000);
    } else if (holdUs > 0 && aimUs <= 0) {
      this.#hold(nowUs);
    } else if (aimUs >= (LEAD_MS + 1) * 1000) {
      // setTimeout(n) for a whole n >= 1 fires at n + 1..1.2 ms: at most LEAD_MS early, never late.
      this.#timer = this.#clock.setTimeout(this.#wake, Math.floor(aimUs / 1000 - LEAD_MS));
    } else if (sleeper && this.#sleepWake !== null && this.#sleepWake <= this.#at - holdUs) {
      // The sleep in flight wakes us in time (it calls #wake when it ends).
    } else if (sleeper && this.#sleepWake === null && aimUs - WAKE_LEAD_US >= MIN_SLEEP_US) {
      this.#sleepWake = this.#at - holdUs;
      sleeper.sleep(aimUs - WAKE_LEAD_US).then(this.#slept);
    } else {
      this.#spinning = true;
      setImmediate(this.#afterTurn);
    }
  };

  #fire(nowUs: number): void {
    this.#stopWaiting();
    this.#at = null;
    armedTimers.delete(this);
    this.#firedUs = nowUs;
    this.#fn();
  }

  /** The thread is this timer's until it fires: nothing that starts now can make it late. */
  #hold(fromUs: number): void {
    const at = this.#at!;
    let now = fromUs;
    /** Time the other timers' callbacks took: theirs, not this hold's (neither its figure nor the budget's). */
    let othersUs = 0;
    const thrown: unknown[] = [];
    holding = true;
    try {
      // Until due, or cancelled or re-armed by a timer fired meanwhile (then as it now stands, below).
      while (this.#at === at && at - now > this.#toleranceUs) {
        now = this.#clock.nowUs();
        // The thread's other timers come due on time, not after this one (they do not hold in turn).
        for (const other of armedTimers) {
          if (other !== this && other.#at !== null && other.#at - now <= other.#toleranceUs) {
            // One that throws must not leave this one unfired: its error goes on as its own would have.
            try {
              other.#fire(now);
            } catch (error) {
              thrown.push(error);
            }
            const after = this.#clock.nowUs();
            othersUs += after - now;
            now = after;
          }
        }
      }
    } finally {
      holding = false;
    }
    this.#heldUs += now - fromUs - othersUs;
    holdBudgetUs -= now - fromUs - othersUs;
    for (const error of thrown) {
      queueMicrotask(() => {
        throw error;
      });
    }
    if (this.#at !== at) return this.#at === null ? undefined : this.#wake();
    this.#fire(now);
  }

  readonly #slept = (): void => {
    this.#sleepWake = null;
    // Not while spinning: the spin wakes it anyway; nor with a timer set: that was chosen for a later time.
    if (!this.#spinning && this.#timer === undefined) this.#wake();
  };

  readonly #afterTurn = (): void => {
    // Cancelled (or re-armed with a timer or a sleep) while this turn was pending.
    if (!this.#spinning) return;
    this.#wake();
  };
}
