/**
 * The portable splice (Deno's own sockets) behind a proxied TCP connection: two plain read/write loops, one per direction, each
 * with one buffer from a shared bounded pool. A read/write loop moved ~3x what `pipeTo` did on the measured proxy
 * (../shared/PLATFORM.md), and it gives backpressure by construction: a loop reads again only when its last chunk is
 * fully written, so at most one buffer per direction is held however slow the far reader is. One side's EOF
 * half-closes the other side and the reverse direction runs on; an error on either side, the idle timeout or the
 * caller's signal closes both. The pipe owns both connections and has closed them when its promise resolves.
 */
import { systemClock, type TimerId } from "../../core/clock.ts";
import { BUFFER_DEFAULTS } from "./pool.ts";
import { closeQuietly } from "./socket.ts";
import type { SpliceEndReason, SpliceOptions, SpliceResult } from "./transport.ts";

/** What the pipe needs of a connection (Deno.Conn has it; tests pass fakes). */
export interface PipeConn {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  /** Shuts down the sending half (FIN); reading goes on. */
  closeWrite(): Promise<void>;
  close(): void;
}

/** Bytes relayed so far, updated after every write: `up` from a to b (client to server), `down` from b to a. */
export interface PipeCounters {
  up: number;
  down: number;
}

export interface PipeOptions extends SpliceOptions {
  /** Live counters the caller reads; a fresh object when absent. */
  readonly counters?: PipeCounters;
}

/**
 * Relays between `a` (the client side) and `b` (the server side) until both directions end, then closes both.
 * Never rejects: every ending is a SpliceResult.
 */
export async function pipe(a: PipeConn, b: PipeConn, options: PipeOptions = {}): Promise<SpliceResult> {
  const { pool, idleMs = 0, clock = systemClock, signal } = options;
  const counters = options.counters ?? { up: 0, down: 0 };
  let end: { reason: SpliceEndReason; error?: unknown; side?: "a" | "b" } | undefined;
  let lastActivity = clock.now();
  let timer: TimerId | undefined;

  // The first ending wins; what the closes below do to the other loop (rejected reads) is not reported.
  const stop = (reason: SpliceEndReason, error?: unknown, side?: "a" | "b") => {
    if (end) return;
    end = { reason, error, side };
    closeQuietly(a);
    closeQuietly(b);
  };
  const onAbort = () => stop("aborted", signal!.reason);

  // One timer for the whole pipe, re-armed only when it fires early: reads just stamp lastActivity.
  const checkIdle = () => {
    timer = undefined;
    if (end) return;
    const quiet = clock.now() - lastActivity;
    if (quiet >= idleMs) stop("idle");
    else timer = clock.setTimeout(checkIdle, idleMs - quiet);
  };

  const copy = async (from: PipeConn, to: PipeConn, fromSide: "a" | "b", toSide: "a" | "b", up: boolean) => {
    const buf = pool ? pool.take() : new Uint8Array(BUFFER_DEFAULTS.bufferBytes);
    try {
      while (!end) {
        let n: number | null;
        try {
          n = await from.read(buf);
        } catch (error) {
          return stop("error", error, fromSide);
        }
        if (end) return;
        if (n === null) {
          try {
            await to.closeWrite();
          } catch (error) {
            stop("error", error, toSide);
          }
          return;
        }
        lastActivity = clock.now();
        let off = 0;
        while (off < n) {
          let w: number;
          try {
            w = await to.write(buf.subarray(off, n));
          } catch (error) {
            return stop("error", error, toSide);
          }
          if (!(w > 0)) return stop("error", new Deno.errors.WriteZero("Write accepted no bytes"), toSide);
          if (up) counters.up += w;
          else counters.down += w;
          if (end) return;
          off += w;
          lastActivity = clock.now();
        }
      }
    } finally {
      // Safe: both the read and the write into this buffer have settled by now.
      pool?.give(buf);
    }
  };

  if (signal?.aborted) onAbort();
  else signal?.addEventListener("abort", onAbort, { once: true });
  if (idleMs > 0 && !end) timer = clock.setTimeout(checkIdle, idleMs);
  try {
    if (!end) await Promise.all([copy(a, b, "a", "b", true), copy(b, a, "b", "a", false)]);
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (timer !== undefined) clock.clearTimeout(timer);
    closeQuietly(a);
    closeQuietly(b);
  }
  const { reason, error, side } = end ?? { reason: "eof" as const };
  return {
    up: counters.up,
    down: counters.down,
    reason,
    ...(error !== undefined ? { error } : {}),
    ...(side ? { side } : {}),
  };
}
