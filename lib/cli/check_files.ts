/**
 * `--check` of the files a config names: the scheduler's agent-rules file and the node's boot session programs are
 * read and checked as a start would, without binding anything, so that their mistakes show with their own
 * file:line:col before a start finds them. Boot programs are checked one after the other against what the earlier
 * ones hold (ports, files, the node's budgets), as the node starts them.
 */
import { configPosition, type Plan } from "../config/plan.ts";
import { type ClusterSection, clusterToken } from "../cluster/config.ts";
import { ConfigError, ErrorList, type PositionedError, StartError, UsageError } from "../core/errors.ts";
import { readTextFileLimited } from "../core/files.ts";
import { MAX_PROGRAM_BYTES } from "../dipronn/parser.ts";
import { ProgramError } from "../dipronn/ast.ts";
import { coreElements } from "../graph/elements/mod.ts";
import { checkProgram } from "../graph/program.ts";
import { formatHostPort } from "../net/address.ts";
import { budgetsOf, type SessionSection } from "../node/sessions.ts";
import type { SchedulerSection } from "../scheduler/config.ts";
import { MAX_RULES_FILE_BYTES, parseRules, RulesError } from "../scheduler/rules.ts";

export interface CheckFilesIo {
  /** Reads a named file; throws UsageError ("Cannot read ...") when it cannot. */
  readFile(path: string, maxBytes: number, what: string): Promise<string>;
}

const defaultIo: CheckFilesIo = { readFile: readTextFileLimited };

type NodeSection = SessionSection & {
  readonly cluster: ClusterSection | null;
  readonly sessions: readonly string[];
  readonly bind: string;
  readonly max_sessions: number;
};

/** Every mistake in the files the plan's roles would read at start, each at its place; empty when there is none. */
export async function checkNamedFiles(
  plan: Plan,
  io: CheckFilesIo = defaultIo,
  /** Read the cluster token file (a reload does not: node.cluster waits for the next start, its file may be gone). */
  o: { clusterToken?: boolean } = {},
): Promise<PositionedError[]> {
  const errors: PositionedError[] = [];
  // A key's place in the config (the file's start when the plan was not read from a file).
  const placeOf = (key: string) => configPosition(plan, key) ?? { file: plan.source, line: 1, col: 1 };
  const unreadable = (key: string, error: unknown) => {
    if (!(error instanceof UsageError)) throw error;
    errors.push(new ConfigError(error.message, placeOf(key), { path: key }));
  };
  if (plan.roles.includes("scheduler")) {
    const cfg = plan.sections.scheduler as SchedulerSection;
    if (cfg.rules !== null) {
      try {
        const text = await io.readFile(cfg.rules, MAX_RULES_FILE_BYTES, "agent-rules file");
        const parsed = parseRules(text, cfg.rules);
        errors.push(...parsed.errors);
        const taken = new Map(cfg.services.map((s) => [formatHostPort(s.listen), s.name]));
        for (const rule of parsed.rules) {
          const key = formatHostPort({ host: rule.vip, port: rule.vport });
          const other = taken.get(key);
          if (other !== undefined) {
            errors.push(new RulesError(`${key} is already the address of service "${other}"`, rule.pos));
          }
        }
      } catch (error) {
        unreadable("scheduler.rules", error);
      }
    }
  }
  if (plan.roles.includes("node")) {
    const cfg = plan.sections.node as NodeSection;
    if (cfg.cluster && o.clusterToken !== false) {
      // The token file is read at start: read it now, and say where the config names it.
      try {
        await clusterToken(cfg.cluster);
      } catch (error) {
        if (!(error instanceof StartError)) throw error;
        errors.push(
          new ConfigError(error.message, placeOf(error.configPath), { path: error.configPath }),
        );
      }
    }
    const kinds = coreElements();
    const portsInUse = new Map<number, string>();
    const claimsInUse = new Map<string, string>();
    const inUse = { sockets: 0, vms: 0, saverBytes: 0 };
    const outputPorts = new Map<number, string>();
    const names = new Map<string, string>();
    for (const [i, file] of cfg.sessions.entries()) {
      let text: string;
      try {
        text = await io.readFile(file, MAX_PROGRAM_BYTES, "program");
      } catch (error) {
        unreadable(`node.sessions[${i}]`, error);
        continue;
      }
      try {
        const plan = checkProgram(text, {
          file,
          kinds,
          portsInUse,
          claimsInUse,
          node: { budgets: budgetsOf(cfg), inUse, host: cfg.bind, outputPorts },
        });
        const first = names.get(plan.name);
        const at = { file, line: 1, col: 1 };
        if (first) errors.push(new ProgramError(`Session ${plan.name} is also started by ${first}`, at));
        else if (names.size >= cfg.max_sessions) {
          errors.push(
            new ProgramError(`The node runs at most ${cfg.max_sessions} sessions (node.max_sessions)`, at),
          );
        }
        names.set(plan.name, file);
        for (const p of plan.ports) portsInUse.set(p, `session ${plan.name} (${file})`);
        for (const p of plan.outputPorts) outputPorts.set(p, `session ${plan.name} (${file})`);
        for (const c of plan.claims) claimsInUse.set(c, `session ${plan.name} (${file})`);
        inUse.sockets += plan.usage.sockets;
        inUse.vms += plan.usage.vms;
        inUse.saverBytes += plan.usage.saverBytes;
      } catch (error) {
        if (!(error instanceof ErrorList)) throw error;
        errors.push(...error.errors);
      }
    }
  }
  return errors;
}
