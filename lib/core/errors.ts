/**
 * Error classes shared by every part of edgenode. Errors carry their data (file, line, column, key path) so that
 * callers can both print them the one way an operator expects (`file:12:5: message`) and test them field by field.
 */

/** A place in a source file. Lines and columns count from 1. */
export interface Position {
  file: string;
  line: number;
  col: number;
}

/** Formats a position as `file:line:col`. */
export function formatPosition(pos: Position): string {
  return `${pos.file}:${pos.line}:${pos.col}`;
}

/** An error found at a place in a source file: a config, a program, a rules file. */
export class PositionedError extends Error {
  override name = "PositionedError";
  readonly file: string;
  readonly line: number;
  readonly col: number;
  /** Dotted key path (`status.listen`) or other landmark; empty when there is none. */
  readonly path: string;
  /** Another place the error concerns, such as the first of two duplicate keys. */
  readonly related?: Position;

  constructor(message: string, pos: Position, options: { path?: string; related?: Position } = {}) {
    super(message);
    this.file = pos.file;
    this.line = pos.line;
    this.col = pos.col;
    this.path = options.path ?? "";
    this.related = options.related;
  }

  /** `file:line:col: path: message`, the form every edgenode error list is printed in. */
  format(): string {
    const where = formatPosition(this);
    return this.path ? `${where}: ${this.path}: ${this.message}` : `${where}: ${this.message}`;
  }
}

/** A mistake in a configuration file. */
export class ConfigError extends PositionedError {
  override name = "ConfigError";
}

/** Every error found in one source, reported together (nothing is applied when there is any). */
export class ErrorList<E extends PositionedError = PositionedError> extends AggregateError {
  override name = "ErrorList";
  declare readonly errors: E[];

  constructor(errors: E[], message: string) {
    super(sortByPosition(errors), message);
  }

  /** One line per error, in file order. */
  format(): string {
    return this.errors.map((e) => e.format()).join("\n");
  }
}

function sortByPosition<E extends PositionedError>(errors: E[]): E[] {
  return [...errors].sort((a, b) =>
    a.file === b.file ? a.line - b.line || a.col - b.col : a.file < b.file ? -1 : 1
  );
}

/** The command line was wrong: unknown flag, bad value, missing file. main prints it and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A part could not start (port in use, permission denied). main prints it and exits 1. */
export class StartError extends Error {
  override name = "StartError";
  /**
   * The config key of the part that could not start (`scheduler.services[1].listen`), so that whoever prints it can
   * name the config's file:line:col (lib/config/plan.ts `describeStartError`); empty when no key names it.
   */
  readonly configPath: string;

  constructor(message: string, options: ErrorOptions & { configPath?: string } = {}) {
    super(message, options);
    this.configPath = options.configPath ?? "";
  }
}

/**
 * `error` as the StartError of the part the config names at `configPath`, its message led by `label` (`service
 * web`). An error that already names its key keeps it (the innermost part knows its place best).
 */
export function startErrorAt(error: unknown, configPath: string, label: string): StartError {
  if (error instanceof StartError && error.configPath) return error;
  return new StartError(`${label}: ${errorMessage(error)}`, { cause: error, configPath });
}

/** A name looked up in a registry (role, picker, element) that nothing registered. */
export class UnknownNameError extends Error {
  override name = "UnknownNameError";
  constructor(readonly kind: string, readonly unknown: string, readonly known: readonly string[]) {
    super(`Unknown ${kind} "${unknown}" (known: ${known.length ? known.join(", ") : "none"})`);
  }
}

/** The message of anything thrown: an Error's own message, anything else as text. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
