/**
 * The element contract, in the manner of Click: an active program (AP) kind declares its ports and parameters, and
 * a running element takes batches of datagrams on numbered inputs and emits them on numbered outputs, synchronously
 * (push). Datagrams between elements of one node stay in memory: a batch is passed down the graph by reference and
 * is valid only during the call, so an element that keeps data (the saver's buffer) copies it. An element never
 * changes a batch it was given: the executor counts a received batch's bytes once for every port it passes.
 *
 * With `use_RTP` every interconnection carries two flows, RTP and its RTCP (port and port + 1); `rtcp` tells which.
 */
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import type { MetricsRegistry } from "../core/metrics.ts";
import type { LinkPort } from "../cluster/link.ts";
import type { Batch, UdpOptions } from "../net/udp.ts";
import type { Params, ParamValues } from "./params.ts";

export interface PortRules {
  /** How many ordinary inputs (not counting `registration`). */
  readonly inputs: { readonly min: number; readonly max: number };
  readonly outputs: { readonly min: number; readonly max: number };
  /** An output may go to several targets at once. */
  readonly fanout?: boolean;
  /** The name of an input that must be DIPRONN_INPUT(port) and that the element binds itself (the reflector's). */
  readonly registration?: string;
  /** Outputs go to participants: they are written `out(DIPRONN_OUTPUT)` with no address. */
  readonly participants?: boolean;
}

/** One output of a running element. */
export interface Output {
  emit(batch: Batch, rtcp: boolean): void;
}

export interface ElementContext<P extends Params = Params> {
  /** The AP's name and its session's. */
  readonly name: string;
  readonly session: string;
  readonly params: ParamValues<P>;
  /** The names of its ordinary inputs, in declared order (input `i` of `push` is `inputs[i]`). */
  readonly inputs: readonly string[];
  readonly outputs: readonly Output[];
  /** The names of its outputs, in declared order (`outputs[j]` is `outputNames[j]`). */
  readonly outputNames?: readonly string[];
  /** The VM group it belongs to, if any. */
  readonly vm?: string | null;
  readonly useRtp: boolean;
  /** The port of the `registration` input, when the kind has one. */
  readonly registration: number | null;
  readonly node: NodeServices;
  /** For a split AP in a VM group (see `ElementKind.edge`): the link between its two halves. */
  readonly edge?: EdgeLink;
  /**
   * Clock rates (payload type -> Hz) of what reaches its inputs, as far as the program tells (`outputClockRates` of
   * the APs upstream, carried through the others): a syncer need not measure them. Absent: none known.
   */
  readonly clockRates?: ReadonlyMap<number, number>;
}

/**
 * The two halves of a split AP talk by messages of plain data (structured clone) over this link; each half gets one.
 * What comes from the worker's half is data from code the node does not trust: the main half checks it.
 */
export interface EdgeLink {
  /** The VM group the AP belongs to. */
  readonly vm: string;
  /** False when the message could not be sent (the other half is not running): it will have no answer. */
  post(message: unknown): boolean;
  /** Set by the half: called with each message from the other one. */
  onMessage: ((message: unknown) => void) | null;
}

/** What a node gives its elements. */
export interface NodeServices {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  /** Where savers write and players read; every file name is checked to stay inside. */
  readonly dataDir: string;
  /** The address DIPRONN_INPUT ports are bound on. */
  readonly host: string;
  readonly udp: UdpOptions;
  /**
   * Node-wide objects that the elements of one kind share, under a key the kind owns (the transcoder's pool of
   * ffmpeg processes). Absent: nothing is shared between elements. A shared object that holds child processes
   * implements `HardStop`.
   */
  readonly shared?: Map<string, unknown>;
  /**
   * The node's link port (lib/cluster/link.ts), for the parts of sessions spread over nodes: their wires to APs on
   * other nodes send on it, and their inputs fed from other nodes are registered on it. Absent: such a part cannot
   * start here.
   */
  readonly links?: LinkPort;
}

/** A node-wide shared object that holds what would outlive the node's process (child processes). */
export interface HardStop {
  /** Ends it all at once, without waiting: the node's stop passed its deadline and the process exits next. */
  hardStop(): void;
}

/** Calls `hardStop` on every shared object that has one. */
export function hardStopShared(shared: Map<string, unknown>): void {
  for (const value of shared.values()) {
    const h = value as Partial<HardStop> | null;
    if (h && typeof h.hardStop === "function") h.hardStop();
  }
}

export interface Element {
  push(input: number, batch: Batch, rtcp: boolean): void;
  /** Takes what the element needs (files, sockets); throws StartError when it cannot. */
  start?(): Promise<void>;
  /** Flushes and releases everything. Called once, also after a failed start. */
  stop?(): Promise<void>;
  /** The element's own figures for /status (port counters are kept by the executor). */
  status?(): Record<string, unknown>;
}

/**
 * What an element of a kind reaches outside memory. A VM group's worker is granted what its kinds declare and
 * nothing else (see vm/group.ts), so a kind that leaves this out cannot open a socket or a file in a VM.
 */
export interface KindNeeds {
  /** Sockets of its own: binding a port, sending to addresses (the reflector). */
  readonly net?: boolean;
  /** Files in the node's data directory only: "read" (the player) or "write", which includes reading (the saver). */
  readonly files?: "read" | "write";
  /** It starts child processes (the transcoder's ffmpeg): never granted in a VM, so the graph check refuses it there. */
  readonly process?: boolean;
}

export interface ElementKind<P extends Params = Params> {
  /** The `ref` that names it, such as `localservice.duplicator`. */
  readonly name: string;
  readonly description: string;
  readonly ports: PortRules;
  readonly params: P;
  /** Absent: it needs nothing but memory (a forwarder, a duplicator, a counter). */
  readonly needs?: KindNeeds;
  /**
   * The main isolate's half of an AP of this kind in a VM group: the main isolate keeps every socket, so a kind
   * with sockets of its own splits there. This half holds the sockets and the data path (batches for the AP are
   * delivered to it, in the main isolate, and counted there); `create`, given `edge` in its context, makes the
   * worker's half, which keeps the logic. Without it, an AP in a VM group runs whole in the group's worker.
   */
  edge?(ctx: ElementContext<P> & { readonly edge: EdgeLink }): Element;
  /**
   * UDP sockets an AP of this kind opens beyond its DIPRONN_INPUT ports (the transcoder's towards ffmpeg), counted
   * against the node's socket budgets. Absent: none.
   */
  sockets?(params: ParamValues<P>): number;
  /**
   * The clock rates (payload type -> Hz) of what its outputs carry, when it makes the stream itself (the transcoder:
   * ffmpeg's output). Absent: its outputs carry what its inputs had, so rates known upstream pass through it.
   */
  outputClockRates?(params: ParamValues<P>): ReadonlyMap<number, number>;
  /** The most bytes an AP of this kind may write to disk (a saver's max_bytes), against the node's quota. */
  diskBytes?(params: ParamValues<P>): number;
  /** Names of things only one AP of a node may hold at once (a file it writes), for the graph check. */
  claims?(params: ParamValues<P>): string[];
  /**
   * Problems of the AP's parameters against its place in the session (how many inputs it has, whether the session
   * uses RTP), found by the graph check like every other mistake, with the AP's position.
   */
  check?(
    params: ParamValues<P>,
    place: {
      readonly inputs: number;
      readonly useRtp: boolean;
      readonly inputNames?: readonly string[];
      readonly outputNames?: readonly string[];
    },
  ): string[];
  /**
   * It runs in a sandbox process (an uploaded program, lib/graph/uploaded.ts): its element is a proxy that the main
   * isolate hosts even inside a VM group, whose worker runs only the group's built-in APs.
   */
  readonly sandboxed?: boolean;
  create(ctx: ElementContext<P>): Element;
}

/** Declares a kind with its parameter types inferred. */
export function defineElement<P extends Params>(kind: ElementKind<P>): ElementKind<P> {
  return kind;
}
