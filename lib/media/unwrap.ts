/**
 * RTP sequence numbers (16 bits) and timestamps (32 bits) wrap within minutes or hours; sync and loss arithmetic needs
 * them on one unbounded line. Each value is placed at the point nearest the previous one, so a value a little before
 * the last one (a late or reordered packet), even across the wrap, is taken as earlier in the same cycle, not as the
 * start of the next.
 */

/** Extends wrapping 16- or 32-bit counters to unbounded numbers (exact while under 2^53). */
export class Unwrapper {
  readonly #mod: number;
  readonly #half: number;
  #lastRaw = -1;
  #last = 0;

  constructor(bits: 16 | 32) {
    if (bits !== 16 && bits !== 32) {
      throw new RangeError(`Cannot unwrap ${bits}-bit values: 16 or 32 bits only`);
    }
    this.#mod = 2 ** bits;
    this.#half = 2 ** (bits - 1);
  }

  /**
   * The extended value of `value` (only its low bits are read). The first value is returned as it is; a later one
   * lies within half a cycle of the one before, in either direction, so results may go below the first value and
   * below 0 (a packet older than the first, across the wrap).
   */
  unwrap(value: number): number {
    const raw = this.#mod === 0x10000 ? value & 0xffff : value >>> 0;
    if (this.#lastRaw < 0) {
      this.#lastRaw = raw;
      this.#last = raw;
      return raw;
    }
    let delta = raw - this.#lastRaw;
    if (delta < 0) delta += this.#mod;
    // Exactly half a cycle is ambiguous; taking it as forwards matches the RFC 1982 "greater than" of WebRTC.
    if (delta > this.#half) delta -= this.#mod;
    this.#lastRaw = raw;
    this.#last += delta;
    return this.#last;
  }

  /** The last extended value, or null before the first. */
  get last(): number | null {
    return this.#lastRaw < 0 ? null : this.#last;
  }
}
