/**
 * `probe sweep`: the seed report's behaviour tests as one run. For each packet size, the rate rises step by step
 * against a target (a relay, a reflector's data port, a session input) while receivers in this process measure
 * loss and delay; a size ends once any receiver loses more than the limit. The result names, per size, the maximal
 * throughput: the highest offered rate at which every receiver's loss stayed within the limit.
 */
import { formatHostPort, type HostPort } from "../net/address.ts";
import type { UdpImpl } from "../net/udp.ts";
import { probeRecv, probeSend, type SendReport } from "./run.ts";
import type { ProbeReport } from "./stats.ts";
import type { ThroughputTable } from "./report_tables.ts";

export interface SweepReceiver {
  /** `recv`: a probe receiver listening at `address`; `join`: a participant of the reflector registered there. */
  readonly kind: "recv" | "join";
  readonly address: HostPort;
}

export interface SweepOptions {
  readonly to: HostPort;
  readonly receivers: readonly SweepReceiver[];
  /** UDP payload bytes of each size swept, in order. */
  readonly sizes: readonly number[];
  /** The rates of each size's steps, datagrams/s (sweepRates). */
  readonly rates: readonly number[];
  /** The --max-rate the rates were capped at (the sweep then says it ended there rather than by its steps). */
  readonly maxRate: number | null;
  readonly stepMs: number;
  /** Loss in percent above which a size ends. */
  readonly lossLimit: number;
  /** Send RTP (payload type 96, 90 kHz, sender reports to port + 1) as `probe send --rtp` does. */
  readonly rtp: boolean;
  readonly impl: UdpImpl;
}

/** What one receiver measured in one step. Loss is counted against what the sender sent, not what arrived last. */
export interface ReceiverFigures {
  readonly received: number;
  readonly lost: number;
  readonly loss_percent: number;
  readonly delay_p50_ms: number | null;
  readonly delay_p99_ms: number | null;
  /** Distinct datagrams received, in Mb/s of UDP payload over the step's sending time. */
  readonly mbit_per_s: number;
}

export interface SweepStep {
  readonly rate: number;
  /** rate x size x 8 / 1e6: UDP payload. */
  readonly offered_mbit_per_s: number;
  readonly sent: number;
  /** What the sender achieved (below offered when it could not keep the pace). */
  readonly sent_mbit_per_s: number;
  readonly tx_dropped: number;
  /** One per receiver, in the order of SweepResult.receivers. */
  readonly receivers: readonly ReceiverFigures[];
}

export type SweepEnd = "loss" | "steps" | "max-rate" | "aborted";

export interface MaxThroughput {
  /** Per receiver: the highest offered Mb/s at which its loss was within the limit (null: at no step). */
  readonly receivers: readonly (number | null)[];
  /** The highest offered Mb/s at which every receiver's loss was within the limit. */
  readonly all: number | null;
}

export interface SweepSize {
  readonly size: number;
  readonly steps: readonly SweepStep[];
  /** Why the size ended: loss above the limit, or the steps ran out (the maxima are then lower bounds). */
  readonly ended_by: SweepEnd;
  readonly max_throughput: MaxThroughput;
}

export interface SweepResult {
  readonly version: 1;
  readonly started: string;
  readonly to: string;
  /** Names of the receivers: "recv 127.0.0.1:5004", "join 127.0.0.1:12345". */
  readonly receivers: readonly string[];
  readonly loss_limit_percent: number;
  readonly step_s: number;
  readonly rtp: boolean;
  readonly sizes: readonly SweepSize[];
}

/** Names of receivers: "recv 127.0.0.1:5004", "join 127.0.0.1:12345", and "#2" on a second participant of one. */
export function receiverNames(receivers: readonly SweepReceiver[]): string[] {
  const seen = new Map<string, number>();
  return receivers.map((r) => {
    const name = `${r.kind} ${formatHostPort(r.address)}`;
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    return n > 1 ? `${name} #${n}` : name;
  });
}

/**
 * The rates of one size's steps: `from`, times `factor` at each step, at most `steps` of them; with `maxRate`, the
 * step that would pass it is taken at `maxRate` and is the last.
 */
export function sweepRates(from: number, factor: number, steps: number, maxRate: number | null): number[] {
  const rates: number[] = [];
  let rate = from;
  while (rates.length < steps) {
    if (maxRate !== null && rate >= maxRate) {
      if (rates.at(-1) !== maxRate) rates.push(maxRate);
      break;
    }
    rates.push(Math.round(rate));
    rate *= factor;
  }
  return rates;
}

/** The factor that spreads `steps` steps from `from` to `maxRate` (for `--steps N --max-rate R` without `--factor`). */
export function spreadFactor(from: number, maxRate: number, steps: number): number {
  return steps > 1 ? (maxRate / from) ** (1 / (steps - 1)) : 2;
}

export const offeredMbit = (rate: number, size: number): number => (rate * size * 8) / 1e6;

/** A receiver's figures for a step, from what the sender sent and what the receiver reported. */
export function receiverFigures(sent: SendReport, r: ProbeReport): ReceiverFigures {
  const unique = Math.min(sent.sent, Math.max(0, r.received - r.duplicates));
  const lost = sent.sent - unique;
  return {
    received: unique,
    lost,
    loss_percent: sent.sent > 0 ? (lost / sent.sent) * 100 : 0,
    delay_p50_ms: r.delay_us ? r.delay_us.p50 / 1000 : null,
    delay_p99_ms: r.delay_us ? r.delay_us.p99 / 1000 : null,
    // What arrived over the sender's time (the receiver's own figure spans first to last arrival only).
    mbit_per_s: sent.sent > 0 ? (sent.mbit_per_s * unique) / sent.sent : 0,
  };
}

/** The maximal throughputs of one size's steps for `receivers` receivers. */
export function maxThroughput(
  steps: readonly SweepStep[],
  lossLimit: number,
  receivers: number,
): MaxThroughput {
  const best = (ok: (s: SweepStep) => boolean) =>
    steps.filter(ok).reduce<number | null>((m, s) => Math.max(m ?? 0, s.offered_mbit_per_s), null);
  return {
    receivers: Array.from(
      { length: receivers },
      (_, i) => best((s) => s.receivers[i].loss_percent <= lossLimit),
    ),
    all: best((s) => s.receivers.every((r) => r.loss_percent <= lossLimit)),
  };
}

/** The maximal throughputs of a sweep as a table like the report's (rows: sizes; columns: receivers, then all). */
export function throughputTable(result: SweepResult, title: string): ThroughputTable {
  return {
    title,
    columns: [...result.receivers, "all"],
    rows: new Map(result.sizes.map((s) => [s.size, [...s.max_throughput.receivers, s.max_throughput.all]])),
  };
}

/** Checks that `value` (parsed from a file) has what a compared sweep needs; returns it or a reason. */
export function asSweepResult(value: unknown): SweepResult | string {
  const v = value as Partial<SweepResult> | null;
  if (typeof v !== "object" || v === null || v.version !== 1) return 'not a sweep.json (no "version": 1)';
  if (!Array.isArray(v.receivers) || !Array.isArray(v.sizes)) return "no receivers or sizes";
  for (const s of v.sizes) {
    const m = (s as Partial<SweepSize>)?.max_throughput;
    if (typeof s?.size !== "number" || !m || !Array.isArray(m.receivers)) {
      return "a size without max_throughput";
    }
  }
  return v as SweepResult;
}

export interface SweepRunOptions {
  /** One line per step, as it ends. */
  readonly progress?: (line: string) => void;
  readonly signal?: AbortSignal;
  /** The time the result says it started (ISO 8601); now by default. */
  readonly started?: string;
}

/** How long receivers wait for stragglers after the sender's last datagram, and stop on idle. */
const DRAIN_MS = 500;

/** Runs the sweep: every size, its steps until the loss limit, the rates or a signal end it. */
export async function runSweep(o: SweepOptions, run: SweepRunOptions = {}): Promise<SweepResult> {
  const names = receiverNames(o.receivers);
  // A participant keeps its address across steps: the reflector sees one participant rejoin, not a new one each step.
  const listen = o.receivers.map((r): HostPort =>
    r.kind === "recv" ? r.address : { host: r.address.host.includes(":") ? "::" : "0.0.0.0", port: 0 }
  );
  const sizes: SweepSize[] = [];
  for (const size of o.sizes) {
    const steps: SweepStep[] = [];
    let ended: SweepEnd = o.maxRate !== null && o.rates.at(-1) === o.maxRate ? "max-rate" : "steps";
    for (const rate of o.rates) {
      if (run.signal?.aborted) {
        ended = "aborted";
        break;
      }
      const step = await runStep(o, listen, size, rate, run.signal);
      steps.push(step);
      run.progress?.(progressLine(size, step, names));
      // A step cut short by the signal measured what it sent, but says nothing of the limit.
      if (run.signal?.aborted) {
        ended = "aborted";
        break;
      }
      if (step.receivers.some((r) => r.loss_percent > o.lossLimit)) {
        ended = "loss";
        break;
      }
    }
    sizes.push({
      size,
      steps,
      ended_by: ended,
      max_throughput: maxThroughput(steps, o.lossLimit, names.length),
    });
    if (ended === "aborted") break;
  }
  return {
    version: 1,
    started: run.started ?? new Date().toISOString(),
    to: formatHostPort(o.to),
    receivers: names,
    loss_limit_percent: o.lossLimit,
    step_s: o.stepMs / 1000,
    rtp: o.rtp,
    sizes,
  };
}

async function runStep(
  o: SweepOptions,
  listen: HostPort[],
  size: number,
  rate: number,
  signal: AbortSignal | undefined,
): Promise<SweepStep> {
  const stop = new AbortController();
  const abort = () => stop.abort();
  signal?.addEventListener("abort", abort);
  const ready = o.receivers.map(() => Promise.withResolvers<HostPort>());
  const receiving = o.receivers.map((r, i) =>
    probeRecv({
      listen: listen[i],
      ...(r.kind === "join" ? { join: r.address } : {}),
      // Joining takes up to 5 s; the sweep stops receivers itself once the sender is done.
      durationMs: o.stepMs + 10_000,
      count: 0,
      idleMs: DRAIN_MS,
      impl: o.impl,
      signal: stop.signal,
      ready: (local) => ready[i].resolve(local),
    })
  );
  try {
    // A receiver that fails before it listens (port taken, no reflector) fails the step.
    const locals = await Promise.race([
      Promise.all(ready.map((r) => r.promise)),
      Promise.all(receiving).then((): never => {
        throw new Error("A receiver stopped before it was listening");
      }),
    ]);
    locals.forEach((local, i) => {
      if (o.receivers[i].kind === "join") listen[i] = { host: listen[i].host, port: local.port };
    });
    const sent = await probeSend({
      to: o.to,
      size,
      rate: [rate, rate],
      durationMs: o.stepMs,
      count: 0,
      stream: 1,
      impl: o.impl,
      signal: stop.signal,
      ...(o.rtp
        ? {
          rtp: {
            payloadType: 96,
            clockRate: 90000,
            srIntervalMs: o.to.port < 65535 ? 1000 : 0,
            cname: "edgenode-sweep",
            captureDelayMs: 0,
          },
        }
        : {}),
    });
    const timer = setTimeout(abort, DRAIN_MS);
    let reports: ProbeReport[];
    try {
      reports = await Promise.all(receiving);
    } finally {
      clearTimeout(timer);
    }
    return {
      rate,
      offered_mbit_per_s: offeredMbit(rate, size),
      sent: sent.sent,
      sent_mbit_per_s: sent.mbit_per_s,
      tx_dropped: sent.tx_dropped,
      receivers: reports.map((r) => receiverFigures(sent, r)),
    };
  } finally {
    stop.abort();
    signal?.removeEventListener("abort", abort);
    await Promise.allSettled(receiving);
  }
}

function progressLine(size: number, s: SweepStep, names: readonly string[]): string {
  const each = s.receivers.map((r, i) =>
    `${names[i]}: loss ${r.loss_percent.toFixed(3)}%, p99 ${
      r.delay_p99_ms === null ? "-" : r.delay_p99_ms.toFixed(2)
    } ms`
  );
  return `probe sweep: ${size} B at ${s.rate}/s, ${s.offered_mbit_per_s.toFixed(1)} Mb/s offered; ${
    each.join("; ")
  }`;
}
