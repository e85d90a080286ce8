/**
 * The probe's two ends, the seed report's "behaviour tests": a paced sender of numbered, timestamped datagrams
 * (fixed rate or a linear ramp), plain or as RTP with sender reports, and a receiver that measures them (and any
 * RTP stream, with the A/V skew between streams of one CNAME), optionally as a participant of a reflector.
 * Both run on the batched UDP sockets; time comes from the clock they are given (the system clock by default), and
 * a receiver times datagrams by the kernel's arrival stamps where the socket has them.
 */
import { type Clock, systemClock } from "../core/clock.ts";
import { StartError, UsageError } from "../core/errors.ts";
import { isRtcp } from "../media/rtp.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import { openUdp, openUdpPair, type UdpImpl, type UdpSocket } from "../net/udp.ts";
import { JOIN_MIN_BYTES } from "../relay/participants.ts";
import { PROBE_HEADER, readProbe, writeProbe } from "./packet.ts";
import { readRtpProbe, RTP_PROBE_MIN, RtpProbeWriter } from "./rtp.ts";
import { RtpStreams } from "./rtp_streams.ts";
import { type ProbeReport, ProbeStats } from "./stats.ts";

/** Microseconds since the epoch with sub-millisecond resolution; sender and receiver on one host agree. */
export const nowUs = (): number => systemClock.nowUs();
const sleep = (clock: Clock, ms: number) => new Promise<void>((r) => clock.setTimeout(r, ms));

/** Calls `fn` every `ms` on `clock` until the returned function is called. */
function every(clock: Clock, ms: number, fn: () => void): () => void {
  let id = 0;
  const tick = () => {
    id = clock.setTimeout(tick, ms);
    fn();
  };
  id = clock.setTimeout(tick, ms);
  return () => clock.clearTimeout(id);
}
const enc = new TextEncoder();
const dec = new TextDecoder();

export interface SendOptions {
  readonly to: HostPort;
  readonly size: number;
  /** Datagrams per second at the start and at the end (equal for a fixed rate). */
  readonly rate: readonly [number, number];
  readonly durationMs: number;
  /** Stop after this many datagrams (0: no limit). */
  readonly count: number;
  readonly stream: number;
  readonly impl: UdpImpl;
  /** Send RTP (with sender reports to port + 1) instead of plain datagrams. */
  readonly rtp?: RtpSendOptions;
  readonly progress?: (line: string) => void;
  readonly signal?: AbortSignal;
  /** Time (tests: a ManualClock); the system clock by default. */
  readonly clock?: Clock;
}

export interface RtpSendOptions {
  readonly payloadType: number;
  /** Random when not given (RFC 3550). */
  readonly ssrc?: number;
  readonly clockRate: number;
  /** Interval between sender reports (0: none). */
  readonly srIntervalMs: number;
  readonly cname: string;
  /** Timestamps and sender reports say each packet was captured this long before it was sent. */
  readonly captureDelayMs: number;
}

export interface SendReport {
  sent: number;
  tx_dropped: number;
  duration_s: number;
  packets_per_s: number;
  mbit_per_s: number;
  /** With RTP: the SSRC used and the sender reports sent. */
  rtp?: { ssrc: number; sender_reports: number };
}

const random32 = () => crypto.getRandomValues(new Uint32Array(1))[0];

/** Datagrams due by `t` ms into a ramp from r0 to r1 datagrams/s over `d` ms (the integral of the rate). */
export function dueBy(t: number, r0: number, r1: number, d: number): number {
  const s = Math.min(t, d) / 1000;
  return Math.floor(r0 * s + ((r1 - r0) * s * s) / (2 * (d / 1000)));
}

export async function probeSend(o: SendOptions): Promise<SendReport> {
  const min = o.rtp ? RTP_PROBE_MIN : PROBE_HEADER;
  if (o.size < min || o.size > 65507) {
    throw new UsageError(`Size must be ${min}..65507 bytes${o.rtp ? " with RTP" : ""}`);
  }
  if (o.rtp && o.to.port >= 65535) throw new UsageError("Cannot send RTCP: the port after --to must exist");
  const socket = openUdp({ host: o.to.host.includes(":") ? "::" : "0.0.0.0", port: 0 }, { impl: o.impl });
  const dest = socket.destinations([o.to]);
  const slab = new Uint8Array(o.size * 1024);
  const packets = Array.from({ length: 1024 }, (_, i) => slab.subarray(i * o.size, (i + 1) * o.size));
  const clock = o.clock ?? systemClock;
  const ms = () => clock.nowUs() / 1000;
  const start = ms();
  const writer = o.rtp
    ? new RtpProbeWriter({
      payloadType: o.rtp.payloadType,
      ssrc: o.rtp.ssrc ?? random32(),
      clockRate: o.rtp.clockRate,
      stream: o.stream,
      cname: o.rtp.cname,
      captureDelayUs: o.rtp.captureDelayMs * 1000,
      sequenceBase: random32() & 0xffff,
      timestampBase: random32(),
      startUs: clock.nowUs(),
    })
    : null;
  // RTCP goes from the media socket to port + 1, where RTP receivers and use_RTP reflectors expect it.
  const srEvery = o.rtp?.srIntervalMs ?? 0;
  const rtcpDest = writer && srEvery > 0
    ? socket.destinations([{ host: o.to.host, port: o.to.port + 1 }])
    : null;
  let nextSr = 0;
  let senderReports = 0;
  let sent = 0;
  let lastProgress = start;
  try {
    for (;;) {
      const elapsed = Math.min(ms() - start, o.durationMs);
      // The last datagram is due at the end of the duration: it is sent before the loop ends.
      const over = elapsed >= o.durationMs && dueBy(elapsed, o.rate[0], o.rate[1], o.durationMs) <= sent;
      if (over || (o.count && sent >= o.count) || o.signal?.aborted) break;
      if (rtcpDest && elapsed >= nextSr) {
        // The first report goes before the first packet, so a receiver can time packets from the start.
        socket.send([writer!.senderReport(clock.nowUs())], rtcpDest);
        senderReports++;
        nextSr = elapsed + srEvery;
      }
      let due = dueBy(elapsed, o.rate[0], o.rate[1], o.durationMs);
      if (o.count) due = Math.min(due, o.count);
      if (due > sent) {
        const n = Math.min(due - sent, 1024);
        const t = clock.nowUs();
        if (writer) { for (let i = 0; i < n; i++) writer.write(packets[i], sent + i, t); }
        else for (let i = 0; i < n; i++) writeProbe(packets[i], sent + i, o.stream, t);
        socket.send(n === 1024 ? packets : packets.slice(0, n), dest);
        sent += n;
        if (n === 1024) continue; // behind schedule: catch up before yielding
      }
      if (o.progress && ms() - lastProgress >= 1000) {
        lastProgress = ms();
        const secs = (lastProgress - start) / 1000;
        o.progress(
          `probe send: ${sent} sent, ${Math.round(sent / secs)}/s, ${socket.stats.tx_dropped} refused`,
        );
      }
      await sleep(clock, 1);
    }
    // Let the portable path's send queue drain before reporting (a queue, not time: the system clock's turn).
    while (socket.stats.tx_packets + socket.stats.tx_dropped + socket.stats.errors < sent + senderReports) {
      await sleep(systemClock, 1);
    }
  } finally {
    await socket.close();
  }
  // The schedule's own length: the loop notices its end at its next turn, up to a timer's slack later.
  const secs = Math.max(1e-6, Math.min(ms() - start, o.durationMs) / 1000);
  return {
    sent,
    tx_dropped: socket.stats.tx_dropped,
    duration_s: secs,
    packets_per_s: sent / secs,
    mbit_per_s: (sent * o.size * 8) / secs / 1e6,
    ...(writer ? { rtp: { ssrc: writer.config.ssrc, sender_reports: senderReports } } : {}),
  };
}

export interface RecvOptions {
  /** Where to listen; with `join`, port 0 is usual. RTCP is received on the next port. */
  readonly listen: HostPort;
  /** A reflector's registration address to join as a participant. */
  readonly join?: HostPort;
  readonly durationMs: number;
  /** Stop after this many datagrams measured, probe or RTP (0: no limit). */
  readonly count: number;
  /** Stop when nothing arrived for this long after the first datagram. */
  readonly idleMs: number;
  readonly impl: UdpImpl;
  /** Require the RTCP port (listen port + 1); without it, RTCP is received there only if the port is free. */
  readonly rtp?: boolean;
  /** Clock rates of dynamic RTP payload types (PT -> Hz); others are inferred from sender reports. */
  readonly clockRates?: ReadonlyMap<number, number>;
  readonly progress?: (line: string) => void;
  readonly signal?: AbortSignal;
  /** Called once listening (and joined), with the bound address and the RTCP one (null when none). */
  readonly ready?: (local: HostPort, rtcp: HostPort | null) => void;
  /** Time (tests: a ManualClock); the system clock by default. Arrivals are the kernel's times where it gives them. */
  readonly clock?: Clock;
}

/**
 * Opens the media socket at `listen` and, where it can, the RTCP socket at the next port: with port 0, a pair of
 * free ports is searched for (as an RTP receiver's pair, which a use_RTP reflector sends RTCP to at port + 1).
 * `required`: fail when there is no RTCP socket.
 */
/** SO_RCVBUF asked for `recv` (granted beyond the kernel's rmem_max only to root, through SO_RCVBUFFORCE). */
const RECV_BUFFER_BYTES = 16 * 1024 * 1024;

function openPair(listen: HostPort, impl: UdpImpl, required: boolean): [UdpSocket, UdpSocket | null] {
  // A measuring tool must not be where datagrams are lost: a receive buffer that holds a burst of seconds of video.
  // Kernel arrival times: a datagram is timed when it arrived, not when this process got to it (it may share its
  // cores with the senders).
  const open = (port: number, batch: number) =>
    openUdp({ host: listen.host, port }, { impl, batch, bufferBytes: RECV_BUFFER_BYTES, timestamps: true });
  let lastError: unknown;
  if (listen.port === 0) {
    try {
      return openUdpPair(listen.host, {
        impl,
        batch: 256,
        secondBatch: 64,
        bufferBytes: RECV_BUFFER_BYTES,
        timestamps: true,
      });
    } catch (error) {
      lastError = error;
    }
  } else {
    const media = open(listen.port, 256);
    if (media.local.port < 65535) {
      try {
        return [media, open(media.local.port + 1, 64)];
      } catch (error) {
        lastError = error;
      }
    }
    if (!required) return [media, null];
    media.close();
  }
  const why = lastError instanceof Error ? lastError.message : "no port after it";
  if (required) {
    throw new StartError(`Cannot listen for RTCP on the port after ${formatHostPort(listen)}: ${why}`);
  }
  return [open(listen.port, 256), null];
}

/**
 * Receives and measures probe datagrams, plain or inside RTP, and any RTP stream with its sender reports. With
 * `join`, it is a reflector participant: the one receive loop answers the reflector's CHALLENGE with CONFIRM, and a
 * JOIN is repeated every third of the announced timeout as keepalive.
 */
export async function probeRecv(o: RecvOptions): Promise<ProbeReport> {
  const [socket, rtcpSocket] = openPair(o.listen, o.impl, o.rtp ?? false);
  const stats = new ProbeStats();
  const streams = new RtpStreams({ clockRates: o.clockRates });
  const reg = o.join ? socket.destinations([o.join]) : null;
  const join = enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES));
  let joined = !o.join;
  let failure: Error | null = null;
  const clock = o.clock ?? systemClock;
  const ms = () => clock.nowUs() / 1000;
  let last = ms();
  let stopKeepalive = () => {};
  const start = ms();
  let ticks = 0;
  /** Datagrams measured: probe datagrams, plain or RTP, and RTP packets of other senders. */
  let measured = 0;
  const stop = () => {
    socket.close();
    rtcpSocket?.close();
  };
  if (reg) socket.send([join], reg);
  else o.ready?.(socket.local, rtcpSocket?.local ?? null);

  const stopTicker = every(clock, 250, () => {
    const now = ms();
    if (!joined) {
      if (now - start > 5000) {
        failure = new Error(`Cannot join the reflector at ${formatHostPort(o.join!)}: no answer within 5 s`);
        stop();
      } else socket.send([join], reg!);
      return;
    }
    const idle = measured > 0 && now - last > o.idleMs;
    if (now - start >= o.durationMs || idle || o.signal?.aborted) stop();
    else if (++ticks % 4 === 0) o.progress?.(progressLine(stats.report(), streams.size));
  });
  const rtcpLoop = (async () => {
    for (;;) {
      const batch = await rtcpSocket?.receive();
      if (!batch) return;
      for (let i = 0; i < batch.count; i++) streams.addRtcp(batch.data(i));
    }
  })();
  try {
    for (;;) {
      const batch = await socket.receive();
      if (!batch) break;
      const received = clock.nowUs();
      last = received / 1000;
      for (let i = 0; i < batch.count; i++) {
        const d = batch.data(i);
        const kernel = batch.arrivalUs?.(i) ?? NaN;
        const arrival = kernel === kernel ? kernel : received;
        const h = readProbe(d);
        if (h) {
          stats.add(h.seq, h.sentUs, arrival, d.length, h.stream);
          measured++;
          continue;
        }
        // RTCP multiplexed on the media port (RFC 5761) is taken as if it came to port + 1.
        if (isRtcp(d)) {
          streams.addRtcp(d);
          continue;
        }
        const r = readRtpProbe(d);
        if (r) {
          streams.add(r.rtp, d.length, arrival, r.probe !== null);
          // Keyed apart from plain stream ids: SSRCs live above 2^32.
          if (r.probe) stats.add(r.probe.seq, r.probe.sentUs, arrival, d.length, 2 ** 32 + r.rtp.ssrc);
          measured++;
          continue;
        }
        const text = reg && d.length <= 64 ? dec.decode(d) : "";
        const challenge = /^EDGENODE-CHALLENGE ([0-9a-f]{32})$/.exec(text);
        const welcome = /^EDGENODE-WELCOME (\d+)$/.exec(text);
        if (challenge) socket.send([enc.encode(`EDGENODE-CONFIRM ${challenge[1]}`)], reg!);
        else if (welcome && !joined) {
          joined = true;
          const period = Math.max(1000, (Number(welcome[1]) * 1000) / 3);
          stopKeepalive = every(clock, period, () => socket.send([join], reg!));
          o.ready?.(socket.local, rtcpSocket?.local ?? null);
        } else if (!welcome) stats.foreign();
      }
      if (o.count && measured >= o.count) break;
    }
  } finally {
    stopTicker();
    stopKeepalive();
    await socket.close();
    await rtcpSocket?.close();
    await rtcpLoop;
  }
  if (failure) throw failure;
  const report = stats.report();
  const rtp = streams.report();
  return rtp.groups.length || rtp.rtcp_packets || rtp.rtcp_malformed ? { ...report, rtp } : report;
}

function progressLine(r: ProbeReport, rtpStreams: number): string {
  return `probe recv: ${r.received} received, ${r.loss_percent.toFixed(3)}% lost, ${
    Math.round(r.packets_per_s)
  }/s${rtpStreams ? `, ${rtpStreams} RTP streams` : ""}`;
}
