/**
 * A/V skew at a receiver: how much later one stream arrives than another, relative to when both were captured.
 * The definitions (used by lib/probe/rtp_streams.ts, and what `probe recv` reports):
 *
 * - offset of a packet = arrival_us - capture_us, where capture_us comes from its SSRC's sender reports (the
 *   NTP <-> RTP mapping of lib/media/rtp_clock.ts). Streams captured together and delivered together have equal
 *   offsets, whatever their RTP timestamp bases and clock rates.
 * - Only the first packet of each capture instant (the first to arrive with a new RTP timestamp) is timed. The
 *   packets of one video frame share its capture time and follow each other at the pace of the links (a 125 kB frame
 *   of 25 Mb/s video takes 1 ms at 1 Gb/s): when the frame begins to arrive is its timing, the rest is serialization.
 * - Within one CNAME the reference stream is the one with the lowest clock rate (audio's 8..48 kHz is below
 *   video's 90 kHz), ties going to the SSRC seen first (see `chooseReference`). Every other stream of the CNAME is
 *   paired with it.
 * - For each packet P of a paired stream S: skew = offset(P) - offset(R), where R is the reference's most recent
 *   packet (by arrival) that had a capture time, taken only if R arrived at most MAX_PAIR_AGE_US before P (a
 *   stopped reference makes no samples). Positive skew: S lags the reference (video late against audio).
 *
 * Bounded: each pair keeps a reservoir sample of its skews (lib/probe/reservoir.ts) and the exact largest |skew|.
 */
import { percentile, Reservoir } from "./reservoir.ts";

/** A reference packet older than this (µs before the paired packet's arrival) pairs with nothing. */
export const MAX_PAIR_AGE_US = 1_000_000;
/** Skew samples kept per pair. */
export const MAX_SKEW_SAMPLES = 50_000;

export interface SkewReport {
  /** SSRC of the reference stream. */
  reference: number;
  /** SSRC of the stream paired with it. */
  stream: number;
  samples: number;
  /** Percentiles and maximum of |skew|, in µs. */
  abs_us: { p50: number; p99: number; max: number } | null;
  /** The median of the signed skew, in µs (positive: `stream` lags `reference`). */
  median_us: number | null;
}

/** The skew samples of one pair of streams. */
export class SkewStats {
  readonly #samples: Reservoir;
  #maxAbs = 0;

  constructor(readonly reference: number, readonly stream: number, random?: () => number) {
    this.#samples = new Reservoir(MAX_SKEW_SAMPLES, random);
  }

  /** Records one packet of `stream`: its offset and that of the reference's latest packet, both in µs. */
  add(offsetUs: number, referenceOffsetUs: number): void {
    const skew = offsetUs - referenceOffsetUs;
    if (Math.abs(skew) > this.#maxAbs) this.#maxAbs = Math.abs(skew);
    this.#samples.add(skew);
  }

  get samples(): number {
    return this.#samples.seen;
  }

  report(): SkewReport {
    const signed = this.#samples.sorted();
    const abs = this.#samples.sorted(Math.abs);
    return {
      reference: this.reference,
      stream: this.stream,
      samples: this.#samples.seen,
      abs_us: abs.length ? { p50: percentile(abs, 50), p99: percentile(abs, 99), max: this.#maxAbs } : null,
      median_us: signed.length ? percentile(signed, 50) : null,
    };
  }
}

export interface SkewCandidate {
  readonly ssrc: number;
  /** The stream's clock rate in Hz, null while unknown (such a stream is never the reference). */
  readonly clockRate: number | null;
  /** Order of first appearance at the receiver. */
  readonly order: number;
}

/** The reference stream of one CNAME's streams: lowest clock rate, then seen first; undefined if none has a rate. */
export function chooseReference<T extends SkewCandidate>(streams: readonly T[]): T | undefined {
  let best: T | undefined;
  for (const s of streams) {
    if (s.clockRate === null) continue;
    if (!best || s.clockRate < best.clockRate! || (s.clockRate === best.clockRate && s.order < best.order)) {
      best = s;
    }
  }
  return best;
}
