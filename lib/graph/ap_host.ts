/**
 * An AP host runs some of a session's APs in one isolate: it creates their elements, starts them sinks first,
 * delivers batches to their inputs and counts every port, and wires each output to its targets. A wire to an AP it
 * runs is a synchronous call in memory; every other wire (an AP in another isolate, a DIPRONN_OUTPUT address) is
 * handed to its owner's `outward`, once per output. The main isolate runs one host for the APs outside any VM group,
 * and each VM group's worker runs one for the group's APs, so both count and wire the same way.
 */
import { errorMessage, StartError } from "../core/errors.ts";
import type { Batch } from "../net/udp.ts";
import type { PlannedAp, SessionPlan, Wire } from "./check.ts";
import type { EdgeLink, Element, NodeServices, Output } from "./element.ts";

/** Counters of one port; in and out alike. */
export interface PortCount {
  readonly name: string;
  packets: number;
  bytes: number;
}

/** One AP of the session as its host (or, for an AP run elsewhere, its last report) knows it. */
export interface ApState {
  readonly plan: PlannedAp;
  element: Element | null;
  readonly inputs: PortCount[];
  readonly outputs: PortCount[];
  /** Exceptions the element threw while handling a batch (the batch is dropped, the session goes on). */
  errors: number;
}

export type Delivery = (batch: Batch, rtcp: boolean) => void;

export interface ApHostOptions {
  readonly plan: SessionPlan;
  readonly node: NodeServices;
  /** Indexes (into `plan.aps`) of the APs this host runs. */
  readonly aps: readonly number[];
  /**
   * Where a batch emitted on output `j` of AP `ap` goes for the `wires` this host does not reach itself; null when
   * nothing has to be done. Asked once per output that has such wires, when the elements are created.
   */
  outward(ap: number, j: number, wires: readonly Wire[]): Delivery | null;
  /**
   * For a split AP (a kind with `edge`, in a VM group), which half this host runs and its link to the other;
   * undefined for an AP that runs whole.
   */
  half?(ap: number): { readonly side: "main" | "worker"; readonly link: EdgeLink } | undefined;
}

export function countBytes(batch: Batch): number {
  let bytes = 0;
  for (let i = 0; i < batch.count; i++) bytes += batch.length(i);
  return bytes;
}

export function newApState(plan: PlannedAp): ApState {
  return {
    plan,
    element: null,
    inputs: plan.inputs.map((i) => ({ name: i.name, packets: 0, bytes: 0 })),
    outputs: plan.outputs.map((o) => ({ name: o.name, packets: 0, bytes: 0 })),
    errors: 0,
  };
}

export class ApHost {
  /** Every AP of the plan by index; only those this host runs get an element. */
  readonly states: readonly ApState[];
  readonly #hosted: readonly number[];
  readonly #runs: ReadonlySet<number>;
  readonly #plan: SessionPlan;
  readonly #node: NodeServices;
  readonly #outward: ApHostOptions["outward"];
  readonly #half: ApHostOptions["half"];
  /** The batch that entered this isolate and its bytes, summed once (see `entering`). */
  readonly #stopped = new Set<number>();
  #entered: Batch | null = null;
  #enteredBytes = 0;

  constructor(options: ApHostOptions) {
    this.#plan = options.plan;
    this.#node = options.node;
    this.#outward = options.outward;
    this.#half = options.half;
    this.#hosted = [...options.aps].sort((a, b) => a - b);
    this.#runs = new Set(this.#hosted);
    this.states = options.plan.aps.map(newApState);
  }

  runs(ap: number): boolean {
    return this.#runs.has(ap);
  }

  /** Creates the elements (nothing is taken yet); an element whose create throws fails as a start would. */
  create(): void {
    for (const i of this.#hosted) {
      const state = this.states[i];
      const plan = state.plan;
      try {
        const half = this.#half?.(i);
        const ctx = {
          name: plan.name,
          session: this.#plan.name,
          params: plan.params as never,
          inputs: plan.inputs.map((input) => input.name),
          outputs: plan.outputs.map((_, j) => this.#output(i, j)),
          outputNames: plan.outputs.map((o) => o.name),
          vm: plan.vm,
          useRtp: this.#plan.useRtp,
          registration: plan.registration,
          node: this.#node,
          clockRates: plan.clockRates,
        };
        state.element = half?.side === "main"
          ? plan.kind.edge!({ ...ctx, edge: half.link })
          : plan.kind.create(half ? { ...ctx, edge: half.link } : ctx);
      } catch (error) {
        throw new StartError(`${plan.name}: ${errorMessage(error)}`);
      }
    }
  }

  /** Starts the elements sinks first, so nothing emits into an element that is not ready; throws StartError. */
  async start(): Promise<void> {
    for (const i of [...this.#hosted].reverse()) {
      const state = this.states[i];
      try {
        await state.element?.start?.();
      } catch (error) {
        // Whatever stops an element from starting (a file it may not write, a port in use) is a start failure.
        const where = state.plan.at ? ` (${state.plan.at})` : "";
        throw new StartError(`${state.plan.name}${where}: ${errorMessage(error)}`, { cause: error });
      }
    }
  }

  /** Runs `fn`, which hands `batch` on, with its bytes already known: a batch is summed once where it enters. */
  entering(batch: Batch, bytes: number, fn: () => void): void {
    const was = this.#entered;
    const wasBytes = this.#enteredBytes;
    this.#entered = batch;
    this.#enteredBytes = bytes;
    try {
      fn();
    } finally {
      this.#entered = was;
      this.#enteredBytes = wasBytes;
    }
  }

  /** Delivers a batch that enters this isolate here (from a socket): `entering` and `deliver` in one call. */
  receive(ap: number, input: number, batch: Batch, rtcp: boolean): void {
    const was = this.#entered;
    const wasBytes = this.#enteredBytes;
    this.#entered = batch;
    this.#enteredBytes = countBytes(batch);
    try {
      this.deliver(ap, input, batch, rtcp);
    } finally {
      this.#entered = was;
      this.#enteredBytes = wasBytes;
    }
  }

  /** Hands a batch to input `input` of AP `ap` (which this host runs), counting it; a throwing element is counted. */
  deliver(ap: number, input: number, batch: Batch, rtcp: boolean): void {
    const state = this.states[ap];
    const port = state.inputs[input];
    port.packets += batch.count;
    port.bytes += this.#bytes(batch);
    try {
      state.element!.push(input, batch, rtcp);
    } catch (error) {
      if (state.errors++ === 0) {
        this.#node.logger.error("active program failed on a batch", {
          session: this.#plan.name,
          ap: state.plan.name,
          error: errorMessage(error),
        });
      }
    }
  }

  /** Stops one element (flushing what it holds), once; a failure is logged, not thrown. */
  async stop(ap: number): Promise<void> {
    const state = this.states[ap];
    if (!state.element || !this.#runs.has(ap) || this.#stopped.has(ap)) return;
    this.#stopped.add(ap);
    try {
      await state.element.stop?.();
    } catch (error) {
      this.#node.logger.error("active program did not stop cleanly", {
        session: this.#plan.name,
        ap: state.plan.name,
        error: errorMessage(error),
      });
    }
  }

  /** Stops every element this host runs in data-flow order, so what is in flight reaches the sinks. */
  async stopAll(): Promise<void> {
    for (const i of this.#hosted) await this.stop(i);
  }

  /** The element's own figures for /status (still readable after it stopped: a saver's records). */
  elementStatus(ap: number): Record<string, unknown> {
    return this.states[ap].element?.status?.() ?? {};
  }

  #bytes(batch: Batch): number {
    return batch === this.#entered ? this.#enteredBytes : countBytes(batch);
  }

  /** Output `j` of AP `ap`: counts, then hands the batch to each wire. */
  #output(ap: number, j: number): Output {
    const port = this.states[ap].outputs[j];
    const wires = this.#plan.aps[ap].outputs[j].wires;
    const deliveries: Delivery[] = [];
    const away: Wire[] = [];
    for (const w of wires) {
      // The worker's half of a split AP takes no data: its data path is the main isolate's half.
      if (w.kind === "ap" && this.#runs.has(w.node) && this.#half?.(w.node)?.side !== "worker") {
        deliveries.push((batch, rtcp) => this.deliver(w.node, w.input, batch, rtcp));
      } else if (w.kind !== "out" || w.to) away.push(w);
      // else: a reflector's participants; the element sends to them itself.
    }
    const elsewhere = away.length ? this.#outward(ap, j, away) : null;
    if (elsewhere) deliveries.push(elsewhere);
    return {
      emit: (batch, rtcp) => {
        port.packets += batch.count;
        port.bytes += this.#bytes(batch);
        for (const d of deliveries) d(batch, rtcp);
      },
    };
  }
}
