/**
 * The inside of a VM group's worker: it takes the session plan and the group's AP indexes, builds those APs from its
 * kind registry by name, wires them to each other in memory through an ApHost (as the main isolate does), and posts
 * every batch bound elsewhere (another AP, a DIPRONN_OUTPUT address) back to the main isolate, which routes it.
 * Counters, the elements' own status and the worker's metric sets go to the main isolate in snapshots; log lines are
 * posted to the main logger. The worker runs on the real clock: a test's manual clock does not cross isolates.
 */
import { errorMessage } from "../../core/errors.ts";
import { systemClock, type TimerId } from "../../core/clock.ts";
import { LOG_LEVELS, type LogFields, Logger, type LogLevel } from "../../core/logger.ts";
import type { Registry } from "../../core/registry.ts";
import { ApHost } from "../ap_host.ts";
import type { EdgeLink, ElementKind, NodeServices } from "../element.ts";
import { decodeBatch, encodeBatch } from "./codec.ts";
import {
  BatchLink,
  type FromWorker,
  rebuildPlan,
  ReportingRegistry,
  type SnapshotMessage,
  type StartMessage,
  type ToWorker,
} from "./protocol.ts";

/** The parts of a worker's global scope used here. */
export interface WorkerScope {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  onmessage: ((event: MessageEvent) => void) | null;
  close(): void;
}

/** A logger whose lines go to the main isolate's logger (which adds the session's VM and applies its level). */
class PostingLogger extends Logger {
  constructor(private readonly send: (message: FromWorker) => void, level: LogLevel) {
    super({ level, clock: systemClock, sink: () => {} });
  }
  override child(_component: string): Logger {
    return this;
  }
  override debug(msg: string, fields?: LogFields): void {
    this.#post("debug", msg, fields);
  }
  override info(msg: string, fields?: LogFields): void {
    this.#post("info", msg, fields);
  }
  override warn(msg: string, fields?: LogFields): void {
    this.#post("warn", msg, fields);
  }
  override error(msg: string, fields?: LogFields): void {
    this.#post("error", msg, fields);
  }
  #post(level: LogLevel, msg: string, fields: LogFields = {}): void {
    if (LOG_LEVELS.indexOf(level) < LOG_LEVELS.indexOf(this.level)) return;
    this.send({ type: "log", level, msg, fields });
  }
}

/** Serves one VM group in this worker; `kinds` are the AP kinds it can build (coreElements(), or a test's). */
export function serveVmGroup(
  kinds: Registry<ElementKind>,
  scope: WorkerScope = globalThis as unknown as WorkerScope,
): void {
  const send = (m: FromWorker, transfer?: Transferable[]) => scope.postMessage(m, transfer);
  const link = new BatchLink((m, transfer) => scope.postMessage(m, transfer));
  let host: ApHost | null = null;
  let metrics: ReportingRegistry | null = null;
  let aps: readonly number[] = [];
  let timer: TimerId | undefined;
  let logger: Logger | null = null;
  /** Set once every element started: the main isolate sends no batch before `started`. */
  let ready = false;
  /** The worker's halves of split APs (ElementKind.edge), by AP. */
  const links = new Map<number, EdgeLink>();

  const snapshot = (final: boolean, id: number | null = null): SnapshotMessage => ({
    type: "snapshot",
    aps: aps.map((ap) => {
      const s = host!.states[ap];
      return {
        ap,
        inputs: s.inputs.map((p) => [p.packets, p.bytes] as const),
        outputs: s.outputs.map((p) => [p.packets, p.bytes] as const),
        errors: s.errors,
        status: elementStatus(host!, ap),
      };
    }),
    metrics: metrics?.snapshot() ?? [],
    dropped: link.dropped,
    final,
    id,
  });

  const start = async (m: StartMessage) => {
    aps = m.aps;
    try {
      const plan = rebuildPlan(m.plan, kinds, m.aps);
      logger = new PostingLogger(send, m.logLevel);
      metrics = new ReportingRegistry();
      const node: NodeServices = {
        clock: systemClock,
        logger,
        metrics,
        dataDir: m.node.dataDir,
        host: m.node.host,
        udp: m.node.udp,
      };
      for (const ap of aps) {
        if (!plan.aps[ap].kind.edge) continue;
        links.set(ap, {
          vm: m.vm,
          post: (message) => (send({ type: "edge", ap, message }), true),
          onMessage: null,
        });
      }
      host = new ApHost({
        plan,
        node,
        aps,
        outward: (ap, j) => (batch, rtcp) => {
          link.send(encodeBatch({ kind: "emitted", ap, port: j, rtcp }, batch), batch.count);
        },
        half: (ap) => {
          const l = links.get(ap);
          return l ? { side: "worker", link: l } : undefined;
        },
      });
      host.create();
      await host.start();
    } catch (error) {
      // What started is stopped here; the main isolate then ends the worker.
      await host?.stopAll();
      send({ type: "failed", message: errorMessage(error) });
      return;
    }
    ready = true;
    send(snapshot(false));
    send({ type: "started" });
    const tick = () => {
      try {
        send(snapshot(false));
      } catch (error) {
        logger?.error("VM group cannot report its counters", { error: errorMessage(error) });
      }
      timer = systemClock.setTimeout(tick, m.snapshotMs);
    };
    timer = systemClock.setTimeout(tick, m.snapshotMs);
  };

  const receive = (buffer: ArrayBuffer) => {
    link.took(buffer.byteLength);
    if (!host || !ready) return;
    let decoded;
    try {
      decoded = decodeBatch(buffer);
    } catch (error) {
      logger?.error("VM group got a batch it cannot read", { error: errorMessage(error) });
      return;
    }
    const { to, batch, bytes } = decoded;
    if (to.kind !== "deliver" || !host.runs(to.ap) || to.port >= host.states[to.ap].inputs.length) {
      logger?.error("VM group got a batch for an AP it does not run", { ap: to.ap, port: to.port });
      return;
    }
    host.entering(batch, bytes, () => host!.deliver(to.ap, to.port, batch, to.rtcp));
  };

  scope.onmessage = async (event: MessageEvent<ToWorker>) => {
    const m = event.data;
    if (m instanceof ArrayBuffer) return receive(m);
    switch (m.type) {
      case "start":
        return await start(m);
      case "ack":
        return link.acked(m.bytes);
      case "stop":
        await host?.stop(m.ap);
        return send({ type: "stopped", ap: m.ap });
      case "snapshot":
        return host ? send(snapshot(false, m.id)) : undefined;
      case "edge":
        if (ready) links.get(m.ap)?.onMessage?.(m.message);
        return;
      case "close":
        // Whatever fails on the way, the main isolate hears `closed` and the worker ends.
        try {
          if (timer !== undefined) systemClock.clearTimeout(timer);
          await host?.stopAll();
          if (host) send(snapshot(true));
        } finally {
          send({ type: "closed" });
          scope.close();
        }
        return;
    }
  };
}

/**
 * An element's status as plain data: what structured cloning cannot carry (a function) is left out, as JSON would.
 * A status that throws or cannot be carried at all is reported as such, so one element cannot stop the snapshot.
 */
function elementStatus(host: ApHost, ap: number): Record<string, unknown> {
  try {
    const status = host.elementStatus(ap);
    try {
      return structuredClone(status);
    } catch {
      return JSON.parse(JSON.stringify(status));
    }
  } catch (error) {
    return { status_error: errorMessage(error) };
  }
}
