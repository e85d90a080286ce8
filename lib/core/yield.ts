/**
 * Giving the event loop a turn. A receive loop whose data is always ready never reaches the loop on its own: Deno
 * completes such reads without passing through timers and I/O, so under a flood the status API, keepalive timers
 * and every other socket would wait. `setTimeout(0)` costs milliseconds here; a message through a fresh channel
 * costs tens of microseconds and lets timers and I/O run. (A long-lived channel would keep the process alive.)
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

/**
 * Turns through one channel, for a loop that gives many: cheaper than a fresh channel each time. `close()` it when
 * the loop ends, since an open channel keeps the process alive.
 */
export class EventLoopTurns {
  readonly #channel = new MessageChannel();
  #done: (() => void) | null = null;

  constructor() {
    this.#channel.port1.onmessage = () => {
      const done = this.#done;
      this.#done = null;
      done?.();
    };
  }

  /** Resolves once the event loop has had a turn (one turn at a time). */
  give(): Promise<void> {
    return new Promise((resolve) => {
      this.#done = resolve;
      this.#channel.port2.postMessage(null);
    });
  }

  close(): void {
    this.#channel.port1.close();
    this.#channel.port2.close();
    this.#done?.();
    this.#done = null;
  }
}

/** How many ready batches a receive loop takes before it gives the event loop a turn. */
export const RECEIVE_STREAK = 32;
