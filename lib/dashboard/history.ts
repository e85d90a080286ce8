/**
 * The last minutes of a box's figures, for the dashboard's charts: every `intervalMs` the box's status is read and
 * its counters become rates (packets/s, bits/s, connections/s, losses/s) and its gauges values, each a series of at
 * most `points` samples in a ring. Memory is bounded whatever the box runs: at most `maxSeries` series (a series
 * that would be one more is not kept, and counted), each a fixed Float64Array.
 *
 * Which figures: per scheduler service, new connections/s, open connections and bits/s both ways; per relay,
 * packets/s and bits/s both ways and drops/s; per reflector, packets/s in and out and participants; per session,
 * packets/s into its DIPRONN_INPUTs and out of its DIPRONN_OUTPUTs, RTP losses/s its counters saw, and each syncer's
 * current delay (ms); per AP, packets/s into its inputs.
 */
import type { Clock, TimerId } from "../core/clock.ts";
import type { Series } from "./charts.ts";

export interface HistoryOptions {
  readonly clock: Clock;
  /** Where the figures come from: the box's /status `roles` object. */
  readonly status: () => Record<string, unknown>;
  readonly intervalMs?: number;
  readonly points?: number;
  readonly maxSeries?: number;
}

export const HISTORY_DEFAULTS = { intervalMs: 2000, points: 300, maxSeries: 512 } as const;

/** How a figure becomes a series value: the rate of a counter (per second), or a gauge as it is. */
type Kind = "rate" | "gauge";

class Ring {
  readonly #t: Float64Array;
  readonly #v: Float64Array;
  #next = 0;
  #size = 0;
  /** The counter's last reading and when (for rates). */
  last: { t: number; value: number } | null = null;
  seenAt = 0;

  constructor(points: number) {
    this.#t = new Float64Array(points);
    this.#v = new Float64Array(points);
  }

  add(t: number, v: number): void {
    this.#t[this.#next] = t;
    this.#v[this.#next] = v;
    this.#next = (this.#next + 1) % this.#t.length;
    this.#size = Math.min(this.#size + 1, this.#t.length);
  }

  points(): [number, number][] {
    const out: [number, number][] = [];
    const n = this.#t.length;
    for (let i = 0; i < this.#size; i++) {
      const k = (this.#next - this.#size + i + n) % n;
      out.push([this.#t[k], this.#v[k]]);
    }
    return out;
  }

  latest(): number | null {
    if (this.#size === 0) return null;
    return this.#v[(this.#next - 1 + this.#t.length) % this.#t.length];
  }
}

export class History {
  readonly #o: Required<HistoryOptions>;
  readonly #series = new Map<string, Ring>();
  #timer: TimerId | undefined;
  #refused = 0;
  #samples = 0;

  constructor(options: HistoryOptions) {
    this.#o = { ...HISTORY_DEFAULTS, ...options };
  }

  /** Samples now and then every `intervalMs` until `stop`. */
  start(): void {
    if (this.#timer !== undefined) return;
    const tick = () => {
      this.sample();
      this.#timer = this.#o.clock.setTimeout(tick, this.#o.intervalMs);
    };
    tick();
  }

  stop(): void {
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Reads the status once and adds a point to every series it names. */
  sample(): void {
    const t = this.#o.clock.now();
    this.#samples++;
    let roles: Record<string, unknown>;
    try {
      roles = this.#o.status();
    } catch {
      return;
    }
    for (const [key, kind, value] of figures(roles)) this.#add(t, key, kind, value);
    // Series whose figure is gone (a stopped session) are dropped after a whole window without a reading.
    const window = this.#o.intervalMs * this.#o.points;
    for (const [key, ring] of this.#series) if (t - ring.seenAt > window) this.#series.delete(key);
  }

  /** Series whose key starts with `prefix` (e.g. "relay/video/"), named by the rest of their key. */
  series(prefix: string): Series[] {
    const out: Series[] = [];
    for (const [key, ring] of this.#series) {
      if (key.startsWith(prefix)) out.push({ name: key.slice(prefix.length), points: ring.points() });
    }
    return out;
  }

  /** The latest value of a series, or null. */
  latest(key: string): number | null {
    return this.#series.get(key)?.latest() ?? null;
  }

  status(): { series: number; max_series: number; refused_series: number; points: number; samples: number } {
    return {
      series: this.#series.size,
      max_series: this.#o.maxSeries,
      refused_series: this.#refused,
      points: this.#o.points,
      samples: this.#samples,
    };
  }

  #add(t: number, key: string, kind: Kind, value: number): void {
    if (!Number.isFinite(value)) return;
    let ring = this.#series.get(key);
    if (!ring) {
      if (this.#series.size >= this.#o.maxSeries) {
        this.#refused++;
        return;
      }
      this.#series.set(key, ring = new Ring(this.#o.points));
    }
    ring.seenAt = t;
    if (kind === "gauge") {
      ring.add(t, value);
      return;
    }
    const last = ring.last;
    ring.last = { t, value };
    // A counter that went back (a restart) starts again; the first reading only sets the base.
    if (last && value >= last.value && t > last.t) ring.add(t, ((value - last.value) * 1000) / (t - last.t));
  }
}

type Figure = [key: string, kind: Kind, value: number];

const num = (v: unknown): number => (typeof v === "number" ? v : NaN);
const obj = (v: unknown): Record<string, unknown> =>
  v && typeof v === "object" && !Array.isArray(v) ? v as Record<string, unknown> : {};
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
/** A name as it stands inside a series key (the key's parts are split by "/"); the page builds keys with it too. */
export const keyPart = (s: unknown): string => String(s).replaceAll("/", "_").slice(0, 128);

/** The figures the dashboard charts, from a status `roles` object. */
export function figures(roles: Record<string, unknown>): Figure[] {
  const out: Figure[] = [];
  const scheduler = obj(roles.scheduler);
  for (const [name, s] of Object.entries(obj(scheduler.services))) {
    const svc = obj(s);
    const k = `scheduler/${keyPart(name)}/`;
    out.push([`${k}connections/s`, "rate", num(svc.accepted)]);
    out.push([`${k}open`, "gauge", num(svc.open_connections)]);
    out.push([`${k}bits/s in`, "rate", num(svc.bytes_in) * 8]);
    out.push([`${k}bits/s out`, "rate", num(svc.bytes_out) * 8]);
    out.push([`${k}refused/s`, "rate", num(svc.no_server) + num(svc.refused_limit) + num(svc.queue_full)]);
  }
  const relay = obj(roles.relay);
  for (const [name, r] of Object.entries(obj(relay.relays))) {
    const rel = obj(r);
    const k = `relay/${keyPart(name)}/`;
    out.push([`${k}packets/s in`, "rate", num(rel.rx_packets)]);
    out.push([`${k}packets/s out`, "rate", num(rel.tx_packets)]);
    out.push([`${k}bits/s in`, "rate", num(rel.rx_bytes) * 8]);
    out.push([`${k}bits/s out`, "rate", num(rel.tx_bytes) * 8]);
    out.push([`${k}dropped/s`, "rate", num(rel.tx_dropped) + num(rel.truncated)]);
  }
  for (const [name, r] of Object.entries(obj(relay.reflectors))) {
    const ref = obj(r);
    const data = obj(obj(ref.sockets).data);
    const k = `reflector/${keyPart(name)}/`;
    out.push([`${k}packets/s in`, "rate", num(data.rx_packets)]);
    out.push([`${k}packets/s out`, "rate", num(data.tx_packets)]);
    out.push([`${k}participants`, "gauge", arr(ref.participants).length]);
  }
  const node = obj(roles.node);
  for (const [name, s] of Object.entries(obj(node.sessions))) {
    const session = obj(s);
    const k = `session/${keyPart(name)}/`;
    let inPackets = 0;
    for (const sock of arr(session.sockets)) inPackets += num(obj(sock).rx_packets) || 0;
    let outPackets = 0;
    let lost = 0;
    for (const a of arr(session.aps)) {
      const ap = obj(a);
      for (const o of arr(ap.outputs)) {
        const output = obj(o);
        if (arr(output.to).some((t) => String(t).startsWith("DIPRONN_OUTPUT"))) {
          outPackets += num(output.packets) || 0;
        }
      }
      lost += num(obj(obj(ap.counted).rtp).lost) || 0;
      // Per AP: datagrams/s through its inputs (bounded with every other series by maxSeries).
      const apIn = arr(ap.inputs).reduce((t: number, p) => t + (num(obj(p).packets) || 0), 0);
      out.push([`ap/${keyPart(name)}/${keyPart(ap.name)}`, "rate", apIn]);
      const delay = num(obj(ap.syncer).delay_ms);
      if (Number.isFinite(delay)) out.push([`${k}delay ms ${keyPart(ap.name)}`, "gauge", delay]);
    }
    out.push([`${k}packets/s in`, "rate", inPackets]);
    out.push([`${k}packets/s out`, "rate", outPackets]);
    out.push([`${k}lost/s`, "rate", lost]);
  }
  return out;
}
