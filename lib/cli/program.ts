/**
 * `edgenode program check|plan|print FILE`: checks a DiProNN program (the language or its YAML form) without running
 * anything, printing every error as `file:line:col: message`; `plan` checks it and shows where each AP would run
 * for the node usage given in a file, and which connections would cross between nodes; `print` writes it back in
 * the language (a YAML program comes out as text).
 */
import { parseArgs } from "node:util";
import { ErrorList, UsageError } from "../core/errors.ts";
import { readTextFileLimited } from "../core/files.ts";
import { MAX_PROGRAM_BYTES } from "../dipronn/parser.ts";
import { printProgram } from "../dipronn/printer.ts";
import { coreElements } from "../graph/elements/mod.ts";
import { checkProgram, parseAny, PROGRAM_FORMATS, type ProgramFormat } from "../graph/program.ts";
import { MAX_USAGE_BYTES, planText, readUsage, type SessionPlacementPlan } from "../cluster/plan.ts";
import { PlacementError } from "../cluster/placement.ts";

export const PROGRAM_USAGE = `Usage: edgenode program check FILE [--format dipronn|yaml]
       edgenode program plan FILE --usage USAGE.json [--self NODE] [--near NODE,...] [--json] [--format ...]
       edgenode program print FILE [--format dipronn|yaml]

check  parses FILE and checks the session it describes (kinds, wiring, ports, parameters) without running it;
       every error is printed as file:line:col: message. Exit status 0 when there is none, 1 otherwise.
plan   checks FILE as check does, then places its APs on the nodes whose usage USAGE.json gives (a JSON array of
       {"name", "cpu", "memory", "free_ports", ...}): pins (node = "...") are honoured, the rest is placed by
       usage. Prints each AP's node and why, the connections that cross between nodes and what each node would
       hold (--json: the same as JSON). --self is the node that receives the request (default: the first listed),
       --near the nodes nearest to the receivers, best first. Exit status 1 when it cannot be placed.
print  writes the program back in the DiProNN language (a YAML program comes out as text).
The format follows the file name (.yaml/.yml: YAML) unless --format says otherwise.
`;

export interface ProgramIo {
  out(text: string): void;
  err(text: string): void;
  readFile(path: string): Promise<string>;
  /** Reads a usage file (plan --usage); readFile when absent. */
  readUsageFile?(path: string): Promise<string>;
}

export async function runProgramCommand(args: readonly string[], io: ProgramIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options: {
        format: { type: "string" },
        help: { type: "boolean", short: "h" },
        usage: { type: "string" },
        self: { type: "string" },
        near: { type: "string" },
        json: { type: "boolean" },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new UsageError(`program: ${(error as Error).message}`);
  }
  const [verb, file, ...rest] = parsed.positionals;
  if (parsed.values.help || verb === undefined) return io.out(PROGRAM_USAGE), 0;
  if (verb !== "check" && verb !== "plan" && verb !== "print") {
    throw new UsageError(`program: unknown action "${verb}" (check, plan, print)`);
  }
  if (file === undefined) throw new UsageError(`program ${verb}: name the program FILE`);
  if (rest.length) throw new UsageError(`program ${verb}: one FILE at a time, not ${rest.join(" ")}`);
  const format = parsed.values.format;
  if (format !== undefined && !(PROGRAM_FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(`program: --format must be one of ${PROGRAM_FORMATS.join(", ")}, not "${format}"`);
  }
  const planOnly = (["usage", "self", "near", "json"] as const).filter((o) => parsed.values[o] !== undefined);
  if (verb !== "plan" && planOnly.length) {
    throw new UsageError(`program ${verb}: --${planOnly[0]} belongs to program plan`);
  }
  if (verb === "plan" && parsed.values.usage === undefined) {
    throw new UsageError("program plan: name the nodes' usage with --usage USAGE.json");
  }
  const text = await io.readFile(file);
  if (verb === "plan") {
    const usageFile = parsed.values.usage!;
    const usageText = await (io.readUsageFile ?? io.readFile)(usageFile);
    return plan(text, {
      file,
      format: format as ProgramFormat | undefined,
      usageText,
      usageFile,
      self: parsed.values.self,
      near: parsed.values.near,
      json: parsed.values.json ?? false,
    }, io);
  }
  try {
    if (verb === "print") {
      io.out(printProgram(parseAny(text, file, format as ProgramFormat | undefined)));
      return 0;
    }
    const plan = checkProgram(text, {
      file,
      format: format as ProgramFormat | undefined,
      kinds: coreElements(),
    });
    io.out(
      `${file}: program OK (session ${plan.name}: ${plan.aps.length} APs, UDP ports ${
        plan.ports.join(", ") || "none"
      }${plan.useRtp ? ", use_RTP" : ""})\n`,
    );
    return 0;
  } catch (error) {
    if (!(error instanceof ErrorList)) throw error;
    io.err(
      `${error.format()}\n${file}: ${error.errors.length} error${error.errors.length === 1 ? "" : "s"}\n`,
    );
    return 1;
  }
}

/** `program plan`: the usage file read, the program checked and placed, the plan printed. */
function plan(
  text: string,
  o: {
    file: string;
    format?: ProgramFormat;
    usageText: string;
    usageFile: string;
    self?: string;
    near?: string;
    json: boolean;
  },
  io: ProgramIo,
): number {
  let result: SessionPlacementPlan;
  let where = o.usageFile;
  try {
    const nodes = readUsage(o.usageText, o.usageFile);
    if (nodes.length === 0) {
      io.err(`${o.usageFile}: lists no node: there is nowhere to place the session\n`);
      return 1;
    }
    const self = o.self ?? nodes[0].name;
    where = o.file;
    result = planText(text, o.file, {
      kinds: coreElements(),
      format: o.format,
      self,
      nodes,
      near: o.near?.split(",").map((n) => n.trim()).filter((n) => n) ?? [],
    });
  } catch (error) {
    if (error instanceof PlacementError) {
      io.err(`${o.file}: ${error.message}\n`);
      return 1;
    }
    if (!(error instanceof ErrorList)) throw error;
    io.err(
      `${error.format()}\n${where}: ${error.errors.length} error${error.errors.length === 1 ? "" : "s"}\n`,
    );
    return 1;
  }
  io.out(o.json ? `${JSON.stringify(planJson(result), null, 2)}\n` : planTable(result));
  return 0;
}

/** The plan as JSON: every AP's node and why, the cross-node links, each node's share. */
export function planJson(r: SessionPlacementPlan): unknown {
  return {
    session: r.placement.session,
    aps: r.spec.aps.map((ap) => ({
      ap: ap.name,
      node: r.placement.nodeOf[ap.name],
      why: r.placement.why[ap.name],
    })),
    links: r.links,
    nodes: r.nodes,
  };
}

/** The plan as the tables `program plan` prints. */
export function planTable(r: SessionPlacementPlan): string {
  const used = r.nodes.filter((n) => n.aps > 0).length;
  const lines = [
    `Session ${r.placement.session}: ${r.spec.aps.length} APs on ${used} node${
      used === 1 ? "" : "s"
    }, ${r.links.length} link${r.links.length === 1 ? "" : "s"} between nodes`,
    "",
    ...table(
      ["AP", "NODE", "WHY"],
      r.spec.aps.map((ap) => [ap.name, r.placement.nodeOf[ap.name], r.placement.why[ap.name]]),
    ),
    "",
  ];
  if (r.links.length) {
    lines.push(
      ...table(
        ["FROM", "NODE", "TO", "NODE"],
        r.links.map((l) => [`${l.from}.${l.output}`, l.fromNode, `${l.to}.${l.input}`, l.toNode]),
      ),
      "",
    );
  } else lines.push("No connection crosses between nodes.", "");
  lines.push(
    ...table(
      ["NODE", "APS", "CPU", "CPU AFTER", "MEMORY", "FREE PORTS", "AFTER"],
      r.nodes.map((
        n,
      ) => [
        n.name,
        `${n.aps}`,
        `${n.cpu}`,
        `${n.cpu_after}`,
        `${n.memory}`,
        `${n.free_ports}`,
        `${n.free_ports_after}`,
      ]),
    ),
  );
  return lines.join("\n") + "\n";
}

/** Columns padded to their widest cell, two spaces apart; the last column is not padded. */
function table(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  return [head, ...rows].map((r) => r.map((c, i) => i === r.length - 1 ? c : c.padEnd(widths[i])).join("  "));
}

/** Reads a usage file for program plan: missing, unreadable or oversized files are usage errors. */
export function readUsageFile(path: string): Promise<string> {
  return readTextFileLimited(path, MAX_USAGE_BYTES, "usage file");
}

/** Reads a program file: missing, unreadable or oversized files are usage errors. */
export function readProgramFile(path: string): Promise<string> {
  return readTextFileLimited(path, MAX_PROGRAM_BYTES, "program");
}
