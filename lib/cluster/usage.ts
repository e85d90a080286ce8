/**
 * A node's usage as it reports it to peers (GET /cluster/usage) and placement weighs it: CPU and memory shares,
 * packets and bits per second in and out of its sessions, sessions and APs running, and session ports still free
 * under its budgets. Rates come from counter deltas between two samples on the injected clock; CPU from /proc/stat
 * deltas where there is one, else the load average over the cores.
 */
import type { Clock } from "../core/clock.ts";

export interface NodeUsage {
  readonly name: string;
  /** 0..1: share of all cores busy. */
  readonly cpu: number;
  /** 0..1: share of memory in use. */
  readonly memory: number;
  readonly pps_in: number;
  readonly pps_out: number;
  readonly bps_in: number;
  readonly bps_out: number;
  readonly sessions: number;
  readonly aps: number;
  /** Session ports (DIPRONN_INPUT) still free under the node's budgets. */
  readonly free_ports: number;
}

/** The node's own counts and running totals, as the session table knows them. */
export interface NodeFigures {
  readonly sessions: number;
  readonly aps: number;
  readonly free_ports: number;
  readonly packets_in: number;
  readonly packets_out: number;
  readonly bytes_in: number;
  readonly bytes_out: number;
}

/** Where host figures come from; tests give their own. */
export interface HostReaders {
  /** Cumulative busy and total CPU time (any unit), or null when unknown. */
  readonly cpuTimes: () => { busy: number; total: number } | null;
  /** The 1-minute load average, or null. */
  readonly loadavg: () => number | null;
  readonly cores: number;
  /** Bytes of memory, total and available, or null. */
  readonly memory: () => { total: number; available: number } | null;
}

/** /proc/stat's first line: user nice system idle iowait irq softirq steal ... */
export function parseProcStat(text: string): { busy: number; total: number } | null {
  const m = /^cpu\s+([0-9 ]+)$/m.exec(text);
  if (!m) return null;
  const v = m[1].trim().split(/\s+/).map(Number);
  if (v.length < 4 || v.some((n) => !Number.isFinite(n))) return null;
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = v[3] + (v[4] ?? 0);
  return { busy: total - idle, total };
}

/** The real host: /proc/stat, Deno.loadavg(), Deno.systemMemoryInfo(); each null where not permitted. */
export function systemHost(): HostReaders {
  const attempt = <T>(fn: () => T): T | null => {
    try {
      return fn();
    } catch {
      return null;
    }
  };
  return {
    cpuTimes: () => attempt(() => parseProcStat(Deno.readTextFileSync("/proc/stat"))),
    loadavg: () => attempt(() => Deno.loadavg()[0]),
    cores: navigator.hardwareConcurrency || 1,
    memory: () =>
      attempt(() => {
        const m = Deno.systemMemoryInfo();
        return { total: m.total, available: m.available };
      }),
  };
}

const clamp01 = (x: number) => Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0;

/** Rates below this interval are not worth a new baseline: the previous rates stand. */
const MIN_INTERVAL_MS = 250;

interface Sample {
  readonly at: number;
  readonly figures: NodeFigures;
  readonly cpu: { busy: number; total: number } | null;
}

/** Usage from successive samples; keep one per node. */
export class UsageSampler {
  #last: Sample | null = null;
  #rates = { pps_in: 0, pps_out: 0, bps_in: 0, bps_out: 0, cpu: null as number | null };

  constructor(
    private readonly name: string,
    private readonly clock: Clock,
    private readonly figures: () => NodeFigures,
    private readonly host: HostReaders = systemHost(),
  ) {
    // The baseline: the first answer then has CPU and rates over a real interval, not the load average's minute.
    this.sample();
  }

  sample(): NodeUsage {
    const now = this.clock.now();
    const figures = this.figures();
    const cpuTimes = this.host.cpuTimes();
    const last = this.#last;
    if (!last) {
      this.#last = { at: now, figures, cpu: cpuTimes };
    } else if (now - last.at >= MIN_INTERVAL_MS) {
      const s = (now - last.at) / 1000;
      const rate = (a: number, b: number) => Math.max(0, (a - b) / s);
      const f = figures, p = last.figures;
      let cpu: number | null = null;
      if (cpuTimes && last.cpu && cpuTimes.total > last.cpu.total) {
        cpu = (cpuTimes.busy - last.cpu.busy) / (cpuTimes.total - last.cpu.total);
      }
      this.#rates = {
        pps_in: rate(f.packets_in, p.packets_in),
        pps_out: rate(f.packets_out, p.packets_out),
        bps_in: rate(f.bytes_in, p.bytes_in) * 8,
        bps_out: rate(f.bytes_out, p.bytes_out) * 8,
        cpu,
      };
      this.#last = { at: now, figures, cpu: cpuTimes };
    }
    const load = this.host.loadavg();
    const cpu = this.#rates.cpu ?? (load === null ? 0 : load / Math.max(1, this.host.cores));
    const mem = this.host.memory();
    return {
      name: this.name,
      cpu: clamp01(cpu),
      memory: mem && mem.total > 0 ? clamp01((mem.total - mem.available) / mem.total) : 0,
      pps_in: this.#rates.pps_in,
      pps_out: this.#rates.pps_out,
      bps_in: this.#rates.bps_in,
      bps_out: this.#rates.bps_out,
      sessions: figures.sessions,
      aps: figures.aps,
      free_ports: figures.free_ports,
    };
  }
}

const NUMBER_FIELDS = [
  "cpu",
  "memory",
  "pps_in",
  "pps_out",
  "bps_in",
  "bps_out",
  "sessions",
  "aps",
  "free_ports",
] as const;

/** A peer's usage answer checked field by field; a message when it is not one. */
export function parseUsage(value: unknown, expectedName: string): NodeUsage | string {
  if (typeof value !== "object" || value === null) return "usage is not an object";
  const v = value as Record<string, unknown>;
  if (v.name !== expectedName) return `usage names node "${String(v.name)}", not "${expectedName}"`;
  const out: Record<string, unknown> = { name: expectedName };
  for (const k of NUMBER_FIELDS) {
    const n = v[k];
    if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return `usage field ${k} is not a number >= 0`;
    out[k] = k === "cpu" || k === "memory" ? Math.min(1, n) : n;
  }
  return out as unknown as NodeUsage;
}
