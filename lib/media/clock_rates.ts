/**
 * RTP timestamps count in the media clock of the payload type. The static types of RFC 3551 have fixed rates; the
 * dynamic ones (96..127) mean nothing without an SDP rtpmap, the program's own parameter, or a rate measured on the
 * stream itself and snapped to a common one (snapClockRate); until then the rate is unknown, and the caller falls
 * back to another sync method (and says so) rather than align at a wrong rate.
 */

/** RFC 3551 tables 4 and 5: static payload type -> clock rate in Hz (G722 is 8000 by the RFC's own erratum). */
export const STATIC_CLOCK_RATES: ReadonlyMap<number, number> = new Map([
  [0, 8000], // PCMU
  [3, 8000], // GSM
  [4, 8000], // G723
  [5, 8000], // DVI4
  [6, 16000], // DVI4
  [7, 8000], // LPC
  [8, 8000], // PCMA
  [9, 8000], // G722
  [10, 44100], // L16 stereo
  [11, 44100], // L16 mono
  [12, 8000], // QCELP
  [13, 8000], // CN
  [14, 90000], // MPA
  [15, 8000], // G728
  [16, 11025], // DVI4
  [17, 22050], // DVI4
  [18, 8000], // G729
  [25, 90000], // CelB
  [26, 90000], // JPEG
  [28, 90000], // nv
  [31, 90000], // H261
  [32, 90000], // MPV
  [33, 90000], // MP2T
  [34, 90000], // H263
]);

/** How a program or a command line names the clock rate of a payload type: `PT:HZ`, e.g. `96:90000`. */
export const CLOCK_RATE_SYNTAX = "PT:HZ (payload type 0..127, rate 1000..10000000 Hz), like 96:90000";

/** Reads one `PT:HZ` pair (see CLOCK_RATE_SYNTAX); null when it is not one. */
export function parseClockRate(text: string): { payloadType: number; hz: number } | null {
  const m = /^(\d{1,3}):(\d{1,8})$/.exec(text.trim());
  if (!m) return null;
  const [payloadType, hz] = [Number(m[1]), Number(m[2])];
  return payloadType <= 127 && hz >= 1000 && hz <= 10_000_000 ? { payloadType, hz } : null;
}

/**
 * The clock rate of payload type `pt`, or null when it is unknown. A rate in `learned` (from an SDP or the program)
 * wins, because a session description is free to remap even a static type; a learned rate that is not a positive
 * finite number is ignored.
 */
export function clockRateOf(pt: number, learned?: ReadonlyMap<number, number>): number | null {
  if (!Number.isInteger(pt) || pt < 0 || pt > 127) return null;
  const l = learned?.get(pt);
  if (l !== undefined && Number.isFinite(l) && l > 0) return l;
  return STATIC_CLOCK_RATES.get(pt) ?? null;
}

/** Clock rates in use by audio and video payload formats, to which a measured rate is snapped. */
export const COMMON_CLOCK_RATES: readonly number[] = [
  8000,
  11025,
  12000,
  16000,
  22050,
  24000,
  32000,
  44100,
  48000,
  88200,
  90000,
  96000,
];
/** A measured rate must be this close (relative) to a common rate to be taken for it. */
export const SNAP_TOLERANCE = 0.02;

/**
 * The common clock rate that a measured one stands for, or null when none is within SNAP_TOLERANCE. A dynamic payload
 * type whose rate no SDP gives can still be read from its own stream: two sender reports (or RTP timestamps against
 * arrival over a second or more) measure the rate to far better than the 9% that separates the nearest common rates
 * (11025 and 12000), so snapping names it exactly; anything else is left unknown rather than guessed.
 */
export function snapClockRate(measuredHz: number): number | null {
  if (!Number.isFinite(measuredHz) || measuredHz <= 0) return null;
  let best: number | null = null;
  let bestError = SNAP_TOLERANCE;
  for (const rate of COMMON_CLOCK_RATES) {
    const error = Math.abs(measuredHz / rate - 1);
    if (error <= bestError) [best, bestError] = [rate, error];
  }
  return best;
}

/** The least span of arrivals a rate is named from, µs: a few audio packets, a few video frames. */
export const LEARN_MIN_US = 300_000;
/** The span after which the rate is named from the average alone (for jittery arrivals), µs. */
export const LEARN_MAX_US = 2_000_000;
/** Arrivals are compared by the lowest residual in windows of this length, µs. */
const LEARN_WINDOW_US = 100_000;

/**
 * Names the clock rate of a stream from its RTP timestamps against arrival, as soon as the arrivals allow. For each
 * common rate R, the residual arrival - timestamp / R keeps a steady floor at the true rate (the path's least delay)
 * and drifts by span x |1 - true / R| at any other. Senders send in bursts (ffmpeg sends an audio frame's packets
 * together, their timestamps 20 ms apart), so each residual varies by the burst; its lowest value over a window (the
 * last packet of a burst) does not. A rate is named once, after LEARN_MIN_US, the floor of the latest windows is
 * within 0.5 % of the span of the first window's, and every other rate's floor moved four times as far: on a quiet
 * path (loopback, a LAN) that is after LEARN_MIN_US. With jitter too large for that, the average rate over
 * LEARN_MAX_US is snapped (snapClockRate), and a rate snapping names nothing stays unknown. Fixed size: four numbers
 * per common rate.
 */
export class ClockRateLearner {
  /** Per common rate: the lowest residual of the first window, of the window before the current one, of this one. */
  readonly #first = new Float64Array(COMMON_CLOCK_RATES.length).fill(Infinity);
  readonly #previous = new Float64Array(COMMON_CLOCK_RATES.length).fill(Infinity);
  readonly #current = new Float64Array(COMMON_CLOCK_RATES.length).fill(Infinity);
  #window = 0;
  #firstUs = NaN;
  #firstTs = 0;

  /** Takes one datagram's arrival (µs) and unwrapped timestamp; returns the rate once it is named, else null. */
  add(arrivalUs: number, ts: number): number | null {
    if (this.#firstUs !== this.#firstUs) [this.#firstUs, this.#firstTs] = [arrivalUs, ts];
    const elapsed = arrivalUs - this.#firstUs;
    const ticks = ts - this.#firstTs;
    const window = Math.floor(elapsed / LEARN_WINDOW_US);
    if (window > this.#window) {
      // The previous window is the one just ended, or none after a gap.
      if (window === this.#window + 1) this.#previous.set(this.#current);
      else this.#previous.fill(Infinity);
      this.#current.fill(Infinity);
      this.#window = window;
    }
    let best = -1;
    let bestDrift = Infinity;
    let second = Infinity;
    for (let k = 0; k < COMMON_CLOCK_RATES.length; k++) {
      const residual = elapsed - (ticks * 1e6) / COMMON_CLOCK_RATES[k];
      if (window === 0 && residual < this.#first[k]) this.#first[k] = residual;
      if (residual < this.#current[k]) this.#current[k] = residual;
      const drift = Math.abs(Math.min(this.#previous[k], this.#current[k]) - this.#first[k]);
      if (drift < bestDrift) [second, bestDrift, best] = [bestDrift, drift, k];
      else if (drift < second) second = drift;
    }
    if (elapsed < LEARN_MIN_US) return null;
    if (bestDrift * 4 <= second && bestDrift <= elapsed * 0.005) return COMMON_CLOCK_RATES[best];
    return elapsed >= LEARN_MAX_US ? snapClockRate((ticks * 1e6) / elapsed) : null;
  }
}
