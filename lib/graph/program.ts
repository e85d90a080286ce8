/**
 * Program text (the DiProNN language or its YAML form) -> checked session plan: parse, work out the session, check
 * it against the AP kinds. Syntax errors stop the way (the tree is not worth checking); after that every check runs
 * and all errors come back together, except the wiring checks when the wiring itself could not be read.
 */
import type { Program, ProgramError } from "../dipronn/ast.ts";
import { parseProgram } from "../dipronn/parser.ts";
import { describeSession } from "../dipronn/session.ts";
import { parseYamlProgram } from "../dipronn/yaml.ts";
import { type PlanOptions, planSession, type SessionPlan } from "./check.ts";

export const PROGRAM_FORMATS = ["dipronn", "yaml"] as const;
export type ProgramFormat = typeof PROGRAM_FORMATS[number];

/** YAML for .yaml/.yml files, the language otherwise. */
export function formatOf(file: string): ProgramFormat {
  return /\.ya?ml$/i.test(file) ? "yaml" : "dipronn";
}

export function parseAny(text: string, file: string, format: ProgramFormat = formatOf(file)): Program {
  return format === "yaml" ? parseYamlProgram(text, file) : parseProgram(text, file);
}

export interface CheckOptions extends PlanOptions {
  readonly file: string;
  readonly format?: ProgramFormat;
}

/** Throws ErrorList<ProgramError> listing every mistake; returns a plan only when there is none. */
export function checkProgram(text: string, options: CheckOptions): SessionPlan {
  const program = parseAny(text, options.file, options.format);
  const found: ProgramError[] = [];
  const spec = describeSession(program, found);
  return planSession(spec, options, found);
}
