/**
 * UDP data plane benchmark, all paths in one run on one machine. For each datagram size it finds the highest
 * offered rate with loss <= 0.1% (a doubling search, then bisection) through:
 *   direct         probe sender -> receiver, no relay
 *   C relay        a recvmmsg/sendmmsg relay in C (tests/bench/c_relay.c), the native reference
 *   C relay GSO    the same, sending runs of one size as UDP GSO messages as the edgenode fast path does
 *   relay fast     edgenode relay role, FFI fast path
 *   relay portable edgenode relay role, Deno.listenDatagram
 *   reflector x10  edgenode reflector sending to 10 participants (rate per participant)
 * the p50/p99 delay each path adds at 10k datagrams/s, and the CPU time the C relays and the fast relay spend per
 * datagram at a fixed 50k/s (a steadier measure of their cost than the highest rate, which moves with whatever else
 * the two cores run). The sender is `edgenode probe send` in its own process;
 * receivers run here on the fast sockets. Prints figures and ratios; exits non-zero only when it could not run.
 *
 * Figures: highest loss-free datagrams/s per path and size, with ratios to direct and to both C relays; CPU
 * microseconds per datagram at 50k/s (C relays, relay fast) with speed ratios to C; delay added at 10k/s.
 *
 *   make bench / deno task bench udp   quick: 100 and 1450 B, 1 s trials, from 40k/s, 3 bisection steps, 1 round (~3.5 min)
 *   BENCH_FULL=1 deno task bench udp   full: 100, 500, 1000 and 1450 B, 1.5 s trials, 5 steps, 2 rounds (~26 min)
 *   BENCH_SIZES=100 BENCH_SECONDS=1 BENCH_ROUNDS=1 BENCH_BISECT=2   any part of either, by hand
 *   BENCH_PATHS="relay fast" make bench          direct, the C relays and the named paths only
 */
import { openUdp } from "../../lib/net/udp.ts";
import { announce, benchNumber } from "./_mode.ts";
import {
  benchSeconds,
  benchSizes,
  CPU_RATE,
  DELAY_RATE,
  direct,
  LO,
  LOSS_LIMIT,
  measure,
  type Path,
  relayRolePath,
  signed,
} from "./_udp_rate.ts";

const SIZES = benchSizes("100,1450", "100,500,1000,1450");
const SECONDS = benchSeconds();
/** Rounds (BENCH_ROUNDS; quick 1, full 2): each path's figures are its best over the rounds. */
const ROUNDS = Math.max(1, benchNumber("BENCH_ROUNDS", 1, 2));

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

function cRelayPath(binary: string, gso: boolean): Path {
  return {
    name: gso ? "C relay GSO" : "C relay",
    participants: 1,
    cpu: true,
    async start(sinks) {
      const probe = openUdp({ host: LO, port: 0 });
      const port = probe.local.port;
      await probe.close();
      const child = new Deno.Command(binary, {
        args: [String(port), String(sinks[0].local.port), ...(gso ? ["gso"] : [])],
        stderr: "piped",
        stdout: "null",
      }).spawn();
      const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      await reader.read(); // "c_relay listening"
      return {
        to: `${LO}:${port}`,
        pid: child.pid,
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

async function main(): Promise<number> {
  announce(
    "udp_bench",
    "loss-free datagrams/s per path and size (vs direct, vs C relays), CPU us per datagram at 50k/s, delay at 10k/s",
  );
  const cRelay = await buildCRelay();
  const only = Deno.env.get("BENCH_PATHS")?.split(",").map((s) => s.trim());
  const paths: Path[] = [
    direct,
    ...(cRelay ? [cRelayPath(cRelay, false), cRelayPath(cRelay, true)] : []),
    relayRolePath("relay fast", "fast"),
    relayRolePath("relay portable", "portable"),
    relayRolePath("reflector x10", "fast", 10),
  ].filter((p) => p === direct || p.name.startsWith("C relay") || !only || only.includes(p.name));
  if (!cRelay) console.log("note: no C compiler (cc), so no C relay reference in this run");
  console.log(
    `UDP benchmark: loss limit ${LOSS_LIMIT}%, ${SECONDS} s per trial, best of ${ROUNDS} round(s), ${Deno.build.os}, ${navigator.hardwareConcurrency} cores`,
  );

  // Other tenants of the machine come and go over minutes, so one pass would favour whichever path ran in a quiet
  // spell. Every path runs once per round, in the reverse order of the round before, and keeps its best figures.
  const rates = new Map<string, number>();
  const delays = new Map<string, { p50: number; p99: number }>();
  const cpu = new Map<string, number>();
  for (let round = 1; round <= ROUNDS; round++) {
    if (ROUNDS > 1) console.log(`round ${round} of ${ROUNDS}`);
    for (const path of round % 2 ? paths : [...paths].reverse()) {
      const measured = await measure(path, { sizes: SIZES, seconds: SECONDS });
      for (const [size, rate] of measured.rates) {
        const key = `${path.name}|${size}`;
        rates.set(key, Math.max(rate, rates.get(key) ?? 0));
      }
      for (const [size, us] of measured.cpu) {
        const key = `${path.name}|${size}`;
        cpu.set(key, Math.min(us, cpu.get(key) ?? Infinity));
      }
      const best = delays.get(path.name);
      if (!best || measured.delay.p50 < best.p50) delays.set(path.name, measured.delay);
    }
  }

  console.log(
    `\nHighest rate with loss <= ${LOSS_LIMIT}% (datagrams/s; reflector: to each of 10 participants)`,
  );
  const header = ["path", ...SIZES.map((s) => `${s} B`), ...SIZES.map((s) => `${s} B vs direct`)];
  if (cRelay) {
    header.push(...SIZES.map((s) => `${s} B vs C`), ...SIZES.map((s) => `${s} B vs C GSO`));
  }
  console.log(header.join(" | "));
  for (const path of paths) {
    const row = [path.name];
    for (const s of SIZES) row.push(Math.round(rates.get(`${path.name}|${s}`)!).toString());
    for (const s of SIZES) row.push((rates.get(`${path.name}|${s}`)! / rates.get(`direct|${s}`)!).toFixed(2));
    if (cRelay) {
      for (const c of ["C relay", "C relay GSO"]) {
        for (const s of SIZES) {
          row.push((rates.get(`${path.name}|${s}`)! / rates.get(`${c}|${s}`)!).toFixed(2));
        }
      }
    }
    console.log(row.join(" | "));
  }
  const cpuPaths = paths.filter((p) => SIZES.every((s) => cpu.has(`${p.name}|${s}`)));
  if (cpuPaths.length) {
    console.log(
      `\nCPU time of the relaying process (all its threads) per datagram at ${CPU_RATE}/s (microseconds; lowest over rounds)`,
    );
    const head = ["path", ...SIZES.map((s) => `${s} B`)];
    if (cRelay) {
      head.push(...SIZES.map((s) => `${s} B speed vs C`), ...SIZES.map((s) => `${s} B speed vs C GSO`));
    }
    console.log(head.join(" | "));
    for (const path of cpuPaths) {
      const row = [path.name, ...SIZES.map((s) => cpu.get(`${path.name}|${s}`)!.toFixed(2))];
      // Speed per CPU second relative to the C relay: C's cost over this path's cost.
      if (cRelay) {
        for (const c of ["C relay", "C relay GSO"]) {
          for (const s of SIZES) row.push((cpu.get(`${c}|${s}`)! / cpu.get(`${path.name}|${s}`)!).toFixed(2));
        }
      }
      console.log(row.join(" | "));
    }
  }
  console.log(
    `\nDelay added at ${DELAY_RATE} datagrams/s of 100 B (one-way, microseconds, minus the direct path)`,
  );
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
