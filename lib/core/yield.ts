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

/** How many ready batches a receive loop takes before it gives the event loop a turn. */
export const RECEIVE_STREAK = 32;
