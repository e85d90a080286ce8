/**
 * Where a syncer keeps the datagrams it holds. A batch is valid only during the call that gave it, so held datagrams
 * are copied; one allocation per datagram would hand the garbage collector tens of thousands of small buffers a
 * second, so they are copied into large chunks instead. A chunk is reused when its last datagram has left. The cap
 * counts whole chunks, which is the memory really held: a chunk pinned by one long-held datagram counts in full,
 * plus what the caller reserves for its own per-datagram bookkeeping (`copy`'s `reservedBytes`).
 */

/** One slab chunk; `live` datagrams in it have not left yet. */
export class SlabChunk {
  readonly bytes: Uint8Array;
  used = 0;
  live = 0;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }
}

/** The largest UDP payload: every chunk holds at least one datagram. */
const MAX_DATAGRAM = 65_535;

export class PacketSlab {
  readonly chunkBytes: number;
  readonly maxChunks: number;
  readonly maxBytes: number;
  /** Datagrams and bytes held now. */
  livePackets = 0;
  liveBytes = 0;
  #current: SlabChunk | null = null;
  #spare: SlabChunk[] = [];
  #allocated = 0;
  readonly #keepSpare: number;

  /** `maxBytes` caps the chunks allocated; up to `spareChunks` emptied chunks are kept for reuse, the rest freed. */
  constructor(o: { maxBytes: number; chunkBytes?: number; spareChunks?: number }) {
    this.chunkBytes = Math.max(MAX_DATAGRAM, Math.floor(o.chunkBytes ?? 256 * 1024));
    this.maxChunks = Math.max(1, Math.floor(o.maxBytes / this.chunkBytes));
    this.maxBytes = o.maxBytes;
    this.#keepSpare = o.spareChunks ?? 2;
  }

  /** Memory held in chunks, in use or spare. */
  get memoryBytes(): number {
    return this.#allocated * this.chunkBytes;
  }

  /**
   * Copies `data` into the slab; null when the cap leaves no room (the caller drops and counts it). A new chunk is
   * taken only while it and `reservedBytes` (memory the caller holds for its datagrams) fit under the cap, except the
   * first: every slab can hold a datagram.
   */
  copy(data: Uint8Array, reservedBytes = 0): { chunk: SlabChunk; off: number } | null {
    const len = data.length;
    let chunk = this.#current;
    if (!chunk || chunk.used + len > chunk.bytes.length) {
      this.#current = null;
      if (chunk && chunk.live === 0) this.#recycle(chunk);
      chunk = this.#take(reservedBytes);
      if (!chunk) return null;
      this.#current = chunk;
    }
    const off = chunk.used;
    chunk.bytes.set(data, off);
    chunk.used += len;
    chunk.live++;
    this.livePackets++;
    this.liveBytes += len;
    return { chunk, off };
  }

  /** A datagram of `len` bytes in `chunk` has left. */
  free(chunk: SlabChunk, len: number): void {
    chunk.live--;
    this.livePackets--;
    this.liveBytes -= len;
    if (chunk.live > 0) return;
    if (chunk === this.#current) chunk.used = 0;
    else this.#recycle(chunk);
  }

  #take(reservedBytes: number): SlabChunk | null {
    const spare = this.#spare.pop();
    if (spare) {
      spare.used = 0;
      return spare;
    }
    if (this.#allocated >= this.maxChunks) return null;
    if (this.#allocated > 0 && (this.#allocated + 1) * this.chunkBytes + reservedBytes > this.maxBytes) {
      return null;
    }
    this.#allocated++;
    return new SlabChunk(this.chunkBytes);
  }

  #recycle(chunk: SlabChunk): void {
    if (this.#spare.length < this.#keepSpare) this.#spare.push(chunk);
    else this.#allocated--;
  }
}
