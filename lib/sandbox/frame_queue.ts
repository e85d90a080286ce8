/**
 * Frames on their way into a stream socket, written where they will be sent from: a batch is encoded straight into
 * a chunk of the queue (`reserve`), frames queued one after another lie next to each other and leave in one write,
 * and a chunk whose bytes are written is used again. So a busy sandbox costs the node no new buffer per batch (at
 * 250k datagrams/s of 1450 B that was 360 MB/s of fresh ArrayBuffers, and an old-space collection every 100 ms).
 *
 * One writer drains it: `next()` gives the bytes to write, `advance(n)` says n of them were written. What is reserved
 * while a write is under way goes after the bytes being written, never over them.
 */

interface Chunk {
  readonly buf: Uint8Array;
  /** Bytes reserved (filled or being filled by the caller). */
  filled: number;
  /** Bytes written. */
  written: number;
  /** A chunk of the queue's size, used again once written; otherwise one frame's own buffer. */
  readonly pooled: boolean;
}

/**
 * Bytes of one chunk: a reserved or pushed frame of half of it or more gets a buffer of its own (the sandbox host's
 * largest frames, gathered small batches, are 512 KiB).
 */
export const CHUNK_BYTES = 1024 * 1024;
/** Written chunks kept for reuse, at most (see `trim` for fewer). */
const KEEP = 8;

export class FrameQueue {
  readonly #chunkBytes: number;
  readonly #keep: number;
  readonly #chunks: Chunk[] = [];
  readonly #free: Uint8Array[] = [];
  #queued = 0;
  /** Pooled chunks queued now, and the most at once since the last `trim`. */
  #inUse = 0;
  #peak = 0;

  constructor(chunkBytes = CHUNK_BYTES, keep = KEEP) {
    this.#chunkBytes = chunkBytes;
    this.#keep = keep;
  }

  /** Bytes queued and not yet written. */
  get queuedBytes(): number {
    return this.#queued;
  }

  /**
   * A view of `bytes` bytes that will be written after everything queued before; the caller fills it before its
   * turn of the event loop ends (before the writer can reach it).
   */
  reserve(bytes: number): Uint8Array {
    this.#queued += bytes;
    if (bytes * 2 >= this.#chunkBytes) {
      const buf = new Uint8Array(bytes);
      this.#chunks.push({ buf, filled: bytes, written: 0, pooled: false });
      return buf;
    }
    const last = this.#room(bytes);
    const at = last.filled;
    last.filled += bytes;
    return last.buf.subarray(at, at + bytes);
  }

  /**
   * Takes back the last `reserve` (`view` is what it gave), which must not be written: its caller failed to fill
   * it. Nothing half-made reaches the socket.
   */
  unreserve(view: Uint8Array): void {
    const last = this.#chunks[this.#chunks.length - 1];
    if (
      !last || last.buf.buffer !== view.buffer ||
      last.buf.byteOffset + last.filled !== view.byteOffset + view.length
    ) {
      throw new RangeError("Cannot take back a reservation that is not the last one");
    }
    if (last.written > view.byteOffset - last.buf.byteOffset) {
      throw new RangeError("Cannot take back written bytes");
    }
    this.#queued -= view.length;
    if (!last.pooled) this.#chunks.pop();
    else last.filled -= view.length;
  }

  /** The last chunk if it is pooled and has `bytes` free, else a spare or new one queued after it. */
  #room(bytes: number): Chunk {
    const last = this.#chunks[this.#chunks.length - 1];
    if (last && last.pooled && last.buf.length - last.filled >= bytes) return last;
    const next = {
      buf: this.#free.pop() ?? new Uint8Array(this.#chunkBytes),
      filled: 0,
      written: 0,
      pooled: true,
    };
    this.#chunks.push(next);
    if (++this.#inUse > this.#peak) this.#peak = this.#inUse;
    return next;
  }

  /** Queues `frame`: copied when it is small, else written from where it lies (the caller leaves it alone). */
  push(frame: Uint8Array): void {
    if (frame.length * 2 >= this.#chunkBytes) {
      this.#queued += frame.length;
      this.#chunks.push({ buf: frame, filled: frame.length, written: 0, pooled: false });
      return;
    }
    this.reserve(frame.length).set(frame);
  }

  /**
   * Queues a copy of `frame` (a view of a buffer its owner reuses before the write could end), across as many pooled
   * chunks as it takes: the socket sees one byte stream, a frame need not lie in one piece, and a large one costs no
   * buffer of its own.
   */
  copy(frame: Uint8Array): void {
    this.#queued += frame.length;
    for (let off = 0; off < frame.length;) {
      const last = this.#room(1);
      const n = Math.min(frame.length - off, last.buf.length - last.filled);
      last.buf.set(frame.subarray(off, off + n), last.filled);
      last.filled += n;
      off += n;
    }
  }

  /** The bytes to write next (a view, valid until `advance`), or null when everything is written. */
  next(): Uint8Array | null {
    while (this.#chunks.length) {
      const c = this.#chunks[0];
      if (c.written < c.filled) return c.buf.subarray(c.written, c.filled);
      if (this.#chunks.length === 1) return null;
      this.#retire();
    }
    return null;
  }

  /** `n` bytes of what `next()` gave are written. */
  advance(n: number): void {
    const c = this.#chunks[0];
    if (!c || n < 0 || c.written + n > c.filled) throw new RangeError(`Cannot advance ${n} bytes`);
    c.written += n;
    this.#queued -= n;
    if (c.written < c.filled) return;
    if (this.#chunks.length > 1 || !c.pooled) this.#retire();
    else c.filled = c.written = 0; // the last chunk, empty: filled again from its start
  }

  /**
   * Lets go of the written chunks that more than the busiest moment since the last trim needed: a burst's chunks stay
   * while bursts go on (a new chunk costs fresh pages, each faulted in and cleared, just when the node is busiest),
   * and leave after a quiet period. Call it now and then (the sandbox host does, each sample).
   */
  trim(): void {
    while (this.#free.length > 0 && this.#free.length + this.#inUse > this.#peak) this.#free.pop();
    this.#peak = this.#inUse;
  }

  /** Written chunks held for reuse. */
  get spare(): number {
    return this.#free.length;
  }

  /** Drops everything queued (the socket is gone). */
  clear(): void {
    while (this.#chunks.length) this.#retire();
    this.#queued = 0;
  }

  #retire(): void {
    const c = this.#chunks.shift()!;
    this.#queued -= c.filled - c.written;
    if (c.pooled) this.#inUse--;
    if (c.pooled && this.#free.length < this.#keep) this.#free.push(c.buf);
  }
}
