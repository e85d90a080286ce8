/**
 * The main isolate's side of a VM group: one Deno Worker (its own V8 isolate and thread) that runs the group's APs
 * (lib/graph/vm/runtime.ts). The worker is granted what the group's kinds declare in `needs` and nothing more, and
 * never FFI: its sockets take the portable UDP path. Batches go in and come out as transferred buffers
 * (codec.ts). An AP whose kind has sockets of its own is split (ElementKind.edge): the main isolate keeps its
 * sockets and its data path, the worker its logic, and the two halves exchange `edge` messages. Start is answered with `started` or the error of the AP that could not start. Stop goes AP by AP,
 * as the main isolate walks the session in data-flow order, and ends with a final snapshot; each request has its own
 * deadline, and a worker that does not answer one in time is terminated. A worker that dies of an uncaught error is
 * logged and marked failed, and the rest of the session goes on. What a worker reports (counters, statuses, metric
 * sets, log lines) is data from code the node does not trust: it is checked before it is shown.
 *
 * Datagrams lost on the way are counted by direction: `droppedIn` did not reach the worker (the link was full, or
 * the worker was not running); `droppedOut` left an AP of the group and did not reach the main isolate's routing
 * (the worker's link was full, or the main isolate held too much during start, or the start had failed).
 */
import type { Clock, TimerId } from "../../core/clock.ts";
import { errorMessage, StartError } from "../../core/errors.ts";
import { isLogLevel } from "../../core/logger.ts";
import type { Batch, UdpOptions } from "../../net/udp.ts";
import type { SessionPlan } from "../check.ts";
import type { ElementKind, NodeServices } from "../element.ts";
import { type Crossing, decodeBatch, type Decoded, encodeBatch } from "./codec.ts";
import { MetricMirror } from "./metrics.ts";
import {
  BatchLink,
  describePlan,
  type FromWorker,
  type SnapshotMessage,
  type StartMessage,
  type ToWorker,
} from "./protocol.ts";

export type VmState = "starting" | "running" | "stopping" | "stopped" | "failed";

/** What a group's worker may do, worked out from its kinds' `needs`. */
export interface VmAccess {
  readonly permissions: Deno.PermissionOptionsObject;
  /** The UDP path its elements use: always the portable one. */
  readonly udp: UdpOptions;
}

/**
 * Nothing, plus: `net` when a kind binds or sends itself and does not leave its sockets to the main isolate (none of
 * the core kinds: the reflector is split, see ElementKind.edge); the data directory only, for reading or
 * writing, when a kind keeps files there (player, saver). Never FFI, whatever `udp` the node uses: FFI gives native
 * code the whole process, and a worker that is terminated (crashed, too slow) would leave the fast path's raw socket
 * descriptors open, with a recvmmsg still writing into the dead isolate's buffers. Deno closes a terminated worker's
 * own resources, so the portable path frees its ports.
 */
export function vmAccess(kinds: readonly ElementKind[], node: NodeServices): VmAccess {
  const net = kinds.some((k) => k.needs?.net && !k.edge);
  const files = kinds.some((k) => k.needs?.files === "write")
    ? "write"
    : kinds.some((k) => k.needs?.files === "read")
    ? "read"
    : null;
  return {
    permissions: {
      env: false,
      ffi: false,
      import: false,
      net,
      read: files ? [node.dataDir] : false,
      run: false,
      sys: false,
      write: files === "write" ? [node.dataDir] : false,
    },
    udp: { ...node.udp, impl: "portable" },
  };
}

export interface VmGroupOptions {
  readonly plan: SessionPlan;
  readonly name: string;
  /** Indexes of the group's APs in the plan. */
  readonly aps: readonly number[];
  readonly node: NodeServices;
  readonly workerUrl: URL;
  /** Real time: the worker runs on it, so its deadlines do too. */
  readonly clock: Clock;
  readonly startMs: number;
  /** How long the worker may take to answer one request: stop an AP, close, take a snapshot. */
  readonly stopMs: number;
  readonly snapshotMs: number;
  /** A batch the group emitted for wires outside it; the main isolate routes it. */
  onBatch(decoded: Decoded): void;
  onSnapshot(snapshot: SnapshotMessage): void;
  /** A message from the worker's half of split AP `ap` (unchecked: the receiver checks `ap` and the message). */
  onEdge?(ap: number, message: unknown): void;
  /** The worker died or did not start: the group's APs no longer run (the main isolate's halves stop too). */
  onFailed?(): void;
}

export class VmGroup {
  state: VmState = "starting";
  error: string | null = null;
  readonly access: VmAccess;
  /** Datagrams for the group that were not posted: the link was full, or the worker was not running. */
  droppedIn = 0;
  /** Datagrams the worker could not post to the main isolate (from its last snapshot). */
  #droppedOutInside = 0;
  /** Datagrams the group sent that the main isolate dropped (see `dropOut`). */
  #droppedOutHere = 0;
  #worker: Worker | null = null;
  readonly #link: BatchLink;
  readonly #waiters = new Map<string, (() => void)[]>();
  #starting: { resolve: () => void; reject: (error: Error) => void } | null = null;
  #startTimer: TimerId | undefined;
  #requests = 0;
  #lastSnapshot: number | null = null;
  readonly #mirror: MetricMirror;

  constructor(private readonly options: VmGroupOptions) {
    this.access = vmAccess(options.aps.map((i) => options.plan.aps[i].kind), options.node);
    this.#link = new BatchLink((m, transfer) => this.#worker?.postMessage(m, transfer ?? []));
    this.#mirror = new MetricMirror(options.node.metrics, {
      labels: { session: options.plan.name, vm: options.name },
      onRefused: (subsystem, why) =>
        options.node.logger.warn("VM group metric set not shown", {
          session: options.plan.name,
          vm: options.name,
          subsystem,
          error: why,
        }),
    });
  }

  get name(): string {
    return this.options.name;
  }

  /** Datagrams that left an AP of the group and were lost before the main isolate routed them. */
  get droppedOut(): number {
    return this.#droppedOutInside + this.#droppedOutHere;
  }

  /** Counts datagrams the group sent that the main isolate dropped (too much held during start, a failed start). */
  dropOut(datagrams: number): void {
    this.#droppedOutHere += datagrams;
  }

  /** Starts the worker and its elements; throws StartError naming the AP (or the worker) that could not start. */
  start(): Promise<void> {
    const { options } = this;
    try {
      this.#worker = new Worker(options.workerUrl, {
        type: "module",
        name: `${options.plan.name}/${options.name}`,
        deno: { permissions: this.access.permissions },
      });
    } catch (error) {
      // Asking for more than the process holds (a node run without --allow-net) lands here.
      this.state = "failed";
      this.error = errorMessage(error);
      return Promise.reject(new StartError(`VM ${options.name}: cannot start its worker: ${this.error}`));
    }
    const worker = this.#worker;
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      try {
        this.#receive(event.data);
      } catch (error) {
        // A message of a shape the protocol does not have: the worker is not to be trusted any more.
        this.#fail(`it sent a message that cannot be read: ${errorMessage(error)}`);
      }
    };
    worker.onerror = (event) => {
      // Handled here: an uncaught error in a worker would otherwise end the whole process.
      event.preventDefault();
      this.#fail(event.message);
    };
    worker.onmessageerror = () => this.#fail("a message from the worker could not be read");
    const start: StartMessage = {
      type: "start",
      plan: describePlan(options.plan),
      vm: options.name,
      aps: options.aps,
      node: { dataDir: options.node.dataDir, host: options.node.host, udp: this.access.udp },
      logLevel: options.node.logger.level,
      snapshotMs: options.snapshotMs,
    };
    return new Promise<void>((resolve, reject) => {
      this.#starting = { resolve, reject };
      this.#startTimer = options.clock.setTimeout(
        () => this.#fail(`it did not start within ${options.startMs} ms`),
        options.startMs,
      );
      this.#post(start);
    });
  }

  /** Sends a batch into the group (encoded and transferred); counted as dropped when it cannot go. */
  post(to: Crossing, batch: Batch): void {
    if (this.state !== "running" && this.state !== "stopping") {
      this.droppedIn += batch.count;
      return;
    }
    if (!this.#link.send(encodeBatch(to, batch), batch.count)) this.droppedIn += batch.count;
  }

  /** A message to the worker's half of split AP `ap`; dropped unless the worker runs. */
  postEdge(ap: number, message: unknown): boolean {
    if (this.state !== "running" && this.state !== "stopping") return false;
    this.#post({ type: "edge", ap, message });
    return true;
  }

  /** Stops the element of AP `ap` in the worker; resolves when it did, or when the worker is gone. */
  stopAp(ap: number): Promise<void> {
    if (!this.#stopping()) return Promise.resolve();
    return this.#ask(`stopped ${ap}`, { type: "stop", ap }, () => this.#terminate());
  }

  /**
   * Takes a fresh snapshot (tests, and callers that want counters as of now): resolves on the answer to this
   * request, or after the deadline with the counters as they were.
   */
  refresh(): Promise<void> {
    if (this.state !== "running" && this.state !== "stopping") return Promise.resolve();
    const id = ++this.#requests;
    const key = `snapshot ${id}`;
    return this.#ask(key, { type: "snapshot", id }, () => this.#wake(key));
  }

  /** Stops what still runs in the worker, takes its final snapshot and ends it (terminated after the deadline). */
  async close(): Promise<void> {
    if (this.#worker && this.#stopping()) {
      await this.#ask("closed", { type: "close" }, () => this.#terminate());
    }
    this.#end(this.state === "failed" ? "failed" : "stopped");
  }

  status(): Record<string, unknown> {
    const p = this.access.permissions;
    return {
      state: this.state,
      ...(this.error ? { error: this.error } : {}),
      isolate: "worker",
      permissions: { net: p.net, ffi: p.ffi, read: p.read, write: p.write },
      udp: this.access.udp.impl,
      dropped_in: this.droppedIn,
      dropped_out: this.droppedOut,
      in_flight_bytes: this.#link.inFlight,
      metric_sets_refused: this.#mirror.refused,
      snapshot_age_ms: this.#lastSnapshot === null
        ? null
        : Math.max(0, this.options.clock.now() - this.#lastSnapshot),
    };
  }

  /** True when there is a running worker to ask. */
  #stopping(): boolean {
    if (this.state !== "running" && this.state !== "stopping") return false;
    this.state = "stopping";
    return true;
  }

  /**
   * Posts a request and resolves when `key` is answered, the worker ends, or the deadline passes (then `late` runs).
   * Each request has its own deadline: a healthy worker is given its time for every AP it stops.
   */
  #ask(key: string, m: ToWorker, late: () => void): Promise<void> {
    const { clock, stopMs } = this.options;
    const done = this.#wait(key);
    const timer = clock.setTimeout(late, stopMs);
    this.#post(m);
    return done.finally(() => clock.clearTimeout(timer));
  }

  /** The worker did not answer a stop request in time. */
  #terminate(): void {
    this.options.node.logger.warn("VM group did not stop in time; its worker was terminated", {
      session: this.options.plan.name,
      vm: this.options.name,
      deadline_ms: this.options.stopMs,
    });
    this.error = `terminated after the ${this.options.stopMs} ms stop deadline`;
    this.#end("stopped");
  }

  #post(m: ToWorker): void {
    this.#worker?.postMessage(m);
  }

  #wait(key: string): Promise<void> {
    return new Promise((resolve) => {
      let list = this.#waiters.get(key);
      if (!list) this.#waiters.set(key, list = []);
      list.push(resolve);
    });
  }

  #wake(key: string): void {
    const list = this.#waiters.get(key);
    this.#waiters.delete(key);
    for (const resolve of list ?? []) resolve();
  }

  #receive(m: FromWorker): void {
    // Messages queued before the worker was ended are not read.
    if (this.state === "stopped" || this.state === "failed") return;
    if (m instanceof ArrayBuffer) {
      this.#link.took(m.byteLength);
      let decoded: Decoded;
      try {
        decoded = decodeBatch(m);
      } catch (error) {
        this.options.node.logger.error("VM group sent a batch that cannot be read", {
          session: this.options.plan.name,
          vm: this.options.name,
          error: errorMessage(error),
        });
        return;
      }
      this.options.onBatch(decoded);
      return;
    }
    switch (m.type) {
      case "started":
        this.#clearStartTimer();
        this.state = "running";
        this.#starting?.resolve();
        this.#starting = null;
        return;
      case "failed": {
        this.error = String(m.message);
        const starting = this.#starting;
        this.#starting = null;
        this.#end("failed");
        starting?.reject(new StartError(`${this.error} (in VM ${this.options.name})`));
        return;
      }
      case "snapshot":
        this.#lastSnapshot = this.options.clock.now();
        if (typeof m.dropped === "number") this.#droppedOutInside = m.dropped;
        this.#mirror.update(m.metrics);
        this.options.onSnapshot(m);
        if (typeof m.id === "number") this.#wake(`snapshot ${m.id}`);
        return;
      case "log": {
        const level = isLogLevel(m.level) ? m.level : "error";
        this.options.node.logger[level](String(m.msg), {
          ...m.fields,
          session: this.options.plan.name,
          vm: this.options.name,
        });
        return;
      }
      case "ack":
        return this.#link.acked(m.bytes);
      case "stopped":
        return this.#wake(`stopped ${m.ap}`);
      case "closed":
        return this.#wake("closed");
      case "edge":
        return this.options.onEdge?.(m.ap, m.message);
    }
  }

  /** The worker died (uncaught error, unreadable message) or did not start in time: the rest goes on. */
  #fail(why: string): void {
    if (this.state === "stopped" || this.state === "failed") return;
    this.error = why;
    const starting = this.#starting;
    this.#starting = null;
    this.options.node.logger.error("VM group failed; its APs no longer run", {
      session: this.options.plan.name,
      vm: this.options.name,
      error: why,
    });
    this.#end("failed");
    this.options.onFailed?.();
    starting?.reject(new StartError(`VM ${this.options.name} failed: ${why}`));
  }

  /** Ends the worker, takes its metric sets away and releases everyone waiting on it. */
  #end(state: "stopped" | "failed"): void {
    this.#clearStartTimer();
    if (this.state !== "failed") this.state = state;
    this.#worker?.terminate();
    this.#worker = null;
    this.#mirror.clear();
    for (const key of [...this.#waiters.keys()]) this.#wake(key);
  }

  #clearStartTimer(): void {
    if (this.#startTimer !== undefined) this.options.clock.clearTimeout(this.#startTimer);
    this.#startTimer = undefined;
  }
}
