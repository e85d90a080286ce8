/**
 * The buffers both splices hold for bytes in flight: a bounded pool reused across connections, so a busy service
 * does not allocate two buffers per connection (the portable pipe) or one per slow peer (the fast splice).
 */

/** Sizes both transports use unless a service sets `buffer`. */
export const BUFFER_DEFAULTS = {
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
    this.bufferBytes = options.bufferBytes ?? BUFFER_DEFAULTS.bufferBytes;
    this.capacity = options.capacity ?? BUFFER_DEFAULTS.poolCapacity;
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
