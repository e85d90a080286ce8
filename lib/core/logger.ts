/**
 * Structured logs: one line per event in logfmt (`ts=… level=info component=status msg="listening" addr=…`), so
 * that grep, journald and log shippers all read them. The level is shared by a logger and its children and can be
 * changed at run time.
 */
import type { Clock } from "./clock.ts";

export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = typeof LOG_LEVELS[number];

export type LogFields = Record<string, string | number | boolean | null | undefined>;

/** Where finished lines go; the default writes to stderr. */
export type LogSink = (line: string) => void;

const encoder = new TextEncoder();
export const stderrSink: LogSink = (line) => Deno.stderr.writeSync(encoder.encode(line + "\n"));

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

interface Shared {
  level: LogLevel;
  readonly clock: Clock;
  readonly sink: LogSink;
  /** Lines the sink threw on (a closed stderr, a full pipe), and how many of them the log has told of. */
  lost: number;
  told: number;
}

export class Logger {
  readonly #shared: Shared;
  readonly component: string;

  constructor(options: { level: LogLevel; clock: Clock; sink?: LogSink; component?: string });
  constructor(options: { shared: Shared; component: string });
  constructor(
    options: { level?: LogLevel; clock?: Clock; sink?: LogSink; component?: string; shared?: Shared },
  ) {
    this.#shared = options.shared ??
      { level: options.level!, clock: options.clock!, sink: options.sink ?? stderrSink, lost: 0, told: 0 };
    this.component = options.component ?? "main";
  }

  /** A logger for a part of the program; it shares this logger's level and sink. */
  child(component: string): Logger {
    return new Logger({ shared: this.#shared, component });
  }

  /** Lines the sink could not take (it threw); they are counted, never thrown at the code that logged. */
  get lost(): number {
    return this.#shared.lost;
  }

  get level(): LogLevel {
    return this.#shared.level;
  }

  set level(level: LogLevel) {
    this.#shared.level = level;
  }

  debug(msg: string, fields?: LogFields): void {
    this.#log("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.#log("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.#log("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.#log("error", msg, fields);
  }

  #log(level: LogLevel, msg: string, fields: LogFields = {}): void {
    if (LOG_LEVELS.indexOf(level) < LOG_LEVELS.indexOf(this.#shared.level)) return;
    const ts = new Date(this.#shared.clock.now()).toISOString();
    let line = `ts=${ts} level=${level} component=${this.component} msg=${quote(msg)}`;
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined) line += ` ${key}=${quote(String(value))}`;
    }
    const shared = this.#shared;
    // Logging is never why a part fails: a sink that throws (stderr closed, EPIPE, EAGAIN) loses the line, and
    // the next line that gets through says how many were lost.
    try {
      if (shared.lost > shared.told) {
        const lost = shared.lost - shared.told;
        shared.sink(`ts=${ts} level=warn component=logger msg="log lines lost" lost=${lost}`);
        shared.told += lost;
      }
      shared.sink(line);
    } catch {
      shared.lost++;
    }
  }
}

function quote(value: string): string {
  // Control characters (ESC, NUL) are quoted too, so JSON escaping keeps them out of terminals and parsers.
  // deno-lint-ignore no-control-regex
  return /^[^\s"=\\\x00-\x1f\x7f]+$/.test(value) ? value : JSON.stringify(value);
}
