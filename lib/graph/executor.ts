/**
 * Runs a checked session plan on this node. The main isolate is DiProNN's distribution/aggregation unit: it binds
 * the DIPRONN_INPUT ports on the UDP data plane, sends DIPRONN_OUTPUT traffic from one socket per address family,
 * and runs every AP outside a VM group in an ApHost, where a batch goes from AP to AP by a call in memory.
 *
 * Each `{ VM ... }` group runs in an isolated execution context: one Deno Worker (a V8 isolate on its own thread),
 * granted only what its kinds declare (vm/group.ts). The worker wires the group's own APs in memory the same way.
 * A batch that crosses into or out of a group is packed into one buffer and transferred (vm/codec.ts). A batch
 * leaving a group goes back to the main isolate. Main routes it on: to its own APs, to another group, or out of a
 * socket. So one isolate owns every socket of the session, also those of an AP in a group whose kind has sockets
 * of its own (the reflector): such an AP is split (ElementKind.edge). Its half in the main isolate binds its ports
 * on the node's UDP path (the fast one) and takes its data, delivered and counted here without crossing; its half in
 * the worker keeps the logic (the reflector's participant table and join protocol), and the two exchange `edge`
 * messages. The worker needs no network access for it, and a batch for a reflector never crosses. Other VM APs are
 * counted in their worker and reported in snapshots (every 250 ms and at stop), so /status and /metrics show every
 * AP.
 *
 * Start is all or nothing. The VM groups start first, in parallel; each reports `started` or the AP that could not
 * start. Then main's elements start, sinks first. Then the input sockets open. Batches a group emits before all of
 * this is done are held until then, up to LINK_LIMIT_BYTES for the session; beyond that they are dropped and
 * counted. On any failure the session is stopped as a whole (inputs closed, every element stopped, every worker
 * ended, what groups still emit discarded) before the error is passed on. Stop closes the inputs, then stops every
 * AP in data-flow order, asking the worker for a group's APs one by one. What an upstream AP emitted reaches its
 * targets before they stop (messages keep their order), and savers flush.
 *
 * A plan that is one node's part of a multi-node session (check.ts, PlanOptions.placement) runs the same way, with the
 * node's link port (NodeServices.links) for what crosses nodes: a link wire sends there (RTCP with the link header's
 * RTCP flag, not to port + 1), and each linked input is registered there when the inputs open and fed from it as a
 * DIPRONN_INPUT socket would feed it; both are given back at stop. A part with links and a node without a link port
 * does not start. Its /status adds the link port's figures for its channels (`links`).
 *
 * `edgenode_session_vm_dropped_total` counts the datagrams lost crossing a group's boundary, by `direction`: "in"
 * for those that did not reach the group's worker (its link full, or the worker not running), "out" for those an AP
 * of the group emitted that were not routed on (the link full, too much held during start, a failed start). A
 * port's count on either side of the boundary differs by exactly these.
 */
import { type Clock, systemClock } from "../core/clock.ts";
import { errorMessage, StartError } from "../core/errors.ts";
import type { CounterSet } from "../core/metrics.ts";
import { formatHostPort, isIPv6 } from "../net/address.ts";
import { SourceAllowList } from "../net/allow.ts";
import { type Batch, type Destinations, openUdp, type UdpSocket } from "../net/udp.ts";
import { ApHost, type Delivery, type PortCount } from "./ap_host.ts";
import { SelectedBatch } from "./batch.ts";
import type { SessionPlan, Wire } from "./check.ts";
import type { EdgeLink, NodeServices } from "./element.ts";
import type { Decoded } from "./vm/codec.ts";
import { VmGroup } from "./vm/group.ts";
import { LINK_LIMIT_BYTES, type SnapshotMessage } from "./vm/protocol.ts";

export interface ExecutorOptions {
  /** The module VM groups' workers run; tests give one that also knows test kinds. Default: ./vm/worker.ts. */
  readonly workerUrl?: URL;
  /** The clock of the workers' deadlines: real time by default, as the workers run on it. */
  readonly vmClock?: Clock;
  /** How long a worker may take to start its APs. */
  readonly vmStartMs?: number;
  /** How long a worker may take to answer each request: stop one AP, close, take a snapshot for `refresh()`. */
  readonly vmStopMs?: number;
  /** How often a worker reports its counters. */
  readonly snapshotMs?: number;
  /** Sources DIPRONN_INPUT ports let in (node.allow_sources); others are dropped and counted. Default: any. */
  readonly allowSources?: SourceAllowList;
  /** The sandbox processes of the session's uploaded APs (lib/graph/uploaded.ts), for its status. */
  readonly sandboxes?: SandboxStatus;
}

/** What the session's status shows of its sandbox processes. */
export interface SandboxStatus {
  status(): Record<string, unknown>[];
  groupStatus(group: string): Record<string, unknown> | null;
}

export const VM_DEFAULTS = { startMs: 10_000, stopMs: 5_000, snapshotMs: 250 } as const;

interface InputSocket {
  readonly socket: UdpSocket;
  readonly ap: string;
  readonly port: string;
  /** Datagrams from sources the allow-list does not let in. */
  droppedSource: number;
  /** The AP's index in the plan, the input's among its inputs, whether this is its RTCP port, its allow-list. */
  readonly apIndex: number;
  readonly inputIndex: number;
  readonly rtcp: boolean;
  readonly allow: SourceAllowList;
  loop?: Promise<void>;
}

export class RunningSession {
  readonly startedAt: number;
  readonly #host: ApHost;
  readonly #groups: VmGroup[] = [];
  /** The group that runs each AP (by index), or null for the main isolate. */
  readonly #groupOf: (VmGroup | null)[];
  /** The main isolate's halves of split APs in groups (ElementKind.edge): their links, by AP. */
  readonly #links = new Map<number, EdgeLink>();
  /** For each AP of a group and each of its outputs: where a batch goes that the group sent out. */
  readonly #forwards: (Delivery | null)[][] = [];
  /** The element status of each AP of a group, from its last snapshot. */
  readonly #vmStatus = new Map<number, Record<string, unknown>>();
  readonly #inputs: InputSocket[] = [];
  readonly #outSockets = new Map<"v4" | "v6", UdpSocket>();
  readonly #sets: CounterSet[] = [];
  #stopped = false;
  /** Batches groups emitted before the whole session was started, delivered once it is; null once it is. */
  #held: Decoded[] | null = [];
  /** Their buffers' bytes: the main isolate acknowledges them on arrival, so this bound is what holds them back. */
  #heldBytes = 0;
  /** The start failed: what groups emit while the session is taken down is dropped. */
  #discard = false;
  readonly #allow: SourceAllowList;
  readonly #sandboxes: SandboxStatus | null;
  /** The linked inputs registered on the node's link port. */
  readonly #linked: Disposable[] = [];
  /** The link senders asked for (given back at stop). */
  readonly #linkSends: { peer: string; ap: string; input: string }[] = [];

  private constructor(
    readonly plan: SessionPlan,
    private readonly node: NodeServices,
    options: ExecutorOptions,
  ) {
    this.#allow = options.allowSources ?? SourceAllowList.ANY;
    this.#sandboxes = options.sandboxes ?? null;
    this.startedAt = node.clock.now();
    this.#groupOf = plan.aps.map(() => null);
    for (const vm of plan.vms) {
      // An uploaded AP of the group runs in the group's sandbox process (its proxy is hosted here): not in the worker.
      const aps = plan.aps.flatMap((ap, i) => (ap.vm === vm.name && !ap.kind.sandboxed ? [i] : []));
      if (aps.length === 0) continue;
      const group: VmGroup = new VmGroup({
        plan,
        name: vm.name,
        aps,
        node,
        workerUrl: options.workerUrl ?? new URL("./vm/worker.ts", import.meta.url),
        clock: options.vmClock ?? systemClock,
        startMs: options.vmStartMs ?? VM_DEFAULTS.startMs,
        stopMs: options.vmStopMs ?? VM_DEFAULTS.stopMs,
        snapshotMs: options.snapshotMs ?? VM_DEFAULTS.snapshotMs,
        onBatch: (decoded) => this.#fromGroup(group, decoded),
        onSnapshot: (snapshot) => this.#snapshot(group, snapshot),
        onEdge: (ap, message) => {
          if (this.#groupOf[ap] === group) this.#links.get(ap)?.onMessage?.(message);
        },
        onFailed: () => {
          // The logic is gone: the main isolate's halves of the group's APs stop (ports freed, figures gone).
          for (const ap of aps) if (this.#links.has(ap)) void this.#host.stop(ap);
        },
      });
      this.#groups.push(group);
      for (const i of aps) {
        this.#groupOf[i] = group;
        if (plan.aps[i].kind.edge) {
          this.#links.set(i, {
            vm: vm.name,
            post: (message) => group.postEdge(i, message),
            onMessage: null,
          });
        }
      }
    }
    this.#host = new ApHost({
      plan,
      node,
      aps: plan.aps.flatMap((_, i) => (this.#groupOf[i] && !this.#links.has(i) ? [] : [i])),
      outward: (_ap, _j, wires) => this.#route(wires),
      half: (ap) => {
        const link = this.#links.get(ap);
        return link ? { side: "main", link } : undefined;
      },
    });
  }

  /** Starts every part of the session or, when one cannot start, none: throws StartError naming the AP. */
  static async start(
    plan: SessionPlan,
    node: NodeServices,
    options: ExecutorOptions = {},
  ): Promise<RunningSession> {
    const session = new RunningSession(plan, node, options);
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
    const peers = new Set(
      plan.aps.flatMap((ap) =>
        ap.outputs.flatMap((o) => o.wires.flatMap((w) => w.kind === "link" ? [w.peer] : []))
      ),
    );
    const linked = plan.aps.some((ap) => ap.inputs.some((i) => i.linked));
    if ((peers.size || linked) && !node.links) {
      const what = peers.size ? `sends to node ${[...peers].join(", ")}` : "is fed from other nodes";
      throw new StartError(
        `its part${
          plan.placement ? ` for node ${plan.placement.self}` : ""
        } ${what} and this node has no link port (node.cluster.data)`,
      );
    }
    // Every input's socket first: a port that cannot be had refuses the session before any element starts (a
    // saver would otherwise have created, or with `overwrite` truncated, its file for a session that never ran).
    for (const [i, ap] of plan.aps.entries()) {
      ap.inputs.forEach((input, k) => {
        if (input.external === null) return;
        const ports = plan.useRtp ? [input.external, input.external + 1] : [input.external];
        const allow = SourceAllowList.parse(input.allow);
        ports.forEach((port, f) => {
          let socket: UdpSocket;
          try {
            socket = openUdp({ host: node.host, port }, node.udp);
          } catch (error) {
            const where = input.at ? ` (${input.at})` : "";
            throw new StartError(
              `${ap.name}: input ${input.name}, DIPRONN_INPUT(${input.external})${where}: ${
                errorMessage(error)
              }`,
              { cause: error },
            );
          }
          this.#inputs.push({
            socket,
            ap: ap.name,
            port: input.name,
            droppedSource: 0,
            apIndex: i,
            inputIndex: k,
            rtcp: f === 1,
            allow,
          });
        });
      });
    }
    this.#host.create();
    plan.aps.forEach((ap, i) => {
      const group = this.#groupOf[i];
      // The wires a group cannot reach itself: APs outside it, the data paths of split APs (here), and
      // DIPRONN_OUTPUT addresses.
      this.#forwards[i] = group
        ? ap.outputs.map((o) =>
          this.#route(
            o.wires.filter((w) =>
              w.kind === "ap"
                ? this.#groupOf[w.node] !== group || this.#links.has(w.node)
                : w.kind === "link" || w.to !== null
            ),
          )
        )
        : [];
    });
    const started = await Promise.allSettled(this.#groups.map((g) => g.start()));
    const failed = started.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    await this.#host.start();
    const held = this.#held ?? [];
    this.#held = null;
    this.#heldBytes = 0;
    for (const d of held) this.#forward(d);
    for (const [i, ap] of plan.aps.entries()) {
      const group = this.#groupOf[i];
      ap.inputs.forEach((input, k) => {
        if (!input.linked) return;
        this.#linked.push(node.links!.register(plan.name, ap.name, input.name, (batch, rtcp) => {
          if (this.#stopped) return;
          if (group && !this.#links.has(i)) group.post({ kind: "deliver", ap: i, port: k, rtcp }, batch);
          else this.#host.receive(i, k, batch, rtcp);
        }, input.linkedFrom));
      });
    }
    // Only now, with every element started, does anything arrive.
    for (const entry of this.#inputs) {
      entry.loop = this.#receive(entry);
    }
    this.#publish();
  }

  /** The input's own allow-list (`entry.allow`) narrows the node's. */
  async #receive(entry: InputSocket): Promise<void> {
    const { socket, apIndex: ap, inputIndex: input, rtcp, allow: own } = entry;
    const group = this.#groupOf[ap];
    const lists = [this.#allow, own].filter((l) => l !== SourceAllowList.ANY);
    const allow = lists.length === 0
      ? null
      : lists.length === 1
      ? lists[0]
      : { allows: (host: string) => lists[0].allows(host) && lists[1].allows(host) };
    let picked = new Int32Array(0);
    for (;;) {
      let batch: Batch | null = await socket.receive();
      if (!batch) return;
      if (allow) {
        if (picked.length < batch.count) picked = new Int32Array(batch.count);
        let n = 0;
        for (let i = 0; i < batch.count; i++) if (allow.allows(batch.from(i).host)) picked[n++] = i;
        entry.droppedSource += batch.count - n;
        if (n === 0) continue;
        if (n < batch.count) batch = new SelectedBatch(batch, picked, n);
      }
      if (group && !this.#links.has(ap)) group.post({ kind: "deliver", ap, port: input, rtcp }, batch);
      // The received batch travels the graph unchanged: its bytes are summed once here, not at every port.
      else this.#host.receive(ap, input, batch, rtcp);
    }
  }

  /** One delivery for `wires` that start in this isolate or were sent out by a group. */
  #route(wires: readonly Wire[]): Delivery | null {
    const parts = wires.flatMap((w): Delivery[] => {
      if (w.kind === "ap") {
        const group = this.#links.has(w.node) ? null : this.#groupOf[w.node];
        if (group) {
          return [(batch, rtcp) => group.post({ kind: "deliver", ap: w.node, port: w.input, rtcp }, batch)];
        }
        return [(batch, rtcp) => this.#host.deliver(w.node, w.input, batch, rtcp)];
      }
      if (w.kind === "link") {
        // The start refused a part with links and no link port.
        const send = this.node.links!.sender(w.peer, this.plan.name, w.ap, w.input);
        this.#linkSends.push({ peer: w.peer, ap: w.ap, input: w.input });
        return [send];
      }
      if (!w.to) return []; // a reflector's participants: the element sends itself
      const socket = this.#outSocket(isIPv6(w.to.host) ? "v6" : "v4");
      // RTCP goes to port + 1 only with use_RTP (the check keeps that port in range).
      const rtp = socket.destinations([w.to]);
      const dest: Destinations[] = [
        rtp,
        this.plan.useRtp ? socket.destinations([{ ...w.to, port: w.to.port + 1 }]) : rtp,
      ];
      return [(batch, rtcp) => socket.send(batch, dest[rtcp ? 1 : 0])];
    });
    if (parts.length === 0) return null;
    if (parts.length === 1) return parts[0];
    return (batch, rtcp) => {
      for (const p of parts) p(batch, rtcp);
    };
  }

  /** A batch a group sent out: held until the session has started, then routed like any other. */
  #fromGroup(group: VmGroup, decoded: Decoded): void {
    const { to } = decoded;
    if (
      to.kind !== "emitted" || this.#groupOf[to.ap] !== group ||
      to.port >= this.plan.aps[to.ap].outputs.length
    ) {
      this.node.logger.error("VM group sent a batch for an AP it does not run", {
        session: this.plan.name,
        vm: group.name,
        ap: to.ap,
      });
      return;
    }
    if (this.#discard) return group.dropOut(decoded.batch.count);
    if (!this.#held) return this.#forward(decoded);
    if (this.#heldBytes + decoded.size > LINK_LIMIT_BYTES) return group.dropOut(decoded.batch.count);
    this.#heldBytes += decoded.size;
    this.#held.push(decoded);
  }

  #forward({ to, batch, bytes }: Decoded): void {
    const deliver = this.#forwards[to.ap][to.port];
    if (deliver) this.#host.entering(batch, bytes, () => deliver(batch, to.rtcp));
  }

  /**
   * A group's counters: they replace what this isolate showed for its APs. Only for the group's own APs and ports,
   * and only numbers: a worker's report is not trusted.
   */
  #snapshot(group: VmGroup, snapshot: SnapshotMessage): void {
    for (const s of snapshot.aps) {
      // A split AP is counted here, where its data goes.
      if (this.#groupOf[s.ap] !== group || this.#links.has(s.ap)) continue;
      const state = this.#host.states[s.ap];
      const copy = (ports: PortCount[], counts: readonly (readonly [number, number])[]) =>
        ports.forEach((p, k) => {
          const [packets, bytes] = counts[k] ?? [];
          if (typeof packets === "number" && typeof bytes === "number") Object.assign(p, { packets, bytes });
        });
      copy(state.inputs, s.inputs);
      copy(state.outputs, s.outputs);
      if (typeof s.errors === "number") state.errors = s.errors;
      if (typeof s.status === "object" && s.status !== null) this.#vmStatus.set(s.ap, s.status);
    }
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
    for (const ap of this.#host.states) {
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
    for (const group of this.#groups) {
      const labels = { session: this.plan.name, vm: group.name };
      const set = metrics.set("session_vm", labels);
      set.gauge("up", "1 while the VM group's worker runs", () => (group.state === "running" ? 1 : 0));
      this.#sets.push(set);
      for (const direction of ["in", "out"] as const) {
        const dropped = metrics.set("session_vm", { ...labels, direction });
        dropped.counter(
          "dropped_total",
          "Datagrams lost crossing into or out of the VM group (link full, worker gone)",
          () => direction === "in" ? group.droppedIn : group.droppedOut,
        );
        this.#sets.push(dropped);
      }
    }
  }

  /** Counters of every VM group as of now (a snapshot is asked of each worker); for callers that cannot wait. */
  async refresh(): Promise<void> {
    await Promise.all(this.#groups.map((g) => g.refresh()));
  }

  status(): Record<string, unknown> {
    const groups = new Map(this.#groups.map((g) => [g.name, g]));
    return {
      name: this.plan.name,
      owner: this.plan.owner,
      use_rtp: this.plan.useRtp,
      uptime_seconds: Math.round((this.node.clock.now() - this.startedAt) / 1000),
      ports: this.plan.ports,
      vms: this.plan.vms.map((vm) => ({
        ...vm,
        ...(groups.get(vm.name)?.status() ?? (this.#sandboxes ? {} : { state: "empty" })),
        ...(this.#sandboxes?.groupStatus(vm.name) ? { sandbox: this.#sandboxes.groupStatus(vm.name) } : {}),
      })),
      ...(this.#sandboxes ? { sandboxes: this.#sandboxes.status() } : {}),
      aps: this.#host.states.map((ap, i) => {
        const known = {
          name: ap.plan.name,
          kind: ap.plan.kind.name,
          vm: ap.plan.vm,
          inputs: ap.inputs.map((p, k) => ({
            ...p,
            from: ap.plan.inputs[k].external === null
              ? (ap.plan.inputs[k].linked ? "link" : null)
              : `DIPRONN_INPUT(${
                [ap.plan.inputs[k].external, ...ap.plan.inputs[k].allow.map((a) => JSON.stringify(a))].join(
                  ", ",
                )
              })`,
          })),
          outputs: ap.outputs.map((p, j) => ({
            ...p,
            to: ap.plan.outputs[j].wires.map((w) =>
              w.kind === "ap"
                ? `${this.plan.aps[w.node].name}.${this.plan.aps[w.node].inputs[w.input].name}`
                : w.kind === "link"
                ? `link(${w.peer}: ${w.ap}.${w.input})`
                : w.to
                ? `DIPRONN_OUTPUT(${formatHostPort(w.to)})`
                : "DIPRONN_OUTPUT"
            ),
          })),
          errors: ap.errors,
        };
        const own = this.#groupOf[i] && !this.#links.has(i)
          ? this.#vmStatus.get(i) ?? {}
          : this.#host.elementStatus(i);
        // The element's own figures come after what the session knows of its AP and cannot replace it.
        return { ...known, ...own, ...known };
      }),
      sockets: this.#inputs.map((i) => ({
        ap: i.ap,
        port: i.port,
        listen: formatHostPort(i.socket.local),
        udp: i.socket.impl,
        ...i.socket.stats,
        dropped_source: i.droppedSource,
      })),
      ...(this.plan.placement ? { placement: this.plan.placement } : {}),
      ...(this.node.links ? { links: this.node.links.sessionStatus(this.plan.name) } : {}),
    };
  }

  /**
   * Inputs close first, then every AP stops in data-flow order (a group's APs in its worker, one by one), so that
   * what is in flight reaches the sinks; then the workers end, after a final snapshot.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const l of this.#linked.splice(0)) l[Symbol.dispose]();
    for (const i of this.#inputs) await i.socket.close();
    await Promise.all(this.#inputs.map((i) => i.loop));
    if (this.#held) {
      // A failed start: nothing held is delivered, nor what groups emit from now on.
      this.#discard = true;
      for (const d of this.#held) this.#groupOf[d.to.ap]?.dropOut(d.batch.count);
      this.#held = null;
    }
    for (let i = 0; i < this.plan.aps.length; i++) {
      const group = this.#groupOf[i];
      // A split AP: its sockets first, then its logic.
      if (this.#links.has(i)) await this.#host.stop(i);
      if (group) await group.stopAp(i);
      else await this.#host.stop(i);
    }
    await Promise.all(this.#groups.map((g) => g.close()));
    for (const s of this.#outSockets.values()) await s.close();
    for (const l of this.#linkSends.splice(0)) {
      this.node.links?.release(l.peer, this.plan.name, l.ap, l.input);
    }
    for (const set of this.#sets) this.node.metrics.remove(set);
  }
}

function sum(ports: { packets: number; bytes: number }[], key: "packets" | "bytes"): number {
  let n = 0;
  for (const p of ports) n += p[key];
  return n;
}
