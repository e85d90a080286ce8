/**
 * The main isolate's side of a VM group: one Deno Worker (its own V8 isolate and thread) that runs the group's APs
 * (lib/graph/vm_runtime.ts). The worker is granted what the group's kinds declare in `needs` and nothing more.
 * Batches go in and come out as transferred buffers (vm_codec.ts). Start is answered with `started` or the
 * error of the AP that could not start. Stop goes AP by AP, as the main isolate walks the session in data-flow
 * order, and ends with a final snapshot. A worker that does not answer in time is terminated. A worker that dies of
 * an uncaught error is logged and marked failed, and the rest of the session goes on.
 */
import type { Clock, TimerId } from "../core/clock.ts";
import { StartError } from "../core/errors.ts";
import { isLogLevel } from "../core/logger.ts";
import type { CounterSet } from "../core/metrics.ts";
import type { Batch, UdpOptions } from "../net/udp.ts";
import { message } from "./ap_host.ts";
import type { SessionPlan } from "./check.ts";
import type { ElementKind, NodeServices } from "./element.ts";
import { type Crossing, decodeBatch, type Decoded, encodeBatch } from "./vm_codec.ts";
import {
  BatchLink,
  describePlan,
  type FromWorker,
  type MetricSnapshot,
  type SnapshotMessage,
  type StartMessage,
  type ToWorker,
} from "./vm_protocol.ts";

export type VmState = "starting" | "running" | "stopping" | "stopped" | "failed";

/** What a group's worker may do, worked out from its kinds' `needs`. */
export interface VmAccess {
  readonly permissions: Deno.PermissionOptionsObject;
  /** The UDP path its elements use: the fast one only where it was granted FFI. */
  readonly udp: UdpOptions;
}

/**
 * Nothing, plus: `net` when a kind binds or sends itself (the reflector); the data directory only, for reading or
 * writing, when a kind keeps files there (player, saver). FFI gives native code the whole process, so a worker gets
 * it only when a kind needs net and the operator set `udp: fast`; otherwise its sockets take the portable path.
 */
export function vmAccess(kinds: readonly ElementKind[], node: NodeServices): VmAccess {
  const net = kinds.some((k) => k.needs?.net);
  const files = kinds.some((k) => k.needs?.files === "write")
    ? "write"
    : kinds.some((k) => k.needs?.files === "read")
    ? "read"
    : null;
  const ffi = net && node.udp.impl === "fast";
  return {
    permissions: {
      env: false,
      ffi,
      import: false,
      net,
      read: files ? [node.dataDir] : false,
      run: false,
      sys: false,
      write: files === "write" ? [node.dataDir] : false,
    },
    udp: { ...node.udp, impl: ffi ? "fast" : "portable" },
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
  readonly stopMs: number;
  readonly snapshotMs: number;
  /** A batch the group emitted for wires outside it; the main isolate routes it. */
  onBatch(decoded: Decoded): void;
  onSnapshot(snapshot: SnapshotMessage): void;
}

export class VmGroup {
  state: VmState = "starting";
  error: string | null = null;
  readonly access: VmAccess;
  /** Datagrams the worker could not post to the main isolate (from its last snapshot). */
  droppedInside = 0;
  /** Datagrams for the group that were not posted: the link was full, or the worker was not running. */
  droppedHere = 0;
  #worker: Worker | null = null;
  readonly #link: BatchLink;
  readonly #waiters = new Map<string, (() => void)[]>();
  #starting: { resolve: () => void; reject: (error: Error) => void } | null = null;
  #timer: TimerId | undefined;
  #lastSnapshot: number | null = null;
  readonly #mirrors = new Map<string, { set: CounterSet; values: Map<string, number> }>();
  /** Sets the node's registry refused (a name clash): reported once, not shown. */
  readonly #refused = new Set<string>();

  constructor(private readonly options: VmGroupOptions) {
    this.access = vmAccess(options.aps.map((i) => options.plan.aps[i].kind), options.node);
    this.#link = new BatchLink((m, transfer) => this.#worker?.postMessage(m, transfer ?? []));
  }

  get name(): string {
    return this.options.name;
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
      this.error = message(error);
      return Promise.reject(new StartError(`VM ${options.name}: cannot start its worker: ${this.error}`));
    }
    const worker = this.#worker;
    worker.onmessage = (event: MessageEvent<FromWorker>) => this.#receive(event.data);
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
      this.#timer = options.clock.setTimeout(
        () => this.#fail(`it did not start within ${options.startMs} ms`),
        options.startMs,
      );
      this.#post(start);
    });
  }

  /** Sends a batch into the group (encoded and transferred); counted as dropped when it cannot go. */
  post(to: Crossing, batch: Batch): void {
    if (this.state !== "running" && this.state !== "stopping") {
      this.droppedHere += batch.count;
      return;
    }
    if (!this.#link.send(encodeBatch(to, batch), batch.count)) this.droppedHere += batch.count;
  }

  /** Stops the element of AP `ap` in the worker; resolves when it did, or when the worker is gone. */
  stopAp(ap: number): Promise<void> {
    if (!this.#beginStop()) return Promise.resolve();
    const done = this.#wait(`stopped ${ap}`);
    this.#post({ type: "stop", ap });
    return done;
  }

  /** Takes a fresh snapshot (tests, and callers that want counters as of now). */
  refresh(): Promise<void> {
    if (this.state !== "running" && this.state !== "stopping") return Promise.resolve();
    const done = this.#wait("snapshot");
    this.#post({ type: "snapshot" });
    return done;
  }

  /** Stops what still runs in the worker, takes its final snapshot and ends it (terminated after the deadline). */
  async close(): Promise<void> {
    if (this.#worker && this.#beginStop()) {
      const done = this.#wait("closed");
      this.#post({ type: "close" });
      await done;
    }
    this.#end(this.state === "failed" ? "failed" : "stopped");
    for (const m of this.#mirrors.values()) this.options.node.metrics.remove(m.set);
    this.#mirrors.clear();
  }

  status(): Record<string, unknown> {
    const p = this.access.permissions;
    return {
      state: this.state,
      ...(this.error ? { error: this.error } : {}),
      isolate: "worker",
      permissions: { net: p.net, ffi: p.ffi, read: p.read, write: p.write },
      udp: this.access.udp.impl,
      dropped_in: this.droppedHere,
      dropped_out: this.droppedInside,
      in_flight_bytes: this.#link.inFlight,
      snapshot_age_ms: this.#lastSnapshot === null
        ? null
        : Math.max(0, this.options.clock.now() - this.#lastSnapshot),
    };
  }

  /** True when there is a running worker to ask; arms the stop deadline on the first call. */
  #beginStop(): boolean {
    if (this.state !== "running" && this.state !== "stopping") return false;
    if (this.state === "running") {
      this.state = "stopping";
      this.#timer = this.options.clock.setTimeout(() => {
        this.options.node.logger.warn("VM group did not stop in time; its worker was terminated", {
          session: this.options.plan.name,
          vm: this.options.name,
          deadline_ms: this.options.stopMs,
        });
        this.error = `terminated after the ${this.options.stopMs} ms stop deadline`;
        this.#end("stopped");
      }, this.options.stopMs);
    }
    return true;
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
    if (m instanceof ArrayBuffer) {
      this.#link.took(m.byteLength);
      if (this.state !== "running" && this.state !== "stopping" && this.state !== "starting") return;
      let decoded: Decoded;
      try {
        decoded = decodeBatch(m);
      } catch (error) {
        this.options.node.logger.error("VM group sent a batch that cannot be read", {
          session: this.options.plan.name,
          vm: this.options.name,
          error: message(error),
        });
        return;
      }
      this.options.onBatch(decoded);
      return;
    }
    switch (m.type) {
      case "started":
        this.#clearTimer();
        this.state = "running";
        this.#starting?.resolve();
        this.#starting = null;
        return;
      case "failed": {
        this.error = m.message;
        const starting = this.#starting;
        this.#starting = null;
        this.#end("failed");
        starting?.reject(new StartError(`${m.message} (in VM ${this.options.name})`));
        return;
      }
      case "snapshot":
        this.#lastSnapshot = this.options.clock.now();
        this.droppedInside = m.dropped;
        this.#mirror(m.metrics);
        this.options.onSnapshot(m);
        this.#wake("snapshot");
        return;
      case "log": {
        const level = isLogLevel(m.level) ? m.level : "error";
        this.options.node.logger[level](m.msg, {
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
    starting?.reject(new StartError(`VM ${this.options.name} failed: ${why}`));
  }

  /** Ends the worker and releases everyone waiting on it. */
  #end(state: "stopped" | "failed"): void {
    this.#clearTimer();
    if (this.state !== "failed") this.state = state;
    this.#worker?.terminate();
    this.#worker = null;
    for (const key of [...this.#waiters.keys()]) this.#wake(key);
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) this.options.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The worker's own metric sets (a reflector's sockets and participants) as sets of the node's registry. */
  #mirror(metrics: readonly MetricSnapshot[]): void {
    const registry = this.options.node.metrics;
    const seen = new Set<string>();
    for (const m of metrics) {
      const key = JSON.stringify([m.subsystem, m.labels]);
      if (this.#refused.has(key)) continue;
      seen.add(key);
      let mirror = this.#mirrors.get(key);
      if (!mirror) {
        const values = new Map<string, number>();
        let set: CounterSet | null = null;
        try {
          set = registry.set(m.subsystem, m.labels);
          for (const s of m.series) {
            const read = () => values.get(s.name) ?? 0;
            if (s.kind === "counter") set.counter(s.name, s.help, read);
            else set.gauge(s.name, s.help, read);
          }
        } catch (error) {
          if (set) registry.remove(set);
          this.#refused.add(key);
          this.options.node.logger.warn("VM group metric set not shown", {
            session: this.options.plan.name,
            vm: this.options.name,
            subsystem: m.subsystem,
            error: message(error),
          });
          continue;
        }
        this.#mirrors.set(key, mirror = { set, values });
      }
      for (const s of m.series) mirror.values.set(s.name, s.value);
    }
    for (const [key, mirror] of this.#mirrors) {
      if (seen.has(key)) continue;
      registry.remove(mirror.set);
      this.#mirrors.delete(key);
    }
  }
}
