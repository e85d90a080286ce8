/**
 * Runs a checked session plan on this node: creates every element, wires outputs to inputs in memory, binds the
 * DIPRONN_INPUT ports on the UDP data plane and sends DIPRONN_OUTPUT traffic from one socket per address family.
 * Start is all or nothing: elements start sinks first and the input sockets open last; on any failure the session is
 * stopped as a whole (inputs closed, every created element stopped) before the error is passed on. Per-AP and
 * per-port counters feed /status and /metrics.
 */
import { StartError } from "../core/errors.ts";
import type { CounterSet } from "../core/metrics.ts";
import { formatHostPort, isIPv6 } from "../net/address.ts";
import { type Batch, type Destinations, openUdp, type UdpSocket } from "../net/udp.ts";
import type { Element, NodeServices, Output } from "./element.ts";
import type { PlannedAp, SessionPlan } from "./check.ts";

/** Counters of one port; in and out alike. */
interface PortCount {
  readonly name: string;
  packets: number;
  bytes: number;
}

interface Running {
  readonly plan: PlannedAp;
  element: Element | null;
  readonly inputs: PortCount[];
  readonly outputs: PortCount[];
  /** Exceptions the element threw while handling a batch (the batch is dropped, the session goes on). */
  errors: number;
}

interface InputSocket {
  readonly socket: UdpSocket;
  readonly ap: string;
  readonly port: string;
  loop?: Promise<void>;
}

function countBytes(batch: Batch): number {
  let bytes = 0;
  for (let i = 0; i < batch.count; i++) bytes += batch.length(i);
  return bytes;
}

export class RunningSession {
  readonly startedAt: number;
  readonly #aps: Running[];
  readonly #inputs: InputSocket[] = [];
  readonly #outSockets = new Map<"v4" | "v6", UdpSocket>();
  readonly #sets: CounterSet[] = [];
  #stopped = false;
  /** The batch being delivered from an input socket, and its bytes (see #receive). */
  #received: Batch | null = null;
  #receivedBytes = 0;

  private constructor(readonly plan: SessionPlan, private readonly node: NodeServices) {
    this.startedAt = node.clock.now();
    this.#aps = plan.aps.map((p) => ({
      plan: p,
      element: null,
      inputs: p.inputs.map((i) => ({ name: i.name, packets: 0, bytes: 0 })),
      outputs: p.outputs.map((o) => ({ name: o.name, packets: 0, bytes: 0 })),
      errors: 0,
    }));
  }

  /** Starts every part of the session or, when one cannot start, none: throws StartError naming the AP. */
  static async start(plan: SessionPlan, node: NodeServices): Promise<RunningSession> {
    const session = new RunningSession(plan, node);
    try {
      await session.#start();
    } catch (error) {
      await session.stop();
      throw error instanceof StartError
        ? new StartError(`Cannot start session ${plan.name}: ${error.message}`)
        : error;
    }
    return session;
  }

  async #start(): Promise<void> {
    const { node, plan } = this;
    for (const ap of this.#aps) {
      ap.element = ap.plan.kind.create({
        name: ap.plan.name,
        session: plan.name,
        params: ap.plan.params as never,
        outputs: ap.plan.outputs.map((_, j) => this.#output(ap, j)),
        useRtp: plan.useRtp,
        registration: ap.plan.registration,
        node,
      });
    }
    // Sinks first, so that nothing emits into an element that is not ready.
    for (const ap of [...this.#aps].reverse()) {
      try {
        await ap.element!.start?.();
      } catch (error) {
        // Whatever stops an element from starting (a file it may not write, a port in use) is a start failure.
        throw new StartError(`${ap.plan.name}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    for (const ap of this.#aps) {
      ap.plan.inputs.forEach((input, i) => {
        if (input.external === null) return;
        const ports = plan.useRtp ? [input.external, input.external + 1] : [input.external];
        ports.forEach((port, k) => {
          const socket = openUdp({ host: node.host, port }, node.udp);
          const entry: InputSocket = { socket, ap: ap.plan.name, port: input.name };
          this.#inputs.push(entry);
          entry.loop = this.#receive(socket, ap, i, k === 1);
        });
      });
    }
    this.#publish();
  }

  async #receive(socket: UdpSocket, ap: Running, input: number, rtcp: boolean): Promise<void> {
    for (;;) {
      const batch = await socket.receive();
      if (!batch) return;
      // The received batch travels the graph unchanged: its bytes are summed once here, not at every port.
      this.#received = batch;
      this.#receivedBytes = countBytes(batch);
      this.#deliver(ap, input, batch, rtcp);
      this.#received = null;
    }
  }

  #bytes(batch: Batch): number {
    return batch === this.#received ? this.#receivedBytes : countBytes(batch);
  }

  #deliver(ap: Running, input: number, batch: Batch, rtcp: boolean): void {
    const port = ap.inputs[input];
    port.packets += batch.count;
    port.bytes += this.#bytes(batch);
    try {
      ap.element!.push(input, batch, rtcp);
    } catch (error) {
      if (ap.errors++ === 0) {
        this.node.logger.error("active program failed on a batch", {
          session: this.plan.name,
          ap: ap.plan.name,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
  }

  /** Output `j` of `ap`: counts, then hands the batch to each wire. */
  #output(ap: Running, j: number): Output {
    const port = ap.outputs[j];
    const deliveries = ap.plan.outputs[j].wires.map((w): (batch: Batch, rtcp: boolean) => void => {
      if (w.kind === "ap") return (batch, rtcp) => this.#deliver(this.#aps[w.node], w.input, batch, rtcp);
      if (!w.to) return () => {}; // a reflector's participants: the element sends itself
      const socket = this.#outSocket(isIPv6(w.to.host) ? "v6" : "v4");
      // RTCP goes to port + 1 only with use_RTP (the check keeps that port in range).
      const rtp = socket.destinations([w.to]);
      const dest: Destinations[] = [
        rtp,
        this.plan.useRtp ? socket.destinations([{ ...w.to, port: w.to.port + 1 }]) : rtp,
      ];
      return (batch, rtcp) => socket.send(batch, dest[rtcp ? 1 : 0]);
    });
    return {
      emit: (batch, rtcp) => {
        port.packets += batch.count;
        port.bytes += this.#bytes(batch);
        for (const d of deliveries) d(batch, rtcp);
      },
    };
  }

  #outSocket(family: "v4" | "v6"): UdpSocket {
    let s = this.#outSockets.get(family);
    if (!s) {
      s = openUdp({ host: family === "v6" ? "::" : "0.0.0.0", port: 0 }, this.node.udp);
      this.#outSockets.set(family, s);
    }
    return s;
  }

  #publish(): void {
    const { metrics } = this.node;
    for (const ap of this.#aps) {
      const labels = { session: this.plan.name, ap: ap.plan.name, kind: ap.plan.kind.name };
      const set = metrics.set("session_ap", labels);
      set.counter("in_packets_total", "Datagrams into the AP, all inputs", () => sum(ap.inputs, "packets"));
      set.counter("in_bytes_total", "Bytes into the AP, all inputs", () => sum(ap.inputs, "bytes"));
      set.counter(
        "out_packets_total",
        "Datagrams out of the AP, all outputs",
        () => sum(ap.outputs, "packets"),
      );
      set.counter("out_bytes_total", "Bytes out of the AP, all outputs", () => sum(ap.outputs, "bytes"));
      set.counter("errors_total", "Batches the AP failed on (dropped)", () => ap.errors);
      this.#sets.push(set);
      for (const [direction, ports] of [["in", ap.inputs], ["out", ap.outputs]] as const) {
        for (const p of ports) {
          const ps = metrics.set("session_port", { ...labels, port: p.name, direction });
          ps.counter("packets_total", "Datagrams through the port", () => p.packets);
          ps.counter("bytes_total", "Bytes through the port", () => p.bytes);
          this.#sets.push(ps);
        }
      }
    }
  }

  status(): Record<string, unknown> {
    return {
      name: this.plan.name,
      owner: this.plan.owner,
      use_rtp: this.plan.useRtp,
      uptime_seconds: Math.round((this.node.clock.now() - this.startedAt) / 1000),
      ports: this.plan.ports,
      vms: this.plan.vms,
      aps: this.#aps.map((ap) => ({
        name: ap.plan.name,
        kind: ap.plan.kind.name,
        vm: ap.plan.vm,
        inputs: ap.inputs.map((p, i) => ({
          ...p,
          from: ap.plan.inputs[i].external === null ? null : `DIPRONN_INPUT(${ap.plan.inputs[i].external})`,
        })),
        outputs: ap.outputs.map((p, j) => ({
          ...p,
          to: ap.plan.outputs[j].wires.map((w) =>
            w.kind === "ap"
              ? `${this.plan.aps[w.node].name}.${this.plan.aps[w.node].inputs[w.input].name}`
              : w.to
              ? `DIPRONN_OUTPUT(${formatHostPort(w.to)})`
              : "DIPRONN_OUTPUT"
          ),
        })),
        errors: ap.errors,
        ...(ap.element?.status?.() ?? {}),
      })),
      sockets: this.#inputs.map((i) => ({
        ap: i.ap,
        port: i.port,
        listen: formatHostPort(i.socket.local),
        udp: i.socket.impl,
        ...i.socket.stats,
      })),
    };
  }

  /** Inputs close first, then elements stop in data-flow order, so that what is in flight reaches the sinks. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const i of this.#inputs) await i.socket.close();
    await Promise.all(this.#inputs.map((i) => i.loop));
    for (const ap of this.#aps) {
      if (!ap.element) continue;
      try {
        await ap.element.stop?.();
      } catch (error) {
        this.node.logger.error("active program did not stop cleanly", {
          session: this.plan.name,
          ap: ap.plan.name,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
    for (const s of this.#outSockets.values()) await s.close();
    for (const set of this.#sets) this.node.metrics.remove(set);
  }
}

function sum(ports: PortCount[], key: "packets" | "bytes"): number {
  let n = 0;
  for (const p of ports) n += p[key];
  return n;
}
