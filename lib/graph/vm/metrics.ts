/**
 * The metric sets a VM group's worker reports (a reflector's, its sockets' and its participants'), shown as sets of
 * the node's registry. What a worker reports is not trusted, since uploaded code may run there: only the subsystems
 * that the core kinds publish in a VM are taken, every set carries the session's and the group's labels whatever the
 * worker said, and a group shows at most `maxSets` sets of at most MAX_SERIES series each. A refused set (another
 * subsystem, a malformed one, one beyond the cap, one the registry refuses) is not shown; `refused` says how many of
 * the last report were, and the first refusal is told.
 */
import { errorMessage } from "../../core/errors.ts";
import type { CounterSet, Labels, MetricsRegistry } from "../../core/metrics.ts";
import type { MetricSnapshot } from "./protocol.ts";

/** The subsystems of the sets the core kinds publish in a VM: the reflector's. */
export const MIRRORED_SUBSYSTEMS: ReadonlySet<string> = new Set([
  "reflector",
  "reflector_socket",
]);
/** Most sets one group shows (a reflector and its sockets have a few each). */
export const MAX_MIRRORED_SETS = 20_000;
/** Most series in one set (the reflector's own set has 11) and labels on one. */
const MAX_SERIES = 32;
const MAX_LABELS = 8;

export interface MetricMirrorOptions {
  /** Labels every set gets, over what the worker said: the session and the group. */
  readonly labels: Labels;
  readonly maxSets?: number;
  /** Told of the first refused set only, so a worker cannot flood the log. */
  onRefused(subsystem: string, why: string): void;
}

export class MetricMirror {
  /** Sets of the last report that are not shown. */
  refused = 0;
  readonly #shown = new Map<string, { set: CounterSet; values: Map<string, number> }>();
  /** Sets the registry refused (a name clash): not tried again, and counted against the cap. */
  readonly #clashes = new Set<string>();
  #told = false;

  constructor(private readonly registry: MetricsRegistry, private readonly options: MetricMirrorOptions) {}

  /** Shows the sets of a worker's report (all its live sets); those it no longer reports go first. */
  update(metrics: readonly MetricSnapshot[]): void {
    const max = this.options.maxSets ?? MAX_MIRRORED_SETS;
    let refused = 0;
    const refuse = (subsystem: unknown, why: string) => {
      refused++;
      if (this.#told) return;
      this.#told = true;
      this.options.onRefused(String(subsystem).slice(0, 64), why);
    };
    const reported = new Map<string, { m: MetricSnapshot; labels: Labels }>();
    for (const m of metrics) {
      const why = malformed(m);
      if (why) refuse(m?.subsystem, why);
      else {
        const labels = { ...m.labels, ...this.options.labels };
        reported.set(JSON.stringify([m.subsystem, labels]), { m, labels });
      }
    }
    for (const [key, shown] of this.#shown) {
      if (reported.has(key)) continue;
      this.registry.remove(shown.set);
      this.#shown.delete(key);
    }
    for (const key of this.#clashes) if (!reported.has(key)) this.#clashes.delete(key);
    for (const [key, { m, labels }] of reported) {
      if (this.#clashes.has(key)) {
        refused++;
        continue;
      }
      let shown = this.#shown.get(key);
      if (!shown) {
        if (this.#shown.size + this.#clashes.size >= max) {
          refuse(m.subsystem, `the group shows ${max} sets already`);
          continue;
        }
        const values = new Map<string, number>();
        let set: CounterSet | null = null;
        try {
          set = this.registry.set(m.subsystem, labels);
          for (const s of m.series) {
            values.set(s.name, s.value);
            const read = () => values.get(s.name)!;
            if (s.kind === "counter") set.counter(s.name, s.help, read);
            else set.gauge(s.name, s.help, read);
          }
        } catch (error) {
          if (set) this.registry.remove(set);
          this.#clashes.add(key);
          refuse(m.subsystem, errorMessage(error));
          continue;
        }
        this.#shown.set(key, shown = { set, values });
      }
      // Only the series the set was made with: a later report cannot grow it.
      for (const s of m.series) if (shown.values.has(s.name)) shown.values.set(s.name, s.value);
    }
    this.refused = refused;
  }

  /** Takes every shown set out of the registry (the group ended). */
  clear(): void {
    for (const shown of this.#shown.values()) this.registry.remove(shown.set);
    this.#shown.clear();
  }
}

/** Why a reported set cannot be shown, or null: structured cloning carries whatever shape a worker made. */
function malformed(m: MetricSnapshot): string | null {
  if (typeof m !== "object" || m === null) return "not a metric set";
  if (!MIRRORED_SUBSYSTEMS.has(m.subsystem)) return "not a subsystem a VM group may report";
  const labels = typeof m.labels === "object" && m.labels !== null ? Object.values(m.labels) : null;
  if (!labels || labels.length > MAX_LABELS || labels.some((v) => typeof v !== "string")) {
    return "its labels are not a few strings";
  }
  if (!Array.isArray(m.series) || m.series.length > MAX_SERIES) {
    return `not a list of at most ${MAX_SERIES} series`;
  }
  for (const s of m.series) {
    if (
      typeof s !== "object" || s === null || (s.kind !== "counter" && s.kind !== "gauge") ||
      typeof s.name !== "string" || typeof s.help !== "string" || typeof s.value !== "number"
    ) return "a series is malformed";
  }
  return null;
}
