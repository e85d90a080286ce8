/**
 * What a probe receiver measures: loss, reordering, duplicates, one-way delay percentiles (sender and receiver on
 * one host share a clock) and throughput. Pure: datagrams and arrival times in, a report out.
 *
 * Sequence numbers are tracked per stream (a key: the probe's stream id for plain datagrams, the SSRC for RTP),
 * so two senders do not take each other's datagrams for duplicates; the report sums the streams.
 */
import { percentile, Reservoir } from "./reservoir.ts";
import type { RtpReport } from "./rtp_streams.ts";

/** Sequence numbers tracked at most per stream (a bitmap of this many bits, 16 MiB). */
const MAX_SEQ = 2 ** 27;
/** Bitmap bytes of all streams together; a datagram that would need more is counted as foreign. */
const MAX_BITMAP_BYTES = 64 * 1024 * 1024;
/** Streams tracked at most; datagrams of further streams are counted as foreign. */
export const MAX_PROBE_STREAMS = 64;
/** Delay samples kept; beyond this a uniform reservoir sample stands for all. */
const MAX_SAMPLES = 200_000;

export interface ProbeReport {
  received: number;
  bytes: number;
  /** Highest sequence number seen + 1, summed over streams: what was sent, as far as the receiver can tell. */
  expected: number;
  lost: number;
  loss_percent: number;
  duplicates: number;
  reordered: number;
  delay_us: { p50: number; p90: number; p99: number; max: number } | null;
  duration_s: number;
  packets_per_s: number;
  mbit_per_s: number;
  /** Datagrams that were no probe datagram (nor RTP, counted apart), or beyond the tracking bounds. */
  foreign: number;
  /** RTP streams and their A/V skew per CNAME, when RTP arrived (lib/probe/rtp_streams.ts). */
  rtp?: RtpReport;
}

/** One stream's seen sequence numbers. */
interface Seen {
  bits: Uint8Array;
  maxSeq: number;
}

export class ProbeStats {
  readonly #streams = new Map<number, Seen>();
  #lastKey = -1;
  #last: Seen | undefined;
  #bitmapBytes = 0;
  #received = 0;
  #bytes = 0;
  #duplicates = 0;
  #reordered = 0;
  #foreign = 0;
  readonly #delays = new Reservoir(MAX_SAMPLES);
  #maxDelay = 0;
  #firstUs = 0;
  #lastUs = 0;

  /**
   * Records one probe datagram of stream `key` that arrived at `arrivalUs` (same clock as the sender's
   * timestamps).
   */
  add(seq: number, sentUs: number, arrivalUs: number, bytes: number, key = 0): void {
    const s = this.#stream(key);
    if (!s || seq >= MAX_SEQ) {
      this.#foreign++;
      return;
    }
    const byte = seq >>> 3;
    if (byte >= s.bits.length) {
      const size = Math.min(MAX_SEQ / 8, Math.max(byte + 1, s.bits.length * 2));
      if (this.#bitmapBytes + size - s.bits.length > MAX_BITMAP_BYTES) {
        this.#foreign++;
        return;
      }
      const grown = new Uint8Array(size);
      grown.set(s.bits);
      this.#bitmapBytes += size - s.bits.length;
      s.bits = grown;
    }
    const bit = 1 << (seq & 7);
    if (s.bits[byte] & bit) {
      this.#duplicates++;
      return;
    }
    s.bits[byte] |= bit;
    if (seq < s.maxSeq) this.#reordered++;
    else s.maxSeq = seq;
    if (this.#received === 0) this.#firstUs = arrivalUs;
    this.#lastUs = arrivalUs;
    this.#received++;
    this.#bytes += bytes;
    const delay = Math.max(0, arrivalUs - sentUs);
    if (delay > this.#maxDelay) this.#maxDelay = delay;
    this.#delays.add(delay);
  }

  #stream(key: number): Seen | undefined {
    // Datagrams come in runs of one stream: skip the map lookup on the packet path then.
    if (key === this.#lastKey && this.#last) return this.#last;
    let s = this.#streams.get(key);
    if (!s && this.#streams.size < MAX_PROBE_STREAMS) {
      s = { bits: new Uint8Array(1024), maxSeq: -1 };
      this.#bitmapBytes += s.bits.length;
      this.#streams.set(key, s);
    }
    this.#lastKey = key;
    this.#last = s;
    return s;
  }

  foreign(): void {
    this.#foreign++;
  }

  get received(): number {
    return this.#received;
  }

  report(): ProbeReport {
    let expected = 0;
    for (const s of this.#streams.values()) expected += s.maxSeq + 1;
    const lost = Math.max(0, expected - this.#received);
    const seconds = Math.max(1e-6, (this.#lastUs - this.#firstUs) / 1e6);
    const sorted = this.#delays.sorted();
    const pct = (p: number) => percentile(sorted, p);
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
