/**
 * The bidirectional splice behind every proxied TCP connection: two plain read/write loops, one per direction, each
 * with one buffer from a shared bounded pool. A read/write loop moved ~3x what `pipeTo` did on the measured proxy
 * (../shared/PLATFORM.md), and it gives backpressure by construction: a loop reads again only when its last chunk is
 * fully written, so at most one buffer per direction is held however slow the far reader is. One side's EOF
 * half-closes the other side and the reverse direction runs on; an error on either side, the idle timeout or the
 * caller's signal closes both. The pipe owns both connections and has closed them when its promise resolves.
 */
import { type Clock, systemClock, type TimerId } from "../core/clock.ts";
import { closeQuietly } from "../net/tcp.ts";

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

export type PipeEndReason =
  /** Both directions reached EOF. */
  | "eof"
  /** No byte moved either way for idleMs. */
  | "idle"
  /** The caller's signal aborted. */
  | "aborted"
  /** A read, write or half-close failed on one side (reset, broken pipe...). */
  | "error";

export interface PipeResult {
  readonly up: number;
  readonly down: number;
  readonly reason: PipeEndReason;
  /** The failure ("error") or the signal's reason ("aborted"). */
  readonly error?: unknown;
  /** Which connection failed ("error" only). */
  readonly side?: "a" | "b";
}

export const PIPE_DEFAULTS = {
  /**
   * Per direction. In tests/bench/pipe_bench.ts 16 KiB cost 10-30% of bulk MB/s; 32, 64 and 128 KiB were within
   * run-to-run noise of each other, 256 KiB lost on small exchanges. 64 KiB is also the size measured against HAProxy.
   */
  bufferBytes: 64 * 1024,
  /** Free buffers a pool keeps: enough for 32 busy connections' worth of churn, 4 MiB at the default size. */
  poolCapacity: 64,
} as const;

/**
 * Buffers reused across connections. `take` never waits: when the pool is empty it allocates, so a burst of
 * connections is not held up; `give` keeps at most `capacity` free buffers and lets the rest go to the GC.
 */
export class BufferPool {
  readonly bufferBytes: number;
  readonly capacity: number;
  #free: Uint8Array[] = [];
  #out = 0;
  #allocated = 0;

  constructor(options: { bufferBytes?: number; capacity?: number } = {}) {
    this.bufferBytes = options.bufferBytes ?? PIPE_DEFAULTS.bufferBytes;
    this.capacity = options.capacity ?? PIPE_DEFAULTS.poolCapacity;
    if (!Number.isInteger(this.bufferBytes) || this.bufferBytes < 1) {
      throw new RangeError(`Buffer size must be a positive integer, got ${this.bufferBytes}`);
    }
    if (!Number.isInteger(this.capacity) || this.capacity < 0) {
      throw new RangeError(`Pool capacity must be a non-negative integer, got ${this.capacity}`);
    }
  }

  take(): Uint8Array {
    this.#out++;
    const buf = this.#free.pop();
    if (buf) return buf;
    this.#allocated++;
    return new Uint8Array(this.bufferBytes);
  }

  give(buf: Uint8Array): void {
    this.#out--;
    if (this.#free.length < this.capacity && buf.byteLength === this.bufferBytes) this.#free.push(buf);
  }

  /** Buffers waiting in the pool. */
  get free(): number {
    return this.#free.length;
  }

  /** Buffers taken and not yet given back. */
  get inUse(): number {
    return this.#out;
  }

  /** Buffers ever allocated (a figure that stops growing once the pool has warmed up). */
  get allocated(): number {
    return this.#allocated;
  }
}

export interface PipeOptions {
  /** Where the two buffers come from; without one, each pipe allocates its own of PIPE_DEFAULTS.bufferBytes. */
  readonly pool?: BufferPool;
  /** Close both sides after this many ms with no byte either way; 0 or absent: never. */
  readonly idleMs?: number;
  readonly clock?: Clock;
  /** Closes both sides promptly (the server went down, the service stops). */
  readonly signal?: AbortSignal;
  /** Live counters the caller reads (for /status); a fresh object when absent. */
  readonly counters?: PipeCounters;
}

/**
 * Relays between `a` (the client side) and `b` (the server side) until both directions end, then closes both.
 * Never rejects: every ending is a PipeResult.
 */
export async function pipe(a: PipeConn, b: PipeConn, options: PipeOptions = {}): Promise<PipeResult> {
  const { pool, idleMs = 0, clock = systemClock, signal } = options;
  const counters = options.counters ?? { up: 0, down: 0 };
  let end: { reason: PipeEndReason; error?: unknown; side?: "a" | "b" } | undefined;
  let lastActivity = clock.now();
  let timer: TimerId | undefined;

  // The first ending wins; what the closes below do to the other loop (rejected reads) is not reported.
  const stop = (reason: PipeEndReason, error?: unknown, side?: "a" | "b") => {
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
    const buf = pool ? pool.take() : new Uint8Array(PIPE_DEFAULTS.bufferBytes);
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
