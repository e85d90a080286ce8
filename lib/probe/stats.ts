/**
 * What a probe receiver measures: loss, reordering, duplicates, one-way delay percentiles (sender and receiver on
 * one host share a clock) and throughput. Pure: datagrams and arrival times in, a report out.
 */

/** Sequence numbers tracked at most (a bitmap of this many bits, 16 MiB). */
const MAX_SEQ = 2 ** 27;
/** Delay samples kept; beyond this a uniform reservoir sample stands for all. */
const MAX_SAMPLES = 200_000;

export interface ProbeReport {
  received: number;
  bytes: number;
  /** Highest sequence number seen + 1: what the sender sent, as far as the receiver can tell. */
  expected: number;
  lost: number;
  loss_percent: number;
  duplicates: number;
  reordered: number;
  delay_us: { p50: number; p90: number; p99: number; max: number } | null;
  duration_s: number;
  packets_per_s: number;
  mbit_per_s: number;
  /** Datagrams that were no probe datagram, or beyond MAX_SEQ. */
  foreign: number;
}

export class ProbeStats {
  #seen = new Uint8Array(1024);
  #maxSeq = -1;
  #received = 0;
  #bytes = 0;
  #duplicates = 0;
  #reordered = 0;
  #foreign = 0;
  #samples = new Float64Array(MAX_SAMPLES);
  #sampleCount = 0;
  #delaysSeen = 0;
  #maxDelay = 0;
  #firstUs = 0;
  #lastUs = 0;

  /** Records one probe datagram that arrived at `arrivalUs` (same clock as the sender's timestamps). */
  add(seq: number, sentUs: number, arrivalUs: number, bytes: number): void {
    if (seq >= MAX_SEQ) {
      this.#foreign++;
      return;
    }
    const byte = seq >>> 3;
    if (byte >= this.#seen.length) {
      const grown = new Uint8Array(Math.min(MAX_SEQ / 8, Math.max(byte + 1, this.#seen.length * 2)));
      grown.set(this.#seen);
      this.#seen = grown;
    }
    const bit = 1 << (seq & 7);
    if (this.#seen[byte] & bit) {
      this.#duplicates++;
      return;
    }
    this.#seen[byte] |= bit;
    if (seq < this.#maxSeq) this.#reordered++;
    else this.#maxSeq = seq;
    if (this.#received === 0) this.#firstUs = arrivalUs;
    this.#lastUs = arrivalUs;
    this.#received++;
    this.#bytes += bytes;
    const delay = Math.max(0, arrivalUs - sentUs);
    if (delay > this.#maxDelay) this.#maxDelay = delay;
    this.#delaysSeen++;
    if (this.#sampleCount < MAX_SAMPLES) this.#samples[this.#sampleCount++] = delay;
    else {
      // Reservoir sampling keeps every delay equally likely to stand in the sample.
      const j = Math.floor(Math.random() * this.#delaysSeen);
      if (j < MAX_SAMPLES) this.#samples[j] = delay;
    }
  }

  foreign(): void {
    this.#foreign++;
  }

  get received(): number {
    return this.#received;
  }

  report(): ProbeReport {
    const expected = this.#maxSeq + 1;
    const lost = Math.max(0, expected - this.#received);
    const seconds = Math.max(1e-6, (this.#lastUs - this.#firstUs) / 1e6);
    const sorted = this.#samples.slice(0, this.#sampleCount).sort();
    const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
    return {
      received: this.#received,
      bytes: this.#bytes,
      expected,
      lost,
      loss_percent: expected > 0 ? (lost / expected) * 100 : 0,
      duplicates: this.#duplicates,
      reordered: this.#reordered,
      delay_us: sorted.length ? { p50: pct(50), p90: pct(90), p99: pct(99), max: this.#maxDelay } : null,
      duration_s: this.#received > 1 ? seconds : 0,
      packets_per_s: this.#received > 1 ? this.#received / seconds : 0,
      mbit_per_s: this.#received > 1 ? (this.#bytes * 8) / seconds / 1e6 : 0,
      foreign: this.#foreign,
    };
  }
}
