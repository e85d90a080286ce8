/**
 * The HAProxy agent-check reply: one ASCII line of words separated by spaces, tabs or commas, in any order,
 * that an agent beside a server answers to a checker. Words, matched without regard to case as HAProxy does:
 *
 * - `75%`: weight as a percentage of the server's configured weight. HAProxy reads 0..25600 (more is read as
 *   25600) and caps the resulting weight at 256; `0%` takes the server out of the rotation like a drain.
 * - `maxconn:30`: the server's connection limit (0: no limit).
 * - `ready`, `drain`, `maint`: administrative state.
 * - `up`, `down`, `fail`, `stopped`: operational state (HAProxy's words; `failed` is not one of them).
 * - `#` at the start of a word: the rest of the line is a description (HAProxy shows it with a health state).
 *   A `#` inside a word does not start one: `down#busy` is an unknown word, `down #busy` is down with a
 *   description.
 *
 * When a kind repeats, the last word counts. A word that cannot be read is ignored and reported, the way
 * HAProxy ignores it; nothing here throws on input from the network. Framing (reading up to the line end,
 * refusing a line that never ends) is the caller's job; this module sees one line of text.
 */

export const AGENT_ADMIN_STATES = ["ready", "drain", "maint"] as const;
export type AgentAdmin = typeof AGENT_ADMIN_STATES[number];

export const AGENT_OP_STATES = ["up", "down", "fail", "stopped"] as const;
export type AgentOp = typeof AGENT_OP_STATES[number];

/** Longest reply line read (without its line end); a longer one is ignored whole, like an incomplete line. */
export const MAX_AGENT_REPLY = 1024;
/** HAProxy reads a larger percentage as this one. */
export const MAX_WEIGHT_PERCENT = 25600;
/** Largest maxconn taken (HAProxy keeps it in a C int). */
export const MAX_AGENT_MAXCONN = 2 ** 31 - 1;

export interface AgentReply {
  /** Weight relative to the configured weight, 0..25600. */
  weightPercent?: number;
  /** Connection limit; 0 means none. */
  maxconn?: number;
  admin?: AgentAdmin;
  op?: AgentOp;
  /** Text after `#`, printable ASCII, trimmed. */
  description?: string;
  /** What was ignored or adjusted, one sentence each; empty for a clean reply. */
  problems: string[];
}

/** The fields a reply sets, for `formatAgentReply`. */
export type AgentReplyFields = Omit<AgentReply, "problems">;

const SEPARATOR = /[ \t,]/;
/** Printable ASCII: anything else in a word makes it unreadable. */
const PRINTABLE = /^[\x21-\x7e]*$/;
const NOT_PRINTABLE = /[^\x20-\x7e]/g;

/** Reads one agent reply line; never throws. Text after the first CR or LF is ignored. */
export function parseAgentReply(text: string): AgentReply {
  const reply: AgentReply = { problems: [] };
  const end = text.search(/[\r\n]/);
  const line = end < 0 ? text : text.slice(0, end);
  if (end >= 0 && text.slice(end).replace(/^(\r\n|\r|\n)/, "").length > 0) {
    reply.problems.push("Ignored the text after the first line");
  }
  if (line.length > MAX_AGENT_REPLY) {
    reply.problems.push(`Reply of ${line.length} characters is over the ${MAX_AGENT_REPLY} limit; ignored`);
    return reply;
  }
  const seen = new Map<string, string>();
  const repeat = (kind: string, word: string) => {
    const first = seen.get(kind);
    if (first !== undefined) {
      reply.problems.push(`Repeated ${kind} "${first}" then "${word}": the last counts`);
    }
    seen.set(kind, word);
  };
  let i = 0;
  while (i < line.length) {
    if (SEPARATOR.test(line[i])) {
      i++;
      continue;
    }
    if (line[i] === "#") {
      reply.description = description(line.slice(i + 1), reply.problems);
      break;
    }
    let j = i + 1;
    while (j < line.length && !SEPARATOR.test(line[j])) j++;
    readWord(line.slice(i, j), reply, repeat);
    i = j;
  }
  return reply;
}

function readWord(word: string, reply: AgentReply, repeat: (kind: string, word: string) => void): void {
  const shown = JSON.stringify(word);
  if (!PRINTABLE.test(word)) {
    reply.problems.push(`Ignored word ${shown}: it holds a non-ASCII or control character`);
    return;
  }
  const lower = word.toLowerCase();
  if ((AGENT_ADMIN_STATES as readonly string[]).includes(lower)) {
    repeat("administrative state", lower);
    reply.admin = lower as AgentAdmin;
  } else if ((AGENT_OP_STATES as readonly string[]).includes(lower)) {
    repeat("operational state", lower);
    reply.op = lower as AgentOp;
  } else if (/^[0-9]/.test(word) && word.includes("%")) {
    if (!/^[0-9]+%$/.test(word)) {
      reply.problems.push(`Ignored weight ${shown}: expected digits then "%", such as 75%`);
      return;
    }
    let percent = Number(word.slice(0, -1));
    if (percent > MAX_WEIGHT_PERCENT) {
      reply.problems.push(`Weight ${shown} is over ${MAX_WEIGHT_PERCENT}%; read as ${MAX_WEIGHT_PERCENT}%`);
      percent = MAX_WEIGHT_PERCENT;
    }
    repeat("weight", word);
    reply.weightPercent = percent;
  } else if (lower.startsWith("maxconn:")) {
    const digits = word.slice("maxconn:".length);
    if (!/^[0-9]+$/.test(digits) || Number(digits) > MAX_AGENT_MAXCONN) {
      reply.problems.push(`Ignored ${shown}: expected maxconn:N with N in 0..${MAX_AGENT_MAXCONN}`);
      return;
    }
    repeat("maxconn", word);
    reply.maxconn = Number(digits);
  } else {
    const hint = word.includes("#") ? ' (put a space before "#" to start a description)' : "";
    reply.problems.push(`Ignored unknown word ${shown}${hint}`);
  }
}

function description(text: string, problems: string[]): string {
  const spaced = text.replaceAll("\t", " ");
  const clean = spaced.replace(NOT_PRINTABLE, "?").trim();
  if (clean !== spaced.trim()) {
    problems.push('Replaced non-ASCII or control characters in the description with "?"');
  }
  return clean;
}

/**
 * The reply line for `fields`, ending in "\n": weight, maxconn, administrative then operational state, then
 * the description after " #". The description is made printable ASCII and cut to keep the line within the
 * limit. Throws RangeError for a weight or maxconn out of range: those come from code, not from the network.
 */
export function formatAgentReply(fields: AgentReplyFields): string {
  const words: string[] = [];
  if (fields.weightPercent !== undefined) {
    checkInt("weightPercent", fields.weightPercent, MAX_WEIGHT_PERCENT);
    words.push(`${fields.weightPercent}%`);
  }
  if (fields.maxconn !== undefined) {
    checkInt("maxconn", fields.maxconn, MAX_AGENT_MAXCONN);
    words.push(`maxconn:${fields.maxconn}`);
  }
  if (fields.admin !== undefined) words.push(fields.admin);
  if (fields.op !== undefined) words.push(fields.op);
  let line = words.join(" ");
  const text = fields.description?.replaceAll("\t", " ").replace(NOT_PRINTABLE, "?").trim();
  if (text) {
    const prefix = line ? `${line} #` : "#";
    line = (prefix + text).slice(0, MAX_AGENT_REPLY).trimEnd();
  }
  return line + "\n";
}

function checkInt(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`Agent reply ${name} must be an integer in 0..${max}, got ${value}`);
  }
}
