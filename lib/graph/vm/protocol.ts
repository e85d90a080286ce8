/**
 * The messages between the main isolate and a VM group's worker. Batches are bare ArrayBuffers made by codec.ts
 * and posted with the buffer transferred; everything else is a small structured-cloned object with a `type`.
 * Batches in each direction are bounded: what is posted and not yet taken may not exceed LINK_LIMIT_BYTES (more is
 * dropped and counted, as a full socket buffer would), and the receiver acknowledges what it took in steps.
 */
import type { LogFields, LogLevel } from "../../core/logger.ts";
import { type CounterSet, type Labels, MetricsRegistry } from "../../core/metrics.ts";
import type { Registry } from "../../core/registry.ts";
import type { UdpOptions } from "../../net/udp.ts";
import type { PlannedAp, SessionPlan } from "../check.ts";
import type { ElementKind } from "../element.ts";

/** Most bytes of batches posted and not yet taken, each way. */
export const LINK_LIMIT_BYTES = 32 * 1024 * 1024;
/** The receiver acknowledges after taking this many bytes or messages. */
const ACK_BYTES = 1024 * 1024;
const ACK_MESSAGES = 32;

/** A session plan as it crosses to a worker: kinds by name, since functions do not cross. */
export interface PlanDescription extends Omit<SessionPlan, "aps"> {
  readonly aps: readonly (Omit<PlannedAp, "kind"> & { readonly kind: string })[];
}

export function describePlan(plan: SessionPlan): PlanDescription {
  return { ...plan, aps: plan.aps.map((ap) => ({ ...ap, kind: ap.kind.name })) };
}

/**
 * The plan again, its kinds taken from `kinds` by name; throws UnknownNameError for a kind it does not hold among
 * the APs in `group` (the worker's own). An AP outside the group whose kind it does not know (an uploaded program,
 * which only its session has) keeps a stand-in that cannot be created: the worker never runs it.
 */
export function rebuildPlan(
  plan: PlanDescription,
  kinds: Registry<ElementKind>,
  group?: readonly number[],
): SessionPlan {
  const ours = group ? new Set(group) : null;
  return {
    ...plan,
    aps: plan.aps.map((ap, i) => ({
      ...ap,
      kind: ours && !ours.has(i) && !kinds.has(ap.kind) ? standIn(ap.kind) : kinds.get(ap.kind),
    })),
  };
}

function standIn(name: string): ElementKind {
  return {
    name,
    description: "an AP this worker does not run",
    ports: { inputs: { min: 0, max: 0 }, outputs: { min: 0, max: 0 } },
    params: {},
    create() {
      throw new Error(`${name} does not run in this worker`);
    },
  };
}

export interface StartMessage {
  readonly type: "start";
  readonly plan: PlanDescription;
  readonly vm: string;
  /** Indexes of the group's APs in the plan. */
  readonly aps: readonly number[];
  readonly node: { readonly dataDir: string; readonly host: string; readonly udp: UdpOptions };
  readonly logLevel: LogLevel;
  readonly snapshotMs: number;
}

export type ToWorker =
  | ArrayBuffer
  | StartMessage
  | { readonly type: "ack"; readonly bytes: number }
  /** Stop the element of one AP (the main isolate goes through the session in data-flow order). */
  | { readonly type: "stop"; readonly ap: number }
  /** Counters as of now; the answer carries `id` back. */
  | { readonly type: "snapshot"; readonly id: number }
  /** Stop whatever still runs, send a final snapshot, then `closed`. */
  | { readonly type: "close" }
  | EdgeMessage;

/** Between the two halves of a split AP (ElementKind.edge): the main isolate's half and the worker's. */
export interface EdgeMessage {
  readonly type: "edge";
  readonly ap: number;
  readonly message: unknown;
}

/** Counters of one AP: [packets, bytes] per input and per output. */
export interface ApSnapshot {
  readonly ap: number;
  readonly inputs: readonly (readonly [number, number])[];
  readonly outputs: readonly (readonly [number, number])[];
  readonly errors: number;
  readonly status: Record<string, unknown>;
}

/** A counter set of the worker's own registry (a reflector's sockets and participants), by value. */
export interface MetricSnapshot {
  readonly subsystem: string;
  readonly labels: Record<string, string>;
  readonly series: readonly {
    readonly kind: "counter" | "gauge";
    readonly name: string;
    readonly help: string;
    readonly value: number;
  }[];
}

export interface SnapshotMessage {
  readonly type: "snapshot";
  readonly aps: readonly ApSnapshot[];
  readonly metrics: readonly MetricSnapshot[];
  /** Datagrams the worker could not post to the main isolate (the link was full). */
  readonly dropped: number;
  readonly final: boolean;
  /** The request this answers; null for the periodic ones and the final one. */
  readonly id: number | null;
}

export type FromWorker =
  | ArrayBuffer
  | { readonly type: "started" }
  | { readonly type: "failed"; readonly message: string }
  | SnapshotMessage
  | { readonly type: "log"; readonly level: LogLevel; readonly msg: string; readonly fields: LogFields }
  | { readonly type: "ack"; readonly bytes: number }
  | { readonly type: "stopped"; readonly ap: number }
  | { readonly type: "closed" }
  | EdgeMessage;

/** A registry that knows its live sets, so a worker can report them to the main isolate by value. */
export class ReportingRegistry extends MetricsRegistry {
  readonly #live = new Set<CounterSet>();

  override set(subsystem: string, labels: Labels = {}): CounterSet {
    const set = super.set(subsystem, labels);
    this.#live.add(set);
    return set;
  }

  override remove(set: CounterSet): void {
    super.remove(set);
    this.#live.delete(set);
  }

  /** Every live set by value; a set whose value cannot be read is left out rather than fail the snapshot. */
  snapshot(): MetricSnapshot[] {
    return [...this.#live].flatMap((set) => {
      try {
        return [metricSnapshot(set)];
      } catch {
        return [];
      }
    });
  }
}

function metricSnapshot(set: CounterSet): MetricSnapshot {
  return {
    subsystem: set.subsystem,
    labels: { ...set.labels },
    series: [...set.series()].map((s) => ({
      kind: s.kind,
      name: s.name,
      help: s.help,
      value: s.metric.value,
    })),
  };
}

/**
 * Both halves of the batch traffic of one side: sending is bounded by what the other side acknowledged, and
 * receiving acknowledges in steps.
 */
export class BatchLink {
  /** Datagrams not sent because the other side had not taken enough yet. */
  dropped = 0;
  #inFlight = 0;
  #taken = 0;
  #takenMessages = 0;

  constructor(
    private readonly post: (
      message: ArrayBuffer | { type: "ack"; bytes: number },
      transfer?: Transferable[],
    ) => void,
    private readonly limit = LINK_LIMIT_BYTES,
  ) {}

  /** Posts a batch buffer of `datagrams`, transferred; false (and counted) when the link is full. */
  send(buffer: ArrayBuffer, datagrams: number): boolean {
    if (this.#inFlight + buffer.byteLength > this.limit && this.#inFlight > 0) {
      this.dropped += datagrams;
      return false;
    }
    this.#inFlight += buffer.byteLength;
    this.post(buffer, [buffer]);
    return true;
  }

  /** The other side took `bytes`. */
  acked(bytes: number): void {
    this.#inFlight = Math.max(0, this.#inFlight - bytes);
  }

  /** This side took a batch of `bytes`; acknowledges now and then. */
  took(bytes: number): void {
    this.#taken += bytes;
    if (++this.#takenMessages >= ACK_MESSAGES || this.#taken >= ACK_BYTES) {
      this.post({ type: "ack", bytes: this.#taken });
      this.#taken = 0;
      this.#takenMessages = 0;
    }
  }

  get inFlight(): number {
    return this.#inFlight;
  }
}
