/**
 * What the agent reports and how it is worked out. A source measures the server's spare capacity as an idle
 * percentage (which becomes the weight a checker gives the server) or, for `command`, takes the reply a
 * command prints. The /proc readings are pure functions of the file text; `measure` fetches that text through
 * the injected readers and never throws: a failed reading is a value, answered with a safe reply by
 * `composeReply`.
 */
import {
  AGENT_ADMIN_STATES,
  type AgentAdmin,
  type AgentReplyFields,
  parseAgentReply,
} from "../net/agent_check.ts";
import type { LoadReaders } from "./load.ts";
import { errorMessage } from "../core/errors.ts";

export const AGENT_SOURCES = ["loadavg", "memory", "connections", "command"] as const;
export type AgentSource = typeof AGENT_SOURCES[number];

export const FAILURE_POLICIES = ["keep", "down"] as const;
export type FailurePolicy = typeof FAILURE_POLICIES[number];

/** A command's output beyond this is a misbehaving command: a reply is one short line. */
export const MAX_COMMAND_OUTPUT = 16 * 1024;

export interface SourceSpec {
  readonly source: AgentSource;
  /** connections: the local port whose established connections count. */
  readonly port: number | null;
  /** connections: the count that reads as fully loaded. */
  readonly maxConnections: number;
  /** command: argv, run without a shell. */
  readonly command: readonly string[];
  readonly commandTimeoutMs: number;
  /** Lowest weight percentage measured sources report, so a loaded server still takes a little traffic. */
  readonly minWeight: number;
}

export type Measurement =
  | { readonly ok: true; readonly fields: AgentReplyFields; readonly problems: readonly string[] }
  | { readonly ok: false; readonly error: string };

/** 100 - load1 / cpus * 100, rounded and clamped to 0..100, from the text of /proc/loadavg. */
export function loadavgIdle(text: string, cpus: number): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)(?:\s|$)/.exec(text);
  if (!m) {
    throw new Error(`Cannot read the load average from /proc/loadavg: ${JSON.stringify(text.slice(0, 40))}`);
  }
  return clampPercent(100 - (Number(m[1]) / Math.max(1, cpus)) * 100);
}

/** MemAvailable / MemTotal as a percentage, from the text of /proc/meminfo. */
export function memoryIdle(text: string): number {
  const kb = (key: string) => {
    const m = new RegExp(`^${key}:\\s+([0-9]+)`, "m").exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const total = kb("MemTotal");
  // Kernels before 3.14 have no MemAvailable; free + page cache + buffers is the usual estimate there.
  const available = kb("MemAvailable") ??
    (kb("MemFree") !== undefined ? kb("MemFree")! + (kb("Cached") ?? 0) + (kb("Buffers") ?? 0) : undefined);
  if (!total || available === undefined) {
    throw new Error("Cannot read MemTotal and MemAvailable from /proc/meminfo");
  }
  return clampPercent((available / total) * 100);
}

const TCP_ESTABLISHED = "01";

/**
 * Established TCP connections whose local port is `port`, from the text of /proc/net/tcp or /proc/net/tcp6
 * (`sl local_address rem_address st ...`, addresses as HEX:PORT in hexadecimal).
 */
export function establishedConnections(text: string, port: number): number {
  let count = 0;
  for (const line of text.split("\n").slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 4) continue;
    const local = cols[1];
    const localPort = parseInt(local.slice(local.lastIndexOf(":") + 1), 16);
    if (cols[3] === TCP_ESTABLISHED && localPort === port) count++;
  }
  return count;
}

/** The idle percentage of `count` connections out of `max`. */
export function connectionsIdle(count: number, max: number): number {
  return clampPercent(100 - (count / max) * 100);
}

function clampPercent(value: number): number {
  return Math.min(100, Math.max(0, Math.round(value)));
}

/** One reading of `spec`'s source. */
export async function measure(spec: SourceSpec, readers: LoadReaders): Promise<Measurement> {
  try {
    if (spec.source === "command") return await fromCommand(spec, readers);
    const idle = await idlePercent(spec, readers);
    return { ok: true, fields: { weightPercent: Math.max(spec.minWeight, idle) }, problems: [] };
  } catch (error) {
    return { ok: false, error: errorMessage(error) };
  }
}

async function idlePercent(spec: SourceSpec, readers: LoadReaders): Promise<number> {
  const need = async (path: string) => {
    const text = await readers.readText(path);
    if (text === null) {
      throw new Error(`Cannot read ${path}: no such file (the ${spec.source} source needs Linux)`);
    }
    return text;
  };
  switch (spec.source) {
    case "loadavg":
      return loadavgIdle(await need("/proc/loadavg"), readers.cpuCount());
    case "memory":
      return memoryIdle(await need("/proc/meminfo"));
    case "connections": {
      // tcp6 is absent when IPv6 is off; IPv4 connections to a dual-stack socket are listed in tcp6.
      const v4 = await need("/proc/net/tcp");
      const v6 = (await readers.readText("/proc/net/tcp6")) ?? "";
      const count = establishedConnections(v4, spec.port!) + establishedConnections(v6, spec.port!);
      return connectionsIdle(count, spec.maxConnections);
    }
    default:
      throw new Error(`Source "${spec.source}" has no idle reading`);
  }
}

/** The command's first line, read as an agent reply; a line with no usable word at all is a failure. */
async function fromCommand(spec: SourceSpec, readers: LoadReaders): Promise<Measurement> {
  const out = await readers.run(spec.command, {
    timeoutMs: spec.commandTimeoutMs,
    maxBytes: MAX_COMMAND_OUTPUT,
  });
  if ("error" in out) return { ok: false, error: out.error };
  const { problems, ...fields } = parseAgentReply(out.stdout.split("\n")[0]);
  if (problems.length && Object.keys(fields).length === 0) {
    return { ok: false, error: `Command printed no agent reply: ${problems[0]}` };
  }
  return { ok: true, fields, problems };
}

export interface ComposeOptions {
  /** The administrative state the operator set (config or API). */
  readonly admin: AgentAdmin;
  readonly maxconn: number | null;
  readonly onFailure: FailurePolicy;
}

/**
 * The reply for a measurement. The administrative state is the stricter of the operator's and the command's
 * (ready < drain < maint), and is always sent, so leaving drain takes effect at the next check. A failed
 * reading sends no weight (the checker keeps the last one) and, with `onFailure: down`, reports the server
 * down; the reason goes in the description either way.
 */
export function composeReply(m: Measurement, options: ComposeOptions): AgentReplyFields {
  const stricter = (a: AgentAdmin, b: AgentAdmin | undefined) =>
    b !== undefined && AGENT_ADMIN_STATES.indexOf(b) > AGENT_ADMIN_STATES.indexOf(a) ? b : a;
  const maxconn = options.maxconn ?? undefined;
  if (!m.ok) {
    return {
      ...(maxconn !== undefined ? { maxconn } : {}),
      admin: options.admin,
      ...(options.onFailure === "down" ? { op: "down" as const } : {}),
      description: `agent reading failed: ${m.error}`,
    };
  }
  const fields: AgentReplyFields = { ...m.fields, admin: stricter(options.admin, m.fields.admin) };
  // A maxconn the command printed is more current than the configured one.
  if (fields.maxconn === undefined && maxconn !== undefined) fields.maxconn = maxconn;
  return fields;
}
