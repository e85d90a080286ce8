/**
 * The command line, parsed by a pure function of the argument list (node:util parseArgs). Every mistake is a
 * UsageError with one clear line; main prints it and exits 2.
 */
import { parseArgs } from "node:util";
import { UsageError } from "../core/errors.ts";
import { isLogLevel, LOG_LEVELS, type LogLevel } from "../core/logger.ts";
import { type HostPort, parseHostPort } from "../net/address.ts";
import { NODE_NAME } from "../config/plan.ts";

/** Options of the default command (run the appliance, or check its config). */
export interface RunOptions {
  readonly roles?: readonly string[];
  readonly config?: string;
  readonly status?: HostPort;
  readonly name?: string;
  readonly logLevel?: LogLevel;
  readonly check: boolean;
  /** The control socket of a running edgenode whose sockets this one takes over (`--takeover PATH`). */
  readonly takeover?: string;
}

export type Command =
  | { readonly kind: "help" }
  | { readonly kind: "version" }
  | { readonly kind: "run"; readonly options: RunOptions }
  /** A sub-command (`program check FILE`); its own arguments follow its name. */
  | { readonly kind: "sub"; readonly name: string; readonly args: readonly string[] };

export interface Known {
  readonly roles: readonly string[];
  readonly subcommands: readonly string[];
}

const OPTIONS = {
  role: { type: "string", short: "r", multiple: true },
  config: { type: "string", short: "c" },
  status: { type: "string" },
  name: { type: "string" },
  "log-level": { type: "string" },
  check: { type: "boolean" },
  takeover: { type: "string" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
} as const;

export function parseCommandLine(args: readonly string[], known: Known): Command {
  const first = args[0];
  if (first !== undefined && !first.startsWith("-")) {
    if (known.subcommands.includes(first)) return { kind: "sub", name: first, args: args.slice(1) };
    const list = known.subcommands.length ? known.subcommands.join(", ") : "none";
    throw new UsageError(`Unknown command "${first}" (commands: ${list}; see --help)`);
  }
  let values;
  try {
    ({ values } = parseArgs({ args: [...args], options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (error) {
    throw new UsageError(describeParseError(error));
  }
  if (values.help) return { kind: "help" };
  if (values.version) return { kind: "version" };

  const options: { -readonly [K in keyof RunOptions]: RunOptions[K] } = { check: values.check ?? false };
  if (values.role) options.roles = parseRoles(values.role, known.roles);
  if (values.config !== undefined) {
    if (values.config === "") throw new UsageError("Option --config needs a file name");
    options.config = values.config;
  }
  if (values.status !== undefined) {
    const addr = parseHostPort(values.status);
    if (typeof addr === "string") throw new UsageError(`Option --status: ${addr}`);
    options.status = addr;
  }
  if (values.name !== undefined) {
    if (!NODE_NAME.test(values.name)) {
      throw new UsageError(
        `Option --name: "${values.name}" is not a node name (letters, digits, '.', '_', '-')`,
      );
    }
    options.name = values.name;
  }
  const level = values["log-level"];
  if (level !== undefined) {
    if (!isLogLevel(level)) {
      throw new UsageError(`Option --log-level: "${level}" is not one of ${LOG_LEVELS.join(", ")}`);
    }
    options.logLevel = level;
  }
  if (values.takeover !== undefined) {
    if (values.takeover === "") throw new UsageError("Option --takeover needs the path of a control socket");
    if (options.check) throw new UsageError("Options --takeover and --check cannot be used together");
    options.takeover = values.takeover;
  }
  return { kind: "run", options };
}

/** `--role a,b --role c` -> [a, b, c]; `all` stands for every role. */
function parseRoles(values: readonly string[], known: readonly string[]): string[] {
  const names = values.flatMap((v) => v.split(",")).map((s) => s.trim());
  const out: string[] = [];
  for (const name of names) {
    if (name === "") throw new UsageError("Option --role: empty role name");
    if (name !== "all" && !known.includes(name)) {
      throw new UsageError(`Option --role: unknown role "${name}" (roles: ${known.join(", ")}, all)`);
    }
    if (!out.includes(name)) out.push(name);
  }
  return out;
}

function describeParseError(error: unknown): string {
  const e = error as { code?: string; message?: string };
  const message = String(e.message ?? error);
  if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const flag = /'([^']+)'/.exec(message)?.[1] ?? "?";
    return `Unknown option "${flag}" (see --help)`;
  }
  if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    // Node names the option as "'-c, --config <value>'"; the long form is the one users know.
    const flag = /--[a-z-]+/.exec(message)?.[0] ?? "?";
    return message.includes("argument missing")
      ? `Option ${flag} needs a value`
      : `Option ${flag}: ${message}`;
  }
  if (e.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
    const arg = /'([^']+)'/.exec(message)?.[1] ?? "?";
    return `Unexpected argument "${arg}" (see --help)`;
  }
  return message;
}

/** The --help text. */
export function usage(
  version: string,
  roles: readonly { name: string; description: string }[],
  subcommands: readonly { name: string; description: string }[] = [],
): string {
  const roleLines = roles.map((r) => `  ${r.name.padEnd(10)} ${r.description}`).join("\n");
  const subLines = subcommands.map((s) => `  ${s.name.padEnd(10)} ${s.description}`).join("\n");
  return `edgenode ${version}: one binary for every box of a streaming edge network

Usage: edgenode [options]
${subcommands.length ? "       edgenode COMMAND [args]   (COMMAND --help for its own options)\n" : ""}
Options:
  -r, --role ROLES      roles to run, comma-separated or repeated, or "all"
                        (default: the config's "roles", else every role that needs no outside peer)
  -c, --config FILE     YAML config file (default: the embedded default config)
      --status ADDR:PORT  status API address (default: config status.listen, 127.0.0.1:8080)
      --name NAME       node name shown in /status (default: config name, else the host name)
      --log-level LEVEL debug, info, warn or error (default: config log.level, info)
      --check           validate the config, print every error, bind nothing; exit 1 on any error
      --takeover PATH   take the listening sockets over from the edgenode whose control socket is PATH,
                        serve on them, then let that one drain and exit (a binary upgrade that refuses nothing)
  -h, --help            show this text
  -V, --version         show the version

Roles:
${roleLines}
${subcommands.length ? `\nCommands:\n${subLines}\n` : ""}
Exit status: 0 stopped cleanly, 1 config or start failure, 2 usage error.
`;
}
