/**
 * Placement: which node runs each AP of a session, from the program's pins and the nodes' usage. Pure: the same
 * program and the same usage give the same placement, so a plan shown by `edgenode program plan` (or the dry-run
 * route) is the one a start would make from those figures.
 *
 * The rules, in the order they apply:
 * 1. A VM group is placed as one: every AP of a `{ VM ... }` block runs on one node (it is one worker there).
 * 2. Pins are honoured. An AP is pinned with the parameter `node = "prague"`; a whole VM group with the statement
 *    `node = "prague"` in its block (before or between its APs). A pin to a node that is not among the candidates
 *    is refused, naming the known ones; pins that disagree inside one VM group are refused; a pin to a node that
 *    cannot take the AP (below) is refused with the figures. Nothing falls back: a pin is the operator's word.
 * 3. An AP fed from outside (an ordinary DIPRONN_INPUT, not a reflector's participant registration) goes to the node
 *    that received the request (`self`): the senders were pointed there. If `self` cannot take it, rule 5 places it.
 * 4. An AP that sends out of the session (DIPRONN_OUTPUT: a reflector's participants, an address) goes to the first
 *    of the `near` nodes (nearest to the receivers, best first) that can take it. Without `near`, rule 5.
 * 5. The rest, one at a time (the one with most links to APs already placed first, ties in program order), go to
 *    the node holding most of their linked neighbours, so that few links cross between nodes; ties go to `self`,
 *    then to the node listed first in `nodes`.
 * A node can take an AP while its memory share is at most `threshold` (0.85), its CPU share plus the APs this
 * session has put there plus the AP's own load stays at most `threshold`, and it has as many free session ports as
 * the AP binds (each DIPRONN_INPUT; with use_RTP port + 1 as well). An AP's load is its kind's weight (KIND_WEIGHTS:
 * a transcoder decodes and encodes video and weighs 10, a duplicator 1) times `loadPerWeight` (0.01 of a node):
 * an estimate made before anything runs, not a measurement. A plan that cannot be made (no nodes, every candidate
 * too busy) is refused with a PlacementError whose reason names the AP and the figures.
 */
import { suggest } from "../core/suggest.ts";
import type { ApDecl, SessionSpec } from "../dipronn/session.ts";

/**
 * What placement reads of a node's usage: a subset of NodeUsage (lib/cluster/usage.ts), which it accepts as is.
 */
export interface NodeLoad {
  readonly name: string;
  /** 0..1: share of all cores busy. */
  readonly cpu: number;
  /** 0..1: share of memory in use. */
  readonly memory: number;
  /** Session UDP ports still free under the node's budgets. */
  readonly free_ports: number;
}

export interface PlacementLimits {
  /** A node whose memory share, or CPU share with the APs placed on it, would be above this takes no more. */
  readonly threshold: number;
  /** The share of a node's CPU one unit of kind weight is assumed to take. */
  readonly loadPerWeight: number;
}

export const DEFAULT_PLACEMENT_LIMITS: PlacementLimits = Object.freeze({
  threshold: 0.85,
  loadPerWeight: 0.01,
});

/** Relative CPU cost of an AP by its kind (`ref`); a kind not listed weighs 1. */
export const KIND_WEIGHTS: Readonly<Record<string, number>> = Object.freeze({
  "localservice.transcoder": 10,
  "localservice.syncer": 2,
  "reflector": 2,
  "localservice.duplicator": 1,
  "localservice.forwarder": 1,
  "localservice.saver": 1,
  "localservice.player": 1,
  "localservice.counter": 1,
});

export interface PlacementInput {
  /** The node that received the request. */
  readonly self: string;
  /** Every candidate node, self included; their order breaks ties. */
  readonly nodes: readonly NodeLoad[];
  /** Nodes nearest to the receivers, best first (from the program's `receivers` hint or the request); may be empty. */
  readonly near?: readonly string[];
  /** Defaults: DEFAULT_PLACEMENT_LIMITS. */
  readonly limits?: Partial<PlacementLimits>;
}

export interface Placement {
  readonly session: string;
  /** AP name -> node name, for every AP of the session. */
  readonly nodeOf: Readonly<Record<string, string>>;
  /** AP name -> one line saying why it runs there. */
  readonly why: Readonly<Record<string, string>>;
}

/** A session that cannot be placed; `reason` says why, naming the AP and the figures. */
export class PlacementError extends Error {
  override name = "PlacementError";
  constructor(readonly session: string, readonly reason: string) {
    super(`Cannot place session ${session}: ${reason}`);
  }
}

/** One connection from an AP on one node to an AP on another: it becomes a link. */
export interface CrossLink {
  readonly from: string;
  readonly output: string;
  readonly fromNode: string;
  readonly to: string;
  readonly input: string;
  readonly toNode: string;
}

/** What one unit (a VM group, or an AP outside any) needs. */
interface Unit {
  readonly index: number;
  /** "Dup_V" or "VM group my_VM1". */
  readonly label: string;
  readonly vm: string | null;
  readonly aps: ApDecl[];
  pin: { node: string; by: string } | null;
  weight: number;
  ports: number;
  entry: boolean;
  receivers: boolean;
}

interface NodeState {
  readonly usage: NodeLoad;
  readonly order: number;
  /** CPU share with what this session has put here so far. */
  cpu: number;
  freePorts: number;
}

/** Assigns every AP of `spec` to one of `input.nodes`; throws PlacementError when that cannot be done. */
export function place(spec: SessionSpec, input: PlacementInput): Placement {
  const limits = { ...DEFAULT_PLACEMENT_LIMITS, ...input.limits };
  const refuse = (reason: string): never => {
    throw new PlacementError(spec.name, reason);
  };
  if (input.nodes.length === 0) refuse("no nodes to place it on");
  const nodes = new Map<string, NodeState>();
  input.nodes.forEach((usage, order) => {
    if (nodes.has(usage.name)) refuse(`node ${usage.name} is listed twice`);
    nodes.set(usage.name, {
      usage,
      order,
      cpu: usage.cpu,
      freePorts: Number.isFinite(usage.free_ports) ? Math.max(0, Math.floor(usage.free_ports)) : 0,
    });
  });
  const names = [...nodes.keys()];
  const units = unitsOf(spec, refuse);
  const unitOf = new Map<string, Unit>();
  for (const u of units) for (const ap of u.aps) unitOf.set(ap.name, u);

  // Links between units, counted once per connection (an output wired twice to one input is one).
  const links = new Map<Unit, Map<Unit, number>>(units.map((u) => [u, new Map()]));
  for (const { from, to } of connections(spec)) {
    const a = unitOf.get(from)!;
    const b = unitOf.get(to);
    if (!b || a === b) continue;
    links.get(a)!.set(b, (links.get(a)!.get(b) ?? 0) + 1);
    links.get(b)!.set(a, (links.get(b)!.get(a) ?? 0) + 1);
  }

  const placed = new Map<Unit, NodeState>();
  const why = new Map<Unit, string>();
  /** Null when `node` can take `unit`, else the figures that say why not. */
  const cannot = (node: NodeState, unit: Unit): string | null => {
    const load = unit.weight * limits.loadPerWeight;
    const t = limits.threshold;
    if (!(node.usage.memory <= t)) return `${node.usage.name}: memory ${fig(node.usage.memory)} > ${fig(t)}`;
    if (!(node.cpu + load <= t + 1e-9)) {
      return `${node.usage.name}: cpu ${fig(node.cpu)} + ${fig(load)} for ${unit.label} > ${fig(t)}`;
    }
    if (node.freePorts < unit.ports) {
      return `${node.usage.name}: ${node.freePorts} free ports < ${unit.ports} for ${unit.label}`;
    }
    return null;
  };
  const assign = (unit: Unit, node: NodeState, reason: string) => {
    node.cpu += unit.weight * limits.loadPerWeight;
    node.freePorts -= unit.ports;
    placed.set(unit, node);
    why.set(unit, reason);
  };

  // 2. Pins.
  for (const unit of units) {
    if (!unit.pin) continue;
    const node = nodes.get(unit.pin.node);
    if (!node) {
      refuse(
        `${unit.pin.by} is pinned to node "${unit.pin.node}", which is not among the nodes (${
          names.join(", ")
        })${suggest(unit.pin.node, names)}`,
      );
    }
    const no = cannot(node!, unit);
    if (no) refuse(`${unit.pin.by} is pinned to ${node!.usage.name}, which cannot take it (${no})`);
    assign(
      unit,
      node!,
      `pinned to ${node!.usage.name}${unit.pin.by === unit.label ? "" : ` (${unit.pin.by})`}`,
    );
  }

  // 3. Outside input to the node that received the request.
  const notes = new Map<Unit, string>();
  const self = nodes.get(input.self);
  for (const unit of units) {
    if (placed.has(unit) || !unit.entry) continue;
    const no = self ? cannot(self, unit) : `${input.self} is not among the nodes`;
    if (!no) {
      assign(unit, self!, `takes input from outside: on ${input.self}, the node that received the request`);
    } else notes.set(unit, `not on ${input.self}, the node that received the request (${no})`);
  }

  // 4. Output to receivers toward the nodes nearest to them.
  const near = (input.near ?? []).filter((n) => nodes.has(n));
  for (const unit of near.length ? units : []) {
    if (placed.has(unit) || !unit.receivers) continue;
    const skipped: string[] = [];
    for (const n of near) {
      const no = cannot(nodes.get(n)!, unit);
      if (no) {
        skipped.push(no);
        continue;
      }
      assign(
        unit,
        nodes.get(n)!,
        `sends to receivers: on ${n}, the nearest node to them${
          skipped.length ? ` that can take it (${skipped.join("; ")})` : ""
        }`,
      );
      break;
    }
    if (!placed.has(unit)) notes.set(unit, `no node near the receivers can take it (${skipped.join("; ")})`);
  }

  // 5. The rest, next to what they are linked with.
  const linksTo = (unit: Unit, node: NodeState) => {
    let n = 0;
    for (const [other, count] of links.get(unit)!) if (placed.get(other) === node) n += count;
    return n;
  };
  for (;;) {
    let next: Unit | null = null;
    let best = -1;
    for (const unit of units) {
      if (placed.has(unit)) continue;
      const n = [...links.get(unit)!].reduce((sum, [other, c]) => sum + (placed.has(other) ? c : 0), 0);
      if (n > best) [next, best] = [unit, n];
    }
    if (!next) break;
    const unit: Unit = next;
    const ranked = [...nodes.values()].map((node) => ({ node, links: linksTo(unit, node) })).sort((a, b) =>
      b.links - a.links || rank(a.node, input.self) - rank(b.node, input.self)
    );
    const skipped: string[] = [];
    let chosen: { node: NodeState; links: number } | null = null;
    for (const c of ranked) {
      const no = cannot(c.node, unit);
      if (!no) {
        chosen = c;
        break;
      }
      skipped.push(no);
    }
    if (!chosen) {
      refuse(
        `no node can take ${unit.label} (weight ${unit.weight}, ${unit.ports} UDP ports): ${
          skipped.join("; ")
        }`,
      );
    }
    const node = chosen!.node.usage.name;
    const neighbours = [...links.get(unit)!.keys()].filter((u) => placed.get(u) === chosen!.node)
      .sort((a, b) => a.index - b.index).map((u) => u.label);
    const alone = [...links.get(unit)!.keys()].some((u) => placed.has(u)) ? "" : "no linked AP placed yet: ";
    const reason = neighbours.length
      ? `next to ${neighbours.join(", ")} on ${node}`
      : `${alone}on ${node}, ${
        node === input.self ? "the node that received the request" : "the first node that can take it"
      }`;
    const note = notes.get(unit);
    const skip = skipped.length ? ` (skipped ${skipped.join("; ")})` : "";
    assign(unit, chosen!.node, `${note ? `${note}; ` : ""}${reason}${skip}`);
  }

  const nodeOf: Record<string, string> = {};
  const whyOf: Record<string, string> = {};
  for (const ap of spec.aps) {
    const unit = unitOf.get(ap.name)!;
    nodeOf[ap.name] = placed.get(unit)!.usage.name;
    const reason = why.get(unit)!;
    whyOf[ap.name] = unit.vm === null
      ? reason
      : unit.pin && unit.pin.by === `AP ${ap.name}`
      ? `pinned to ${nodeOf[ap.name]}, with its VM group ${unit.vm}`
      : `with its VM group ${unit.vm}: ${reason}`;
  }
  return { session: spec.name, nodeOf, why: whyOf };
}

/** Every AP-to-AP connection whose two ends run on different nodes, in program order. */
export function crossLinks(spec: SessionSpec, placement: Placement): CrossLink[] {
  const out: CrossLink[] = [];
  for (const c of connections(spec)) {
    const fromNode = placement.nodeOf[c.from];
    const toNode = placement.nodeOf[c.to];
    if (fromNode !== undefined && toNode !== undefined && fromNode !== toNode) {
      out.push({ ...c, fromNode, toNode });
    }
  }
  return out;
}

/** The relative CPU cost of an AP of kind `ref` (KIND_WEIGHTS; 1 for a kind not listed). */
export function kindWeight(ref: string): number {
  return Object.hasOwn(KIND_WEIGHTS, ref) ? KIND_WEIGHTS[ref] : 1;
}

/** AP outputs to AP inputs, each once. */
function connections(spec: SessionSpec): { from: string; output: string; to: string; input: string }[] {
  const out: { from: string; output: string; to: string; input: string }[] = [];
  for (const ap of spec.aps) {
    for (const o of ap.outputs) {
      const seen = new Set<string>();
      for (const t of o.targets) {
        if (t.kind !== "ap" || seen.has(`${t.ap}.${t.port}`)) continue;
        seen.add(`${t.ap}.${t.port}`);
        out.push({ from: ap.name, output: o.name, to: t.ap, input: t.port });
      }
    }
  }
  return out;
}

/** VM groups and the APs outside any, in program order, with their pins, loads and roles. */
function unitsOf(spec: SessionSpec, refuse: (reason: string) => never): Unit[] {
  const units: Unit[] = [];
  const groups = new Map<string, Unit>();
  const vmPin = new Map(spec.vms.map((v) => [v.name, v.node]));
  for (const ap of spec.aps) {
    let unit = ap.vm === null ? undefined : groups.get(ap.vm);
    if (!unit) {
      const pin = ap.vm === null ? null : vmPin.get(ap.vm) ?? null;
      unit = {
        index: units.length,
        label: ap.vm === null ? ap.name : `VM group ${ap.vm}`,
        vm: ap.vm,
        aps: [],
        pin: pin ? { node: pin.name, by: `VM group ${ap.vm}` } : null,
        weight: 0,
        ports: 0,
        entry: false,
        receivers: false,
      };
      units.push(unit);
      if (ap.vm !== null) groups.set(ap.vm, unit);
    }
    unit.aps.push(ap);
    if (ap.node) {
      const by = ap.vm === null ? ap.name : `AP ${ap.name}`;
      if (!unit.pin) unit.pin = { node: ap.node.name, by };
      else if (unit.pin.node !== ap.node.name) {
        refuse(
          `${by} is pinned to ${ap.node.name} but ${unit.pin.by} to ${unit.pin.node}: every AP of VM group ${ap.vm} runs on one node`,
        );
      }
    }
    unit.weight += kindWeight(ap.ref);
    const external = ap.inputs.filter((p) => p.external);
    unit.ports += external.length * (spec.useRtp ? 2 : 1);
    // A reflector's DIPRONN_INPUT is where its participants join, wherever it runs; it sends to them
    // (DIPRONN_OUTPUT with no address), so it counts among the APs near the receivers, not among the entries.
    const participants = ap.outputs.some((o) => o.targets.some((t) => t.kind === "out" && t.to === null));
    if (external.length && !participants) unit.entry = true;
    if (ap.outputs.some((o) => o.targets.some((t) => t.kind === "out"))) unit.receivers = true;
  }
  return units;
}

/** Tie order: the node that received the request first, then the order of `nodes`. */
function rank(node: NodeState, self: string): number {
  return node.usage.name === self ? -1 : node.order;
}

/** A share as written in reasons: 0.85, 0.9, 1. */
function fig(x: number): string {
  return Number.isFinite(x) ? String(Math.round(x * 100) / 100) : String(x);
}
