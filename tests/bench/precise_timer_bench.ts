/**
 * How precisely lib/core/precise_timer.ts fires, and what its waiting costs, on this machine (run it while the
 * machine does its usual work: the figures are what a syncer gets). Three ways to wait, each tried on:
 *   sparse   random waits of 0.5..20.5 ms one after another, tolerance 50 µs (a syncer with sparse traffic)
 *   dense    a firing 1 ms after the last one, tolerance 250 µs (a syncer's release per millisecond: its precision
 *            0.001 / 4), for 2 s
 * ways: `setTimeout` alone (the exact fractional delay), PreciseTimer spinning its last LEAD_MS + 1 ms on
 * setImmediate turns, PreciseTimer sleeping them (Sleeper: libc usleep through FFI on Deno's blocking pool).
 * Prints, per way and case: the firing error (fired - armed time) p50 / p90 / p99 / max in µs, the share within
 * ±0.5 ms, and the CPU the process used meanwhile (% of one core, user + system).
 *
 * Figures of two quick runs are in the header of lib/core/precise_timer.ts.
 *
 *   deno task bench precise_timer            quick (200 sparse waits)
 *   BENCH_FULL=1 deno task bench precise_timer    1000 sparse waits, dense for 5 s
 */
import process from "node:process";
import { systemClock } from "../../lib/core/clock.ts";
import { PreciseTimer, Sleeper } from "../../lib/core/precise_timer.ts";
import { announce, benchNumber } from "./_mode.ts";

const SPARSE = benchNumber("BENCH_WAITS", 200, 1000);
const DENSE_S = benchNumber("BENCH_SECONDS", 2, 5);

type Way = "setTimeout" | "spin" | "sleep";

function waiter(way: Way, toleranceUs: number, sleeper: Sleeper | null) {
  return (atUs: number, fn: () => void) => {
    if (way === "setTimeout") {
      systemClock.setTimeout(fn, Math.max(0, (atUs - systemClock.nowUs()) / 1000));
      return;
    }
    new PreciseTimer(systemClock, fn, { toleranceUs, sleeper: way === "sleep" ? sleeper : null }).arm(atUs);
  };
}

function summary(name: string, errors: number[], cpuUs: number, wallUs: number): string {
  const e = errors.toSorted((a, b) => a - b);
  const q = (p: number) => Math.round(e[Math.min(e.length - 1, Math.floor(p * e.length))]);
  const within = e.filter((x) => Math.abs(x) <= 500).length / e.length;
  return `  ${name.padEnd(24)} n ${String(e.length).padStart(5)}  error µs p50 ${q(0.5)} p90 ${q(0.9)} p99 ${
    q(0.99)
  } max ${Math.round(e[e.length - 1])}  within ±0.5 ms ${(within * 100).toFixed(1)}%  CPU ${
    ((cpuUs / wallUs) * 100).toFixed(0)
  }% of a core`;
}

function cpuNow(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

async function sparse(way: Way, sleeper: Sleeper | null): Promise<string> {
  const wait = waiter(way, 50, sleeper);
  const errors: number[] = [];
  const cpu0 = cpuNow();
  const t0 = systemClock.nowUs();
  for (let i = 0; i < SPARSE; i++) {
    const at = systemClock.nowUs() + 500 + Math.random() * 20_000;
    await new Promise<void>((resolve) =>
      wait(at, () => {
        errors.push(systemClock.nowUs() - at);
        resolve();
      })
    );
  }
  return summary(`${way}, sparse`, errors, cpuNow() - cpu0, systemClock.nowUs() - t0);
}

async function dense(way: Way, sleeper: Sleeper | null): Promise<string> {
  const wait = waiter(way, 250, sleeper);
  const errors: number[] = [];
  const cpu0 = cpuNow();
  const t0 = systemClock.nowUs();
  let at = t0 + 1000;
  while (systemClock.nowUs() - t0 < DENSE_S * 1e6) {
    await new Promise<void>((resolve) =>
      wait(at, () => {
        errors.push(systemClock.nowUs() - at);
        resolve();
      })
    );
    at = Math.max(at + 1000, systemClock.nowUs() + 300);
  }
  return summary(`${way}, dense 1/ms`, errors, cpuNow() - cpu0, systemClock.nowUs() - t0);
}

announce(
  "precise_timer_bench",
  "firing error p50/p90/p99/max (µs) and CPU of setTimeout, PreciseTimer spinning and PreciseTimer sleeping",
);
const sleeper = Sleeper.open();
if (!sleeper) console.log("  no Sleeper here (FFI not granted or not Linux): the sleep rows spin");
try {
  for (const way of ["setTimeout", "spin", "sleep"] as const) console.log(await sparse(way, sleeper));
  for (const way of ["setTimeout", "spin", "sleep"] as const) console.log(await dense(way, sleeper));
} finally {
  await sleeper?.close();
}
