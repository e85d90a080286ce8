/**
 * Budgets of a session program, checked at plan time before anything starts: what one uploaded program may make a
 * node do or hold. Each refusal names the budget, its config key and by how much the program goes over, at the
 * place in the program that goes over it.
 *
 * - Sends per input datagram: one datagram into the session is delivered to APs and sent out of the node along
 *   every path of the graph; a duplicator multiplies by its outputs, and duplicators in a row multiply again. The
 *   count assumes each AP passes a datagram to every one of its outputs (exact for duplicators and forwarders, an
 *   upper bound for the others); a reflector's output counts once (its own participant limit bounds the rest).
 * - Sockets (every UDP port bound, with use_RTP port + 1 too, one sending socket per address family, and those a
 *   kind declares it opens itself, ElementKind.sockets) and VM groups (one worker thread each), per session and per
 *   node (what running sessions already hold counts).
 * - Savers' bytes: the sum of every saver's `max_bytes` on the node stays under a quota.
 * - DIPRONN_OUTPUT to a loopback or unspecified address, to the node's own bind address, or to a UDP port a
 *   session of the node holds, only when the node allows it (it makes traffic circle inside the node).
 */
import type { Pos } from "../dipronn/ast.ts";
import type { SessionSpec } from "../dipronn/session.ts";
import { OUTPUT } from "../dipronn/session.ts";
import { formatHostPort, type HostPort, isIPv6 } from "../net/address.ts";
import { SourceAllowList } from "../net/allow.ts";

export interface SessionBudgets {
  /** Deliveries and sends one datagram into the session may lead to. */
  readonly maxSendsPerDatagram: number;
  readonly maxSocketsPerSession: number;
  /** Every session of the node together. */
  readonly maxSockets: number;
  readonly maxVmsPerSession: number;
  readonly maxVms: number;
  /** The sum of savers' `max_bytes` on the node. */
  readonly saverQuotaBytes: number;
  /** DIPRONN_OUTPUT may go to loopback, to the node's own address or to its own session ports. */
  readonly allowLoopbackOutput: boolean;
}

export const DEFAULT_BUDGETS: SessionBudgets = Object.freeze({
  maxSendsPerDatagram: 256,
  maxSocketsPerSession: 64,
  maxSockets: 1024,
  maxVmsPerSession: 8,
  maxVms: 32,
  saverQuotaBytes: 64 * 1024 ** 3,
  allowLoopbackOutput: false,
});

/** The config key of each budget, for messages. */
export const BUDGET_KEYS: Readonly<Record<keyof SessionBudgets, string>> = Object.freeze({
  maxSendsPerDatagram: "node.max_sends_per_datagram",
  maxSocketsPerSession: "node.max_sockets_per_session",
  maxSockets: "node.max_sockets",
  maxVmsPerSession: "node.max_vms_per_session",
  maxVms: "node.max_vms",
  saverQuotaBytes: "node.saver_quota",
  allowLoopbackOutput: "node.allow_loopback_output",
});

/** What a session holds on its node, summed over running sessions for the node-wide budgets. */
export interface SessionUsage {
  readonly sockets: number;
  readonly vms: number;
  readonly saverBytes: number;
}

export const NO_USAGE: SessionUsage = Object.freeze({ sockets: 0, vms: 0, saverBytes: 0 });

/** The node a session is planned for: its budgets, what running sessions hold, and where it binds. */
export interface NodeContext {
  readonly budgets: SessionBudgets;
  /** Summed over the running sessions. */
  readonly inUse?: SessionUsage;
  /** The address DIPRONN_INPUT ports are bound on. */
  readonly host?: string;
  /**
   * UDP ports running sessions send to (DIPRONN_OUTPUT) that may be this node's own (it is bound on every address),
   * and which session: a program may not bind one unless output to the node itself is allowed, whichever came first.
   */
  readonly outputPorts?: ReadonlyMap<number, string>;
}

/** The graph as the budgets see it: APs by index with their wires (targets already without repeats). */
export interface BudgetGraph {
  readonly aps: readonly {
    readonly name: string;
    readonly pos: Pos;
    readonly vm: string | null;
    /** Entry points: DIPRONN_INPUT ports (not a reflector's registration) with their positions. */
    /** `port` null: an input fed from another node (a link), for one node's part of a session. */
    readonly entries: readonly { readonly name: string; readonly port: number | null; readonly pos: Pos }[];
    /** A source (no inputs at all: a player) sends datagrams of its own. */
    readonly source: boolean;
    readonly outputs:
      readonly (readonly ({ readonly ap: number } | { readonly to: HostPort | null; readonly pos: Pos })[])[];
    /** Bytes it may write to disk (a saver's max_bytes). */
    readonly diskBytes: number;
    /** Sockets of its own beyond its DIPRONN_INPUT ports (ElementKind.sockets). */
    readonly sockets: number;
  }[];
}

type Fail = (message: string, pos: Pos) => void;

const LOOPBACK = SourceAllowList.parse(["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"]);

/**
 * Checks the budgets of a planned graph; reports through `fail` and returns what the session would hold.
 * `ports` are the UDP ports it binds, `ownPorts` those sessions of the node hold already.
 */
export function checkBudgets(
  spec: SessionSpec,
  graph: BudgetGraph,
  options: {
    node: NodeContext;
    ports: readonly number[];
    ownPorts: ReadonlySet<number>;
    fail: Fail;
    /** Filled with the ports this program's DIPRONN_OUTPUTs may send to on this node (see NodeContext). */
    outputPorts?: number[];
  },
): SessionUsage {
  const { budgets } = options.node;
  const inUse = options.node.inUse ?? NO_USAGE;
  const { fail } = options;

  // Sends per datagram: memoised over the graph (it has no loops here), so an exponential count costs linear time.
  const sends: number[] = new Array(graph.aps.length);
  const visit = (i: number): number => {
    if (sends[i] !== undefined) return sends[i];
    let n = 0;
    for (const out of graph.aps[i].outputs) {
      for (const w of out) n += "ap" in w ? 1 + visit(w.ap) : 1;
    }
    return sends[i] = n;
  };
  let worst: { n: number; what: string; pos: Pos } | null = null;
  for (const [i, ap] of graph.aps.entries()) {
    for (const e of ap.entries) {
      // The datagram is delivered to the AP first: that is one send too.
      const n = 1 + visit(i);
      if (!worst || n > worst.n) {
        const via = e.port === null ? "fed by a link" : `DIPRONN_INPUT(${e.port})`;
        worst = { n, what: `${ap.name}.${e.name} (${via})`, pos: e.pos };
      }
    }
    if (ap.source) {
      const n = visit(i);
      if (!worst || n > worst.n) worst = { n, what: `each datagram ${ap.name} plays`, pos: ap.pos };
    }
  }
  if (worst && worst.n > budgets.maxSendsPerDatagram) {
    const { n, what, pos } = worst;
    const into = what.startsWith("each") ? what : `a datagram into ${what}`;
    fail(
      `Budget sends per datagram: ${into} leads to ${
        fmt(n)
      } sends (deliveries to APs and DIPRONN_OUTPUT datagrams), ${
        fmt(n - budgets.maxSendsPerDatagram)
      } over the node's ${budgets.maxSendsPerDatagram} (${BUDGET_KEYS.maxSendsPerDatagram}); duplicators multiply`,
      pos,
    );
  }

  // DIPRONN_OUTPUT targets.
  const families = new Set<"v4" | "v6">();
  const own = new Set([...options.ports, ...options.ownPorts]);
  for (const ap of graph.aps) {
    for (const out of ap.outputs) {
      for (const w of out) {
        if ("ap" in w || !w.to) continue;
        families.add(isIPv6(w.to.host) ? "v6" : "v4");
        if (budgets.allowLoopbackOutput) continue;
        const where = formatHostPort(w.to);
        const ports = spec.useRtp ? [w.to.port, w.to.port + 1] : [w.to.port];
        const local = LOOPBACK.allows(w.to.host) || w.to.host === options.node.host;
        if (local) {
          fail(
            `${OUTPUT}("${where}") from ${ap.name} goes to the node itself (${
              LOOPBACK.allows(w.to.host) ? "a loopback or unspecified address" : "its bind address"
            }); the node refuses that unless ${BUDGET_KEYS.allowLoopbackOutput} is true`,
            w.pos,
          );
        } else if (options.node.host && isUnspecified(options.node.host) && options.outputPorts) {
          options.outputPorts.push(...ports);
        }
        if (local || budgets.allowLoopbackOutput) continue;
        if (ports.some((p) => own.has(p)) && options.node.host && isUnspecified(options.node.host)) {
          // Bound on every address: a port of the node's own on any address may well be this node.
          fail(
            `${OUTPUT}("${where}") from ${ap.name} may go to a UDP port of this node's own sessions; the node refuses that unless ${BUDGET_KEYS.allowLoopbackOutput} is true`,
            w.pos,
          );
        }
      }
    }
  }

  // This program's DIPRONN_INPUTs against what running sessions send to this node's ports: either order is refused.
  const sentTo = options.node.outputPorts;
  if (sentTo?.size && !budgets.allowLoopbackOutput && options.node.host && isUnspecified(options.node.host)) {
    for (const ap of spec.aps) {
      for (const p of ap.inputs) {
        if (!p.external) continue;
        const bound = spec.useRtp ? [p.external.port, p.external.port + 1] : [p.external.port];
        const hit = bound.find((port) => sentTo.has(port));
        if (hit === undefined) continue;
        fail(
          `DIPRONN_INPUT(${p.external.port}) of ${ap.name} would receive what ${
            sentTo.get(hit)
          } sends to port ${hit}, which may be this node's; the node refuses that unless ${BUDGET_KEYS.allowLoopbackOutput} is true`,
          p.external.pos,
        );
      }
    }
  }

  // Sockets: bound ports in the order the program declares them, then the sending sockets.
  const sockets = options.ports.length + families.size + graph.aps.reduce((n, ap) => n + ap.sockets, 0);
  const socketPos = (k: number): Pos => {
    // The k-th bound port (0-based) points at its DIPRONN_INPUT; beyond them, at the first DIPRONN_OUTPUT.
    let seen = 0;
    for (const ap of spec.aps) {
      for (const p of ap.inputs) {
        if (!p.external) continue;
        seen += spec.useRtp ? 2 : 1;
        if (seen > k) return p.external.pos;
      }
    }
    for (const ap of graph.aps) {
      for (const out of ap.outputs) for (const w of out) if (!("ap" in w) && w.to) return w.pos;
    }
    return spec.aps[0]?.pos ?? { line: 1, col: 1 };
  };
  if (sockets > budgets.maxSocketsPerSession) {
    fail(
      `Budget sockets per session: the session needs ${sockets} UDP sockets, ${
        sockets - budgets.maxSocketsPerSession
      } over the node's ${budgets.maxSocketsPerSession} (${BUDGET_KEYS.maxSocketsPerSession})`,
      socketPos(budgets.maxSocketsPerSession),
    );
  } else if (inUse.sockets + sockets > budgets.maxSockets) {
    const over = inUse.sockets + sockets - budgets.maxSockets;
    fail(
      `Budget sockets per node: the session needs ${sockets} UDP sockets and running sessions hold ${inUse.sockets}, ${over} over the node's ${budgets.maxSockets} (${BUDGET_KEYS.maxSockets})`,
      socketPos(Math.max(0, budgets.maxSockets - inUse.sockets)),
    );
  }

  // VM groups: only those with APs start a worker.
  const groups = spec.vms.filter((v) => graph.aps.some((a) => a.vm === v.name));
  if (groups.length > budgets.maxVmsPerSession) {
    fail(
      `Budget VM groups per session: the session has ${groups.length}, ${
        groups.length - budgets.maxVmsPerSession
      } over the node's ${budgets.maxVmsPerSession} (${BUDGET_KEYS.maxVmsPerSession})`,
      groups[budgets.maxVmsPerSession].pos,
    );
  } else if (inUse.vms + groups.length > budgets.maxVms) {
    const over = inUse.vms + groups.length - budgets.maxVms;
    fail(
      `Budget VM groups per node: the session has ${groups.length} and running sessions hold ${inUse.vms}, ${over} over the node's ${budgets.maxVms} (${BUDGET_KEYS.maxVms})`,
      groups[Math.max(0, budgets.maxVms - inUse.vms)].pos,
    );
  }

  // Savers' bytes against the node's quota: the first saver that goes over is blamed.
  let saverBytes = 0;
  let blame: Pos | null = null;
  // In the order the program declares them, so that the saver blamed is the one a reader meets last.
  const byPlace = [...graph.aps].sort((a, b) => a.pos.line - b.pos.line || a.pos.col - b.pos.col);
  for (const ap of byPlace) {
    if (!ap.diskBytes) continue;
    saverBytes += ap.diskBytes;
    if (!blame && inUse.saverBytes + saverBytes > budgets.saverQuotaBytes) blame = ap.pos;
  }
  if (blame) {
    const over = inUse.saverBytes + saverBytes - budgets.saverQuotaBytes;
    fail(
      `Budget saver bytes per node: the session's savers may write ${
        bytes(saverBytes)
      } (their max_bytes) and running sessions' ${bytes(inUse.saverBytes)}, ${bytes(over)} over the node's ${
        bytes(budgets.saverQuotaBytes)
      } (${BUDGET_KEYS.saverQuotaBytes}); lower max_bytes`,
      blame,
    );
  }
  return { sockets, vms: groups.length, saverBytes };
}

function isUnspecified(host: string): boolean {
  return host === "0.0.0.0" || host === "::";
}

/** Large counts stay readable: past 10^15 only the order matters. */
function fmt(n: number): string {
  return n < 1e15 ? String(n) : n.toExponential(2);
}

function bytes(n: number): string {
  for (const [unit, size] of [["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]] as const) {
    if (n >= size) return `${+(n / size).toFixed(2)} ${unit}`;
  }
  return `${n} B`;
}
