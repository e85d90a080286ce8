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
 * Only a stream heard in the warm-up, or one that has brought ESTABLISHED_AFTER datagrams, may raise D so; a late
 * datagram of a newer one (a stray, or a forged SSRC) is dropped. Streams are made by RTP only; sender reports of
 * an SSRC not seen yet wait, a few per SSRC for a few SSRCs.
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
import { ClockRateLearner, clockRateOf, LEARN_MAX_US, snapClockRate } from "./clock_rates.ts";
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
 * A dynamic payload type without a configured rate: its rate is named from its timestamps against arrival
 * (ClockRateLearner: from LEARN_MIN_US on a quiet path, by LEARN_MAX_US at ±20 ms of jitter) or from two sender
 * reports LEARN_MAX_US apart. Meanwhile its datagrams wait, a share of max_bytes at most (1 / LEARN_HOLD_SHARE), and
 * are placed as if just arrived once the rate is known: a stream is not cut at its start for want of its rate.
 * A rate named from arrivals is then checked against the stream's sender reports, which state it exactly: arrivals
 * can mislead (a transcoder catching up on its start sends 6.7 % faster than real time for seconds, so 90 kHz looks
 * like 96), and two reports LEARN_MAX_US apart that snap to another rate replace it (`clock_rates_corrected`).
 */
const LEARN_US = LEARN_MAX_US;
/**
 * How far above its target D may start so that what was held while the last input was awaited leaves on time (a rate
 * measured on a quiet path takes 0.3 s). More would linger: D comes down at the slew, 5 ms a second.
 */
const WARMUP_EXTRA_US = 250_000;
const LEARN_HOLD_SHARE = 8;
/** What a waiting datagram costs beyond its bytes (its entry and its copy's buffer), counted against that share. */
const WAITING_ENTRY_BYTES = 160;
/** The smallest size of a queue's ring (it doubles when full and halves when a quarter full). */
const MIN_RING = 64;
/**
 * Bytes one slot of a queue's ring takes: key and eff 8 each, off and len 4 each, rtcp 1, and the chunk and sender
 * references 8 each. Counted against max_bytes with the slab, so tiny datagrams cannot hold more than the cap.
 */
export const RING_SLOT_BYTES = 41;
/**
 * How far back in a stream's held datagrams an arrival may go: a datagram that would go before more than this many
 * held ones of its stream is dropped (`dropped_reorder`). Network reordering moves a datagram a few places; without
 * a bound, a run of falling sequence numbers would make every arrival walk the whole queue.
 */
export const MAX_REORDER = 256;
/**
 * Datagrams a stream must have brought before one of them arriving late may raise D: one forged datagram of a new
 * SSRC must not hold every output for minutes. A late datagram of a newer stream is dropped (`dropped_late`).
 * Streams heard during the warm-up (they set the first D) may raise D from the start.
 */
export const ESTABLISHED_AFTER = 50;

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
  /** Late datagrams of a stream too new to raise D (fewer than ESTABLISHED_AFTER datagrams so far). */
  dropped_late: number;
  /** Datagrams that would go before more than MAX_REORDER held ones of their stream. */
  dropped_reorder: number;
  malformed: number;
  /**
   * RTP dropped for want of its clock rate: never named (set `clock_rates`), beyond the share of max_bytes that may
   * wait meanwhile, or named too late for a datagram that waited to leave on time.
   */
  unknown_clock_rate: number;
  /** Datagrams of an SSRC beyond MAX_STREAMS_PER_INPUT. */
  too_many_ssrcs: number;
  /** Sender reports taken into a stream's mapping, and rejected (outliers, restarts). */
  reports: number;
  reports_rejected: number;
  /** Offset-aligned streams whose capture times jumped (a restarted source) and were aligned afresh. */
  restarts: number;
  /** Rates named from arrivals that the stream's sender reports then showed to be another (see LEARN_US). */
  clock_rates_corrected: number;
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

/**
 * Held datagrams in key order (unwrapped sequence number for RTP, arrival order for RTCP), with for each: its
 * effective capture time (it leaves at eff + D), where its copy lies in the slab, the flow it came on and leaves on
 * (RTCP or not) and its sender. Arrivals are in order or nearly, so insertion searches from the tail, at most
 * MAX_REORDER places.
 *
 * Kept as parallel arrays in a ring rather than one object per datagram: a syncer holds every datagram for D (a
 * fifth of a second at 80k datagrams/s is 16k of them), long enough for the garbage collector to copy each such
 * object between young spaces and then promote it; that work grew with D and slowed the node most when it was
 * already behind. The ring grows by doubling and halves when a quarter full; `rings.bytes` (shared by a syncer's
 * queues) follows the memory of the rings.
 */
class HeldQueue<T> {
  #cap = 0;
  #head = 0;
  #size = 0;
  #key = new Float64Array(0);
  #eff = new Float64Array(0);
  #off = new Int32Array(0);
  #len = new Int32Array(0);
  #rtcp = new Uint8Array(0);
  #chunk: (SlabChunk | undefined)[] = [];
  #from: (T | undefined)[] = [];

  constructor(readonly rings: { bytes: number }) {
    this.#resize(MIN_RING);
  }

  get length(): number {
    return this.#size;
  }
  /** Bytes the ring would grow by for one more datagram (0 while it has room). */
  get growBytes(): number {
    return this.#size === this.#cap ? this.#cap * RING_SLOT_BYTES : 0;
  }
  /** The first datagram's effective capture time; Infinity when empty. */
  get headEff(): number {
    return this.#size ? this.#eff[this.#head] : Infinity;
  }
  get headKey(): number {
    return this.#key[this.#head];
  }
  get headChunk(): SlabChunk {
    return this.#chunk[this.#head]!;
  }
  get headOff(): number {
    return this.#off[this.#head];
  }
  get headLen(): number {
    return this.#len[this.#head];
  }
  get headRtcp(): boolean {
    return this.#rtcp[this.#head] === 1;
  }
  get headFrom(): T {
    return this.#from[this.#head]!;
  }
  /** The first datagram's bytes (a view into the slab, valid until it is freed and its space reused). */
  headData(): Uint8Array {
    const o = this.#off[this.#head];
    return this.#chunk[this.#head]!.bytes.subarray(o, o + this.#len[this.#head]);
  }

  /**
   * Where a datagram of key `key` goes (0: first, length: last), after those of lower or equal keys; -1 when more
   * than MAX_REORDER held datagrams would have to move for it.
   */
  position(key: number): number {
    const mask = this.#cap - 1;
    for (let i = this.#size; i > 0; i--) {
      if (this.#key[(this.#head + i - 1) & mask] <= key) return i;
      if (this.#size - i + 1 > MAX_REORDER) return -1;
    }
    return 0;
  }

  /** The effective capture time of the datagram at position `i` (0: the first). */
  effAt(i: number): number {
    return this.#eff[(this.#head + i) & (this.#cap - 1)];
  }

  /** Puts a datagram at position `at` (from `position`); later ones move one place towards the tail. */
  insertAt(
    at: number,
    key: number,
    eff: number,
    chunk: SlabChunk,
    off: number,
    len: number,
    rtcp: boolean,
    from: T,
  ): void {
    if (this.#size === this.#cap) this.#resize(this.#cap * 2);
    const mask = this.#cap - 1;
    for (let i = this.#size; i > at; i--) this.#move((this.#head + i - 1) & mask, (this.#head + i) & mask);
    const j = (this.#head + at) & mask;
    this.#key[j] = key;
    this.#eff[j] = eff;
    this.#chunk[j] = chunk;
    this.#off[j] = off;
    this.#len[j] = len;
    this.#rtcp[j] = rtcp ? 1 : 0;
    this.#from[j] = from;
    this.#size++;
  }

  /** Drops the first datagram (the caller has read what it needs of it). */
  shift(): void {
    const h = this.#head;
    this.#chunk[h] = undefined;
    this.#from[h] = undefined;
    this.#head = (h + 1) & (this.#cap - 1);
    this.#size--;
    // A burst that made the ring large does not keep it large (halving at a quarter: no resize back and forth).
    if (this.#cap > MIN_RING && this.#size <= this.#cap / 4) this.#resize(this.#cap / 2);
  }

  #move(from: number, to: number): void {
    this.#key[to] = this.#key[from];
    this.#eff[to] = this.#eff[from];
    this.#chunk[to] = this.#chunk[from];
    this.#off[to] = this.#off[from];
    this.#len[to] = this.#len[from];
    this.#rtcp[to] = this.#rtcp[from];
    this.#from[to] = this.#from[from];
  }

  /** Copies the held datagrams, in order, into arrays of `cap` (a power of two, at least the size). */
  #resize(cap: number): void {
    const old = { key: this.#key, eff: this.#eff, off: this.#off, len: this.#len, rtcp: this.#rtcp };
    const [chunks, froms] = [this.#chunk, this.#from];
    const oldMask = this.#cap - 1;
    this.#key = new Float64Array(cap);
    this.#eff = new Float64Array(cap);
    this.#off = new Int32Array(cap);
    this.#len = new Int32Array(cap);
    this.#rtcp = new Uint8Array(cap);
    this.#chunk = new Array(cap).fill(undefined);
    this.#from = new Array(cap).fill(undefined);
    for (let i = 0; i < this.#size; i++) {
      const j = (this.#head + i) & oldMask;
      this.#key[i] = old.key[j];
      this.#eff[i] = old.eff[j];
      this.#off[i] = old.off[j];
      this.#len[i] = old.len[j];
      this.#rtcp[i] = old.rtcp[j];
      this.#chunk[i] = chunks[j];
      this.#from[i] = froms[j];
    }
    this.rings.bytes += (cap - this.#cap) * RING_SLOT_BYTES;
    this.#cap = cap;
    this.#head = 0;
  }
}

/**
 * Highest and lowest of samples over the last WINDOW_US, in whole buckets. Read for every datagram, so the window's
 * extremes are kept up to date as samples come and recomputed from the buckets only when a bucket ends.
 */
class Extremes {
  readonly #max: number[] = [];
  readonly #min: number[] = [];
  readonly #bucket: number[] = [];
  readonly #n = Math.ceil(WINDOW_US / WINDOW_BUCKET_US);
  /** The bucket the cached extremes are for, and those extremes (-Infinity / Infinity: no sample). */
  #at = NaN;
  #wmax = -Infinity;
  #wmin = Infinity;
  add(v: number, nowUs: number): void {
    const b = Math.floor(nowUs / WINDOW_BUCKET_US);
    const i = b % this.#n;
    if (this.#bucket[i] !== b) {
      this.#bucket[i] = b;
      this.#max[i] = v;
      this.#min[i] = v;
    } else {
      if (v > this.#max[i]) this.#max[i] = v;
      if (v < this.#min[i]) this.#min[i] = v;
    }
    if (b === this.#at) {
      if (v > this.#wmax) this.#wmax = v;
      if (v < this.#wmin) this.#wmin = v;
    } else this.#at = NaN;
  }
  /** The highest sample over the window, -Infinity when it holds none. */
  max(nowUs: number): number {
    this.#refresh(nowUs);
    return this.#wmax;
  }
  /** The lowest sample over the window, Infinity when it holds none. */
  min(nowUs: number): number {
    this.#refresh(nowUs);
    return this.#wmin;
  }
  /** [max, min] over the window, or null when it holds no sample. */
  get(nowUs: number): [number, number] | null {
    this.#refresh(nowUs);
    return this.#wmax === -Infinity ? null : [this.#wmax, this.#wmin];
  }
  #refresh(nowUs: number): void {
    const b = Math.floor(nowUs / WINDOW_BUCKET_US);
    if (b === this.#at) return;
    let max = -Infinity;
    let min = Infinity;
    for (let i = 0; i < this.#n; i++) {
      if (!(b - this.#bucket[i] < this.#n)) continue;
      if (this.#max[i] > max) max = this.#max[i];
      if (this.#min[i] < min) min = this.#min[i];
    }
    this.#at = b;
    this.#wmax = max;
    this.#wmin = min;
  }
}

class Stream<T> {
  readonly queue: HeldQueue<T>;
  readonly seq = new Unwrapper(16);
  readonly ts = new Unwrapper(32);
  clockRate: number | null = null;
  estimator: RtpClockEstimator | null = null;
  pending: { ntpUs: number; rtp: number }[] = [];
  /** Names the rate of a dynamic payload type without one configured (null once named, or never needed). */
  learner: ClockRateLearner | null = null;
  /** Datagrams that came while the rate was measured (copies), with their arrival; placed once it is known. */
  learning: { data: Uint8Array; arrivalUs: number; from: T }[] = [];
  /** When the rate began to be measured, µs. */
  learnSinceUs = 0;
  /** The rate was named from arrivals: the first sender report since, to check it against a later one; else null. */
  checkRate: { ntpUs: number; rtp: number } | "pending" | null = null;
  /** Offset alignment: the lowest arrival - timestamp time (µs), and when it was last moved. */
  base: number | null = null;
  baseAt = 0;
  /** The last datagram that left (key, effective capture time), for the order of those that come after it. */
  lastOutKey = -Infinity;
  lastOutEff = -Infinity;
  lastSeenUs = 0;
  /**
   * Lateness of the last datagram kept, µs; NaN before the first. A number from the start (not null), so the field
   * holds doubles only: with null first, the optimizing compilers' code for the store in #place was thrown away
   * again and again (236 deoptimizations in 3 s at 60k datagrams/s, the compile threads busy the whole time).
   */
  lastLateness = NaN;
  /** Consecutive datagrams whose capture time looked impossible. */
  oddRun = 0;
  /** Datagrams that came with a known clock rate (ESTABLISHED_AFTER of them let a late one raise D). */
  seen = 0;
  /** May a late datagram of this stream raise D. */
  established = false;
  constructor(readonly ssrc: number, rings: { bytes: number }) {
    this.queue = new HeldQueue<T>(rings);
  }

  get aligned(): Alignment {
    return this.estimator && this.estimator.reportCount > 0 ? "sender_reports" : "offset";
  }
}

class Input<T> {
  readonly streams = new Map<number, Stream<T>>();
  readonly rtcp: HeldQueue<T>;
  /** Sender reports of SSRCs no RTP has come for yet (streams are made by RTP only), a few SSRCs at most. */
  readonly pendingReports = new Map<number, { ntpUs: number; rtp: number }[]>();
  readonly lateness = new Extremes();
  /** The latest lateness of a datagram, µs, for the timing of RTCP without reports; NaN before the first. */
  lastLateness = NaN;
  rtcpOrder = 0;
  readonly counts: InputCounts = {
    packets_in: 0,
    packets_out: 0,
    rtcp_in: 0,
    rtcp_out: 0,
    late: 0,
    dropped_max_delay: 0,
    dropped_cap: 0,
    dropped_late: 0,
    dropped_reorder: 0,
    malformed: 0,
    unknown_clock_rate: 0,
    too_many_ssrcs: 0,
    reports: 0,
    reports_rejected: 0,
    restarts: 0,
    clock_rates_corrected: 0,
  };
  constructor(readonly offsetUs: number, readonly rings: { bytes: number }) {
    this.rtcp = new HeldQueue<T>(rings);
  }
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
  /** Memory of every queue's ring, counted against max_bytes with the slab. */
  readonly #rings = { bytes: 0 };
  /** Bytes of datagrams waiting for their stream's clock rate. */
  #learningBytes = 0;
  /** A release's queues with something due, their inputs and streams (null: the input's RTCP); reused arrays. */
  readonly #dueQueues: HeldQueue<T>[] = [];
  readonly #dueOwners: Input<T>[] = [];
  readonly #dueStreams: (Stream<T> | null)[] = [];

  constructor(cfg: SyncConfig) {
    if (!(cfg.inputs >= 1)) {
      throw new RangeError(`Cannot synchronise ${cfg.inputs} inputs: at least one is needed`);
    }
    this.#cfg = cfg;
    this.#inputs = Array.from(
      { length: cfg.inputs },
      (_, i) => new Input<T>(cfg.offsetsUs[i] ?? 0, this.#rings),
    );
    this.#slab = new PacketSlab({ maxBytes: cfg.maxBytes, chunkBytes: cfg.chunkBytes });
    this.#slew = (cfg.slewUsPerS ?? DEFAULT_SLEW_US_PER_S) / 1e6;
  }

  /** The current delay D, µs; null until the first inputs have been heard from. */
  get delayUs(): number | null {
    return this.#delay;
  }

  /** Bytes and datagrams held, and the memory holding them (slab chunks and queue rings). */
  get held(): { packets: number; bytes: number; memory: number } {
    return { packets: this.#slab.livePackets, bytes: this.#slab.liveBytes, memory: this.#memoryBytes };
  }

  get #memoryBytes(): number {
    return this.#slab.memoryBytes + this.#rings.bytes + this.#learningBytes;
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
    const eff = this.#earliestEff();
    if (eff === Infinity) return null;
    const d = this.#delay;
    const target = this.#target(nowUs);
    // D falls at slew per µs towards the target: eff + D - slew * (t - now) = t.
    if (target !== null && target < d) {
      return Math.max((eff + d + this.#slew * nowUs) / (1 + this.#slew), eff + target);
    }
    return eff + d;
  }

  /** The earliest effective capture time held (Infinity: none). */
  #earliestEff(): number {
    let eff = Infinity;
    for (const inp of this.#inputs) {
      for (const s of inp.streams.values()) eff = Math.min(eff, s.queue.headEff);
      eff = Math.min(eff, inp.rtcp.headEff);
    }
    return eff;
  }

  /**
   * Hands on everything due by `nowUs` + precision/4, media and RTCP apart, in order of capture time across the
   * inputs; returns how many datagrams left. (The participants' A/V skew p99 in the Appendix A lecture,
   * tests/e2e/presentation_test.ts, both twinstreams: with half the precision 0.79-1.04 ms over 5 runs, with a
   * quarter 0.61-1.52 ms over 11, 20 of 22 within 1 ms: the window is not all of the tail.)
   */
  release(nowUs: number, emit: SyncEmit<T>): number {
    this.#update(nowUs);
    if (this.#delay === null) return 0;
    return this.#releaseUpTo(nowUs + this.#cfg.precisionUs / 4 - this.#delay, nowUs, emit);
  }

  /** Hands on everything held at once, in order (the syncer stops: what it holds reaches the sinks). */
  flush(emit: SyncEmit<T>): number {
    // What still waits for its clock rate has no capture time to leave in order by: counted, not sent.
    for (const inp of this.#inputs) {
      for (const stream of inp.streams.values()) this.#dropWaiting(inp, stream);
    }
    return this.#releaseUpTo(Infinity, null, emit);
  }

  /** Releases what has an effective capture time up to `limit`; `nowUs` null: a flush, not timed. */
  #releaseUpTo(limit: number, nowUs: number | null, emit: SyncEmit<T>): number {
    // One batch per flow with every input's due datagrams: a few large sends downstream, not many small ones.
    const data: Uint8Array[] = [];
    const from: T[] = [];
    let rtcpData: Uint8Array[] | null = null;
    let rtcpFrom: T[] | null = null;
    const d = this.#delay ?? 0;
    // Due before this (effective capture time): released more than `precision` late.
    const lateBefore = nowUs === null ? -Infinity : nowUs - d - this.#cfg.precisionUs;
    let first = Infinity;
    let late = 0;
    // Slab space is freed after the emits: the views point into it until they return.
    const freed: SlabChunk[] = [];
    const freedLen: number[] = [];
    // Every queue with something due: its media streams and its RTCP, each with the input it belongs to.
    const queues = this.#dueQueues;
    const owners = this.#dueOwners;
    const streams = this.#dueStreams;
    queues.length = owners.length = streams.length = 0;
    for (const inp of this.#inputs) {
      for (const s of inp.streams.values()) {
        // headEff is Infinity when empty, which a flush's limit (Infinity) would take as due.
        if (s.queue.length !== 0 && !(s.queue.headEff > limit)) {
          queues.push(s.queue);
          owners.push(inp);
          streams.push(s);
        }
      }
      if (inp.rtcp.length !== 0 && !(inp.rtcp.headEff > limit)) {
        queues.push(inp.rtcp);
        owners.push(inp);
        streams.push(null);
      }
    }
    // In order of capture time across the queues, not one input after another: an audio datagram due with a video
    // frame leaves before the frame when it was captured before it, instead of behind the frame's every datagram
    // (measured at the participants: up to ~1 ms of A/V skew from that wait alone). Ties: the earlier input first.
    for (;;) {
      let k = -1;
      let eff = Infinity;
      for (let j = 0; j < queues.length; j++) {
        const e = queues[j].headEff;
        // A head is due unless it is known to be later than the limit (k < 0: the first due head is taken whatever
        // its time); an emptied queue has none (its headEff is Infinity, which a flush's limit would take as due).
        if (queues[j].length !== 0 && !(e > limit) && (k < 0 || e < eff)) {
          eff = e;
          k = j;
        }
      }
      if (k < 0) break;
      const q = queues[k];
      const stream = streams[k];
      if (stream === null && q.headRtcp) {
        // RTCP leaves on the flow it came on (RTCP multiplexed with RTP came on the media flow).
        (rtcpData ??= []).push(q.headData());
        (rtcpFrom ??= []).push(q.headFrom);
      } else {
        data.push(q.headData());
        from.push(q.headFrom);
      }
      freed.push(q.headChunk);
      freedLen.push(q.headLen);
      if (eff < first) first = eff;
      if (eff < lateBefore) late++;
      if (stream === null) owners[k].counts.rtcp_out++;
      else {
        stream.lastOutKey = q.headKey;
        stream.lastOutEff = eff;
        owners[k].counts.packets_out++;
      }
      q.shift();
    }
    const count = freed.length;
    if (count === 0) return 0;
    if (nowUs !== null) {
      this.#releaseLate += late;
      const error = nowUs - (first + d);
      if (error > this.#releaseErrorMax) this.#releaseErrorMax = error;
    }
    try {
      if (data.length) emit(data, from, false);
      if (rtcpData) emit(rtcpData, rtcpFrom!, true);
    } finally {
      for (let i = 0; i < count; i++) this.#slab.free(freed[i], freedLen[i]);
    }
    return count;
  }

  status(nowUs: number): SyncStatus {
    const ms = (us: number | null) => (us === null ? null : Math.round(us) / 1000);
    return {
      state: this.#firstUs === null ? "idle" : this.#delay === null ? "warming" : "running",
      delay_ms: ms(this.#delay),
      target_ms: ms(this.#target(nowUs)),
      buffered_packets: this.#slab.livePackets,
      buffered_bytes: this.#slab.liveBytes,
      memory_bytes: this.#memoryBytes,
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
      let rate = clockRateOf(rtpPayloadType(data), this.#cfg.clockRates) ?? this.#rateByReports(stream);
      if (rate === null) {
        rate = this.#measureRate(stream, data, nowUs);
        if (rate === null) {
          this.#wait(inp, stream, data, nowUs, from);
          return;
        }
        stream.checkRate = "pending";
      }
      this.#setRate(inp, stream, rate, nowUs);
    }
    this.#place(inp, stream, data, nowUs, nowUs, from, false);
  }

  /** Keeps a copy of a datagram whose stream's rate is being measured, within its share of max_bytes. */
  #wait(inp: Input<T>, stream: Stream<T>, data: Uint8Array, nowUs: number, from: T): void {
    stream.lastSeenUs = nowUs;
    // A rate not named by LEARN_US never will be from arrivals: nothing waits any more (reports may name it later).
    if (nowUs - stream.learnSinceUs > LEARN_US) {
      this.#dropWaiting(inp, stream);
      inp.counts.unknown_clock_rate++;
      return;
    }
    const cost = data.length + WAITING_ENTRY_BYTES;
    if (this.#learningBytes + cost > this.#cfg.maxBytes / LEARN_HOLD_SHARE) {
      inp.counts.unknown_clock_rate++;
      return;
    }
    stream.learning.push({ data: data.slice(), arrivalUs: nowUs, from });
    this.#learningBytes += cost;
  }

  /** What waits for the stream's rate goes, counted (the rate was not found, the stream left, the syncer stops). */
  #dropWaiting(inp: Input<T>, stream: Stream<T>): void {
    inp.counts.unknown_clock_rate += stream.learning.length;
    for (const w of stream.learning) this.#learningBytes -= w.data.length + WAITING_ENTRY_BYTES;
    stream.learning = [];
  }

  /**
   * Places one RTP datagram of a stream whose rate is known in its queue. `arrivalUs` is when it came (its lateness),
   * `nowUs` the time now; they differ for a datagram that waited for its stream's rate (`waited`), which leaves on
   * time or not at all: it never raises D.
   */
  #place(
    inp: Input<T>,
    stream: Stream<T>,
    data: Uint8Array,
    arrivalUs: number,
    nowUs: number,
    from: T,
    waited: boolean,
  ): void {
    const c = inp.counts;
    stream.lastSeenUs = nowUs;
    if (++stream.seen > ESTABLISHED_AFTER) stream.established = true;
    const key = stream.seq.unwrap(rtpSequence(data));
    const at = stream.queue.position(key);
    if (at < 0) {
      c.dropped_reorder++;
      return;
    }
    let capture = this.#capture(inp, stream, rtpTimestamp(data), arrivalUs);
    // Aligned by offset, a capture time off by more than max_delay from the stream's usual, again and again: the
    // source restarted with a new timestamp base; its base is found afresh instead of creeping up for hours. (By
    // sender reports, the estimator itself follows a restart after two reports; until then the stream is dropped.)
    const usual = stream.lastLateness;
    if (
      stream.aligned === "offset" && !Number.isNaN(usual) &&
      Math.abs(arrivalUs - capture - usual) > this.#cfg.maxDelayUs
    ) {
      if (++stream.oddRun >= RESTART_AFTER) {
        stream.oddRun = 0;
        stream.base = null;
        c.restarts++;
        capture = this.#capture(inp, stream, rtpTimestamp(data), arrivalUs);
      }
    } else stream.oddRun = 0;
    // Never before the datagram that precedes it in sequence order (B-frames, reordering).
    const predEff = at > 0
      ? stream.queue.effAt(at - 1)
      : (stream.lastOutKey <= key ? stream.lastOutEff : -Infinity);
    const eff = predEff > capture && predEff - capture < this.#cfg.maxDelayUs ? predEff : capture;
    if (waited && this.#delay !== null && eff + this.#delay < nowUs) {
      c.unknown_clock_rate++;
      return;
    }
    if (!this.#admit(inp, eff, arrivalUs, nowUs, true, stream.established && !waited)) return;
    stream.lastLateness = arrivalUs - eff;
    this.#hold(inp, stream.queue, at, key, eff, data, false, from);
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
      const report = { ntpUs: sr.ntpUs, rtp: sr.rtpTimestamp };
      const stream = inp.streams.get(sr.ssrc);
      if (!stream) {
        // Kept for the stream its RTP will make; an SSRC that never sends RTP costs a few entries, then none.
        let list = inp.pendingReports.get(sr.ssrc);
        if (!list) {
          if (inp.pendingReports.size >= MAX_STREAMS_PER_INPUT) {
            inp.pendingReports.delete(inp.pendingReports.keys().next().value!);
          }
          inp.pendingReports.set(sr.ssrc, list = []);
        }
        list.push(report);
        if (list.length > PENDING_REPORTS) list.shift();
      } else if (stream.clockRate === null) {
        stream.pending.push(report);
        if (stream.pending.length > PENDING_REPORTS) stream.pending.shift();
        const rate = this.#rateByReports(stream);
        if (rate !== null) this.#setRate(inp, stream, rate, nowUs);
      } else this.#report(inp, stream, sr.ntpUs, sr.rtpTimestamp);
    }
    const sr = compound.senderReports[0];
    const eff = sr ? sr.ntpUs : nowUs - (Number.isNaN(inp.lastLateness) ? 0 : inp.lastLateness);
    if (!this.#admit(inp, eff, nowUs, nowUs, false, false)) return;
    this.#hold(inp, inp.rtcp, inp.rtcp.length, inp.rtcpOrder++, eff, data, flow, from);
  }

  /** A rate from the stream's pending sender reports, once they span LEARN_US; else null. */
  #rateByReports(stream: Stream<T>): number | null {
    const [a, b] = [stream.pending[0], stream.pending.at(-1)];
    if (!a || !b || b.ntpUs - a.ntpUs < LEARN_US) return null;
    return snapClockRate((((b.rtp - a.rtp) >>> 0) * 1e6) / (b.ntpUs - a.ntpUs));
  }

  /** A dynamic payload type's rate from its timestamps against arrival (ClockRateLearner); null until named. */
  #measureRate(stream: Stream<T>, data: Uint8Array, nowUs: number): number | null {
    if (!stream.learner) {
      stream.learner = new ClockRateLearner();
      stream.learnSinceUs = nowUs;
    }
    return stream.learner.add(nowUs, stream.ts.unwrap(rtpTimestamp(data)));
  }

  /** The stream's rate is known: its reports are read, and what waited for the rate is placed. */
  #setRate(inp: Input<T>, stream: Stream<T>, rate: number, nowUs: number): void {
    stream.clockRate = rate;
    stream.learner = null;
    for (const r of stream.pending) this.#report(inp, stream, r.ntpUs, r.rtp);
    stream.pending = [];
    const waited = stream.learning;
    stream.learning = [];
    for (const w of waited) {
      this.#learningBytes -= w.data.length + WAITING_ENTRY_BYTES;
      this.#place(inp, stream, w.data, w.arrivalUs, nowUs, w.from, true);
    }
    this.#update(nowUs);
  }

  #report(inp: Input<T>, stream: Stream<T>, ntpUs: number, rtp: number): void {
    if (stream.checkRate !== null && this.#checkRate(inp, stream, ntpUs, rtp)) return;
    stream.estimator ??= new RtpClockEstimator({ clockRate: stream.clockRate! });
    if (stream.estimator.addReport(ntpUs, rtp)) inp.counts.reports++;
    else inp.counts.reports_rejected++;
  }

  /**
   * Checks a rate named from arrivals against the stream's reports (see LEARN_US); true when it was replaced, the
   * mapping then begun afresh from the two reports that measured it.
   */
  #checkRate(inp: Input<T>, stream: Stream<T>, ntpUs: number, rtp: number): boolean {
    const first = stream.checkRate;
    if (first === null) return false;
    if (first === "pending" || ntpUs <= first.ntpUs) {
      stream.checkRate = { ntpUs, rtp };
      return false;
    }
    if (ntpUs - first.ntpUs < LEARN_US) return false;
    stream.checkRate = null;
    const rate = snapClockRate((((rtp - first.rtp) >>> 0) * 1e6) / (ntpUs - first.ntpUs));
    if (rate === null || rate === stream.clockRate) return false;
    // Captures from here on follow the reports; what is held keeps its due time, and order holds the stream's
    // output back until it is past it (or D rises for it), so the stream comes into step without a reorder.
    stream.clockRate = rate;
    stream.estimator = new RtpClockEstimator({ clockRate: rate });
    stream.base = null;
    inp.counts.clock_rates_corrected++;
    for (const r of [first, { ntpUs, rtp }]) {
      if (stream.estimator.addReport(r.ntpUs, r.rtp)) inp.counts.reports++;
      else inp.counts.reports_rejected++;
    }
    return true;
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
      this.#dropWaiting(inp, oldest);
      inp.streams.delete(oldest.ssrc);
    }
    s = new Stream<T>(ssrc, this.#rings);
    s.lastSeenUs = nowUs;
    s.established = this.#delay === null;
    s.pending = inp.pendingReports.get(ssrc) ?? [];
    inp.pendingReports.delete(ssrc);
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
   * as max_delay allows) if `mayRaise` (its stream is established), one that cannot be made in time or would wait
   * too long is dropped. Media lateness feeds the input's window.
   */
  #admit(
    inp: Input<T>,
    eff: number,
    arrivalUs: number,
    nowUs: number,
    media: boolean,
    mayRaise: boolean,
  ): boolean {
    const lateness = arrivalUs - eff;
    const c = inp.counts;
    if (this.#delay === null) {
      // Warming up: kept, unless it is later than max_delay already.
      if (lateness > this.#cfg.maxDelayUs + this.#lowest(nowUs, lateness)) {
        c.dropped_max_delay++;
        return false;
      }
      if (media) this.#sample(inp, lateness, nowUs);
      // A datagram that waited for its rate is one of several placed at once: the warm-up may end after the last
      // of them (#setRate), when D can see them all.
      if (arrivalUs === nowUs) this.#update(nowUs);
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
      if (!mayRaise) {
        c.dropped_late++;
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
      const min = inp.lateness.min(nowUs);
      if (min < low) low = min;
    }
    return low;
  }

  #hold(
    inp: Input<T>,
    queue: HeldQueue<T>,
    at: number,
    key: number,
    eff: number,
    data: Uint8Array,
    rtcp: boolean,
    from: T,
  ): void {
    // The rings count against the cap with the slab: with them (and this one's growth) the slab may take no more.
    const grow = queue.growBytes;
    const rings = this.#rings.bytes + grow;
    const slot = grow > 0 && this.#slab.memoryBytes + rings > this.#cfg.maxBytes
      ? null
      : this.#slab.copy(data, rings);
    if (!slot) {
      inp.counts.dropped_cap++;
      return;
    }
    queue.insertAt(at, key, eff, slot.chunk, slot.off, data.length, rtcp, from);
  }

  /** What D should be: the highest recent lateness plus the margin, within max_delay of the lowest. */
  #target(nowUs: number): number | null {
    let max = -Infinity;
    let min = Infinity;
    for (const inp of this.#inputs) {
      const hi = inp.lateness.max(nowUs);
      const lo = inp.lateness.min(nowUs);
      if (hi > max) max = hi;
      if (lo < min) min = lo;
    }
    if (max === -Infinity) return null;
    return Math.min(max + this.#cfg.marginUs, min + this.#cfg.maxDelayUs);
  }

  /** Ends the warm-up when it is time, and moves D towards its target by at most the slew. */
  #update(nowUs: number): void {
    // Called for every datagram; those of one batch share their time, and D moves with time only.
    if (nowUs === this.#lastUpdate && this.#delay !== null) return;
    const dt = Math.max(0, nowUs - this.#lastUpdate);
    this.#lastUpdate = nowUs;
    const target = this.#target(nowUs);
    if (this.#delay === null) {
      if (this.#firstUs === null) return;
      const heard = target !== null && this.#inputs.every((inp) => inp.lateness.max(nowUs) !== -Infinity);
      if (heard) {
        // What waited for the warm-up leaves on time: D starts at what the earliest held datagram has waited
        // already, up to WARMUP_EXTRA_US above the target (and within max_delay), then slews to the target.
        const earliest = this.#earliestEff();
        const waited = earliest === Infinity ? 0 : nowUs - earliest + this.#cfg.precisionUs;
        const bound = Math.min(
          target + WARMUP_EXTRA_US,
          this.#lowest(nowUs, Infinity) + this.#cfg.maxDelayUs,
        );
        this.#delay = Math.max(target, Math.min(waited, bound));
      } else if (nowUs >= this.#firstUs + this.#cfg.maxDelayUs) this.#delay = target ?? this.#cfg.marginUs;
      return;
    }
    if (target === null) return;
    const step = this.#slew * dt;
    if (this.#delay > target) this.#delay = Math.max(target, this.#delay - step);
    else if (this.#delay < target) this.#delay = Math.min(target, this.#delay + step);
  }
}
