/**
 * What `probe recv` learns about RTP: per SSRC, packets, bytes and loss by RTP sequence number (so streams that
 * are not the probe's, ffmpeg's for example, are measured too), sender reports and the NTP <-> RTP mapping they
 * give, the CNAME from SDES, and the A/V skew between the streams of each CNAME (definitions in
 * lib/probe/skew.ts). Pure: headers, RTCP datagrams and arrival times in, a report out.
 *
 * Clock rates: static payload types have theirs (RFC 3551); dynamic ones take the receiver's `--clock-rate
 * PT=HZ`, or else are inferred from two sender reports (RTP ticks over NTP time, snapped to a usual rate).
 */
import { clockRateOf, snapClockRate } from "../media/clock_rates.ts";
import { parseRtcp } from "../media/rtcp.ts";
import { RtpClockEstimator } from "../media/rtp_clock.ts";
import type { RtpHeader } from "../media/rtp.ts";
import { RtpSequenceStats } from "../media/rtp_stats.ts";
import { chooseReference, MAX_PAIR_AGE_US, type SkewReport, SkewStats } from "./skew.ts";

/** SSRCs tracked at most; packets and reports of further ones are counted as untracked. */
export const MAX_RTP_STREAMS = 64;
/** Sender reports kept while a stream's clock rate is still unknown. */
const MAX_PENDING_REPORTS = 8;
/** Two sender reports at least this far apart (µs) tell a clock rate. */
const MIN_RATE_SPAN_US = 200_000;

export interface RtpStreamReport {
  ssrc: number;
  /** Payload type of the first packet; null when only sender reports came. */
  payload_type: number | null;
  clock_rate: number | null;
  packets: number;
  bytes: number;
  /** By RTP sequence number (lib/media/rtp_stats.ts). */
  expected: number;
  lost: number;
  reordered: number;
  duplicates: number;
  sender_reports: number;
  /** Whether the payloads carried the probe header. */
  probe: boolean;
}

export interface RtpGroupReport {
  /** The SDES CNAME; null for the streams whose CNAME did not come (yet). */
  cname: string | null;
  streams: RtpStreamReport[];
  /** One entry per stream paired with the group's reference (none for a group of one). */
  skew: SkewReport[];
}

export interface RtpReport {
  groups: RtpGroupReport[];
  rtcp_packets: number;
  /** RTCP datagrams that did not parse. */
  rtcp_malformed: number;
  /** Packets and reports of SSRCs beyond MAX_RTP_STREAMS. */
  untracked: number;
}

class Stream {
  payloadType: number | null = null;
  clockRate: number | null = null;
  cname: string | null = null;
  packets = 0;
  bytes = 0;
  senderReports = 0;
  probe = false;
  readonly sequence = new RtpSequenceStats();
  clock: RtpClockEstimator | null = null;
  /** [ntpUs, rtpTimestamp] of reports that came before the clock rate was known. */
  pending: [number, number][] = [];
  /** The RTP timestamp of the latest packet: a packet with the same one belongs to the same capture instant. */
  lastTimestamp = -1;
  /** The latest capture instant's first packet: its offset (arrival - capture) and arrival, µs. */
  lastOffset = 0;
  lastArrival = -Infinity;
  /** Skew against each reference this stream was paired with, by reference SSRC. */
  readonly pairs = new Map<number, SkewStats>();
  /** The reference chosen for this stream's CNAME at `refVersion`. */
  ref: Stream | undefined;
  refVersion = -1;

  constructor(readonly ssrc: number, readonly order: number) {}
}

export interface RtpStreamsOptions {
  /** Clock rates of dynamic payload types (PT -> Hz). */
  readonly clockRates?: ReadonlyMap<number, number>;
}

export class RtpStreams {
  readonly #streams = new Map<number, Stream>();
  readonly #learned: ReadonlyMap<number, number>;
  /** Bumped whenever a CNAME or clock rate changes, so cached references are chosen again. */
  #version = 0;
  #rtcp = 0;
  #rtcpMalformed = 0;
  #untracked = 0;

  constructor(o: RtpStreamsOptions = {}) {
    this.#learned = o.clockRates ?? new Map();
  }

  /** Streams seen (packets or reports). */
  get size(): number {
    return this.#streams.size;
  }

  /** Records one RTP packet of `bytes` bytes that arrived at `arrivalUs`; `probe` when it carried the header. */
  add(h: RtpHeader, bytes: number, arrivalUs: number, probe: boolean): void {
    const s = this.#stream(h.ssrc);
    if (!s) return;
    if (s.payloadType === null) {
      s.payloadType = h.payloadType;
      if (s.clockRate === null) {
        const rate = clockRateOf(h.payloadType, this.#learned);
        if (rate !== null) this.#setRate(s, rate);
      }
    }
    s.packets++;
    s.bytes += bytes;
    if (probe) s.probe = true;
    s.sequence.add(h.sequence);
    // Only the first packet of a capture instant times it (see skew.ts): the rest of a frame is its serialization.
    if (h.timestamp === s.lastTimestamp) return;
    s.lastTimestamp = h.timestamp;
    const capture = s.clock?.captureUs(h.timestamp) ?? null;
    if (capture === null) return;
    const offset = arrivalUs - capture;
    s.lastOffset = offset;
    s.lastArrival = arrivalUs;
    if (s.cname === null) return;
    if (s.refVersion !== this.#version) {
      s.ref = chooseReference([...this.#streams.values()].filter((o) => o.cname === s.cname));
      s.refVersion = this.#version;
    }
    const ref = s.ref;
    if (!ref || ref === s || arrivalUs - ref.lastArrival > MAX_PAIR_AGE_US) return;
    let pair = s.pairs.get(ref.ssrc);
    if (!pair) s.pairs.set(ref.ssrc, pair = new SkewStats(ref.ssrc, s.ssrc));
    pair.add(offset, ref.lastOffset);
  }

  /** Records one RTCP datagram (compound): sender reports and CNAMEs; false when it did not parse. */
  addRtcp(d: Uint8Array): boolean {
    const rtcp = parseRtcp(d);
    if (!rtcp) {
      this.#rtcpMalformed++;
      return false;
    }
    this.#rtcp++;
    for (const { ssrc, cname } of rtcp.cnames) {
      const s = this.#stream(ssrc);
      if (s && s.cname !== cname) {
        s.cname = cname;
        this.#version++;
      }
    }
    for (const sr of rtcp.senderReports) {
      const s = this.#stream(sr.ssrc);
      if (!s) continue;
      s.senderReports++;
      if (s.clock) s.clock.addReport(sr.ntpUs, sr.rtpTimestamp);
      else this.#pend(s, sr.ntpUs, sr.rtpTimestamp);
    }
    return true;
  }

  /** Keeps a report until the stream's clock rate is known, inferring the rate from two reports if need be. */
  #pend(s: Stream, ntpUs: number, rtpTimestamp: number): void {
    s.pending.push([ntpUs, rtpTimestamp]);
    if (s.pending.length > MAX_PENDING_REPORTS) s.pending.shift();
    if (s.clockRate !== null) return;
    const [n0, t0] = s.pending[0];
    if (ntpUs - n0 < MIN_RATE_SPAN_US) return;
    const ticks = (((rtpTimestamp - t0) % 2 ** 32) + 2 ** 32) % 2 ** 32;
    const rate = inferRate(ticks / ((ntpUs - n0) / 1e6));
    // A restarted source (timestamps back) looks like a huge rate: start over from this report.
    if (rate === null) s.pending = [[ntpUs, rtpTimestamp]];
    else this.#setRate(s, rate);
  }

  #setRate(s: Stream, rate: number): void {
    s.clockRate = rate;
    s.clock = new RtpClockEstimator({ clockRate: rate });
    for (const [ntpUs, ts] of s.pending) s.clock.addReport(ntpUs, ts);
    s.pending = [];
    this.#version++;
  }

  #stream(ssrc: number): Stream | undefined {
    let s = this.#streams.get(ssrc);
    if (!s) {
      if (this.#streams.size >= MAX_RTP_STREAMS) {
        this.#untracked++;
        return undefined;
      }
      this.#streams.set(ssrc, s = new Stream(ssrc, this.#streams.size));
      this.#version++;
    }
    return s;
  }

  report(): RtpReport {
    const groups = new Map<string | null, Stream[]>();
    for (const s of this.#streams.values()) {
      const g = groups.get(s.cname);
      if (g) g.push(s);
      else groups.set(s.cname, [s]);
    }
    return {
      groups: [...groups].map(([cname, streams]) => {
        const ref = cname === null ? undefined : chooseReference(streams);
        return {
          cname,
          streams: streams.map(streamReport),
          skew: ref
            ? streams.flatMap((s) => {
              const pair = s.pairs.get(ref.ssrc);
              return s === ref ? [] : [pair ? pair.report() : new SkewStats(ref.ssrc, s.ssrc).report()];
            })
            : [],
        };
      }),
      rtcp_packets: this.#rtcp,
      rtcp_malformed: this.#rtcpMalformed,
      untracked: this.#untracked,
    };
  }
}

function streamReport(s: Stream): RtpStreamReport {
  const q = s.sequence.snapshot();
  return {
    ssrc: s.ssrc,
    payload_type: s.payloadType,
    clock_rate: s.clockRate,
    packets: s.packets,
    bytes: s.bytes,
    expected: q.expected,
    lost: q.lost,
    reordered: q.reordered,
    duplicates: q.duplicates,
    sender_reports: s.senderReports,
    probe: s.probe,
  };
}

/** A clock rate from ticks per second: a common rate when close to one (snapClockRate), else rounded; null when implausible. */
export function inferRate(ticksPerSecond: number): number | null {
  if (!(ticksPerSecond >= 1000 && ticksPerSecond <= 1_000_000)) return null;
  return snapClockRate(ticksPerSecond) ?? Math.round(ticksPerSecond);
}
