/**
 * Loss, reordering and duplicates of one RTP stream, judged by its 16-bit sequence numbers alone, in the spirit of
 * RFC 3550 Appendix A.1: sequence numbers are extended to 32 bits by counting wraps, and a jump too far ahead or
 * behind is no gap but a possible source restart, believed only once a second, sequential packet confirms it.
 * Pure and allocation-free per packet, so a counter can sit on the packet path.
 *
 * Definitions (what `RtpSequenceStats.snapshot()` reports):
 * - `received`: distinct sequence numbers accepted (duplicates and ignored strays not included).
 * - `expected`: extended highest − base + 1, where base is the lowest sequence number accepted; summed over the
 *   runs before and after each restart, so a restart neither counts the jump as loss nor forgets earlier loss.
 * - `lost`: max(0, expected − received). A late packet lowers it again when it arrives.
 * - `reordered`: packets that arrive with a sequence number lower than the highest seen so far, not duplicates.
 * - `duplicates`: a sequence number seen again within the last DUPLICATE_WINDOW sequence numbers.
 */

/** Sequence numbers are a 16-bit field and wrap here. */
const SEQ_MOD = 0x10000;
/**
 * A jump this far ahead or farther is taken for a possible restart, not for loss (RFC 3550 A.1's value: at 50
 * packets/s it is a minute of loss).
 */
export const MAX_DROPOUT = 3000;
/** A packet this far behind the highest or farther is taken for a possible restart, not for a late packet. */
export const MAX_MISORDER = 100;
/**
 * Sequence numbers remembered for duplicate detection: a bitmap of 1024 bits (128 bytes). It must exceed
 * MAX_MISORDER, so every packet accepted as late falls inside it and is told apart from its duplicate.
 */
export const DUPLICATE_WINDOW = 1024;

export interface RtpSequenceSnapshot {
  readonly received: number;
  /** Sequence numbers the sender used, as far as the receiver can tell (see the module doc). */
  readonly expected: number;
  readonly lost: number;
  readonly reordered: number;
  readonly duplicates: number;
  /** The extended (32-bit) highest sequence number since the last restart; -1 before the first packet. */
  readonly highest: number;
  /** Times the 16-bit sequence number wrapped from 65535 to 0 (over all runs). */
  readonly wraps: number;
  /** Times the stream was resynchronised after a jump beyond MAX_DROPOUT / MAX_MISORDER. */
  readonly restarts: number;
}

/**
 * Counts one RTP stream (one SSRC) by sequence number. The first packet is accepted at any number; unlike RFC 3550's
 * probation it is counted at once, because a counter that hides the first packets would disagree with the byte and
 * packet counters beside it, and a stray first packet costs nothing: the stream that follows resyncs like a restart.
 */
export class RtpSequenceStats {
  /** One bit per sequence number, indexed by extended sequence number modulo DUPLICATE_WINDOW. */
  readonly #seen = new Uint32Array(DUPLICATE_WINDOW / 32);
  #started = false;
  /** The highest 16-bit sequence number of this run. */
  #maxSeq = 0;
  /** Wraps of this run times SEQ_MOD: added to #maxSeq it gives the extended highest. */
  #cycles = 0;
  /** The lowest extended sequence number of this run; negative when a late packet predates the first one across 0. */
  #base = 0;
  /** The 16-bit number that, arriving next after a jump, confirms a restart; -1 for none pending. */
  #badSeq = -1;
  /** `expected` of the runs before the last restart. */
  #expectedPrior = 0;
  #received = 0;
  #reordered = 0;
  #duplicates = 0;
  #wraps = 0;
  #restarts = 0;

  /** Records one packet's sequence number; only the low 16 bits are read, as on the wire. */
  add(seq: number): void {
    seq &= 0xffff;
    if (!this.#started) {
      this.#started = true;
      this.#startRun(seq, seq);
      this.#received++;
      return;
    }
    // Distance ahead of the highest, modulo 2^16: small means new, near 2^16 means late, in between means a jump.
    const delta = (seq - this.#maxSeq) & 0xffff;
    const highest = this.#cycles + this.#maxSeq;
    if (delta === 0) {
      this.#duplicates++;
    } else if (delta < MAX_DROPOUT) {
      if (seq < this.#maxSeq) {
        this.#cycles += SEQ_MOD;
        this.#wraps++;
      }
      this.#forget(highest, highest + delta);
      this.#maxSeq = seq;
      this.#mark(highest + delta);
      this.#received++;
    } else if (delta <= SEQ_MOD - MAX_MISORDER) {
      if (seq === this.#badSeq) this.#restart(seq);
      // A lone stray (a foreign packet, a very late one) is ignored, as RFC 3550 does; it is counted if confirmed.
      else this.#badSeq = (seq + 1) & 0xffff;
    } else {
      const ext = highest - (SEQ_MOD - delta);
      if (this.#isMarked(ext)) {
        this.#duplicates++;
        return;
      }
      this.#mark(ext);
      this.#reordered++;
      this.#received++;
      // A packet older than the first one shows the stream began earlier: the sequence numbers between were sent too.
      if (ext < this.#base) this.#base = ext;
    }
  }

  /** The counts so far; a new object each call, so a caller may keep it. */
  snapshot(): RtpSequenceSnapshot {
    const highest = this.#started ? this.#cycles + this.#maxSeq : -1;
    const expected = this.#started ? this.#expectedPrior + highest - this.#base + 1 : 0;
    return {
      received: this.#received,
      expected,
      lost: Math.max(0, expected - this.#received),
      reordered: this.#reordered,
      duplicates: this.#duplicates,
      highest,
      wraps: this.#wraps,
      restarts: this.#restarts,
    };
  }

  /** The packet before `seq` was the stray that asked for confirmation: both begin the new run and both count. */
  #restart(seq: number): void {
    this.#expectedPrior += this.#cycles + this.#maxSeq - this.#base + 1;
    this.#restarts++;
    this.#startRun(seq - 1, seq);
    this.#mark(seq);
    this.#received += 2;
  }

  /** Begins a run whose lowest extended number is `base` (maybe -1, the stray before a 0) and highest is `seq`. */
  #startRun(base: number, seq: number): void {
    this.#seen.fill(0);
    this.#maxSeq = seq;
    this.#cycles = 0;
    this.#base = base;
    this.#badSeq = -1;
    this.#mark(base);
  }

  /** Clears the bits the window reuses as the highest moves from `from` to `to`: they held numbers 1024 older. */
  #forget(from: number, to: number): void {
    if (to - from >= DUPLICATE_WINDOW) {
      this.#seen.fill(0);
      return;
    }
    for (let ext = from + 1; ext <= to; ext++) {
      this.#seen[(ext & (DUPLICATE_WINDOW - 1)) >>> 5] &= ~(1 << (ext & 31));
    }
  }

  #mark(ext: number): void {
    this.#seen[(ext & (DUPLICATE_WINDOW - 1)) >>> 5] |= 1 << (ext & 31);
  }

  #isMarked(ext: number): boolean {
    return (this.#seen[(ext & (DUPLICATE_WINDOW - 1)) >>> 5] & (1 << (ext & 31))) !== 0;
  }
}
