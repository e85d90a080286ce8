/**
 * Resonate Central Dispatch `agent-rules` files, imported as TCP services. One rule a line:
 *
 * ```
 * TELNET | 10.10.10.101 | 7070 | 7070 | 0 | * | 10.10.10.11 | 10.10.10.12
 * protocol | VIP | virtual port | server port | placeholder | placeholder | server | server ...
 * ```
 *
 * Pure: the caller reads the file (at most MAX_RULES_FILE_BYTES, see lib/core/files.ts) and hands the text here.
 * Every mistake is collected with `file:line:col`, the column being that of the offending field's first
 * non-blank character (a tab counts as one column; an empty field is blamed on the `|` that closes it, a missing
 * one on the column after the line's last character). A line with any error gives no rule.
 *
 * Decisions where the format leaves room:
 * - Protocols: `TELNET` (Central Dispatch's generic TCP tab) and `HTTP` are both proxied as plain TCP at layer 4;
 *   nothing reads the HTTP inside. Case does not matter; the rule keeps the upper-case name. Any other name is an
 *   error that lists the known ones, rather than a guess at what Central Dispatch did with it (FTP, for one, needs
 *   data connections a byte proxy does not follow).
 * - Placeholders: fields 5 and 6 must be `0` and `*`, the only values the seed shows. Their meaning in Central
 *   Dispatch is not documented, so another value is reported instead of silently dropping what it meant.
 * - Servers are IPv4 or IPv6 literals; host names are not resolved. The unspecified address (`0.0.0.0`, `::`) and a
 *   server listed twice in one rule are errors. The VIP may be any IP literal.
 * - Blank lines, `#` comment lines (whole lines only) and the legend line starting `Protocol |` are skipped.
 *   Trailing `|` at the end of a line is ignored; an empty field before another field is an error.
 * - Two rules for the same VIP:vport are an error pointing at both.
 */
import { formatPosition, type Position, PositionedError } from "../core/errors.ts";
import { ipv6Bytes, ipv6Text, isIPv4, isIPv6 } from "../net/address.ts";

/** A caller reads at most this many bytes of an agent-rules file. */
export const MAX_RULES_FILE_BYTES = 1024 * 1024;
/** At most this many rules in one file. */
export const MAX_RULES = 1024;
/** At most this many servers in one rule. */
export const MAX_SERVERS_PER_RULE = 256;
/** A longer line is reported and not parsed (256 IPv6 servers fit well within it). */
export const MAX_LINE_LENGTH = 16 * 1024;
/** Parsing stops after this many errors; one more line says so. */
export const MAX_ERRORS = 100;

/** A mistake in an agent-rules file. */
export class RulesError extends PositionedError {
  override name = "RulesError";
}

/** A protocol name a rule may give, and how edgenode carries it. */
export interface RuleProtocol {
  readonly name: string;
  readonly description: string;
}

/** The protocols a rule may name, frozen; both are proxied as TCP byte streams. */
export const RULE_PROTOCOLS: readonly RuleProtocol[] = Object.freeze([
  { name: "TELNET", description: "any TCP service (Central Dispatch's Telnet tab), proxied at layer 4" },
  { name: "HTTP", description: "an HTTP service, proxied at layer 4 as plain TCP" },
].map((p) => Object.freeze(p)));

export interface RuleServer {
  /** The address as written. */
  readonly host: string;
  readonly pos: Position;
}

/** One valid line of an agent-rules file: a service at vip:vport spread over servers at serverPort. */
export interface Rule {
  /** Upper case, one of RULE_PROTOCOLS. */
  readonly protocol: string;
  readonly vip: string;
  readonly vport: number;
  readonly serverPort: number;
  readonly servers: readonly RuleServer[];
  /** Where the line's first field starts. */
  readonly pos: Position;
}

export interface ParsedRules {
  /** The rules of the lines without errors, in file order. */
  rules: Rule[];
  /** Every error, in file order; the rules must not be applied when there is any. */
  errors: RulesError[];
}

/** One `|`-separated field: its trimmed text and the column to blame for it. */
interface Field {
  text: string;
  col: number;
}

const FIXED = [
  "protocol",
  "VIP address",
  "virtual port",
  "server port",
  'placeholder "0"',
  'placeholder "*"',
];
const PLACEHOLDERS: readonly [number, string][] = [[4, "0"], [5, "*"]];
const LAYOUT = "PROTOCOL | VIP | VIRTUAL-PORT | SERVER-PORT | 0 | * | SERVER | SERVER ...";

/** Reads the rules of an agent-rules file's text; `file` names it in positions. */
export function parseRules(text: string, file: string): ParsedRules {
  const rules: Rule[] = [];
  const errors: RulesError[] = [];
  let stopped = false;
  const report = (message: string, line: number, col: number, related?: Position): void => {
    if (stopped) return;
    if (errors.length >= MAX_ERRORS) {
      errors.push(
        new RulesError(`Stopped after ${MAX_ERRORS} errors; later lines were not checked`, {
          file,
          line,
          col,
        }),
      );
      stopped = true;
      return;
    }
    errors.push(new RulesError(message, { file, line, col }, { related }));
  };
  // Service key (canonical vip and port) -> where its first rule's VIP was written.
  const services = new Map<string, Position>();
  let ruleCount = 0;
  const lines = text.replace(/^\uFEFF/, "").split(/\r\n|\n|\r/);

  for (let i = 0; i < lines.length && !stopped; i++) {
    const raw = lines[i];
    const lineNo = i + 1;
    const first = firstNonBlank(raw, 0, raw.length);
    if (first === raw.length || raw[first] === "#") continue;
    if (raw.length > MAX_LINE_LENGTH) {
      report(`Line is ${raw.length} characters long, over the ${MAX_LINE_LENGTH} limit`, lineNo, 1);
      continue;
    }
    if (!raw.includes("|")) {
      report(`Not a rule: expected fields separated by "|" (${LAYOUT})`, lineNo, first + 1);
      continue;
    }
    const fields = splitFields(raw);
    if (/^protocol$/i.test(fields[0].text)) continue; // the legend printed under a rule

    const rule = parseLine(fields, raw, { file, line: lineNo, col: first + 1 }, report);
    if (rule === null) continue;

    const key = serviceKey(rule.vip, rule.vport);
    const vipPos = { file, line: lineNo, col: fields[1].col };
    const earlier = services.get(key);
    if (earlier) {
      report(
        `Duplicate service ${key}: already defined at ${formatPosition(earlier)}`,
        lineNo,
        fields[1].col,
        earlier,
      );
      continue;
    }
    services.set(key, vipPos);
    if (++ruleCount > MAX_RULES) {
      if (ruleCount === MAX_RULES + 1) report(`More than ${MAX_RULES} rules in one file`, lineNo, first + 1);
      continue;
    }
    rules.push(rule);
  }
  return { rules, errors };
}

type Report = (message: string, line: number, col: number, related?: Position) => void;

/** Checks one rule line's fields; returns null (errors reported) when a field is missing or wrong. */
function parseLine(fields: Field[], raw: string, pos: Position, report: Report): Rule | null {
  // Errors are gathered per line and reported in column order, whichever check found them.
  const found: { col: number; message: string; related?: Position }[] = [];
  const fail = (message: string, field: Field, related?: Position): void => {
    found.push({ col: field.col, message, related });
  };

  // Trailing `|` (empty last fields) are tolerated; an empty field before a written one is not.
  while (fields.length > 1 && fields[fields.length - 1].text === "") fields.pop();
  const given = fields.length === 1 && fields[0].text === "" ? 0 : fields.length;
  if (given <= FIXED.length) {
    const missing = [...FIXED.slice(given), "server"];
    fail(`Too few fields: missing ${listWords(missing)} (${LAYOUT})`, {
      text: "",
      col: lastNonBlank(raw) + 2,
    });
  }
  fields.slice(0, given).forEach((field, n) => {
    if (field.text === "") fail(`Empty ${n < FIXED.length ? FIXED[n] : "server"} field`, field);
  });

  const [protocolField, vip, vportField, serverPortField] = fields;
  const protocol = protocolField.text.toUpperCase();
  if (protocolField.text !== "" && !RULE_PROTOCOLS.some((p) => p.name === protocol)) {
    fail(
      `Unknown protocol "${protocolField.text}" (known: ${RULE_PROTOCOLS.map((p) => p.name).join(", ")})`,
      protocolField,
    );
  }
  if (vip && vip.text !== "") {
    const why = addressProblem(vip.text, "the virtual port is field 3");
    if (why) fail(`VIP address "${vip.text}" is not a valid IP address (${why})`, vip);
  }
  const vport = portOf(vportField, "Virtual port", fail);
  const serverPort = portOf(serverPortField, "Server port", fail);
  for (const [n, expected] of PLACEHOLDERS) {
    const field = fields[n];
    if (field && field.text !== "" && field.text !== expected) {
      fail(
        `Placeholder field ${n + 1} is "${field.text}"; edgenode accepts only "${expected}" there, ` +
          "as its meaning for other values is unknown",
        field,
      );
    }
  }

  const servers: RuleServer[] = [];
  const seen = new Map<string, Position>();
  const serverFields = fields.slice(FIXED.length);
  serverFields.forEach((field, n) => {
    if (n === MAX_SERVERS_PER_RULE) {
      fail(`More than ${MAX_SERVERS_PER_RULE} servers in one rule`, field);
    }
    if (field.text === "") return;
    const problem = serverProblem(field.text);
    if (problem) {
      fail(problem, field);
      return;
    }
    const serverPos = { file: pos.file, line: pos.line, col: field.col };
    const key = canonicalIP(field.text);
    const earlier = seen.get(key);
    if (earlier) {
      fail(
        `Server "${field.text}" is listed twice in this rule (first at column ${earlier.col})`,
        field,
        earlier,
      );
      return;
    }
    seen.set(key, serverPos);
    servers.push(Object.freeze({ host: field.text, pos: Object.freeze(serverPos) }));
  });

  found.sort((a, b) => a.col - b.col);
  for (const { col, message, related } of found) report(message, pos.line, col, related);
  if (found.length || vport === null || serverPort === null) return null;
  return Object.freeze({
    protocol,
    vip: vip.text,
    vport,
    serverPort,
    servers: Object.freeze(servers),
    pos: Object.freeze(pos),
  });
}

/** The fields of a line split at `|`, each trimmed, with its first non-blank column (or the next `|`'s). */
function splitFields(raw: string): Field[] {
  const fields: Field[] = [];
  let start = 0;
  for (;;) {
    const bar = raw.indexOf("|", start);
    const end = bar < 0 ? raw.length : bar;
    const from = firstNonBlank(raw, start, end);
    fields.push({ text: raw.slice(from, end).trimEnd(), col: from + 1 });
    if (bar < 0) return fields;
    start = bar + 1;
  }
}

function firstNonBlank(text: string, from: number, to: number): number {
  let i = from;
  while (i < to && /\s/.test(text[i])) i++;
  return i;
}

/** Index of the last non-blank character, -1 for a blank line. */
function lastNonBlank(text: string): number {
  let i = text.length - 1;
  while (i >= 0 && /\s/.test(text[i])) i--;
  return i;
}

/** A port field's value, or null when it is absent or (reported) not a port. */
function portOf(
  field: Field | undefined,
  what: string,
  fail: (message: string, field: Field) => void,
): number | null {
  if (!field || field.text === "") return null;
  if (!/^[0-9]+$/.test(field.text)) {
    fail(`${what} "${field.text}" is not a whole number (1..65535)`, field);
    return null;
  }
  const port = Number(field.text);
  if (port < 1 || port > 65535) {
    fail(`${what} ${field.text} is out of range 1..65535`, field);
    return null;
  }
  return port;
}

/** The error message for a server field that is not a usable address, or "" when it is one. */
function serverProblem(text: string): string {
  const why = addressProblem(text, "the server port is field 4");
  if (why) return `Server "${text}" is not a valid IP address (${why})`;
  const ip = canonicalIP(text);
  return ip === "0.0.0.0" || ip === "::"
    ? `Server "${text}" is the unspecified address: nothing can connect to it`
    : "";
}

/** Why text is not an IPv4 or IPv6 literal, or "" when it is one; `portHint` says where the port goes. */
function addressProblem(text: string, portHint: string): string {
  if (isIPv4(text) || isIPv6(text)) return "";
  if (text.includes("#")) return "comments go on their own line";
  if (/\s/.test(text)) return 'fields are separated by "|"';
  if (/^(\[[^\]]*\]|[0-9.]+):[0-9]+$/.test(text)) return `an address field holds no port; ${portHint}`;
  if (text.includes(":")) return "not valid IPv6";
  if (/^[0-9.]+$/.test(text)) return ipv4Problem(text);
  return "host names are not resolved; write the address";
}

/** Why dotted-digit text is not IPv4 (isIPv4 already said it is not). */
function ipv4Problem(text: string): string {
  const parts = text.split(".");
  if (parts.length !== 4) return `IPv4 has four parts, not ${parts.length}`;
  const empty = parts.findIndex((p) => p === "");
  if (empty >= 0) return `part ${empty + 1} is empty`;
  const big = parts.find((p) => Number(p) > 255);
  if (big !== undefined) return `part "${big}" is over 255`;
  const zero = parts.find((p) => p.length > 1 && p.startsWith("0"));
  return `part "${zero}" has a leading zero`;
}

/** One spelling per address, so that `::1` and `0:0::1` are the same server. */
function canonicalIP(text: string): string {
  return isIPv6(text) ? ipv6Text(ipv6Bytes(text)) : text;
}

function serviceKey(vip: string, port: number): string {
  const host = canonicalIP(vip);
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** `a`, `a and b`, `a, b and c`. */
function listWords(words: string[]): string {
  return words.length < 2
    ? words.join("")
    : `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}`;
}
