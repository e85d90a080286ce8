/**
 * The one place numbers are kept. Each component (a relay, a service, an active program, the status server) owns a
 * `CounterSet` with its identifying labels; /status shows a set's `values()` and /metrics renders every set in the
 * Prometheus text format, so the two views cannot disagree.
 */

export type Labels = Readonly<Record<string, string>>;
export type Kind = "counter" | "gauge";

const NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A number that only goes up: counted here, or read from its owner (a socket's own tallies) when rendered. */
export class Counter {
  #value = 0;
  constructor(private readonly read?: () => number) {}
  get value(): number {
    return this.read ? this.read() : this.#value;
  }
  inc(n = 1): void {
    this.#value += n;
  }
}

/** A number that goes up and down, or is read from its owner when rendered. */
export class Gauge {
  #value = 0;
  constructor(private readonly read?: () => number) {}
  get value(): number {
    return this.read ? this.read() : this.#value;
  }
  set(v: number): void {
    this.#value = v;
  }
  inc(n = 1): void {
    this.#value += n;
  }
  dec(n = 1): void {
    this.#value -= n;
  }
}

interface Series {
  readonly kind: Kind;
  readonly name: string;
  readonly help: string;
  readonly metric: Counter | Gauge;
}

/** The counters and gauges of one component. Names are short (`packets_total`); the registry adds the prefix. */
export class CounterSet {
  readonly #series = new Map<string, Series>();

  /** `declare` lets the owning registry refuse a name already used with another kind or help. */
  constructor(
    readonly subsystem: string,
    readonly labels: Labels,
    private readonly declare: (name: string, kind: Kind, help: string) => void = () => {},
  ) {
    for (const key of Object.keys(labels)) {
      if (!NAME.test(key)) throw new Error(`Invalid label name "${key}"`);
    }
  }

  /** A counter; its name must end in `_total` as Prometheus expects. With `read`, its owner keeps the tally. */
  counter(name: string, help: string, read?: () => number): Counter {
    if (!name.endsWith("_total")) throw new Error(`Counter name "${name}" must end in "_total"`);
    return this.#add("counter", name, help, new Counter(read)) as Counter;
  }

  /** A gauge, set by its owner or, with `read`, read from it at render time. */
  gauge(name: string, help: string, read?: () => number): Gauge {
    return this.#add("gauge", name, help, new Gauge(read)) as Gauge;
  }

  /** Current values by short name, `_total` dropped: what /status shows. */
  values(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.#series.values()) out[s.name.replace(/_total$/, "")] = s.metric.value;
    return out;
  }

  series(): Iterable<Series> {
    return this.#series.values();
  }

  #add(kind: Kind, name: string, help: string, metric: Counter | Gauge): Counter | Gauge {
    if (!NAME.test(name)) throw new Error(`Invalid metric name "${name}"`);
    if (this.#series.has(name)) throw new Error(`Metric "${name}" is declared twice in "${this.subsystem}"`);
    this.declare(name, kind, help);
    this.#series.set(name, { kind, name, help, metric });
    return metric;
  }
}

/**
 * One series of a component, declared once: /metrics shows it as `NAME_total` (a counter) or `NAME` (a gauge),
 * /status as `NAME`. `read` takes it from the component's figures; by default the figure of the same name.
 */
export interface Declared<S> {
  readonly help: string;
  /** Default "counter". */
  readonly kind?: Kind;
  readonly read?: (figures: S) => number;
}

/** A component's series by their /status names, in the order /status lists them. */
export type Declarations<S> = Readonly<Record<string, Declared<S>>>;

/**
 * Declares a component's series once (typically as a module constant beside the component), so that its /status
 * figures and its /metrics series cannot disagree or drift apart: publish them with `MetricsRegistry.publish` and
 * show them with `CounterSet.values()` or, without a registry, `figuresOf`.
 */
export function declareSeries<S>(declarations: Declarations<S>): Declarations<S> {
  for (const [name, d] of Object.entries(declarations)) {
    if (!NAME.test(name) || name.endsWith("_total")) {
      throw new Error(`Invalid series name "${name}" (a counter's "_total" is added when it is published)`);
    }
    if (d.kind !== undefined && d.kind !== "counter" && d.kind !== "gauge") {
      throw new Error(`Series "${name}" has an unknown kind "${d.kind}"`);
    }
  }
  return Object.freeze({ ...declarations });
}

function reader<S>(name: string, d: Declared<S>): (figures: S) => number {
  return d.read ?? ((figures) => (figures as Record<string, number>)[name]);
}

/** The declared figures, read from `figures`, by their /status names. */
export function figuresOf<S>(declarations: Declarations<S>, figures: S): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, d] of Object.entries(declarations)) out[name] = reader(name, d)(figures);
  return out;
}

/** All counter sets of a process, rendered together. */
export class MetricsRegistry {
  readonly #sets = new Set<CounterSet>();
  /** Each live set's identity (subsystem and labels), so that adding one is not a scan of every other. */
  readonly #ids = new IdIndex();
  /** Kind and help of every full metric name ever declared: one name, one meaning. */
  readonly #names = new Map<string, { kind: Kind; help: string }>();

  constructor(readonly namespace = "edgenode") {}

  /**
   * A new set for one component; `subsystem` groups metric names (`edgenode_relay_packets_total`) and `labels`
   * tell components apart, so two live sets may not share both.
   */
  set(subsystem: string, labels: Labels = {}): CounterSet {
    if (!NAME.test(subsystem)) throw new Error(`Invalid subsystem name "${subsystem}"`);
    const id = seriesId(subsystem, labels);
    if (this.#ids.has(id)) {
      throw new Error(
        `A counter set "${subsystem}" with labels ${formatLabels(labels) || "{}"} exists already`,
      );
    }
    const set = new CounterSet(subsystem, labels, (name, kind, help) => {
      const full = `${this.namespace}_${subsystem}_${name}`;
      const known = this.#names.get(full);
      if (!known) this.#names.set(full, { kind, help });
      else if (known.kind !== kind || known.help !== help) {
        throw new Error(`Metric "${full}" is declared as ${known.kind} "${known.help}" already`);
      }
    });
    this.#sets.add(set);
    this.#ids.set(set, id);
    return set;
  }

  /**
   * A new set holding every declared series, read at render time from `figures()` (a function, so that the
   * component may swap what it reads: a thread's shared counters, a remote table's last report).
   */
  publish<S>(subsystem: string, labels: Labels, declarations: Declarations<S>, figures: () => S): CounterSet {
    const set = this.set(subsystem, labels);
    try {
      for (const [name, d] of Object.entries(declarations)) {
        const read = reader(name, d);
        if ((d.kind ?? "counter") === "counter") set.counter(`${name}_total`, d.help, () => read(figures()));
        else set.gauge(name, d.help, () => read(figures()));
      }
    } catch (error) {
      this.remove(set);
      throw error;
    }
    return set;
  }

  /** Forgets a component's numbers (it stopped and its series should disappear). */
  remove(set: CounterSet): void {
    this.#sets.delete(set);
    this.#ids.delete(set);
  }

  /** Prometheus text exposition format 0.0.4. */
  render(): string {
    const byName = new Map<string, { kind: Kind; help: string; lines: string[] }>();
    for (const set of this.#sets) {
      const labels = formatLabels(set.labels);
      for (const s of set.series()) {
        const full = `${this.namespace}_${set.subsystem}_${s.name}`;
        let group = byName.get(full);
        if (!group) byName.set(full, group = { kind: s.kind, help: s.help, lines: [] });
        group.lines.push(`${full}${labels} ${formatValue(s.metric.value)}`);
      }
    }
    let out = "";
    for (const [name, group] of byName) {
      out += `# HELP ${name} ${group.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n`;
      out += `# TYPE ${name} ${group.kind}\n`;
      out += group.lines.join("\n") + "\n";
    }
    return out;
  }
}

function seriesId(subsystem: string, labels: Labels): string {
  return subsystem +
    formatLabels(Object.fromEntries(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1))));
}

function formatLabels(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Set -> identity, and the identities in use (a set removed twice, or never added, changes nothing). */
class IdIndex {
  readonly #bySet = new Map<CounterSet, string>();
  readonly #inUse = new Set<string>();
  has(id: string): boolean {
    return this.#inUse.has(id);
  }
  set(set: CounterSet, id: string): void {
    this.#bySet.set(set, id);
    this.#inUse.add(id);
  }
  delete(set: CounterSet): void {
    const id = this.#bySet.get(set);
    if (id === undefined) return;
    this.#bySet.delete(set);
    this.#inUse.delete(id);
  }
}
