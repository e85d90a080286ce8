/**
 * Gives a transcoder's output frames the RTP timestamps of the input frames they were made from, so the output can
 * carry the input's own NTP <-> RTP mapping and a syncer aligns it with the original audio whatever ffmpeg's delay.
 *
 * ffmpeg (lib/media/ffmpeg.ts) stamps an output frame `base + (input ts - first input ts)`. The node knows the first
 * input timestamp (it feeds ffmpeg only once ffmpeg has bound its input port, so the first packet sent is the first
 * ffmpeg reads) and learns `base` from ffmpeg's first sender report. The result is snapped to the nearest input frame seen
 * recently (within half a frame), so an encoder that rounds its time base still lands on the exact frame; a frame
 * that matches none is counted and keeps the computed value. Pure: no clock, no I/O.
 */
import { outputBase } from "./ffmpeg.ts";

/** Distinct input timestamps remembered for snapping: 20 s of 25 fps, far beyond ffmpeg's delay. */
const HISTORY = 512;

export class Retimer {
  /** Set per ffmpeg run. */
  firstInput: number | null = null;
  base: number | null = null;
  #startRealtimeUs = 0;
  readonly #history = new Uint32Array(HISTORY);
  #count = 0;
  #next = 0;
  #lastInput = -1;
  /** Half the last spacing between two input frames, in ticks: how far a frame may be snapped. */
  #tolerance = 0;
  #cacheOut = -1;
  #cacheIn = 0;
  /** Output frames that matched no remembered input frame. */
  unmatched = 0;
  /** Output frames whose computed timestamp was moved to a neighbouring input frame's (an encoder rounded it). */
  snapped = 0;
  /** Sender reports of one run that gave a different base (ffmpeg would have to have changed its clock). */
  baseMismatches = 0;

  constructor(readonly clockRate = 90000) {}

  /** A new ffmpeg run: its first input and its base are unknown again. The frame history is kept. */
  newRun(startRealtimeUs: number): void {
    this.firstInput = null;
    this.base = null;
    this.#startRealtimeUs = startRealtimeUs;
    this.#cacheOut = -1;
  }

  /** An input packet's timestamp; `sent` when it went to ffmpeg (the first one sent is ffmpeg's first). */
  input(ts: number, sent: boolean): void {
    ts >>>= 0;
    if (sent && this.firstInput === null) this.firstInput = ts;
    if (ts === this.#lastInput) return;
    if (this.#lastInput >= 0) {
      const gap = Math.abs((ts - this.#lastInput) | 0);
      if (gap > 0 && gap < this.clockRate) this.#tolerance = gap / 2;
    }
    this.#lastInput = ts;
    this.#history[this.#next] = ts;
    this.#next = (this.#next + 1) % HISTORY;
    if (this.#count < HISTORY) this.#count++;
  }

  /** A sender report ffmpeg sent for its output; returns true when it set the base. */
  ffmpegReport(sr: { ntpUs: number; rtpTimestamp: number }): boolean {
    const base = outputBase(sr, this.#startRealtimeUs, this.clockRate);
    if (this.base === null) {
      this.base = base;
      return true;
    }
    // One tick either way is the rounding of the report's NTP fraction.
    if (Math.abs((base - this.base) | 0) > 1) this.baseMismatches++;
    return false;
  }

  /** True once output timestamps can be mapped. */
  get ready(): boolean {
    return this.base !== null && this.firstInput !== null;
  }

  /** The input timestamp of the frame an output timestamp stands for; null until ready. */
  map(outTs: number): number | null {
    if (this.base === null || this.firstInput === null) return null;
    outTs >>>= 0;
    if (outTs === this.#cacheOut) return this.#cacheIn;
    const guess = (this.firstInput + ((outTs - this.base) | 0)) >>> 0;
    let best = -1;
    let bestDistance = Infinity;
    for (let i = 0; i < this.#count; i++) {
      const d = Math.abs((this.#history[i] - guess) | 0);
      if (d < bestDistance) [best, bestDistance] = [this.#history[i], d];
    }
    let mapped = guess;
    if (best >= 0 && bestDistance <= Math.max(1, this.#tolerance)) {
      mapped = best;
      if (bestDistance > 1) this.snapped++;
    } else this.unmatched++;
    this.#cacheOut = outTs;
    this.#cacheIn = mapped;
    return mapped;
  }
}
