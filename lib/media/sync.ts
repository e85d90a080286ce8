/**
 * The syncer's core, pure and clock-free (every call takes the time): RTP streams that arrive at different lateness
 * leave in step. Every datagram leaves at its capture time plus one delay D shared by all inputs, so datagrams
 * captured together leave together however late each input is.
 *
 * Capture time. An SSRC's RTP timestamps are mapped through its own RTCP sender reports (RtpClockEstimator, fed by
 * the reports arriving on the same input). Before its first report a stream is aligned by its input's configured
 * offset: capture = arrival - offset, where "arrival" is the stream's least delayed arrival carried along its RTP
 * timestamps (the lowest arrival - timestamp seen, allowed to creep up by DRIFT_US_PER_S to follow a slow sender
 * clock), so network jitter does not enter the capture times. Within a stream, a datagram never leaves before the one
 * before it in sequence order: its effective capture time is at least its predecessor's. That keeps a stream's order
 * (and repairs network reordering) and lets B-frames, whose timestamps go backwards, leave with the frame they follow
 * instead of making D cover the encoder's reordering.
 *
 * The delay. Lateness is arrival - capture. D starts as the highest lateness of any input plus `margin`, once every
 * input has been heard from (or `max_delay` after the first datagram: an input that never comes must not hold the
 * others; what waited meanwhile then leaves at once). A datagram that arrives after its due time raises D at once
 * to its lateness plus the margin: datagrams already released cannot be recalled, so the output of every input
 * pauses together for the difference and stays aligned, and the one that came late leaves `margin` after arrival.
 * Otherwise D follows the target (highest lateness of the last WINDOW_US, plus the margin) by at most `slew` per
 * second either way, so the output speeds up or slows down by that fraction and never jumps. D is bounded so that
 * no datagram waits longer than `max_delay`: at most the lowest lateness of any input plus `max_delay`. A datagram
 * later than that, or one that would wait longer, is dropped and counted.
 *
 * RTCP passes through, held like media: a compound with a sender report leaves at the report's NTP time + D, others
 * at arrival plus the time media of their input wait. The reports need no rewrite: an SR states which RTP timestamp
 * the sender's clock showed at an NTP time, which stays true however long the packet is held; since every stream is
 * delayed by the same D, a receiver that compares arrival against the reports of two streams sees them in step.
 */
import { RtpClockEstimator } from "./rtp_clock.ts";
import { parseRtcp } from "./rtcp.ts";
import { clockRateOf, snapClockRate } from "./clock_rates.ts";
import { isRtcp, isRtp, rtpPayloadType, rtpSequence, rtpSsrc, rtpTimestamp } from "./rtp.ts";
import { Unwrapper } from "./unwrap.ts";
import { PacketSlab, type SlabChunk } from "./sync_slab.ts";

/** Lateness statistics (the target of D) cover this much recent time, in buckets of WINDOW_BUCKET_US. */
export const WINDOW_US = 10_000_000;
const WINDOW_BUCKET_US = 1_000_000;
/** Default fastest change of D, µs per second: 0.5 %, below what a listener hears as a change of pitch. */
export const DEFAULT_SLEW_US_PER_S = 5_000;
/** How fast an offset-aligned stream's base may creep up, following a sender clock up to 100 ppm slower than ours. */
const DRIFT_US_PER_S = 100;
/** SSRCs one input keeps at once; a new one takes the place of the longest silent one with nothing held. */
export const MAX_STREAMS_PER_INPUT = 8;
/** Consecutive datagrams whose capture time is off by more than max_delay: the source restarted (new base). */
const RESTART_AFTER = 8;
/** Reports kept for an SSRC whose clock rate is not known yet (its first RTP datagram tells it). */
const PENDING_REPORTS = 4;
/**
 * A dynamic payload type without a configured rate: its rate is measured (timestamps against arrival over this long,
 * or two sender reports this far apart) and snapped to a common one; ±20 ms of jitter is then 1 %, within the snap.
 */
const LEARN_US = 2_000_000;

export interface SyncConfig {
  /** How many inputs (1..16). */
  readonly inputs: number;
  readonly precisionUs: number;
  readonly maxDelayUs: number;
  readonly marginUs: number;
  /** Per input: arrival - capture for streams without sender reports (missing: 0). */
  readonly offsetsUs: readonly number[];
  readonly maxBytes: number;
  /** Clock rates of dynamic payload types (static ones come from RFC 3551). */
  readonly clockRates?: ReadonlyMap<number, number>;
  readonly slewUsPerS?: number;
  readonly chunkBytes?: number;
}

/** Hands released datagrams on; the views are valid only during the call. */
export type SyncEmit<T> = (data: Uint8Array[], from: T[], rtcp: boolean) => void;

export type Alignment = "none" | "offset" | "sender_reports";

export interface InputCounts {
  packets_in: number;
  packets_out: number;
  rtcp_in: number;
  rtcp_out: number;
  /** Arrived after their due time (D was raised for them, or they were dropped). */
  late: number;
  dropped_max_delay: number;
  dropped_cap: number;
  malformed: number;
  /** RTP dropped while its clock rate was unknown: measured first (LEARN_US), or never (set `clock_rates`). */
  unknown_clock_rate: number;
  /** Datagrams of an SSRC beyond MAX_STREAMS_PER_INPUT. */
  too_many_ssrcs: number;
  /** Sender reports taken into a stream's mapping, and rejected (outliers, restarts). */
  reports: number;
  reports_rejected: number;
  /** Offset-aligned streams whose capture times jumped (a restarted source) and were aligned afresh. */
  restarts: number;
}

export interface InputStatus extends InputCounts {
  readonly alignment: Alignment;
  readonly ssrcs: number[];
  /** Per SSRC: Hz, null while it is measured. */
  readonly clock_rates: (number | null)[];
  /** The configured offset, ms. */
  readonly offset_ms: number;
  /** Highest lateness (arrival - capture) over the window, ms; null when nothing arrived in it. */
  readonly lateness_ms: number | null;
}

export interface SyncStatus {
  readonly state: "idle" | "warming" | "running";
  readonly delay_ms: number | null;
  readonly target_ms: number | null;
  readonly buffered_packets: number;
  readonly buffered_bytes: number;
  readonly memory_bytes: number;
  readonly max_bytes: number;
  /** Datagrams that left more than `precision` after their due time (the timer fired late). */
  readonly release_late: number;
  /** The largest release error seen, ms (positive: after the due time). */
  readonly release_error_max_ms: number;
  readonly inputs: InputStatus[];
}

interface Held<T> {
  /** Unwrapped sequence number (RTP) or arrival order (RTCP): the order within its queue. */
  readonly key: number;
  /** Effective capture time, µs: the datagram leaves at eff + D. */
  readonly eff: number;
  readonly chunk: SlabChunk;
  readonly off: number;
  readonly len: number;
  /** The flow it came on and leaves on. */
  readonly rtcp: boolean;
  readonly from: T;
}

/** Held datagrams in key order; arrivals are in order or nearly, so insertion searches from the tail. */
class HeldQueue<T> {
  #items: Held<T>[] = [];
  #head = 0;
  get length(): number {
    return this.#items.length - this.#head;
  }
  peek(): Held<T> | undefined {
    return this.#items[this.#head];
  }
  /** The item that will precede one of key `key`, if any is held. */
  before(key: number): Held<T> | undefined {
    for (let i = this.#items.length - 1; i >= this.#head; i--) {
      if (this.#items[i].key <= key) return this.#items[i];
    }
    return undefined;
  }
  insert(h: Held<T>): void {
    let i = this.#items.length;
    while (i > this.#head && this.#items[i - 1].key > h.key) i--;
    if (i === this.#items.length) this.#items.push(h);
    else this.#items.splice(i, 0, h);
  }
  shift(): Held<T> {
    const h = this.#items[this.#head++];
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return h;
  }
}

/** Highest and lowest of samples over the last WINDOW_US, in whole buckets. */
class Extremes {
  readonly #max: number[] = [];
  readonly #min: number[] = [];
  readonly #bucket: number[] = [];
  readonly #n = Math.ceil(WINDOW_US / WINDOW_BUCKET_US);
  add(v: number, nowUs: number): void {
    const b = Math.floor(nowUs / WINDOW_BUCKET_US);
    const i = b % this.#n;
    if (this.#bucket[i] !== b) [this.#bucket[i], this.#max[i], this.#min[i]] = [b, v, v];
    else {
      if (v > this.#max[i]) this.#max[i] = v;
      if (v < this.#min[i]) this.#min[i] = v;
    }
  }
  /** [max, min] over the window, or null when it holds no sample. */
  get(nowUs: number): [number, number] | null {
    const b = Math.floor(nowUs / WINDOW_BUCKET_US);
    let max = -Infinity;
    let min = Infinity;
    for (let i = 0; i < this.#n; i++) {
      if (!(b - this.#bucket[i] < this.#n)) continue;
      if (this.#max[i] > max) max = this.#max[i];
      if (this.#min[i] < min) min = this.#min[i];
    }
    return max === -Infinity ? null : [max, min];
  }
}

class Stream<T> {
  readonly queue = new HeldQueue<T>();
  readonly seq = new Unwrapper(16);
  readonly ts = new Unwrapper(32);
  clockRate: number | null = null;
  estimator: RtpClockEstimator | null = null;
  pending: { ntpUs: number; rtp: number }[] = [];
  /** The first datagram of a stream whose rate is being measured: arrival µs and unwrapped timestamp. */
  learnFrom: { us: number; ts: number } | null = null;
  /** Offset alignment: the lowest arrival - timestamp time (µs), and when it was last moved. */
  base: number | null = null;
  baseAt = 0;
  /** The last datagram that left, for the order of those that come after it. */
  lastOut: { key: number; eff: number } | null = null;
  lastSeenUs = 0;
  /** Lateness of the last datagram kept, µs. */
  lastLateness: number | null = null;
  /** Consecutive datagrams whose capture time looked impossible. */
  oddRun = 0;
  constructor(readonly ssrc: number) {}

  get aligned(): Alignment {
    return this.estimator && this.estimator.reportCount > 0 ? "sender_reports" : "offset";
  }
}

class Input<T> {
  readonly streams = new Map<number, Stream<T>>();
  readonly rtcp = new HeldQueue<T>();
  readonly lateness = new Extremes();
  /** The latest lateness of a datagram, µs, for the timing of RTCP without reports. */
  lastLateness: number | null = null;
  rtcpOrder = 0;
  readonly counts: InputCounts = {
    packets_in: 0,
    packets_out: 0,
    rtcp_in: 0,
    rtcp_out: 0,
    late: 0,
    dropped_max_delay: 0,
    dropped_cap: 0,
    malformed: 0,
    unknown_clock_rate: 0,
    too_many_ssrcs: 0,
    reports: 0,
    reports_rejected: 0,
    restarts: 0,
  };
  constructor(readonly offsetUs: number) {}
}

/** The syncer's state: what it holds, the delay, the counters. `T` is what travels with a datagram (its sender). */
export class Synchronizer<T = unknown> {
  readonly #cfg: SyncConfig;
  readonly #inputs: Input<T>[];
  readonly #slab: PacketSlab;
  readonly #slew: number;
  #delay: number | null = null;
  #firstUs: number | null = null;
  #lastUpdate = 0;
  #releaseLate = 0;
  #releaseErrorMax = 0;

  constructor(cfg: SyncConfig) {
    if (!(cfg.inputs >= 1)) {
      throw new RangeError(`Cannot synchronise ${cfg.inputs} inputs: at least one is needed`);
    }
    this.#cfg = cfg;
    this.#inputs = Array.from({ length: cfg.inputs }, (_, i) => new Input<T>(cfg.offsetsUs[i] ?? 0));
    this.#slab = new PacketSlab({ maxBytes: cfg.maxBytes, chunkBytes: cfg.chunkBytes });
    this.#slew = (cfg.slewUsPerS ?? DEFAULT_SLEW_US_PER_S) / 1e6;
  }

  /** The current delay D, µs; null until the first inputs have been heard from. */
  get delayUs(): number | null {
    return this.#delay;
  }

  /** Bytes and datagrams held, and the memory holding them. */
  get held(): { packets: number; bytes: number; memory: number } {
    return { packets: this.#slab.livePackets, bytes: this.#slab.liveBytes, memory: this.#slab.memoryBytes };
  }

  /**
   * Takes one datagram of input `input` that arrived at `nowUs` on the RTCP flow or not; it is copied when kept. On
   * the media flow, a datagram that is RTCP rather than RTP (RTCP multiplexed on one port, RFC 5761) counts as RTCP.
   */
  push(input: number, data: Uint8Array, rtcp: boolean, nowUs: number, from: T): void {
    const inp = this.#inputs[input];
    if (!inp) return;
    this.#firstUs ??= nowUs;
    this.#update(nowUs);
    if (rtcp || (!isRtp(data) && isRtcp(data))) this.#pushRtcp(inp, data, rtcp, nowUs, from);
    else this.#pushRtp(inp, data, nowUs, from);
  }

  /**
   * When `release` should be called next (µs), or null when nothing is held. It allows for D coming down meanwhile,
   * so a timer set for it is not late by the slew.
   */
  nextDueUs(nowUs: number): number | null {
    if (this.#slab.livePackets === 0) return null;
    if (this.#delay === null) return this.#firstUs! + this.#cfg.maxDelayUs;
    let eff = Infinity;
    for (const inp of this.#inputs) {
      for (const s of inp.streams.values()) eff = Math.min(eff, s.queue.peek()?.eff ?? Infinity);
      eff = Math.min(eff, inp.rtcp.peek()?.eff ?? Infinity);
    }
    if (eff === Infinity) return null;
    const d = this.#delay;
    const target = this.#target(nowUs);
    // D falls at slew per µs towards the target: eff + D - slew * (t - now) = t.
    if (target !== null && target < d) {
      return Math.max((eff + d + this.#slew * nowUs) / (1 + this.#slew), eff + target);
    }
    return eff + d;
  }

  /** Hands on everything due by `nowUs` + precision/2, media and RTCP apart; returns how many datagrams left. */
  release(nowUs: number, emit: SyncEmit<T>): number {
    this.#update(nowUs);
    if (this.#delay === null) return 0;
    return this.#releaseUpTo(nowUs + this.#cfg.precisionUs / 2 - this.#delay, nowUs, emit);
  }

  /** Hands on everything held at once, in order (the syncer stops: what it holds reaches the sinks). */
  flush(emit: SyncEmit<T>): number {
    return this.#releaseUpTo(Infinity, null, emit);
  }

  /** Releases what has an effective capture time up to `limit`; `nowUs` null: a flush, not timed. */
  #releaseUpTo(limit: number, nowUs: number | null, emit: SyncEmit<T>): number {
    const d = this.#delay ?? 0;
    const out: Held<T>[] = [];
    for (const inp of this.#inputs) {
      for (const s of inp.streams.values()) {
        let h: Held<T> | undefined;
        while ((h = s.queue.peek()) && h.eff <= limit) {
          out.push(s.queue.shift());
          s.lastOut = { key: h.key, eff: h.eff };
          inp.counts.packets_out++;
        }
      }
      let h: Held<T> | undefined;
      while ((h = inp.rtcp.peek()) && h.eff <= limit) {
        out.push(inp.rtcp.shift());
        inp.counts.rtcp_out++;
      }
    }
    if (!out.length) return 0;
    for (const flow of [false, true]) {
      const data: Uint8Array[] = [];
      const from: T[] = [];
      for (const h of out) {
        if (h.rtcp !== flow) continue;
        data.push(h.chunk.bytes.subarray(h.off, h.off + h.len));
        from.push(h.from);
      }
      if (data.length) emit(data, from, flow);
    }
    for (const h of out) {
      if (nowUs !== null) {
        const error = nowUs - (h.eff + d);
        if (error > this.#cfg.precisionUs) this.#releaseLate++;
        if (error > this.#releaseErrorMax) this.#releaseErrorMax = error;
      }
      this.#slab.free(h.chunk, h.len);
    }
    return out.length;
  }

  status(nowUs: number): SyncStatus {
    const ms = (us: number | null) => (us === null ? null : Math.round(us) / 1000);
    return {
      state: this.#firstUs === null ? "idle" : this.#delay === null ? "warming" : "running",
      delay_ms: ms(this.#delay),
      target_ms: ms(this.#target(nowUs)),
      buffered_packets: this.#slab.livePackets,
      buffered_bytes: this.#slab.liveBytes,
      memory_bytes: this.#slab.memoryBytes,
      max_bytes: this.#cfg.maxBytes,
      release_late: this.#releaseLate,
      release_error_max_ms: Math.round(this.#releaseErrorMax) / 1000,
      inputs: this.#inputs.map((inp) => {
        const streams = [...inp.streams.values()];
        const w = inp.lateness.get(nowUs);
        return {
          alignment: streams.length === 0
            ? "none"
            : streams.every((s) => s.aligned === "sender_reports")
            ? "sender_reports"
            : "offset",
          ssrcs: streams.map((s) => s.ssrc),
          clock_rates: streams.map((s) => s.clockRate),
          offset_ms: inp.offsetUs / 1000,
          lateness_ms: w ? ms(w[0]) : null,
          ...inp.counts,
        };
      }),
    };
  }

  /** The highest recent lateness of an input, µs (for per-input metrics); null when it was silent. */
  latenessUs(input: number, nowUs: number): number | null {
    return this.#inputs[input]?.lateness.get(nowUs)?.[0] ?? null;
  }

  /** The counters of one input (live: read, do not change). */
  counts(input: number): Readonly<InputCounts> {
    return this.#inputs[input].counts;
  }

  /** Counters summed over the inputs. */
  totals(): InputCounts {
    const sum = { ...this.#inputs[0].counts };
    for (const inp of this.#inputs.slice(1)) {
      for (const k of Object.keys(sum) as (keyof InputCounts)[]) sum[k] += inp.counts[k];
    }
    return sum;
  }

  get releaseLate(): number {
    return this.#releaseLate;
  }

  #pushRtp(inp: Input<T>, data: Uint8Array, nowUs: number, from: T): void {
    const c = inp.counts;
    if (!isRtp(data)) {
      c.malformed++;
      return;
    }
    c.packets_in++;
    const stream = this.#stream(inp, rtpSsrc(data), nowUs);
    if (!stream) {
      c.too_many_ssrcs++;
      return;
    }
    if (stream.clockRate === null) {
      const rate = clockRateOf(rtpPayloadType(data), this.#cfg.clockRates) ??
        this.#measureRate(stream, data, nowUs);
      if (rate === null) {
        c.unknown_clock_rate++;
        return;
      }
      this.#setRate(inp, stream, rate);
    }
    stream.lastSeenUs = nowUs;
    const key = stream.seq.unwrap(rtpSequence(data));
    let capture = this.#capture(inp, stream, rtpTimestamp(data), nowUs);
    // Aligned by offset, a capture time off by more than max_delay from the stream's usual, again and again: the
    // source restarted with a new timestamp base; its base is found afresh instead of creeping up for hours. (By
    // sender reports, the estimator itself follows a restart after two reports; until then the stream is dropped.)
    const usual = stream.lastLateness;
    if (
      stream.aligned === "offset" && usual !== null &&
      Math.abs(nowUs - capture - usual) > this.#cfg.maxDelayUs
    ) {
      if (++stream.oddRun >= RESTART_AFTER) {
        stream.oddRun = 0;
        stream.base = null;
        c.restarts++;
        capture = this.#capture(inp, stream, rtpTimestamp(data), nowUs);
      }
    } else stream.oddRun = 0;
    // Never before the datagram that precedes it in sequence order (B-frames, reordering).
    const pred = stream.queue.before(key) ??
      (stream.lastOut && stream.lastOut.key <= key ? stream.lastOut : null);
    const eff = pred && pred.eff > capture && pred.eff - capture < this.#cfg.maxDelayUs ? pred.eff : capture;
    if (!this.#admit(inp, eff, nowUs, true)) return;
    stream.lastLateness = nowUs - eff;
    this.#hold(inp, stream.queue, key, eff, data, false, from);
  }

  #pushRtcp(inp: Input<T>, data: Uint8Array, flow: boolean, nowUs: number, from: T): void {
    const c = inp.counts;
    const compound = parseRtcp(data);
    if (!compound) {
      c.malformed++;
      return;
    }
    c.rtcp_in++;
    for (const sr of compound.senderReports) {
      const stream = this.#stream(inp, sr.ssrc, nowUs);
      if (!stream) continue;
      if (stream.clockRate === null) {
        stream.pending.push({ ntpUs: sr.ntpUs, rtp: sr.rtpTimestamp });
        if (stream.pending.length > PENDING_REPORTS) stream.pending.shift();
        const [a, b] = [stream.pending[0], stream.pending.at(-1)!];
        if (b.ntpUs - a.ntpUs >= LEARN_US) {
          const rate = snapClockRate((((b.rtp - a.rtp) >>> 0) * 1e6) / (b.ntpUs - a.ntpUs));
          if (rate !== null) this.#setRate(inp, stream, rate);
        }
      } else this.#report(inp, stream, sr.ntpUs, sr.rtpTimestamp);
    }
    const sr = compound.senderReports[0];
    const eff = sr ? sr.ntpUs : nowUs - (inp.lastLateness ?? 0);
    if (!this.#admit(inp, eff, nowUs, false)) return;
    this.#hold(inp, inp.rtcp, inp.rtcpOrder++, eff, data, flow, from);
  }

  /** A dynamic payload type's rate from its timestamps against arrival, once LEARN_US have passed; else null. */
  #measureRate(stream: Stream<T>, data: Uint8Array, nowUs: number): number | null {
    const ts = stream.ts.unwrap(rtpTimestamp(data));
    if (!stream.learnFrom) {
      stream.learnFrom = { us: nowUs, ts };
      return null;
    }
    const span = nowUs - stream.learnFrom.us;
    return span < LEARN_US ? null : snapClockRate(((ts - stream.learnFrom.ts) * 1e6) / span);
  }

  #setRate(inp: Input<T>, stream: Stream<T>, rate: number): void {
    stream.clockRate = rate;
    for (const r of stream.pending) this.#report(inp, stream, r.ntpUs, r.rtp);
    stream.pending = [];
  }

  #report(inp: Input<T>, stream: Stream<T>, ntpUs: number, rtp: number): void {
    stream.estimator ??= new RtpClockEstimator({ clockRate: stream.clockRate! });
    if (stream.estimator.addReport(ntpUs, rtp)) inp.counts.reports++;
    else inp.counts.reports_rejected++;
  }

  /** The stream of `ssrc` on `inp`, made if new; null when the input has as many as it keeps, all busy. */
  #stream(inp: Input<T>, ssrc: number, nowUs: number): Stream<T> | null {
    let s = inp.streams.get(ssrc);
    if (s) return s;
    if (inp.streams.size >= MAX_STREAMS_PER_INPUT) {
      let oldest: Stream<T> | null = null;
      for (const o of inp.streams.values()) {
        if (o.queue.length === 0 && (!oldest || o.lastSeenUs < oldest.lastSeenUs)) oldest = o;
      }
      if (!oldest) return null;
      inp.streams.delete(oldest.ssrc);
    }
    s = new Stream<T>(ssrc);
    s.lastSeenUs = nowUs;
    inp.streams.set(ssrc, s);
    return s;
  }

  /** Capture time of an RTP timestamp: by the sender reports, else by the input's offset. */
  #capture(inp: Input<T>, s: Stream<T>, ts: number, nowUs: number): number {
    const tsUs = (s.ts.unwrap(ts) * 1e6) / s.clockRate!;
    const byReports = s.estimator?.captureUs(ts);
    if (byReports !== null && byReports !== undefined) return byReports;
    const sample = nowUs - tsUs;
    if (s.base === null) s.base = sample;
    else s.base = Math.min(sample, s.base + ((nowUs - s.baseAt) * DRIFT_US_PER_S) / 1e6);
    s.baseAt = nowUs;
    return s.base + tsUs - inp.offsetUs;
  }

  /**
   * Decides whether a datagram of effective capture time `eff`, arriving now, is kept: a late one raises D (as far
   * as max_delay allows), one that cannot be made in time or would wait too long is dropped. Media lateness feeds
   * the input's window.
   */
  #admit(inp: Input<T>, eff: number, nowUs: number, media: boolean): boolean {
    const lateness = nowUs - eff;
    const c = inp.counts;
    if (this.#delay === null) {
      // Warming up: kept, unless it is later than max_delay already.
      if (lateness > this.#cfg.maxDelayUs + this.#lowest(nowUs, lateness)) {
        c.dropped_max_delay++;
        return false;
      }
      if (media) this.#sample(inp, lateness, nowUs);
      this.#update(nowUs);
      return true;
    }
    const low = this.#lowest(nowUs, lateness);
    if (eff + this.#delay < nowUs) {
      if (!media) return true; // RTCP without a place of its own leaves at once; it does not move D.
      c.late++;
      const raised = Math.min(lateness + this.#cfg.marginUs, low + this.#cfg.maxDelayUs);
      // Beyond reach even at the highest D allowed: dropped without disturbing the others.
      if (eff + raised < nowUs) {
        c.dropped_max_delay++;
        return false;
      }
      this.#delay = raised;
    } else if (eff + this.#delay - nowUs > this.#cfg.maxDelayUs) {
      c.dropped_max_delay++;
      return false;
    }
    if (media) this.#sample(inp, lateness, nowUs);
    return true;
  }

  #sample(inp: Input<T>, lateness: number, nowUs: number): void {
    inp.lateness.add(lateness, nowUs);
    inp.lastLateness = lateness;
  }

  /** The lowest recent lateness of any input (with `also`), µs. */
  #lowest(nowUs: number, also: number): number {
    let low = also;
    for (const inp of this.#inputs) {
      const w = inp.lateness.get(nowUs);
      if (w && w[1] < low) low = w[1];
    }
    return low;
  }

  #hold(
    inp: Input<T>,
    queue: HeldQueue<T>,
    key: number,
    eff: number,
    data: Uint8Array,
    rtcp: boolean,
    from: T,
  ): void {
    const at = this.#slab.copy(data);
    if (!at) {
      inp.counts.dropped_cap++;
      return;
    }
    queue.insert({ key, eff, chunk: at.chunk, off: at.off, len: data.length, rtcp, from });
  }

  /** What D should be: the highest recent lateness plus the margin, within max_delay of the lowest. */
  #target(nowUs: number): number | null {
    let max = -Infinity;
    let min = Infinity;
    for (const inp of this.#inputs) {
      const w = inp.lateness.get(nowUs);
      if (!w) continue;
      if (w[0] > max) max = w[0];
      if (w[1] < min) min = w[1];
    }
    if (max === -Infinity) return null;
    return Math.min(max + this.#cfg.marginUs, min + this.#cfg.maxDelayUs);
  }

  /** Ends the warm-up when it is time, and moves D towards its target by at most the slew. */
  #update(nowUs: number): void {
    const dt = Math.max(0, nowUs - this.#lastUpdate);
    this.#lastUpdate = nowUs;
    const target = this.#target(nowUs);
    if (this.#delay === null) {
      if (this.#firstUs === null) return;
      const heard = target !== null && this.#inputs.every((inp) => inp.lateness.get(nowUs) !== null);
      if (heard || nowUs >= this.#firstUs + this.#cfg.maxDelayUs) this.#delay = target ?? this.#cfg.marginUs;
      return;
    }
    if (target === null) return;
    const step = this.#slew * dt;
    if (this.#delay > target) this.#delay = Math.max(target, this.#delay - step);
    else if (this.#delay < target) this.#delay = Math.min(target, this.#delay + step);
  }
}
