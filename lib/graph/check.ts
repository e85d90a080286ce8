/**
 * Session description -> runnable plan, after every check that can be made before anything runs (Click-style: the
 * wiring first, then each AP's configuration, all errors collected, each at its place): unknown kinds, port counts,
 * inputs fed by nothing, outputs wired twice where the kind does not allow it, loops, port clashes (with use_RTP a
 * port takes port and port + 1), parameters a kind does not know or cannot parse, and files two APs would share.
 * A graph without such mistakes is then held to the node's budgets (budgets.ts). An output wired twice to the same
 * target keeps one wire: a datagram is never sent twice to one place by one output.
 *
 * A session spread over several nodes is planned one node's part at a time (`PlanOptions.placement`): every AP is
 * checked as usual (kinds, parameters, wiring, loops), but only this node's APs are planned; their ports, files and
 * budgets are this node's alone. A wire to an AP on another node becomes a link wire (sent on the node's link port,
 * lib/cluster/link.ts), and an input fed from another node is marked `linked` (it is fed by the link port). The AP
 * parameter `node` pins an AP to a node for placement: every kind accepts it, and it is not the kind's parameter.
 */
import { formatPosition } from "../core/errors.ts";
import type { Registry } from "../core/registry.ts";
import { suggest } from "../core/suggest.ts";
import { addError, at, type Pos, type ProgramError } from "../dipronn/ast.ts";
import { firstAt, programErrors } from "../dipronn/parser.ts";
import {
  type ApDecl,
  INPUT,
  OUTPUT,
  type SessionSpec,
  type Target,
  type VmDecl,
} from "../dipronn/session.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import {
  type BudgetGraph,
  checkBudgets,
  DEFAULT_BUDGETS,
  type NodeContext,
  type SessionUsage,
} from "./budgets.ts";
import { upstreamClockRates } from "./clock_hints.ts";
import type { ElementKind } from "./element.ts";
import { ParamProblem } from "./params.ts";

/** Most APs one session may hold. */
export const MAX_APS = 256;

/** The AP parameter that pins an AP to a node (placement); no kind sees it. */
export const NODE_PARAM = "node";

export type Wire =
  | { readonly kind: "ap"; readonly node: number; readonly input: number }
  | { readonly kind: "out"; readonly to: HostPort | null }
  /** To input `input` of AP `ap` on the node `peer` (a part of a multi-node session); `input` is the port's name. */
  | { readonly kind: "link"; readonly peer: string; readonly ap: string; readonly input: string };

/** Which node runs each AP of a session, and which node this part is for. */
export interface PartPlacement {
  readonly self: string;
  /** AP name -> node name, for every AP of the session. */
  readonly nodeOf: Readonly<Record<string, string>>;
}

export interface PlannedAp {
  readonly name: string;
  /** Where the program declares it (`file:line:col` of its block), for start errors. */
  readonly at?: string;
  readonly kind: ElementKind;
  readonly vm: string | null;
  readonly params: Record<string, unknown>;
  /**
   * Ordinary inputs in declared order; `external` is the UDP port that feeds it, if any, and `allow` the source
   * prefixes that port lets in (empty: any). `linked`: an AP on another node feeds it (through the link port), and
   * `linkedFrom` names the nodes that may: datagrams for it from any other peer are refused.
   */
  readonly inputs: readonly {
    readonly name: string;
    readonly external: number | null;
    /** Where the program asks for the external port (`file:line:col` of its DIPRONN_INPUT), for start errors. */
    readonly at?: string;
    readonly allow: readonly string[];
    readonly linked?: boolean;
    readonly linkedFrom?: readonly string[];
  }[];
  readonly outputs: readonly { readonly name: string; readonly wires: readonly Wire[] }[];
  readonly registration: number | null;
  /** Clock rates (payload type -> Hz) of what reaches its inputs, as far as the program tells (clock_hints.ts). */
  readonly clockRates: ReadonlyMap<number, number>;
}

export interface SessionPlan {
  readonly name: string;
  readonly owner: string | null;
  readonly useRtp: boolean;
  /** In data-flow order: every AP comes after those that feed it. */
  readonly aps: readonly PlannedAp[];
  readonly vms: readonly { readonly name: string; readonly ref: string; readonly aps: readonly string[] }[];
  /** Every UDP port the session binds (with use_RTP, port + 1 as well). */
  readonly ports: readonly number[];
  /** What its APs hold alone on the node (files they write). */
  readonly claims: readonly string[];
  /** What it holds against the node's budgets. */
  readonly usage: SessionUsage;
  /** UDP ports its DIPRONN_OUTPUTs send to that may be the node's own (see NodeContext.outputPorts). */
  readonly outputPorts: readonly number[];
  /** Set when this plan is one node's part of a multi-node session: `aps` are that node's only. */
  readonly placement?: PartPlacement;
}

export interface PlanOptions {
  readonly kinds: Registry<ElementKind>;
  /** Ports already held on this node, and by whom ("session X"). */
  readonly portsInUse?: ReadonlyMap<number, string>;
  /** Claims (files written) already held on this node, and by whom. */
  readonly claimsInUse?: ReadonlyMap<string, string>;
  /**
   * The node's budgets and what its running sessions hold. Absent: the default budgets, with output to loopback
   * allowed, as a plan made away from a node (a test, a tool) has no node to loop back into.
   */
  readonly node?: NodeContext;
  /**
   * Plans only the part of `self` in a session spread over nodes (see the module doc); absent, the whole session
   * runs here.
   */
  readonly placement?: PartPlacement;
}

/** Checked without a node: default budgets, loopback output allowed. */
const NO_NODE: NodeContext = { budgets: { ...DEFAULT_BUDGETS, allowLoopbackOutput: true } };

/**
 * Checks a session and plans it; throws ErrorList<ProgramError> with every mistake. `earlier` are the mistakes
 * describeSession already found: with any, the checks that follow the wiring are left out (a connection that
 * could not be read would show up again as "fed by nothing"), the others still run.
 */
export function planSession(
  spec: SessionSpec,
  options: PlanOptions,
  earlier: ProgramError[] = [],
): SessionPlan {
  const { kinds, placement } = options;
  const nodeOf = (name: string) => placement ? placement.nodeOf[name] : undefined;
  const isLocal = (name: string) => !placement || nodeOf(name) === placement.self;
  const errors: ProgramError[] = [...earlier];
  const wiringKnown = earlier.length === 0;
  const fail = (message: string, pos: Pos, related?: Pos) =>
    addError(errors, message, at(spec.file, pos), { related: related ? at(spec.file, related) : undefined });

  if (spec.aps.length > MAX_APS) {
    // Nothing else is checked: the limit is what keeps the checks below (and the executor) small.
    fail(`A session holds at most ${MAX_APS} APs, not ${spec.aps.length}`, spec.aps[MAX_APS].pos);
    throw programErrors(errors);
  }
  if (spec.aps.length === 0) fail("The session has no AP", { line: 1, col: 1 });

  // Kinds and parameters.
  const kindOf = new Map<string, ElementKind>();
  const params = new Map<string, Record<string, unknown>>();
  const claims = new Map<string, { ap: string; pos: Pos }>();
  for (const ap of spec.aps) {
    if (!kinds.has(ap.ref)) {
      fail(
        `Unknown AP kind "${ap.ref}"${suggest(ap.ref, kinds.names())} (known: ${kinds.names().join(", ")})`,
        ap.refPos,
      );
      continue;
    }
    const kind = kinds.get(ap.ref);
    kindOf.set(ap.name, kind);
    if (ap.vm && kind.needs?.process) {
      // A VM group's worker is never granted --allow-run (vm/group.ts), so the AP could not start there.
      fail(
        `${ap.name} (${kind.name}) starts a process, which a VM may not: move it out of VM ${ap.vm}`,
        ap.refPos,
      );
    }
    const values = readParams(ap, kind, fail);
    if (!values) continue;
    params.set(ap.name, values);
    const ordinary = ap.inputs.filter((p) => p.name !== kind.ports.registration);
    const place = {
      inputs: ordinary.length,
      useRtp: spec.useRtp,
      inputNames: ordinary.map((p) => p.name),
      outputNames: ap.outputs.map((o) => o.name),
    };
    for (const problem of kind.check?.(values as never, place) ?? []) {
      fail(`${ap.name} (${kind.name}): ${problem}`, ap.refPos);
    }
    // Files are held on the node that runs the AP: another node's APs hold theirs there.
    for (const claim of isLocal(ap.name) ? kind.claims?.(values as never) ?? [] : []) {
      const first = claims.get(claim);
      const other = options.claimsInUse?.get(claim);
      if (first) fail(`${ap.name} and ${first.ap} both use ${claim}${firstAt(first.pos)}`, ap.pos, first.pos);
      else if (other) fail(`${ap.name} uses ${claim}, which ${other} already uses`, ap.pos);
      else claims.set(claim, { ap: ap.name, pos: ap.pos });
    }
  }

  // Where each AP runs: every AP on some node, pins kept, a VM group on one node.
  if (placement) {
    for (const ap of spec.aps) {
      const node = nodeOf(ap.name);
      const pin = nodePin(ap);
      if (typeof node !== "string" || node === "") {
        fail(`${ap.name} has no node in the placement`, ap.pos);
      } else if (pin !== null && pin !== node) {
        fail(`${ap.name} is pinned to node "${pin}" but placed on "${node}"`, ap.pos);
      }
    }
    for (const vm of spec.vms) {
      const pin = nodePin(vm);
      const off = pin === null ? undefined : vm.aps.find((a) => nodeOf(a) !== pin);
      if (off !== undefined) {
        fail(`VM ${vm.name} is pinned to node "${pin}" but ${off} is placed on "${nodeOf(off)}"`, vm.pos);
      }
      const nodes = [...new Set(vm.aps.map((a) => nodeOf(a)).filter((n) => typeof n === "string"))];
      if (nodes.length > 1) {
        fail(
          `VM ${vm.name} is placed on ${nodes.map((n) => `"${n}"`).join(" and ")}: its APs run on one node`,
          vm.pos,
        );
      }
    }
    if (spec.aps.length && !spec.aps.some((ap) => isLocal(ap.name))) {
      fail(`No AP of the session is placed on node "${placement.self}"`, spec.aps[0].pos);
    }
  }

  // Ports of each AP against its kind, and who feeds whom.
  const fedBy = new Map<string, { from: string; ap: string; pos: Pos }[]>();
  for (const ap of spec.aps) {
    for (const out of ap.outputs) {
      for (const t of out.targets) {
        if (t.kind !== "ap") continue;
        const key = `${t.ap}.${t.port}`;
        let feeders = fedBy.get(key);
        if (!feeders) fedBy.set(key, feeders = []);
        feeders.push({ from: `${ap.name}.${out.name}`, ap: ap.name, pos: t.pos });
      }
    }
  }
  for (const ap of wiringKnown ? spec.aps : []) {
    const kind = kindOf.get(ap.name);
    if (!kind) continue;
    const rules = kind.ports;
    const ordinary = ap.inputs.filter((p) => p.name !== rules.registration);
    if (rules.registration) {
      const reg = ap.inputs.find((p) => p.name === rules.registration);
      if (!reg) {
        fail(`${ap.name} (${kind.name}) needs an input ${rules.registration}(${INPUT}(port))`, ap.pos);
      } else if (!reg.external) {
        fail(`${ap.name}.${reg.name} must be written ${reg.name}(${INPUT}(port))`, reg.pos);
      }
    }
    countPorts(ap, "input", ordinary.length, rules.inputs, fail);
    countPorts(ap, "output", ap.outputs.length, rules.outputs, fail);
    for (const p of ap.inputs) {
      const feeders = fedBy.get(`${ap.name}.${p.name}`) ?? [];
      if (p.external && feeders.length) {
        fail(
          `${ap.name}.${p.name} takes ${INPUT}(${p.external.port}) and is also fed by ${feeders[0].from}`,
          feeders[0].pos,
          p.pos,
        );
      } else if (!p.external && feeders.length === 0) {
        fail(
          `Input ${ap.name}.${p.name} is fed by nothing: wire an output to it or give it ${INPUT}(port)`,
          p.pos,
        );
      }
    }
    for (const out of ap.outputs) {
      if (out.targets.length > 1 && !rules.fanout) {
        fail(
          `Output ${ap.name}.${out.name} is wired ${out.targets.length} times; ${kind.name} sends each output to one target (use a duplicator)`,
          out.targets[1].pos,
          out.targets[0].pos,
        );
      }
      for (const t of out.targets) {
        if (t.kind !== "out") continue;
        if (spec.useRtp && t.to?.port === 65535) {
          fail(
            `${OUTPUT} port 65535 leaves no room for its RTCP port (use_RTP sends to port and port + 1)`,
            t.pos,
          );
        }
        if (rules.participants && t.to) {
          fail(
            `${ap.name}.${out.name} goes to the reflector's participants: write ${out.name}(${OUTPUT})`,
            t.pos,
          );
        } else if (!rules.participants && !t.to) {
          fail(`${OUTPUT} from ${ap.name}.${out.name} needs an address: ${OUTPUT}("192.0.2.7:5004")`, t.pos);
        }
      }
      if (rules.participants && out.targets.some((t) => t.kind === "ap")) {
        fail(`${ap.name}.${out.name} can only go to ${OUTPUT} (the reflector's participants)`, out.pos);
      }
    }
  }

  // From here on, this node's part only: what it binds, holds and sends.
  const part: SessionSpec = placement ? { ...spec, aps: spec.aps.filter((ap) => isLocal(ap.name)) } : spec;
  const ports = checkPorts(part, options.portsInUse ?? new Map(), fail);
  const flow = wiringKnown ? dataFlowOrder(spec.aps, fail) : [];
  const order = flow.filter((ap) => isLocal(ap.name));
  if (errors.length) throw programErrors(errors);
  const clockRates = upstreamClockRates(flow, kindOf, params);

  const index = new Map(order.map((ap, i) => [ap.name, i]));
  const targetsOf = (out: ApDecl["outputs"][number]) => withoutRepeats(out.targets);
  /** Whether an AP on another node feeds this input. */
  const linkedFrom = (ap: string, input: string) =>
    placement !== undefined && (fedBy.get(`${ap}.${input}`) ?? []).some((f) => !isLocal(f.ap));
  const graph: BudgetGraph = {
    aps: order.map((ap) => {
      const kind = kindOf.get(ap.name)!;
      return {
        name: ap.name,
        pos: ap.pos,
        vm: ap.vm,
        // Where datagrams enter this node: DIPRONN_INPUT ports, and inputs fed from other nodes.
        entries: ap.inputs.flatMap((p): BudgetGraph["aps"][number]["entries"][number][] =>
          p.external && p.name !== kind.ports.registration
            ? [{ name: p.name, port: p.external.port, pos: p.external.pos }]
            : linkedFrom(ap.name, p.name)
            ? [{ name: p.name, port: null, pos: p.pos }]
            : []
        ),
        source: ap.inputs.length === 0,
        // A link send counts as one send, as a DIPRONN_OUTPUT does; the link port is the node's, not a socket of
        // the session's.
        outputs: ap.outputs.map((o) =>
          targetsOf(o).map((t) =>
            t.kind === "ap"
              ? isLocal(t.ap) ? { ap: index.get(t.ap)! } : { to: null, pos: t.pos }
              : { to: t.to, pos: t.pos }
          )
        ),
        diskBytes: kind.diskBytes?.(params.get(ap.name)! as never) ?? 0,
        sockets: kind.sockets?.(params.get(ap.name)! as never) ?? 0,
      };
    }),
  };
  const outputPorts: number[] = [];
  const usage = checkBudgets(part, graph, {
    node: options.node ?? NO_NODE,
    ports,
    ownPorts: new Set(options.portsInUse?.keys() ?? []),
    fail,
    outputPorts,
  });
  if (errors.length) throw programErrors(errors);

  const aps: PlannedAp[] = order.map((ap) => {
    const kind = kindOf.get(ap.name)!;
    const inputs = ap.inputs.filter((p) => p.name !== kind.ports.registration);
    return {
      name: ap.name,
      at: formatPosition(at(spec.file, ap.pos)),
      kind,
      vm: ap.vm,
      params: params.get(ap.name)!,
      inputs: inputs.map((p) => {
        const planned = {
          name: p.name,
          external: p.external?.port ?? null,
          ...(p.external ? { at: formatPosition(at(spec.file, p.external.pos)) } : {}),
          allow: p.external?.allow ?? [],
        };
        if (!linkedFrom(ap.name, p.name)) return planned;
        const from = (fedBy.get(`${ap.name}.${p.name}`) ?? []).filter((f) => !isLocal(f.ap)).map((f) =>
          nodeOf(f.ap)!
        );
        return { ...planned, linked: true, linkedFrom: [...new Set(from)].sort() };
      }),
      registration: ap.inputs.find((p) => p.name === kind.ports.registration)?.external?.port ?? null,
      clockRates: clockRates.get(ap.name) ?? new Map(),
      outputs: ap.outputs.map((o) => ({
        name: o.name,
        wires: targetsOf(o).map((t): Wire => {
          if (t.kind === "out") return { kind: "out", to: t.to };
          if (!isLocal(t.ap)) return { kind: "link", peer: nodeOf(t.ap)!, ap: t.ap, input: t.port };
          const target = order[index.get(t.ap)!];
          const k = kindOf.get(t.ap)!;
          return {
            kind: "ap",
            node: index.get(t.ap)!,
            input: target.inputs.filter((p) => p.name !== k.ports.registration).findIndex((p) =>
              p.name === t.port
            ),
          };
        }),
      })),
    };
  });
  return {
    name: spec.name,
    owner: spec.owner,
    useRtp: spec.useRtp,
    aps,
    vms: part.vms.filter((v) => !placement || v.aps.some(isLocal)).map((v) => ({
      name: v.name,
      ref: v.ref,
      aps: v.aps,
    })),
    ports,
    claims: [...claims.keys()],
    usage,
    outputPorts: [...new Set(outputPorts)],
    ...(placement ? { placement: { self: placement.self, nodeOf: { ...placement.nodeOf } } } : {}),
  };
}

/**
 * The node an AP (or a VM group) is pinned to by `node = "..."`, or null: as describeSession read it, or else as
 * an AP parameter.
 */
export function nodePin(decl: ApDecl | VmDecl): string | null {
  const read = (decl as { readonly node?: { readonly name: string } | null }).node;
  if (read) return read.name;
  if (!("params" in decl)) return null;
  const a = decl.params.find((p) => p.key === NODE_PARAM);
  const v = a?.values.length === 1 ? a.values[0] : null;
  return v && (v.kind === "string" || v.kind === "name") ? v.text : null;
}

/** The targets of one output, each once (in the order first written). */
function withoutRepeats(targets: readonly Target[]): Target[] {
  const seen = new Set<string>();
  return targets.filter((t) => {
    const key = t.kind === "ap" ? `ap ${t.ap}.${t.port}` : `out ${t.to ? formatHostPort(t.to) : ""}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function readParams(
  ap: ApDecl,
  kind: ElementKind,
  fail: (message: string, pos: Pos) => void,
): Record<string, unknown> | null {
  const out: Record<string, unknown> = {};
  let ok = true;
  const known = Object.keys(kind.params);
  for (const a of ap.params) {
    if (a.key === NODE_PARAM && !(NODE_PARAM in kind.params)) {
      // A placement pin: every kind takes it, none sees it.
      const v = a.values.length === 1 ? a.values[0] : null;
      if (!v || (v.kind !== "string" && v.kind !== "name") || v.text === "") {
        fail(
          `${ap.name}.${NODE_PARAM}: a node name, such as ${NODE_PARAM} = "prague"`,
          a.values[0]?.pos ?? a.pos,
        );
        ok = false;
      }
      continue;
    }
    const param = kind.params[a.key];
    if (!param) {
      fail(
        `${kind.name} has no parameter "${a.key}"${suggest(a.key, known)}${
          known.length ? ` (its parameters: ${known.join(", ")})` : " (it takes none)"
        }`,
        a.pos,
      );
      ok = false;
      continue;
    }
    const value = param.parse(a.values);
    if (value instanceof ParamProblem) {
      fail(`${ap.name}.${a.key}: ${value.message}`, a.values[0].pos);
      ok = false;
    } else out[a.key] = value;
  }
  for (const [key, param] of Object.entries(kind.params)) {
    // A parameter given with a bad value was reported above; it is not missing as well.
    if (key in out || ap.params.some((a) => a.key === key)) continue;
    if (param.default === undefined) {
      fail(`${ap.name} (${kind.name}) needs ${key} = ... (${param.doc})`, ap.pos);
      ok = false;
    } else out[key] = param.default;
  }
  return ok ? out : null;
}

function countPorts(
  ap: ApDecl,
  what: "input" | "output",
  n: number,
  rule: { min: number; max: number },
  fail: (message: string, pos: Pos) => void,
): void {
  if (n >= rule.min && n <= rule.max) return;
  const want = rule.min === rule.max
    ? `${rule.min}`
    : rule.max === Infinity
    ? `at least ${rule.min}`
    : `${rule.min} to ${rule.max}`;
  fail(
    `${ap.name} (${ap.ref}) takes ${want} ${what}${rule.max === 1 && rule.min === 1 ? "" : "s"}, not ${n}`,
    ap.pos,
  );
}

/** Every bound port once in the session and not held elsewhere on the node. */
function checkPorts(
  spec: SessionSpec,
  inUse: ReadonlyMap<number, string>,
  fail: (message: string, pos: Pos, related?: Pos) => void,
): number[] {
  const taken = new Map<number, { what: string; pos: Pos }>();
  for (const ap of spec.aps) {
    for (const p of ap.inputs) {
      if (!p.external) continue;
      const base = p.external.port;
      const span = spec.useRtp ? [base, base + 1] : [base];
      if (spec.useRtp && base === 65535) {
        fail(
          `${INPUT}(65535) leaves no room for its RTCP port (use_RTP takes port and port + 1)`,
          p.external.pos,
        );
        continue;
      }
      const what = `${ap.name}.${p.name}`;
      for (const port of span) {
        const first = taken.get(port);
        const rtp = spec.useRtp ? " (use_RTP takes port and port + 1)" : "";
        if (first) {
          fail(
            `UDP port ${port} of ${what} clashes with ${first.what}${rtp}${firstAt(first.pos)}`,
            p.external.pos,
            first.pos,
          );
          break;
        }
        const other = inUse.get(port);
        if (other) {
          fail(`UDP port ${port} of ${what} is already used by ${other}${rtp}`, p.external.pos);
          break;
        }
        taken.set(port, { what, pos: p.external.pos });
      }
    }
  }
  return [...taken.keys()].sort((a, b) => a - b);
}

/** APs ordered so that each comes after every AP that feeds it; a loop is an error (packets would circle forever). */
function dataFlowOrder(aps: readonly ApDecl[], fail: (message: string, pos: Pos) => void): ApDecl[] {
  const byName = new Map(aps.map((a) => [a.name, a]));
  const state = new Map<string, "visiting" | "done">();
  const order: ApDecl[] = [];
  const reported = new Set<string>();
  // Depth-first from each AP towards its targets; finishing order reversed is a topological order.
  const visit = (ap: ApDecl, path: string[]): void => {
    state.set(ap.name, "visiting");
    for (const out of ap.outputs) {
      for (const t of out.targets) {
        if (t.kind !== "ap") continue;
        const next = byName.get(t.ap);
        if (!next) continue;
        const s = state.get(next.name);
        if (s === "visiting") {
          const loop = [...path.slice(path.indexOf(next.name)), next.name];
          const key = [...loop].sort().join();
          if (!reported.has(key)) {
            reported.add(key);
            fail(`The graph has a loop: ${loop.join(" -> ")}`, t.pos);
          }
        } else if (!s) visit(next, [...path, next.name]);
      }
    }
    state.set(ap.name, "done");
    order.push(ap);
  };
  for (const ap of aps) if (!state.has(ap.name)) visit(ap, [ap.name]);
  return order.reverse();
}
