/**
 * `edgenode program check|print FILE`: checks a DiProNN program (the language or its YAML form) without running
 * anything, printing every error as `file:line:col: message`; `print` writes it back in the language (a YAML
 * program comes out as text).
 */
import { parseArgs } from "node:util";
import { ErrorList, UsageError } from "../core/errors.ts";
import { readTextFileLimited } from "../core/files.ts";
import { MAX_PROGRAM_BYTES } from "../dipronn/parser.ts";
import { printProgram } from "../dipronn/printer.ts";
import { coreElements } from "../graph/elements/mod.ts";
import { checkProgram, parseAny, PROGRAM_FORMATS, type ProgramFormat } from "../graph/program.ts";

export const PROGRAM_USAGE = `Usage: edgenode program check FILE [--format dipronn|yaml]
       edgenode program print FILE [--format dipronn|yaml]

check  parses FILE and checks the session it describes (kinds, wiring, ports, parameters) without running it;
       every error is printed as file:line:col: message. Exit status 0 when there is none, 1 otherwise.
print  writes the program back in the DiProNN language (a YAML program comes out as text).
The format follows the file name (.yaml/.yml: YAML) unless --format says otherwise.
`;

export interface ProgramIo {
  out(text: string): void;
  err(text: string): void;
  readFile(path: string): Promise<string>;
}

export async function runProgramCommand(args: readonly string[], io: ProgramIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options: { format: { type: "string" }, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new UsageError(`program: ${(error as Error).message}`);
  }
  const [verb, file, ...rest] = parsed.positionals;
  if (parsed.values.help || verb === undefined) return io.out(PROGRAM_USAGE), 0;
  if (verb !== "check" && verb !== "print") {
    throw new UsageError(`program: unknown action "${verb}" (check, print)`);
  }
  if (file === undefined) throw new UsageError(`program ${verb}: name the program FILE`);
  if (rest.length) throw new UsageError(`program ${verb}: one FILE at a time, not ${rest.join(" ")}`);
  const format = parsed.values.format;
  if (format !== undefined && !(PROGRAM_FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(`program: --format must be one of ${PROGRAM_FORMATS.join(", ")}, not "${format}"`);
  }
  const text = await io.readFile(file);
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

/** Reads a program file: missing, unreadable or oversized files are usage errors. */
export function readProgramFile(path: string): Promise<string> {
  return readTextFileLimited(path, MAX_PROGRAM_BYTES, "program");
}
