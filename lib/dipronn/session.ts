/**
 * Syntax tree -> session description: the session's name and attributes, its VMs, and for each active program its
 * kind (`ref`), its input and output ports and where each output goes. Everything the language itself can tell is
 * checked here (a block without a name, a connection to an AP or port nobody declared, a name used twice); what
 * depends on the kind of AP (its ports, its parameters) is checked against the element registry in lib/graph.
 */
import { type HostPort, isIP, parseHostPort } from "../net/address.ts";
import { AllowListError, SourceAllowList } from "../net/allow.ts";
import { suggest } from "../core/suggest.ts";
import {
  addError,
  at,
  type Attr,
  type Block,
  type Pos,
  type Program,
  ProgramError,
  type Value,
  valueText,
} from "./ast.ts";
import { firstAt, programErrors } from "./parser.ts";

export const INPUT = "DIPRONN_INPUT";
export const OUTPUT = "DIPRONN_OUTPUT";

/** An input port: fed by another AP's output, or (`external`) by UDP arriving at the node on a port. */
export interface InputDecl {
  readonly name: string;
  readonly pos: Pos;
  /** `allow`: source prefixes the port lets in (`DIPRONN_INPUT(10000, "10.0.0.0/8")`); empty: any. */
  readonly external: { readonly port: number; readonly pos: Pos; readonly allow: readonly string[] } | null;
}

/** Where an output goes: another AP's input, or out of the node (to an address, or for a reflector its participants). */
export type Target =
  | { readonly kind: "ap"; readonly ap: string; readonly port: string; readonly pos: Pos }
  | { readonly kind: "out"; readonly to: HostPort | null; readonly pos: Pos };

export interface OutputDecl {
  readonly name: string;
  readonly pos: Pos;
  readonly targets: readonly Target[];
}

export interface ApDecl {
  readonly name: string;
  readonly ref: string;
  readonly refPos: Pos;
  /** The VM group the AP runs in, or null. */
  readonly vm: string | null;
  readonly inputs: readonly InputDecl[];
  readonly outputs: readonly OutputDecl[];
  /** Every other `key = value` in the block: the AP's parameters. */
  readonly params: readonly Attr[];
  /** `node = "prague"`: the node the AP is pinned to (a placement pin, not a parameter of its kind), or null. */
  readonly node: NodePin | null;
  readonly pos: Pos;
}

/** A placement pin: the cluster name of the node an AP or a VM group must run on (lib/cluster/placement.ts). */
export interface NodePin {
  readonly name: string;
  readonly pos: Pos;
}

export interface VmDecl {
  readonly name: string;
  readonly ref: string;
  readonly pos: Pos;
  readonly aps: readonly string[];
  /** `node = "prague"` as a statement in the VM block: every AP of the group runs there. */
  readonly node: NodePin | null;
}

export interface SessionSpec {
  readonly file: string;
  /** The Project name: the session's name on the node. */
  readonly name: string;
  readonly owner: string | null;
  readonly notifications: string | null;
  /** `on_node_loss = restart` or `stop`: what a session across nodes does when a node holding a part is lost. */
  readonly onNodeLoss?: "stop" | "restart" | null;
  /** `use_RTP`: every interconnection is a pair of ports, port and port + 1 (RTP and RTCP). */
  readonly useRtp: boolean;
  readonly aps: readonly ApDecl[];
  readonly vms: readonly VmDecl[];
}

const SESSION_ATTRS = ["owner", "notifications", "on_node_loss"];
const SESSION_FLAGS = ["use_RTP"];
/** A session name is also a URL path segment and a label value. */
const SESSION_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/;
const AP_NAME = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;
const PORT_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** A node's cluster name, as a pin names it (as node.cluster.name is written in the config). */
const NODE_NAME = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;

/**
 * Works out the session from a parsed program. Throws ErrorList<ProgramError> with every mistake, unless `found` is
 * given: then mistakes are added to it and the session as far as it could be read is returned, so that later checks
 * (kinds, parameters) still report theirs.
 */
export function describeSession(program: Program, found?: ProgramError[]): SessionSpec {
  const errors: ProgramError[] = found ?? [];
  const file = program.file;
  const fail = (message: string, pos: Pos, related?: Pos) =>
    addError(errors, message, at(file, pos), { related: related ? at(file, related) : undefined });

  let name = "";
  if (!program.project) fail("The program has no Project line naming the session", { line: 1, col: 1 });
  else if (!SESSION_NAME.test(program.project.name)) {
    fail(
      `Invalid Project name "${program.project.name}": use letters, digits, "_", "-" and ".", up to 128`,
      program.project.pos,
    );
  } else name = program.project.name;

  let owner: string | null = null;
  let notifications: string | null = null;
  let onNodeLoss: "stop" | "restart" | null = null;
  let useRtp = false;
  const aps: ApDecl[] = [];
  const vms: VmDecl[] = [];
  const names = new Map<string, Pos>();
  const seenAttr = new Map<string, Pos>();

  const claim = (what: string, n: string, pos: Pos): boolean => {
    const first = names.get(n);
    if (first) {
      fail(`${what} name "${n}" is already used${firstAt(first)}`, pos, first);
      return false;
    }
    names.set(n, pos);
    return true;
  };

  const readBlock = (block: Block, vm: string | null): void => {
    const header = new Map<string, Attr>();
    for (const a of block.header) {
      const first = header.get(a.key);
      if (first) fail(`"${a.key}" is given twice${firstAt(first.pos)}`, a.pos, first.pos);
      else if (a.key !== "name" && a.key !== "ref") {
        fail(`Unknown ${block.type} header field "${a.key}"${suggest(a.key, ["name", "ref"])}`, a.pos);
      } else header.set(a.key, a);
    }
    const nameAttr = header.get("name");
    const refAttr = header.get("ref");
    if (!nameAttr) fail(`The ${block.type} block has no name="..."`, block.pos);
    if (!refAttr) fail(`The ${block.type} block has no ref=...`, block.pos);
    const n = nameAttr ? single(nameAttr, "string") : null;
    const r = refAttr ? single(refAttr, "name") : null;
    const ok = n !== null && r !== null;
    if (n !== null && !AP_NAME.test(n)) {
      fail(`Invalid ${block.type} name "${n}": use letters, digits, "_" and "-", up to 64`, nameAttr!.pos);
    }
    const claimed = n !== null && claim(block.type, n, nameAttr!.values[0].pos);

    if (block.type === "VM") {
      if (vm) fail("A VM cannot contain another VM", block.pos);
      const members: string[] = [];
      let node: NodePin | null = null;
      let nodePos: Pos | null = null;
      for (const s of block.body) {
        if (s.kind === "block" && s.type === "AP") {
          const before = aps.length;
          readBlock(s, n ?? "");
          if (aps.length > before) members.push(aps[aps.length - 1].name);
        } else if (s.kind === "block") readBlock(s, n ?? "");
        else if (s.kind === "attr" && s.key === "node") {
          if (nodePos) fail(`"node" is given twice${firstAt(nodePos)}`, s.pos, nodePos);
          else [nodePos, node] = [s.pos, readPin(s, fail)];
        } else {
          fail(
            `A VM block holds only AP blocks and node = "..."; found ${s.kind === "attr" ? s.key : s.name}`,
            s.pos,
          );
        }
      }
      if (ok && claimed) vms.push({ name: n, ref: r, pos: block.pos, aps: members, node });
      return;
    }

    const inputs: InputDecl[] = [];
    const outputs: OutputDecl[] = [];
    const params: Attr[] = [];
    let node: NodePin | null = null;
    const ports = new Map<string, Pos>();
    const port = (p: string, pos: Pos): boolean => {
      if (!PORT_NAME.test(p)) {
        fail(`Invalid port name "${p}": use letters, digits and "_"`, pos);
        return false;
      }
      const first = ports.get(p);
      if (first) {
        fail(`Port "${p}" is declared twice in ${n ?? "this AP"}${firstAt(first)}`, pos, first);
        return false;
      }
      ports.set(p, pos);
      return true;
    };
    const seen = new Map<string, Pos>();
    for (const s of block.body) {
      if (s.kind === "block") {
        fail("An AP block cannot contain another block", s.pos);
        continue;
      }
      if (s.kind === "flag") {
        fail(`"${s.name}" needs a value: ${s.name} = ...`, s.pos);
        continue;
      }
      const first = seen.get(s.key);
      if (first) {
        fail(`"${s.key}" is given twice${firstAt(first)}`, s.pos, first);
        continue;
      }
      seen.set(s.key, s.pos);
      if (s.key === "inputs") {
        for (const v of s.values) {
          const decl = readInput(v, fail);
          if (decl && port(decl.name, decl.pos)) inputs.push(decl);
        }
      } else if (s.key === "outputs") {
        for (const v of s.values) {
          const decl = readOutput(v, fail);
          if (decl && port(decl.name, decl.pos)) outputs.push(decl);
        }
      } else if (s.key === "node") node = readPin(s, fail);
      else params.push(s);
    }
    if (ok && claimed) {
      aps.push({
        name: n,
        ref: r,
        refPos: refAttr!.values[0].pos,
        vm,
        inputs,
        outputs,
        params,
        node,
        pos: block.pos,
      });
    }
  };

  const single = (a: Attr, kind: "string" | "name"): string | null => {
    const v = a.values[0];
    if (a.values.length !== 1 || v.kind !== kind) {
      fail(
        `${a.key} must be ${kind === "string" ? "a quoted string" : "a name"}, not ${
          a.values.map(valueText).join(", ")
        }`,
        v.pos,
      );
      return null;
    }
    return v.text;
  };

  for (const s of program.body) {
    if (s.kind === "block") {
      readBlock(s, null);
      continue;
    }
    const key = s.kind === "attr" ? s.key : s.name;
    const first = seenAttr.get(key);
    if (first) {
      fail(`"${key}" is given twice${firstAt(first)}`, s.pos, first);
      continue;
    }
    seenAttr.set(key, s.pos);
    if (s.kind === "flag") {
      if (s.name === "use_RTP") useRtp = true;
      else if (SESSION_ATTRS.includes(s.name)) fail(`"${s.name}" needs a value: ${s.name} = ...`, s.pos);
      else fail(`Unknown session flag "${s.name}"${suggest(s.name, SESSION_FLAGS)}`, s.pos);
    } else if (s.key === "owner") {
      owner = single(s, "string");
    } else if (s.key === "notifications") {
      const v = s.values[0];
      if (s.values.length !== 1 || v.kind === "call" || v.kind === "number") {
        fail(
          `notifications must be a name or a quoted string, not ${s.values.map(valueText).join(", ")}`,
          v.pos,
        );
      } else notifications = v.text;
    } else if (s.key === "on_node_loss") {
      const v = s.values[0];
      if (
        s.values.length !== 1 || (v.kind !== "name" && v.kind !== "string") ||
        !["stop", "restart"].includes(v.text)
      ) {
        fail(`on_node_loss is stop or restart, not ${s.values.map(valueText).join(", ")}`, v.pos);
      } else onNodeLoss = v.text as "stop" | "restart";
    } else if (s.key === "use_RTP") {
      fail("use_RTP is a flag: write use_RTP; on its own", s.pos);
    } else {
      fail(`Unknown session attribute "${s.key}"${suggest(s.key, SESSION_ATTRS)}`, s.pos);
    }
  }

  checkTargets(aps, fail);
  if (!found && errors.length) throw programErrors(errors);
  return { file, name, owner, notifications, onNodeLoss, useRtp, aps, vms };
}

type Fail = (message: string, pos: Pos, related?: Pos) => void;

/** `node = "prague"` (a bare name is read as well, as the YAML form may give one). */
function readPin(a: Attr, fail: Fail): NodePin | null {
  const v = a.values[0];
  if (a.values.length !== 1 || (v.kind !== "string" && v.kind !== "name") || !NODE_NAME.test(v.text)) {
    fail(
      `node names the node to run on, such as node = "prague" (letters, digits, "_" and "-"), not ${
        a.values.map(valueText).join(", ")
      }`,
      v.pos,
    );
    return null;
  }
  return { name: v.text, pos: v.pos };
}

/** `in` or `V_in(DIPRONN_INPUT(10000))`. */
function readInput(v: Value, fail: Fail): InputDecl | null {
  if (v.kind === "name") return { name: v.text, pos: v.pos, external: null };
  if (v.kind !== "call") {
    fail(`Expected an input port name, found ${valueText(v)}`, v.pos);
    return null;
  }
  const [source] = v.args;
  if (v.args.length !== 1 || source.kind !== "call" || source.name !== INPUT) {
    fail(
      `An input names its source only as ${INPUT}(port); APs are wired from the output side (${v.name} got ${
        v.args.map(valueText).join(", ")
      })`,
      (source ?? v).pos,
    );
    // The port is declared all the same, so that an output wired to it is not reported as well.
    return { name: v.name, pos: v.pos, external: null };
  }
  const port = udpPort({ ...source, args: source.args.slice(0, 1) }, fail);
  const allow: string[] = [];
  for (const a of source.args.slice(1)) {
    if (a.kind !== "string") {
      fail(`${INPUT}(port, "prefix", ...) takes source prefixes as strings, such as "10.0.0.0/8"`, a.pos);
      continue;
    }
    try {
      SourceAllowList.parse([a.text]);
      allow.push(a.text);
    } catch (error) {
      if (!(error instanceof AllowListError)) throw error;
      fail(error.message, a.pos);
    }
  }
  return port === null ? null : { name: v.name, pos: v.pos, external: { port, pos: source.pos, allow } };
}

function udpPort(call: Value & { kind: "call" }, fail: Fail): number | null {
  const [p] = call.args;
  const n = p?.kind === "number" ? Number(p.text) : NaN;
  if (call.args.length !== 1 || !Number.isInteger(n) || n < 1 || n > 65535) {
    fail(`${call.name} takes one UDP port number, 1 to 65535`, (p ?? call).pos);
    return null;
  }
  return n;
}

/** `out(Next.in)`, `out(A.in, B.in)`, `out(DIPRONN_OUTPUT)` or `out(DIPRONN_OUTPUT("192.0.2.7:5004"))`. */
function readOutput(v: Value, fail: Fail): OutputDecl | null {
  if (v.kind === "name") {
    fail(`Output "${v.text}" goes nowhere: write ${v.text}(AP.port) or ${v.text}(${OUTPUT}(...))`, v.pos);
    return null;
  }
  if (v.kind !== "call") {
    fail(`Expected an output port, found ${valueText(v)}`, v.pos);
    return null;
  }
  const targets: Target[] = [];
  if (v.args.length === 0) fail(`Output "${v.name}" goes nowhere: name at least one target`, v.pos);
  for (const t of v.args) {
    if (t.kind === "name" && t.text === OUTPUT) targets.push({ kind: "out", to: null, pos: t.pos });
    else if (t.kind === "call" && t.name === OUTPUT) {
      const [a] = t.args;
      const parsed = a?.kind === "string" && t.args.length === 1 ? parseHostPort(a.text) : null;
      if (parsed === null) {
        fail(`${OUTPUT}(...) takes one "address:port" in quotes, such as "192.0.2.7:5004"`, (a ?? t).pos);
      } else if (typeof parsed === "string") fail(`${OUTPUT}: ${parsed}`, a.pos);
      else if (!isIP(parsed.host) || parsed.port === 0) {
        fail(`${OUTPUT} needs an IP address and a port other than 0, not ${valueText(a)}`, a.pos);
      } else targets.push({ kind: "out", to: parsed, pos: t.pos });
    } else if (t.kind === "call" && t.name === INPUT) {
      fail(`${INPUT} names where an input comes from; an output goes to AP.port or ${OUTPUT}`, t.pos);
    } else if (t.kind === "name" && t.text.includes(".")) {
      const dot = t.text.lastIndexOf(".");
      targets.push({ kind: "ap", ap: t.text.slice(0, dot), port: t.text.slice(dot + 1), pos: t.pos });
    } else {
      fail(`Expected AP.port or ${OUTPUT} as the target of "${v.name}", found ${valueText(t)}`, t.pos);
    }
  }
  return { name: v.name, pos: v.pos, targets };
}

/** Every `AP.port` target names a declared AP (by name, or VM.name) and one of its input ports. */
function checkTargets(aps: ApDecl[], fail: Fail): void {
  const byName = new Map<string, ApDecl>();
  for (const ap of aps) {
    byName.set(ap.name, ap);
    if (ap.vm) byName.set(`${ap.vm}.${ap.name}`, ap);
  }
  for (const ap of aps) {
    for (const out of ap.outputs) {
      for (let i = 0; i < out.targets.length; i++) {
        const t = out.targets[i];
        if (t.kind !== "ap") continue;
        const target = byName.get(t.ap);
        if (!target) {
          fail(`Unknown AP "${t.ap}" in ${ap.name}.${out.name}${suggest(t.ap, [...byName.keys()])}`, t.pos);
          continue;
        }
        if (!target.inputs.some((p) => p.name === t.port)) {
          const known = target.inputs.map((p) => p.name);
          fail(
            `${target.name} has no input "${t.port}"${
              known.length
                ? suggest(t.port, known) || ` (its inputs: ${known.join(", ")})`
                : " (it has no inputs)"
            }`,
            t.pos,
          );
          continue;
        }
        // Targets name APs by their own name from here on, however they were written.
        (out.targets as Target[])[i] = { ...t, ap: target.name };
      }
    }
  }
}
