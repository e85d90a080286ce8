/**
 * A session's placement made before anything starts: the program checked as `edgenode program check` checks it,
 * then placed on the nodes by their usage (placement.ts), with the connections that would cross between nodes and
 * what each node would hold. The usage may come from anywhere: a file (`edgenode program plan --usage`), or the
 * peers' answers (the dry-run API route); `readUsage` reads the file form, with file:line:col errors.
 */
import {
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseDocument,
  type Scalar,
  type YAMLMap,
} from "yaml";
import { checkYamlText, checkYamlTree, PROGRAM_YAML_LIMITS, textPos } from "../config/yaml_limits.ts";
import { ErrorList, PositionedError } from "../core/errors.ts";
import type { Registry } from "../core/registry.ts";
import type { ProgramError } from "../dipronn/ast.ts";
import { describeSession, type SessionSpec } from "../dipronn/session.ts";
import { planSession, type SessionPlan } from "../graph/check.ts";
import type { ElementKind } from "../graph/element.ts";
import { parseAny, type ProgramFormat } from "../graph/program.ts";
import {
  type CrossLink,
  crossLinks,
  DEFAULT_PLACEMENT_LIMITS,
  kindWeight,
  type NodeLoad,
  place,
  type Placement,
  type PlacementInput,
} from "./placement.ts";

/** Most nodes a usage file may list (more than a cluster's peers: a file may be a dump of several). */
export const MAX_USAGE_NODES = 1024;
/** Most bytes a usage file may hold. */
export const MAX_USAGE_BYTES = 1024 * 1024;

/** A node's usage as a usage file gives it: the fields placement reads, and any of NodeUsage's others. */
export interface UsageEntry extends NodeLoad {
  readonly [field: string]: string | number;
}

/** What a node would hold after the placement, against what it reported. */
export interface NodeShare {
  readonly name: string;
  readonly aps: number;
  readonly cpu: number;
  /** CPU share with this session's estimated load (placement.ts). */
  readonly cpu_after: number;
  readonly memory: number;
  readonly free_ports: number;
  readonly free_ports_after: number;
}

export interface SessionPlacementPlan {
  readonly spec: SessionSpec;
  readonly plan: SessionPlan;
  readonly placement: Placement;
  readonly links: readonly CrossLink[];
  readonly nodes: readonly NodeShare[];
}

export interface PlanTextOptions extends PlacementInput {
  readonly kinds: Registry<ElementKind>;
  readonly format?: ProgramFormat;
}

/**
 * Checks the program (throws ErrorList<ProgramError> with every mistake, as `program check`) and places it (throws
 * PlacementError when it cannot be placed).
 */
export function planText(text: string, file: string, options: PlanTextOptions): SessionPlacementPlan {
  const program = parseAny(text, file, options.format);
  const found: ProgramError[] = [];
  const spec = describeSession(program, found);
  const plan = planSession(spec, { kinds: options.kinds }, found);
  const placement = place(spec, options);
  const perWeight = options.limits?.loadPerWeight ?? DEFAULT_PLACEMENT_LIMITS.loadPerWeight;
  const nodes = options.nodes.map((n): NodeShare => {
    const aps = spec.aps.filter((ap) => placement.nodeOf[ap.name] === n.name);
    const ports = aps.reduce((sum, ap) => sum + ap.inputs.filter((p) => p.external).length, 0) *
      (spec.useRtp ? 2 : 1);
    const load = aps.reduce((sum, ap) => sum + kindWeight(ap.ref) * perWeight, 0);
    return {
      name: n.name,
      aps: aps.length,
      cpu: n.cpu,
      cpu_after: Math.round((n.cpu + load) * 1000) / 1000,
      memory: n.memory,
      free_ports: n.free_ports,
      free_ports_after: n.free_ports - ports,
    };
  });
  return { spec, plan, placement, links: crossLinks(spec, placement), nodes };
}

/** A mistake in a usage file, at its place. */
export class UsageFileError extends PositionedError {
  override name = "UsageFileError";
}

const SHARES = ["cpu", "memory"];
const COUNTS = ["free_ports", "sessions", "aps"];
const RATES = ["pps_in", "pps_out", "bps_in", "bps_out"];
const NAME = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;

/**
 * A usage file: a JSON array of NodeUsage (`[{"name": "brno", "cpu": 0.2, "memory": 0.4, "free_ports": 100}, ...]`;
 * the rate and count fields are optional, unknown fields are kept, not read). Throws ErrorList<UsageFileError>
 * with every mistake at its line and column.
 */
export function readUsage(text: string, file: string): UsageEntry[] {
  const errors: UsageFileError[] = [];
  const fail = (message: string, pos: { line: number; col: number }) =>
    errors.length <= 100 && errors.push(new UsageFileError(message, { file, ...pos }));
  const done = () => new ErrorList(errors, "Invalid usage file");
  if (text.length > MAX_USAGE_BYTES) {
    fail(`Cannot read usage file: larger than ${MAX_USAGE_BYTES} bytes`, { line: 1, col: 1 });
    throw done();
  }
  const tooLarge = checkYamlText(text, PROGRAM_YAML_LIMITS, "usage file");
  if (tooLarge) {
    fail(tooLarge.message, textPos(text, tooLarge.offset));
    throw done();
  }
  const lines = new LineCounter();
  // The file is JSON; the YAML parser reads it (JSON is YAML) and keeps every value's place for the messages.
  const doc = parseDocument(text, {
    lineCounter: lines,
    prettyErrors: false,
    uniqueKeys: false,
    strict: true,
  });
  const posOf = (offset: number) => lines.linePos(offset);
  const where = (node: unknown) => posOf((node as Node | null)?.range?.[0] ?? 0);
  for (const e of doc.errors) fail(`Invalid JSON: ${e.message.split("\n")[0]}`, posOf(e.pos[0]));
  if (errors.length) throw done();
  const tree = checkYamlTree(
    doc.contents as Node | null,
    PROGRAM_YAML_LIMITS,
    "usage file",
    (key, _first, k) => fail(`"${k}" is given twice`, where(key)),
  );
  if (tree) fail(tree.message, posOf(tree.offset));
  if (errors.length) throw done();

  const root = doc.contents;
  if (!isSeq(root)) {
    fail(
      'A usage file is a JSON array of node usages: [{"name": "brno", "cpu": 0.2, ...}, ...]',
      where(root),
    );
    throw done();
  }
  if (root.items.length > MAX_USAGE_NODES) {
    fail(`A usage file lists at most ${MAX_USAGE_NODES} nodes, not ${root.items.length}`, where(root));
    throw done();
  }
  const out: UsageEntry[] = [];
  const seen = new Map<string, { line: number; col: number }>();
  for (const item of root.items) {
    if (!isMap(item)) {
      fail(
        'Each node usage is an object: {"name": "brno", "cpu": 0.2, "memory": 0.4, "free_ports": 100}',
        where(item),
      );
      continue;
    }
    const entry: Record<string, string | number> = {};
    let ok = true;
    for (const pair of (item as YAMLMap).items) {
      const key = isScalar(pair.key) ? String((pair.key as Scalar).value) : "";
      const value = isScalar(pair.value) ? (pair.value as Scalar).value : undefined;
      const at = where(pair.value ?? pair.key);
      const number = typeof value === "number" && Number.isFinite(value) ? value : null;
      if (key === "name") {
        if (typeof value !== "string" || !NAME.test(value)) {
          fail('name is a node name in quotes, such as "brno" (letters, digits, "_" and "-")', at);
          ok = false;
        } else entry.name = value;
      } else if (SHARES.includes(key)) {
        if (number === null || number < 0 || number > 1) {
          fail(`${key} is a share from 0 to 1, not ${describe(pair.value)}`, at);
          ok = false;
        } else entry[key] = number;
      } else if (COUNTS.includes(key)) {
        if (number === null || !Number.isInteger(number) || number < 0) {
          fail(`${key} is a whole number 0 or more, not ${describe(pair.value)}`, at);
          ok = false;
        } else entry[key] = number;
      } else if (RATES.includes(key)) {
        if (number === null || number < 0) {
          fail(`${key} is a number 0 or more, not ${describe(pair.value)}`, at);
          ok = false;
        } else entry[key] = number;
      }
    }
    for (const key of ["name", ...SHARES, "free_ports"]) {
      if (!(key in entry) && !(item as YAMLMap).items.some((p) => isScalar(p.key) && p.key.value === key)) {
        fail(`The node usage has no "${key}"`, where(item));
        ok = false;
      }
    }
    if (!ok) continue;
    const name = entry.name as string;
    const first = seen.get(name);
    if (first) {
      fail(`Node ${name} is listed twice (first at line ${first.line}, column ${first.col})`, where(item));
      continue;
    }
    seen.set(name, where(item));
    out.push(entry as unknown as UsageEntry);
  }
  if (errors.length) throw done();
  return out;
}

function describe(node: unknown): string {
  if (!isScalar(node)) return "a list or an object";
  const v = (node as Scalar).value;
  return typeof v === "string" ? `"${v}"` : String(v);
}
