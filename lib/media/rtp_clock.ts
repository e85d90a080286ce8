/**
 * The capture time of an RTP packet is its timestamp mapped through its sender's reports, which pair the RTP clock
 * with the sender's wall clock (NTP). Mapping through the last report alone carries every report's jitter straight
 * into the output and ignores that a sender's media clock drifts from its nominal rate (100 ppm is 0.36 s an hour);
 * so, as WebRTC's RtpToNtpEstimator does, the mapping is a least-squares line of NTP time over the unwrapped RTP
 * timestamps of the last `maxReports` reports, which follows drift and averages jitter. One extra over WebRTC: the
 * fit is repeated without its worst report when that one alone is far off the line (a trimmed least squares), so a
 * single jittery report moves the mapping by microseconds, not by a fifth of its jitter.
 *
 * Rules for a new report (documented here because the syncer's behaviour on a restarted source depends on them):
 * - Before any report there is no mapping; with one report, or while the fitted rate is more than 10% off nominal
 *   (reports too close together to measure it), the mapping is the nominal rate through the latest report.
 * - A report is rejected (addReport false) when its NTP time or unwrapped timestamp does not move forwards from the
 *   latest accepted one, when the current mapping puts its NTP time more than MAX_ERROR_US away, or when the rate
 *   implied between it and the oldest kept report (at least MIN_RATE_SPAN_US apart) is more than 10% off nominal.
 *   An exact repeat of the latest report is rejected without further effect.
 * - Reset: a source that restarts (new timestamp base, a wall clock stepped back) is rejected on every report from
 *   then on. When a second consecutive rejected report is consistent with the first rejected one (both move
 *   forwards, at a rate within 10% of nominal), the history is dropped and those two begin a new one (addReport
 *   true). A lone outlier is thus ignored and a restart is followed after two reports (10 s at ffmpeg's interval).
 */

/** A report whose NTP time the mapping misses by more than this is an outlier (WebRTC's estimator is as lenient). */
export const MAX_ERROR_US = 100_000;
/** Largest relative deviation of a measured rate from the nominal one. */
export const MAX_RATE_DEVIATION = 0.1;
/** Reports closer together than this measure a rate too roughly to judge it. */
export const MIN_RATE_SPAN_US = 500_000;

/** The fit leaves out its worst report only with at least this many, so the rest still average jitter. */
export const TRIM_MIN_REPORTS = 5;
/** ... and only when that report is off the line by more than this (smaller jitter is averaged, not trimmed) ... */
export const TRIM_FLOOR_US = 2_000;
/** ... and by more than this many times the median report, so that uniformly jittery reports are all kept. */
export const TRIM_MEDIAN_FACTOR = 4;

const TWO_32 = 0x1_0000_0000;

interface Report {
  ntpUs: number;
  /** Unwrapped timestamp: the first report of a history keeps its raw value, later ones extend it. */
  ts: number;
}

/** NTP <-> RTP mapping of one SSRC from its sender reports (see the module doc for the acceptance rules). */
export class RtpClockEstimator {
  readonly #nominal: number;
  readonly #max: number;
  /** Accepted reports, oldest first, at most #max. */
  #reports: Report[] = [];
  /** The raw 32-bit timestamp of the latest accepted report, to unwrap others near it. */
  #lastRaw = 0;
  /** The last rejected report, unwrapped near the latest accepted one: a restart is confirmed against it. */
  #rejected: Report | null = null;
  /** Fitted line: capture µs = #y0 + #slope * (ts - #x0), µs per tick; refreshed when a report is accepted. */
  #x0 = 0;
  #y0 = 0;
  #slope = 0;

  constructor(o: { clockRate: number; maxReports?: number }) {
    if (!Number.isFinite(o.clockRate) || o.clockRate <= 0) {
      throw new RangeError(
        `Cannot estimate an RTP clock: clock rate ${o.clockRate} is not a positive number`,
      );
    }
    this.#nominal = o.clockRate;
    this.#max = Math.min(1000, Math.max(2, Math.floor(o.maxReports ?? 20)));
  }

  get reportCount(): number {
    return this.#reports.length;
  }

  /** Fitted clock rate in Hz (the nominal one until 2 reports, or while the fit is implausible). */
  get rate(): number {
    return this.#slope > 0 ? 1e6 / this.#slope : this.#nominal;
  }

  /** Feeds one SR; false when rejected (an outlier or a timestamp going backwards: a restarted source resets). */
  addReport(ntpUs: number, rtpTimestamp: number): boolean {
    if (!Number.isFinite(ntpUs) || !Number.isFinite(rtpTimestamp)) return false;
    const raw = rtpTimestamp >>> 0;
    const latest = this.#reports.at(-1);
    if (!latest) {
      this.#start([{ ntpUs, ts: raw }], raw);
      return true;
    }
    const r = { ntpUs, ts: this.#unwrapNearLatest(raw) };
    if (r.ntpUs === latest.ntpUs && r.ts === latest.ts) return false;
    if (this.#fits(r)) {
      this.#rejected = null;
      this.#reports.push(r);
      if (this.#reports.length > this.#max) this.#reports.shift();
      this.#lastRaw = raw;
      this.#fit();
      return true;
    }
    const prev = this.#rejected;
    if (prev && r.ntpUs > prev.ntpUs && r.ts > prev.ts && this.#plausibleRate(prev, r)) {
      this.#start([prev, r], raw);
      return true;
    }
    this.#rejected = r;
    return false;
  }

  /** Capture time (Unix µs) of a 32-bit RTP timestamp, unwrapped near the latest report; null before any SR. */
  captureUs(rtpTimestamp: number): number | null {
    if (this.#reports.length === 0) return null;
    return this.#y0 + this.#slope * (this.#unwrapNearLatest(rtpTimestamp >>> 0) - this.#x0);
  }

  /**
   * The 32-bit RTP timestamp the sender's clock shows at Unix µs `us` (the inverse of captureUs), for writing
   * reports of one's own that follow this clock; null before any SR.
   */
  rtpTimestampAt(us: number): number | null {
    if (this.#reports.length === 0) return null;
    return Math.round(this.#x0 + (us - this.#y0) / this.#slope) >>> 0;
  }

  /** Forgets every report, as for a new source. */
  reset(): void {
    this.#reports = [];
    this.#rejected = null;
    this.#slope = 0;
  }

  #start(reports: Report[], lastRaw: number): void {
    this.#reports = reports;
    this.#rejected = null;
    this.#lastRaw = lastRaw;
    this.#fit();
  }

  /** Whether `r` continues the history: forwards, near the mapping, at a plausible rate over a long enough span. */
  #fits(r: Report): boolean {
    const latest = this.#reports.at(-1)!;
    if (r.ntpUs <= latest.ntpUs || r.ts <= latest.ts) return false;
    const predicted = this.#y0 + this.#slope * (r.ts - this.#x0);
    if (Math.abs(predicted - r.ntpUs) > MAX_ERROR_US) return false;
    const oldest = this.#reports[0];
    return r.ntpUs - oldest.ntpUs < MIN_RATE_SPAN_US || this.#plausibleRate(oldest, r);
  }

  #plausibleRate(a: Report, b: Report): boolean {
    const rate = ((b.ts - a.ts) * 1e6) / (b.ntpUs - a.ntpUs);
    return Math.abs(rate / this.#nominal - 1) <= MAX_RATE_DEVIATION;
  }

  /** `raw` extended to the point nearest the latest accepted report's timestamp (within 2^31 ticks either way). */
  #unwrapNearLatest(raw: number): number {
    const latest = this.#reports.at(-1)!;
    let delta = raw - this.#lastRaw;
    if (delta < 0) delta += TWO_32;
    if (delta >= TWO_32 / 2) delta -= TWO_32;
    return latest.ts + delta;
  }

  /**
   * Least squares of NTP µs over timestamp, centred on the means so that sums of 10^13-sized squares keep their
   * precision, then once more without the worst report when it is a clear outlier (see TRIM_*): at the edge of the
   * window one report has a leverage of about 0.2 on a prediction 5 s ahead, so 5 ms of jitter on the latest report
   * would move the mapping by 1 ms, the syncer's whole precision. A fit off nominal by more than 10% (reports too
   * close together) falls back to the nominal rate through the latest report.
   */
  #fit(): void {
    const reports = this.#reports;
    const latest = reports[reports.length - 1];
    this.#x0 = latest.ts;
    this.#y0 = latest.ntpUs;
    this.#slope = 1e6 / this.#nominal;
    let line = this.#line(-1);
    if (!line) return;
    if (reports.length >= TRIM_MIN_REPORTS) {
      const residuals = reports.map((r) => Math.abs(r.ntpUs - line!.y0 - line!.slope * (r.ts - line!.x0)));
      let worst = 0;
      for (let i = 1; i < residuals.length; i++) if (residuals[i] > residuals[worst]) worst = i;
      const median = residuals.toSorted((a, b) => a - b)[residuals.length >> 1];
      if (residuals[worst] > Math.max(TRIM_FLOOR_US, TRIM_MEDIAN_FACTOR * median)) {
        line = this.#line(worst) ?? line;
      }
    }
    this.#x0 = line.x0;
    this.#y0 = line.y0;
    this.#slope = line.slope;
  }

  /** The least-squares line over the reports but the one at `skip`, or null when it is undefined or implausible. */
  #line(skip: number): { x0: number; y0: number; slope: number } | null {
    const reports = this.#reports;
    const n = reports.length - (skip >= 0 ? 1 : 0);
    if (n < 2) return null;
    // Relative to the latest report, so that the sums hold small numbers.
    const bx = reports[reports.length - 1].ts;
    const by = reports[reports.length - 1].ntpUs;
    let mx = 0;
    let my = 0;
    for (let i = 0; i < reports.length; i++) {
      if (i === skip) continue;
      mx += reports[i].ts - bx;
      my += reports[i].ntpUs - by;
    }
    mx /= n;
    my /= n;
    let sxy = 0;
    let sxx = 0;
    for (let i = 0; i < reports.length; i++) {
      if (i === skip) continue;
      const dx = reports[i].ts - bx - mx;
      sxy += dx * (reports[i].ntpUs - by - my);
      sxx += dx * dx;
    }
    const slope = sxy / sxx;
    if (!(sxx > 0) || Math.abs((1e6 / this.#nominal) / slope - 1) > MAX_RATE_DEVIATION) return null;
    return { x0: bx + mx, y0: by + my, slope };
  }
}
