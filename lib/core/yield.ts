/**
 * Giving the event loop a turn. A loop whose work is always ready never reaches the event loop on its own: Deno
 * completes such reads, and FFI calls, without passing through timers and I/O, so under a flood the status API,
 * keepalive timers and every other socket would wait.
 *
 * `setImmediate` is the turn: it runs after the event loop has polled timers and I/O, about 2 µs a hop here.
 * `setTimeout(0)` costs milliseconds. A message through a MessageChannel costs more (4.6 µs), and through one
 * long-lived channel the event loop mostly skips polling I/O: a local HTTP request made during a loop that yielded
 * that way took over 2000 turns here, against about a hundred with setImmediate (tests/core/yield_test.ts).
 */
import { setImmediate } from "node:timers";

const immediate = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Resolves once the event loop has had a turn: timers that were due and ready I/O have run. Two immediates: called
 * from code that runs before this loop iteration ends (a test body, a read that completed at once), the first one
 * still runs in the same iteration, before the next look at timers; the second runs after it.
 */
export async function yieldToEventLoop(): Promise<void> {
  await immediate();
  await immediate();
}

/** How many ready batches a receive loop takes before it gives the event loop a turn. */
export const RECEIVE_STREAK = 32;
