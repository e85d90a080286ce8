/**
 * UDP data plane benchmark, all paths in one run on one machine. For each datagram size it finds the highest
 * offered rate with loss <= 0.1% (a doubling search, then bisection) through:
 *   direct         probe sender -> receiver, no relay
 *   C relay        a recvmmsg/sendmmsg relay in C (tests/bench/c_relay.c), the native reference
 *   relay fast     edgenode relay role, FFI fast path
 *   relay portable edgenode relay role, Deno.listenDatagram
 *   reflector x10  edgenode reflector sending to 10 participants (rate per participant)
 * and the p50/p99 delay each path adds at 10k datagrams/s. The sender is `edgenode probe send` in its own process;
 * receivers run here on the fast sockets. Prints figures and ratios; exits non-zero only when it could not run.
 *
 *   make bench            all sizes        deno task bench udp        (same)
 *   BENCH_SIZES=100 BENCH_SECONDS=1 make bench   a quicker look
 *   BENCH_PATHS="relay fast" make bench          direct, the C relay and the named paths only
 */
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { readProbe } from "../../lib/probe/packet.ts";
import { nowUs } from "../../lib/probe/run.ts";
import { ProbeStats } from "../../lib/probe/stats.ts";
import { type EdgenodeProcess, startEdgenode, tempConfig } from "../e2e/_process.ts";

const SIZES = (Deno.env.get("BENCH_SIZES") ?? "100,500,1000,1450").split(",").map(Number);
const SECONDS = Number(Deno.env.get("BENCH_SECONDS") ?? "1.5");
const LOSS_LIMIT = 0.1; // percent
const LO = "127.0.0.1";

interface Path {
  name: string;
  /** Starts the path towards `sinks`; returns the address the sender aims at and a stop function. */
  start(sinks: UdpSocket[]): Promise<{ to: string; stop(): Promise<void> }>;
  participants: number;
}

const edgenodePath = (name: string, udp: "fast" | "portable", participants = 1): Path => ({
  name,
  participants,
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
    return { to, stop: () => stopAll(node, config) };
  },
});

async function stopAll(node: EdgenodeProcess, config: AsyncDisposable): Promise<void> {
  await node[Symbol.asyncDispose]();
  await config[Symbol.asyncDispose]();
}

async function buildCRelay(): Promise<string | null> {
  const out = new URL("../../.bench/c_relay", import.meta.url).pathname;
  await Deno.mkdir(new URL("../../.bench/", import.meta.url), { recursive: true });
  try {
    const cc = await new Deno.Command("cc", {
      args: ["-O2", "-o", out, new URL("c_relay.c", import.meta.url).pathname],
    }).output();
    return cc.code === 0 ? out : null;
  } catch {
    return null;
  }
}

function cRelayPath(binary: string): Path {
  return {
    name: "C relay",
    participants: 1,
    async start(sinks) {
      const probe = openUdp({ host: LO, port: 0 });
      const port = probe.local.port;
      await probe.close();
      const child = new Deno.Command(binary, {
        args: [String(port), String(sinks[0].local.port)],
        stderr: "piped",
        stdout: "null",
      }).spawn();
      const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      await reader.read(); // "c_relay listening"
      return {
        to: `${LO}:${port}`,
        async stop() {
          child.kill("SIGKILL");
          await child.status;
          reader.releaseLock();
          await child.stderr.cancel().catch(() => {});
        },
      };
    },
  };
}

const direct: Path = {
  name: "direct",
  participants: 1,
  start: (sinks) => Promise.resolve({ to: `${LO}:${sinks[0].local.port}`, stop: () => Promise.resolve() }),
};

/**
 * A receiving socket read by one loop for its whole life (no timers raced against receives, which would both
 * start a second receive and skew delays); each trial swaps in fresh stats.
 */
class Sink {
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

/** Resolves once the sender is done and no sink has received anything for 300 ms. */
async function quiet(sinks: Sink[], sender: Promise<unknown>): Promise<void> {
  await sender;
  for (;;) {
    const last = Math.max(0, ...sinks.map((s) => s.lastArrival));
    if (performance.now() - last > 300) return;
    await sleep(50);
  }
}

const signed = (n: number) => `${n >= 0 ? "+" : "-"}${Math.abs(n).toFixed(0)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One trial: `rate` datagrams/s of `size` bytes for SECONDS; returns worst loss over sinks and the stats. */
async function trial(to: string, sinks: Sink[], size: number, rate: number) {
  for (const sink of sinks) sink.stats = new ProbeStats();
  const count = Math.max(1000, Math.round(rate * SECONDS));
  const sender = startEdgenode([
    "probe",
    "send",
    "--to",
    to,
    "--size",
    String(size),
    "--rate",
    String(rate),
    "--count",
    String(count),
    "--duration",
    `${SECONDS * 3}s`,
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
async function passes(to: string, sinks: Sink[], size: number, rate: number): Promise<number | null> {
  for (let attempt = 0; attempt < 2; attempt++) {
    const t = await trial(to, sinks, size, rate);
    if (t.loss <= LOSS_LIMIT) return t.offered;
  }
  return null;
}

/** Highest offered rate with loss <= LOSS_LIMIT: doubling from 10k/s, then bisection to within 3%. */
async function maxRate(to: string, sinks: Sink[], size: number): Promise<number> {
  let good = 0;
  let bad = 0;
  for (let rate = 10_000; rate <= 1_280_000; rate *= 2) {
    const offered = await passes(to, sinks, size, rate);
    if (offered !== null) good = offered;
    else {
      bad = rate;
      break;
    }
  }
  if (!bad) return good;
  let lo = good;
  let hi = bad;
  for (let i = 0; i < 5 && hi - lo > hi * 0.03; i++) {
    const mid = Math.round((lo + hi) / 2);
    const offered = await passes(to, sinks, size, mid);
    if (offered !== null) lo = Math.max(lo, offered);
    else hi = mid;
  }
  return lo;
}

async function main(): Promise<number> {
  const cRelay = await buildCRelay();
  const only = Deno.env.get("BENCH_PATHS")?.split(",").map((s) => s.trim());
  const paths: Path[] = [
    direct,
    ...(cRelay ? [cRelayPath(cRelay)] : []),
    edgenodePath("relay fast", "fast"),
    edgenodePath("relay portable", "portable"),
    edgenodePath("reflector x10", "fast", 10),
  ].filter((p) => p === direct || p.name === "C relay" || !only || only.includes(p.name));
  if (!cRelay) console.log("note: no C compiler (cc), so no C relay reference in this run");
  console.log(
    `UDP benchmark: loss limit ${LOSS_LIMIT}%, ${SECONDS} s per trial, ${Deno.build.os}, ${navigator.hardwareConcurrency} cores`,
  );

  const rates = new Map<string, number>();
  const delays = new Map<string, { p50: number; p99: number }>();
  for (const path of paths) {
    const sinks = Array.from(
      { length: path.participants },
      () => new Sink(openUdp({ host: LO, port: 0 }, { batch: 256 })),
    );
    const running = await path.start(sinks.map((s) => s.socket));
    try {
      for (const size of SIZES) {
        const rate = await maxRate(running.to, sinks, size);
        rates.set(`${path.name}|${size}`, rate);
        console.log(
          `  ${path.name.padEnd(15)} ${String(size).padStart(5)} B  ${
            Math.round(rate).toString().padStart(8)
          }/s`,
        );
      }
      const t = await trial(running.to, sinks, 100, 10_000);
      const d = t.reports[0].delay_us!;
      delays.set(path.name, { p50: d.p50, p99: d.p99 });
    } finally {
      await running.stop();
      for (const s of sinks) await s.close();
    }
  }

  console.log(
    `\nHighest rate with loss <= ${LOSS_LIMIT}% (datagrams/s; reflector: to each of 10 participants)`,
  );
  const header = ["path", ...SIZES.map((s) => `${s} B`), ...SIZES.map((s) => `${s} B vs direct`)];
  if (cRelay) header.push(...SIZES.map((s) => `${s} B vs C`));
  console.log(header.join(" | "));
  for (const path of paths) {
    const row = [path.name];
    for (const s of SIZES) row.push(Math.round(rates.get(`${path.name}|${s}`)!).toString());
    for (const s of SIZES) row.push((rates.get(`${path.name}|${s}`)! / rates.get(`direct|${s}`)!).toFixed(2));
    if (cRelay) {
      for (const s of SIZES) {
        row.push((rates.get(`${path.name}|${s}`)! / rates.get(`C relay|${s}`)!).toFixed(2));
      }
    }
    console.log(row.join(" | "));
  }
  console.log("\nDelay added at 10000 datagrams/s of 100 B (one-way, microseconds, minus the direct path)");
  const base = delays.get("direct")!;
  console.log(`direct: p50 ${base.p50.toFixed(0)} us, p99 ${base.p99.toFixed(0)} us (absolute)`);
  for (const path of paths.slice(1)) {
    const d = delays.get(path.name)!;
    console.log(
      `${path.name}: p50 ${signed(d.p50 - base.p50)} us, p99 ${signed(d.p99 - base.p99)} us`,
    );
  }
  return 0;
}

try {
  Deno.exit(await main());
} catch (error) {
  console.error(`udp_bench could not run: ${error instanceof Error ? error.stack : error}`);
  Deno.exit(1);
}
