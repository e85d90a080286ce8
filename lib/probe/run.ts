/**
 * The probe's two ends, the seed report's "behaviour tests": a paced sender of numbered, timestamped datagrams
 * (fixed rate or a linear ramp) and a receiver that measures them, optionally as a participant of a reflector.
 * Both run on the batched UDP sockets; time comes from the injected clock and `nowUs`.
 */
import { UsageError } from "../core/errors.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import { openUdp, type UdpImpl } from "../net/udp.ts";
import { JOIN_MIN_BYTES } from "../relay/participants.ts";
import { PROBE_HEADER, readProbe, writeProbe } from "./packet.ts";
import { type ProbeReport, ProbeStats } from "./stats.ts";

/** Microseconds since the epoch with sub-millisecond resolution; sender and receiver on one host agree. */
export const nowUs = (): number => (performance.timeOrigin + performance.now()) * 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
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
  readonly progress?: (line: string) => void;
  readonly signal?: AbortSignal;
}

export interface SendReport {
  sent: number;
  tx_dropped: number;
  duration_s: number;
  packets_per_s: number;
  mbit_per_s: number;
}

/** Datagrams due by `t` ms into a ramp from r0 to r1 datagrams/s over `d` ms (the integral of the rate). */
export function dueBy(t: number, r0: number, r1: number, d: number): number {
  const s = Math.min(t, d) / 1000;
  return Math.floor(r0 * s + ((r1 - r0) * s * s) / (2 * (d / 1000)));
}

export async function probeSend(o: SendOptions): Promise<SendReport> {
  if (o.size < PROBE_HEADER || o.size > 65507) {
    throw new UsageError(`Size must be ${PROBE_HEADER}..65507 bytes`);
  }
  const socket = openUdp({ host: o.to.host.includes(":") ? "::" : "0.0.0.0", port: 0 }, { impl: o.impl });
  const dest = socket.destinations([o.to]);
  const slab = new Uint8Array(o.size * 1024);
  const packets = Array.from({ length: 1024 }, (_, i) => slab.subarray(i * o.size, (i + 1) * o.size));
  const start = performance.now();
  let sent = 0;
  let lastProgress = start;
  try {
    for (;;) {
      const elapsed = performance.now() - start;
      if (elapsed >= o.durationMs || (o.count && sent >= o.count) || o.signal?.aborted) break;
      let due = dueBy(elapsed, o.rate[0], o.rate[1], o.durationMs);
      if (o.count) due = Math.min(due, o.count);
      if (due > sent) {
        const n = Math.min(due - sent, 1024);
        const t = nowUs();
        for (let i = 0; i < n; i++) writeProbe(packets[i], sent + i, o.stream, t);
        socket.send(n === 1024 ? packets : packets.slice(0, n), dest);
        sent += n;
        if (n === 1024) continue; // behind schedule: catch up before yielding
      }
      if (o.progress && performance.now() - lastProgress >= 1000) {
        lastProgress = performance.now();
        const secs = (lastProgress - start) / 1000;
        o.progress(
          `probe send: ${sent} sent, ${Math.round(sent / secs)}/s, ${socket.stats.tx_dropped} refused`,
        );
      }
      await sleep(1);
    }
    // Let the portable path's send queue drain before reporting.
    while (socket.stats.tx_packets + socket.stats.tx_dropped + socket.stats.errors < sent) await sleep(1);
  } finally {
    await socket.close();
  }
  const secs = Math.max(1e-6, (performance.now() - start) / 1000);
  return {
    sent,
    tx_dropped: socket.stats.tx_dropped,
    duration_s: secs,
    packets_per_s: sent / secs,
    mbit_per_s: (sent * o.size * 8) / secs / 1e6,
  };
}

export interface RecvOptions {
  /** Where to listen; with `join`, port 0 is usual. */
  readonly listen: HostPort;
  /** A reflector's registration address to join as a participant. */
  readonly join?: HostPort;
  readonly durationMs: number;
  /** Stop after this many probe datagrams (0: no limit). */
  readonly count: number;
  /** Stop when nothing arrived for this long after the first datagram. */
  readonly idleMs: number;
  readonly impl: UdpImpl;
  readonly progress?: (line: string) => void;
  readonly signal?: AbortSignal;
  /** Called once listening (and joined), with the bound address. */
  readonly ready?: (local: HostPort) => void;
}

/**
 * Receives and measures probe datagrams. With `join`, it is a reflector participant: the one receive loop answers
 * the reflector's CHALLENGE with CONFIRM, and a JOIN is repeated every third of the announced timeout as keepalive.
 */
export async function probeRecv(o: RecvOptions): Promise<ProbeReport> {
  const socket = openUdp(o.listen, { impl: o.impl, batch: 256 });
  const stats = new ProbeStats();
  const reg = o.join ? socket.destinations([o.join]) : null;
  const join = enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES));
  let joined = !o.join;
  let failure: Error | null = null;
  let last = performance.now();
  let keepalive: ReturnType<typeof setInterval> | undefined;
  const start = performance.now();
  let ticks = 0;
  if (reg) socket.send([join], reg);
  else o.ready?.(socket.local);

  const ticker = setInterval(() => {
    const now = performance.now();
    if (!joined) {
      if (now - start > 5000) {
        failure = new Error(`Cannot join the reflector at ${formatHostPort(o.join!)}: no answer within 5 s`);
        socket.close();
      } else socket.send([join], reg!);
      return;
    }
    const idle = stats.received > 0 && now - last > o.idleMs;
    if (now - start >= o.durationMs || idle || o.signal?.aborted) socket.close();
    else if (++ticks % 4 === 0) o.progress?.(progressLine(stats.report()));
  }, 250);
  try {
    for (;;) {
      const batch = await socket.receive();
      if (!batch) break;
      const arrival = nowUs();
      last = performance.now();
      for (let i = 0; i < batch.count; i++) {
        const d = batch.data(i);
        const h = readProbe(d);
        if (h) {
          stats.add(h.seq, h.sentUs, arrival, d.length);
          continue;
        }
        const text = reg && d.length <= 64 ? dec.decode(d) : "";
        const challenge = /^EDGENODE-CHALLENGE ([0-9a-f]{32})$/.exec(text);
        const welcome = /^EDGENODE-WELCOME (\d+)$/.exec(text);
        if (challenge) socket.send([enc.encode(`EDGENODE-CONFIRM ${challenge[1]}`)], reg!);
        else if (welcome && !joined) {
          joined = true;
          const every = Math.max(1000, (Number(welcome[1]) * 1000) / 3);
          keepalive = setInterval(() => socket.send([join], reg!), every);
          o.ready?.(socket.local);
        } else if (!welcome) stats.foreign();
      }
      if (o.count && stats.received >= o.count) break;
    }
  } finally {
    clearInterval(ticker);
    clearInterval(keepalive);
    await socket.close();
  }
  if (failure) throw failure;
  return stats.report();
}

function progressLine(r: ProbeReport): string {
  return `probe recv: ${r.received} received, ${r.loss_percent.toFixed(3)}% lost, ${
    Math.round(r.packets_per_s)
  }/s`;
}
