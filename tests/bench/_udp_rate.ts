/**
 * What the UDP benchmarks share: receivers on the fast sockets, one trial (`edgenode probe send` in its own process,
 * loss and delay measured here), the search for the highest offered rate with loss <= LOSS_LIMIT (doubling, then
 * bisection), the relay role as a path, and `measure`, which runs one path through every size and the delay trial.
 */
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { readProbe } from "../../lib/probe/packet.ts";
import { nowUs } from "../../lib/probe/run.ts";
import { ProbeStats } from "../../lib/probe/stats.ts";
import { type EdgenodeProcess, startEdgenode, tempConfig } from "../e2e/_process.ts";
import { threadCpuNs } from "./_cpu.ts";
import { benchFull, benchNumber } from "./_mode.ts";

export const LOSS_LIMIT = 0.1; // percent
export const LO = "127.0.0.1";
/** The rate at which each path's added delay is taken (with 100-byte datagrams). */
export const DELAY_RATE = 10_000;
/** The rate at which a path's CPU time per datagram is taken: below every relay's highest rate here but the portable. */
export const CPU_RATE = 50_000;

/** Sizes from BENCH_SIZES ("100,1450"), else `quick` or `full` by the mode (tests/bench/_mode.ts). */
export function benchSizes(quick: string, full = quick): number[] {
  return (Deno.env.get("BENCH_SIZES") ?? (benchFull() ? full : quick)).split(",").map(Number);
}

/** Seconds per trial from BENCH_SECONDS, else 1 (quick) or 1.5 (full). */
export function benchSeconds(): number {
  return benchNumber("BENCH_SECONDS", 1, 1.5);
}

/** Bisection steps after the doubling search (BENCH_BISECT): 3 quick (within about 6%), 5 full (within 3%). */
export function benchBisect(): number {
  return benchNumber("BENCH_BISECT", 3, 5);
}

export interface Path {
  name: string;
  /**
   * Starts the path towards `sinks`; returns the address the sender aims at, a stop function, and the process that
   * does the relaying when there is one (its CPU time is read from /proc).
   */
  start(sinks: UdpSocket[]): Promise<{ to: string; stop(): Promise<void>; pid?: number }>;
  participants: number;
  /** Whether to take this path's CPU time per datagram at CPU_RATE (the paths it can carry without loss). */
  cpu?: boolean;
}

/** The edgenode relay role: a relay to one sink, or with `participants` > 1 a reflector sending to each. */
export const relayRolePath = (name: string, udp: "fast" | "portable", participants = 1): Path => ({
  name,
  participants,
  cpu: udp === "fast" && participants === 1,
  async start(sinks) {
    const reflector = participants > 1;
    const config = await tempConfig([
      "roles: [relay]",
      "log:\n  level: warn",
      "relay:",
      `  udp: ${udp}`,
      reflector ? "  reflectors:" : "  relays:",
      reflector
        ? `    - {name: bench, data: ${LO}:0, registration: ${LO}:0, allow: [loopback], max_participants: 100, ` +
          `max_per_address: 100, participants: [${sinks.map((s) => `${LO}:${s.local.port}`).join(", ")}]}`
        : `    - {name: bench, listen: ${LO}:0, targets: [${LO}:${sinks[0].local.port}]}`,
      "",
    ].join("\n"));
    const node = startEdgenode(["--config", config.path, "--status", `${LO}:0`, "--log-level", "info"]);
    const [, to] = await node.waitForLine(
      reflector
        ? /msg="reflector listening" reflector=bench data=(\S+)/
        : /msg="relay listening" relay=bench listen=(\S+)/,
    );
    return { to, stop: () => stopAll(node, config), pid: node.pid };
  },
});

export const direct: Path = {
  name: "direct",
  participants: 1,
  start: (sinks) => Promise.resolve({ to: `${LO}:${sinks[0].local.port}`, stop: () => Promise.resolve() }),
};

async function stopAll(node: EdgenodeProcess, config: AsyncDisposable): Promise<void> {
  await node[Symbol.asyncDispose]();
  await config[Symbol.asyncDispose]();
}

/** A UDP port that was free a moment ago on the loopback (bound, read, closed); racy, but good enough here. */
export function freePort(): number {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  const port = (socket.addr as Deno.NetAddr).port;
  socket.close();
  return port;
}

/**
 * A receiving socket read by one loop for its whole life (no timers raced against receives, which would both
 * start a second receive and skew delays); each trial swaps in fresh stats.
 */
export class Sink {
  stats = new ProbeStats();
  lastArrival = 0;
  readonly done: Promise<void>;

  constructor(readonly socket: UdpSocket) {
    this.done = (async () => {
      for (;;) {
        const batch = await socket.receive();
        if (!batch) return;
        const t = nowUs();
        this.lastArrival = performance.now();
        for (let i = 0; i < batch.count; i++) {
          const d = batch.data(i);
          const h = readProbe(d);
          if (h) this.stats.add(h.seq, h.sentUs, t, d.length);
        }
      }
    })();
  }

  async close(): Promise<void> {
    await this.socket.close();
    await this.done;
  }
}

/** Where trials send (`to`), who receives (`sinks`) and how long each trial offers its rate. */
export interface Rig {
  readonly to: string;
  readonly sinks: readonly Sink[];
  readonly seconds: number;
}

/** Resolves once the sender is done and no sink has received anything for 300 ms. */
async function quiet(sinks: readonly Sink[], sender: Promise<unknown>): Promise<void> {
  await sender;
  for (;;) {
    const last = Math.max(0, ...sinks.map((s) => s.lastArrival));
    if (performance.now() - last > 300) return;
    await sleep(50);
  }
}

export const signed = (n: number) => `${n >= 0 ? "+" : "-"}${Math.abs(n).toFixed(0)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One trial: `rate` datagrams/s of `size` bytes for `rig.seconds`; returns worst loss over sinks and the stats. */
export async function trial(rig: Rig, load: { size: number; rate: number }) {
  const { to, sinks, seconds } = rig;
  for (const sink of sinks) sink.stats = new ProbeStats();
  const count = Math.max(1000, Math.round(load.rate * seconds));
  const sender = startEdgenode([
    "probe",
    "send",
    "--to",
    to,
    "--size",
    String(load.size),
    "--rate",
    String(load.rate),
    "--count",
    String(count),
    "--duration",
    `${seconds * 3}s`,
    "--json",
    "--quiet",
  ]);
  const done = sender.waitForExit(60_000);
  await quiet(sinks, done);
  const result = await done;
  if (result.code !== 0) throw new Error(`probe send failed: ${result.stderr}`);
  const sent = JSON.parse(result.stdout) as { sent: number; packets_per_s: number };
  const reports = sinks.map((s) => s.stats.report());
  const worst = Math.max(...reports.map((r) => ((sent.sent - r.received) / sent.sent) * 100));
  return { loss: worst, offered: sent.packets_per_s, reports };
}

/**
 * Whether `rate` passes: loss <= LOSS_LIMIT in either of two trials. With three processes sharing two cores a
 * single scheduling hiccup can lose a burst; a second chance applies to every path alike.
 */
async function passes(rig: Rig, load: { size: number; rate: number }): Promise<number | null> {
  for (let attempt = 0; attempt < 2; attempt++) {
    const t = await trial(rig, load);
    if (t.loss <= LOSS_LIMIT) return t.offered;
  }
  return null;
}

/**
 * The doubling search's first rate (BENCH_START): 40k/s quick, 10k/s full. Every path measured here passes 40k/s but
 * the portable relay, whose search then bisects between zero and it.
 */
export function benchStart(): number {
  return benchNumber("BENCH_START", 40_000, 10_000);
}

/** Highest offered rate with loss <= LOSS_LIMIT: doubling from benchStart(), then bisection (benchBisect() steps). */
export async function maxRate(rig: Rig, size: number): Promise<number> {
  let good = 0;
  let bad = 0;
  for (let rate = benchStart(); rate <= 1_280_000; rate *= 2) {
    const offered = await passes(rig, { size, rate });
    if (offered !== null) good = offered;
    else {
      bad = rate;
      break;
    }
  }
  if (!bad) return good;
  let lo = good;
  let hi = bad;
  for (let i = 0, steps = benchBisect(); i < steps && hi - lo > hi * 0.03; i++) {
    const mid = Math.round((lo + hi) / 2);
    const offered = await passes(rig, { size, rate: mid });
    if (offered !== null) lo = Math.max(lo, offered);
    else hi = mid;
  }
  return lo;
}

export interface Measured {
  /** Highest rate with loss <= LOSS_LIMIT, by datagram size. */
  readonly rates: Map<number, number>;
  /** One-way delay at DELAY_RATE datagrams/s of 100 B, microseconds, as measured (not minus anything). */
  readonly delay: { p50: number; p99: number };
  /** CPU time of the relaying process per datagram delivered at CPU_RATE, microseconds, by size (paths with `cpu`). */
  readonly cpu: Map<number, number>;
}

/**
 * Starts `path`, finds its highest rate for each size (printing a line for each), takes its delay at DELAY_RATE,
 * and stops it and its sinks whatever happens. `sizes` may be empty: then only the delay is taken.
 */
export async function measure(path: Path, options: { sizes: readonly number[]; seconds: number }) {
  const sinks = Array.from(
    { length: path.participants },
    () => new Sink(openUdp({ host: LO, port: 0 }, { batch: 256 })),
  );
  const running = await path.start(sinks.map((s) => s.socket));
  try {
    const rig: Rig = { to: running.to, sinks, seconds: options.seconds };
    const rates = new Map<number, number>();
    for (const size of options.sizes) {
      const rate = await maxRate(rig, size);
      rates.set(size, rate);
      console.log(
        `  ${path.name.padEnd(15)} ${String(size).padStart(5)} B  ${
          Math.round(rate).toString().padStart(8)
        }/s`,
      );
    }
    const cpu = new Map<number, number>();
    if (path.cpu && running.pid !== undefined) {
      for (const size of options.sizes) {
        const before = await threadCpuNs(running.pid);
        const c = await trial(rig, { size, rate: CPU_RATE });
        const used = await threadCpuNs(running.pid) - before;
        const perDatagram = used / 1000 / Math.max(1, c.reports[0].received);
        cpu.set(size, perDatagram);
        console.log(
          `  ${path.name.padEnd(15)} ${String(size).padStart(5)} B  ${
            perDatagram.toFixed(2).padStart(8)
          } us CPU per datagram at ${CPU_RATE}/s (loss ${c.loss.toFixed(2)}%)`,
        );
      }
    }
    const t = await trial(rig, { size: 100, rate: DELAY_RATE });
    const d = t.reports[0].delay_us!;
    const measured: Measured = { rates, delay: { p50: d.p50, p99: d.p99 }, cpu };
    return measured;
  } finally {
    await running.stop();
    for (const s of sinks) await s.close();
  }
}
