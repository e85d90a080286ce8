/**
 * Declarative validation of YAML nodes into plain, frozen values. A schema walks the parsed document itself (not a
 * JS copy of it), so every error carries the file, line and column of the offending node and its key path. Every
 * error is collected; nothing stops at the first.
 *
 * Environment references `${NAME}` and `${NAME:-default}` in string scalars are replaced before a value is checked,
 * so `port: ${PORT}` and `token: ${EDGENODE_TOKEN}` work; `$$` stands for one `$`.
 */
import {
  isAlias,
  isMap,
  isScalar,
  isSeq,
  type LineCounter,
  type Node,
  type Pair,
  type Scalar,
  type YAMLMap,
} from "yaml";
import { ConfigError, type Position } from "../core/errors.ts";
import { suggest } from "../core/suggest.ts";
import { type HostPort, isIP, parseHostPort } from "../net/address.ts";
import { AllowListError, SourceAllowList } from "../net/allow.ts";

/** Returned by a schema whose node was wrong; the error has been recorded in the context. */
export const INVALID: unique symbol = Symbol("invalid");
export type Checked<T> = T | typeof INVALID;

/** At most this many errors are kept from one file; a line says how many more there were. */
export const MAX_ERRORS = 100;

/** What schemas share while walking one document. */
export class Context {
  readonly errors: ConfigError[] = [];
  dropped = 0;

  constructor(
    readonly file: string,
    readonly lines: LineCounter,
    readonly env: (name: string) => string | undefined,
    readonly resolveAlias: (node: Node) => Node | null,
  ) {}

  position(offset: number): Position {
    const { line, col } = this.lines.linePos(offset);
    return { file: this.file, line, col };
  }

  /** Records an error at `node` (its first character), with the key path it belongs to. */
  error(at: Node | Pair["key"] | number, path: string, message: string, related?: Position): void {
    if (this.errors.length >= MAX_ERRORS) {
      this.dropped++;
      return;
    }
    const offset = typeof at === "number" ? at : (at as Node | null)?.range?.[0] ?? 0;
    this.errors.push(new ConfigError(message, this.position(offset), { path, related }));
  }
}

/** Where a value stands: its node (null when the key has no value) and the landmark to blame when it is absent. */
export interface Site {
  node: Node | null;
  /** The key (or the parent mapping) to point at when `node` is null. */
  anchor: Node | number;
  path: string;
}

export interface Schema<T> {
  /** What a valid value looks like, for messages and the config reference ("duration such as 10s"). */
  readonly describe: string;
  check(site: Site, ctx: Context): Checked<T>;
}

/** True for a key written with no value at all (`level:`), as opposed to an explicit `null` or `~`. */
function isBlank(node: Node | null): boolean {
  return node === null || (isScalar(node) && node.value === null && !(node as Scalar).source);
}

/** The node to blame: the value, or its key when the value was left blank. */
function at(site: Site): Node | number {
  return isBlank(site.node) ? site.anchor : site.node!;
}

function deref(node: Node | null, ctx: Context): Node | null {
  return node && isAlias(node) ? ctx.resolveAlias(node) : node;
}

function typeName(node: Node | null): string {
  if (isBlank(node)) return "nothing";
  if (isMap(node)) return "a mapping";
  if (isSeq(node)) return "a list";
  if (isScalar(node)) {
    const v = node.value;
    if (v === null) return "null";
    if (typeof v === "string") return `"${v}"`;
    return `${typeof v} ${String(v)}`;
  }
  return "an unsupported node";
}

/** Replaces `${NAME}` / `${NAME:-default}` / `$$`; returns an error message when a name is not set. */
export function substituteEnv(
  text: string,
  env: (name: string) => string | undefined,
): string | { error: string } {
  let missing: string | undefined;
  const out = text.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?/g,
    (match, name: string | undefined, fallback: string | undefined) => {
      if (match === "$$") return "$";
      if (name === undefined) {
        missing ??= `Malformed environment reference "${match}" (use \${NAME} or \${NAME:-default})`;
        return "";
      }
      const value = env(name);
      if (value !== undefined && value !== "") return value;
      if (fallback !== undefined) return fallback;
      missing ??= `Environment variable "${name}" is not set`;
      return "";
    },
  );
  return missing ? { error: missing } : out;
}

/** The scalar value of a site after environment substitution; records an error and returns INVALID otherwise. */
function scalar(site: Site, ctx: Context, want: string): Checked<{ value: unknown; fromEnv: boolean }> {
  const node = deref(site.node, ctx);
  if (!node || !isScalar(node) || node.value === null) {
    ctx.error(at({ ...site, node }), site.path, `Expected ${want}, got ${typeName(node)}`);
    return INVALID;
  }
  const raw = (node as Scalar).value;
  if (typeof raw !== "string" || !raw.includes("$")) return { value: raw, fromEnv: false };
  const sub = substituteEnv(raw, ctx.env);
  if (typeof sub === "object") {
    ctx.error(node, site.path, sub.error);
    return INVALID;
  }
  return { value: sub, fromEnv: sub !== raw };
}

/** A string, optionally constrained by a pattern and length. */
export function str(
  options: { pattern?: RegExp; describe?: string; min?: number; max?: number } = {},
): Schema<string> {
  const { pattern, min = 0, max = 4096 } = options;
  const describe = options.describe ?? "a string";
  return {
    describe,
    check(site, ctx) {
      const s = scalar(site, ctx, describe);
      if (s === INVALID) return INVALID;
      if (typeof s.value !== "string") {
        ctx.error(
          at(site),
          site.path,
          `Expected ${describe}, got ${typeName(site.node)} (quote it to make it text)`,
        );
        return INVALID;
      }
      const v = s.value;
      if (v.length < min || v.length > max) {
        const bound = min > 0 ? `${min}..${max}` : `at most ${max}`;
        ctx.error(at(site), site.path, `Expected ${describe} of ${bound} characters, got ${v.length}`);
        return INVALID;
      }
      if (pattern && !pattern.test(v)) {
        ctx.error(at(site), site.path, `Expected ${describe}, got "${v}"`);
        return INVALID;
      }
      return v;
    },
  };
}

/** An integer in [min, max]. */
export function int(options: { min?: number; max?: number } = {}): Schema<number> {
  const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = options;
  const describe = `an integer`;
  return {
    describe,
    check(site, ctx) {
      const s = scalar(site, ctx, describe);
      if (s === INVALID) return INVALID;
      const v = s.fromEnv && typeof s.value === "string" && /^-?[0-9]+$/.test(s.value)
        ? Number(s.value)
        : s.value;
      if (typeof v !== "number" || !Number.isSafeInteger(v)) {
        ctx.error(at(site), site.path, `Expected ${describe}, got ${typeName(site.node)}`);
        return INVALID;
      }
      if (v < min || v > max) {
        ctx.error(at(site), site.path, `Expected an integer in ${min}..${max}, got ${v}`);
        return INVALID;
      }
      return v;
    },
  };
}

/** true or false (YAML 1.2: only those words). */
export function bool(): Schema<boolean> {
  return {
    describe: "true or false",
    check(site, ctx) {
      const s = scalar(site, ctx, "true or false");
      if (s === INVALID) return INVALID;
      const v = s.fromEnv && (s.value === "true" || s.value === "false") ? s.value === "true" : s.value;
      if (typeof v !== "boolean") {
        ctx.error(at(site), site.path, `Expected true or false, got ${typeName(site.node)}`);
        return INVALID;
      }
      return v;
    },
  };
}

/** One of a fixed set of words. */
export function oneOf<const T extends string>(values: readonly T[], what = "one of"): Schema<T> {
  const describe = `${what} ${values.join(", ")}`;
  return {
    describe,
    check(site, ctx) {
      const s = scalar(site, ctx, describe);
      if (s === INVALID) return INVALID;
      if (typeof s.value !== "string" || !values.includes(s.value as T)) {
        const hint = typeof s.value === "string" ? suggest(s.value, values) : "";
        ctx.error(at(site), site.path, `Expected ${describe}, got ${typeName(site.node)}${hint}`);
        return INVALID;
      }
      return s.value as T;
    },
  };
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses `250ms`, `10s`, `1.5m`, `2h` into milliseconds; null when it is not such text. */
export function parseDuration(text: string): number | null {
  const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$/.exec(text.trim());
  return m ? Math.round(Number(m[1]) * DURATION_UNITS[m[2]]) : null;
}

/** The shortest exact text for a duration in milliseconds: `10s`, `1500ms`, `10m`. */
export function formatDuration(ms: number): string {
  for (const unit of ["h", "m", "s"]) {
    if (ms >= DURATION_UNITS[unit] && ms % DURATION_UNITS[unit] === 0) {
      return `${ms / DURATION_UNITS[unit]}${unit}`;
    }
  }
  return `${ms}ms`;
}

/**
 * A quantity written with a unit and checked against bounds: the shared shape of durations and sizes. `parse`
 * turns the scalar into the base unit (null when it is not such text) and `format` writes bounds back in units.
 */
function measured(o: {
  what: string;
  describe: string;
  min: number;
  max: number;
  parse: (value: unknown) => number | null;
  format: (n: number) => string;
  hint?: (value: unknown) => string;
}): Schema<number> {
  return {
    describe: o.describe,
    check(site, ctx) {
      const s = scalar(site, ctx, o.describe);
      if (s === INVALID) return INVALID;
      const n = o.parse(s.value);
      if (n === null) {
        ctx.error(
          at(site),
          site.path,
          `Expected ${o.describe}, got ${typeName(site.node)}${o.hint?.(s.value) ?? ""}`,
        );
        return INVALID;
      }
      if (n < o.min || n > o.max) {
        ctx.error(
          at(site),
          site.path,
          `${o.what} must be in ${o.format(o.min)}..${o.format(o.max)}, got ${o.format(n)}`,
        );
        return INVALID;
      }
      return n;
    },
  };
}

/** A duration with a unit (`500ms`, `10s`, `2m`, `1h`), checked against bounds given in milliseconds. */
export function duration(options: { min?: number; max?: number } = {}): Schema<number> {
  return measured({
    what: "Duration",
    describe: "a duration such as 500ms, 10s, 2m or 1h",
    min: options.min ?? 0,
    max: options.max ?? 7 * 24 * 3_600_000,
    parse: (v) => (typeof v === "string" ? parseDuration(v) : null),
    format: formatDuration,
    hint: (v) => (typeof v === "number" ? " (a unit is required)" : ""),
  });
}

const SIZE_UNITS: Record<string, number> = { "": 1, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };

/** The shortest exact text for a byte count: `64KiB`, `1MiB`, `1000B`. */
export function formatSize(bytes: number): string {
  for (const unit of ["GiB", "MiB", "KiB"]) {
    if (bytes >= SIZE_UNITS[unit] && bytes % SIZE_UNITS[unit] === 0) {
      return `${bytes / SIZE_UNITS[unit]}${unit}`;
    }
  }
  return `${bytes}B`;
}

/** A byte size: an integer, or text with a binary unit (`64KiB`, `1MiB`). */
export function byteSize(options: { min?: number; max?: number } = {}): Schema<number> {
  return measured({
    what: "Size",
    describe: "a size such as 65536, 64KiB or 1MiB",
    min: options.min ?? 0,
    max: options.max ?? 2 ** 40,
    parse: (v) => {
      if (typeof v === "number") return Number.isSafeInteger(v) ? v : null;
      const m = typeof v === "string" ? /^([0-9]+)\s*(B|KiB|MiB|GiB)?$/.exec(v.trim()) : null;
      return m ? Number(m[1]) * SIZE_UNITS[m[2] ?? ""] : null;
    },
    format: formatSize,
  });
}

/** `ADDRESS:PORT` with an IPv4 address, `[IPv6]` or (unless `ipOnly`) a host name. */
export function hostPort(options: { ipOnly?: boolean } = {}): Schema<HostPort> {
  const describe = options.ipOnly
    ? "IP:PORT such as 0.0.0.0:5004 or [::1]:5004"
    : "ADDRESS:PORT such as 127.0.0.1:8080 or [::1]:8080";
  return {
    describe,
    check(site, ctx) {
      const s = scalar(site, ctx, describe);
      if (s === INVALID) return INVALID;
      if (typeof s.value !== "string") {
        ctx.error(at(site), site.path, `Expected ${describe}, got ${typeName(site.node)}`);
        return INVALID;
      }
      const parsed = parseHostPort(s.value);
      if (typeof parsed === "string") {
        ctx.error(at(site), site.path, parsed);
        return INVALID;
      }
      if (options.ipOnly && !isIP(parsed.host)) {
        ctx.error(at(site), site.path, `Expected an IP address, not the host name "${parsed.host}"`);
        return INVALID;
      }
      return Object.freeze(parsed);
    },
  };
}

/**
 * `allow_sources`: source prefixes a data port lets in (lib/net/allow.ts); the default, an empty list, allows any
 * source. Each entry is checked where it stands; build the list with `SourceAllowList.parse(value)`.
 */
export function allowSources(): Field<readonly string[]> {
  const prefix: Schema<string> = {
    describe: "a source prefix such as 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7",
    check(site, ctx) {
      const v = str({ describe: prefix.describe, min: 1, max: 64 }).check(site, ctx);
      if (v === INVALID) return INVALID;
      try {
        SourceAllowList.parse([v]);
      } catch (error) {
        if (!(error instanceof AllowListError)) throw error;
        ctx.error(at(site), site.path, error.message);
        return INVALID;
      }
      return v;
    },
  };
  return opt(list(prefix, { max: 1000, unique: true }), [], "source prefixes let in; empty: any source");
}

/**
 * An absolute path: a relative one would change meaning with the directory the process happens to start in (a
 * service manager's is `/`).
 */
export function absolutePath(describe = "an absolute path"): Schema<string> {
  const text = str({ min: 1, max: 4096, describe });
  return {
    describe,
    check(site, ctx) {
      const value = text.check(site, ctx);
      if (value === INVALID || value.startsWith("/")) return value;
      ctx.error(at(site), site.path, `Expected ${describe}, got "${value}" (write it from /)`);
      return INVALID;
    },
  };
}

/** A value that may also be written as `null` (or left empty), giving null. */
export function nullable<T>(inner: Schema<T>): Schema<T | null> {
  return {
    describe: `${inner.describe}, or null`,
    check(site, ctx) {
      const node = deref(site.node, ctx);
      if (node === null || (isScalar(node) && node.value === null)) return null;
      return inner.check(site, ctx);
    },
  };
}

/** A list of items; `unique` rejects repeats (pointing at both). */
export function list<T>(
  item: Schema<T>,
  options: {
    min?: number;
    max?: number;
    unique?: boolean;
    /** Items must differ in this key (a name, an address): a repeat points at both items. */
    uniqueBy?: { key: (v: T) => string; what: string };
  } = {},
): Schema<readonly T[]> {
  const { min = 0, max = 10_000, unique = false, uniqueBy } = options;
  return {
    describe: `a list of ${item.describe}`,
    check(site, ctx) {
      const node = deref(site.node, ctx);
      if (!node || !isSeq(node)) {
        ctx.error(at(site), site.path, `Expected a list, got ${typeName(node)}`);
        return INVALID;
      }
      const n = node.items.length;
      if (n < min || n > max) {
        const bound = n < min ? `at least ${min}` : `at most ${max}`;
        ctx.error(
          node,
          site.path,
          `Expected ${bound} item${(n < min ? min : max) === 1 ? "" : "s"}, got ${n}`,
        );
        return INVALID;
      }
      const out: T[] = [];
      const seen = new Map<string, Node>();
      let ok = true;
      node.items.forEach((child, i) => {
        const c = child as Node | null;
        const v = item.check({ node: c, anchor: node.range?.[0] ?? 0, path: `${site.path}[${i}]` }, ctx);
        if (v === INVALID) return void (ok = false);
        if ((unique || uniqueBy) && c) {
          const key = uniqueBy ? uniqueBy.key(v) : JSON.stringify(v);
          const first = seen.get(key);
          if (first) {
            const pos = ctx.position(first.range?.[0] ?? 0);
            const message = uniqueBy
              ? `Repeated ${uniqueBy.what} "${key}" (first at line ${pos.line}, column ${pos.col})`
              : `Repeated value ${key}`;
            ctx.error(c, `${site.path}[${i}]`, message, pos);
            return void (ok = false);
          }
          seen.set(key, c);
        }
        out.push(v);
      });
      return ok ? Object.freeze(out) : INVALID;
    },
  };
}

export interface Field<T> {
  readonly schema: Schema<T>;
  /** Used when the key is absent; a field without one is required. */
  readonly default?: T;
  readonly doc?: string;
}

/** A field with a default (optional key). */
export function opt<T>(schema: Schema<T>, dflt: T, doc?: string): Field<T> {
  return { schema, default: dflt, doc };
}

/** A required key. */
export function req<T>(schema: Schema<T>, doc?: string): Field<T> {
  return { schema, doc };
}

// deno-lint-ignore no-explicit-any
type Fields = Record<string, Field<any>>;
export type ObjectOf<F extends Fields> = { readonly [K in keyof F]: F[K] extends Field<infer T> ? T : never };

export interface ObjectSchema<F extends Fields> extends Schema<ObjectOf<F>> {
  readonly fields: F;
}

/**
 * A mapping with known keys. Unknown keys, duplicate keys (pointing at both), non-text keys and missing required keys
 * are errors. An empty value (`relay:`) counts as an empty mapping.
 */
/** A check across the fields of a checked mapping; it reports through `ctx` at nodes it finds in `node`. */
export type Refine<T> = (value: T, node: YAMLMap | null, ctx: Context, path: string) => void;

export function obj<F extends Fields>(
  fields: F,
  describe = "a mapping",
  refine?: Refine<ObjectOf<F>>,
): ObjectSchema<F> {
  const known = Object.keys(fields);
  return {
    describe,
    fields,
    check(site, ctx) {
      const node = deref(site.node, ctx);
      const isEmpty = node === null || (isScalar(node) && node.value === null);
      if (!isEmpty && !isMap(node)) {
        ctx.error(at(site), site.path, `Expected ${describe}, got ${typeName(node)}`);
        return INVALID;
      }
      const seen = new Map<string, Pair>();
      for (const pair of isEmpty ? [] : (node as { items: Pair[] }).items) {
        const keyNode = pair.key as Node | null;
        const key = keyNode && isScalar(keyNode) ? keyNode.value : undefined;
        const keyAt = keyNode ?? node!;
        if (typeof key !== "string") {
          ctx.error(keyAt, site.path, `Keys must be text, got ${typeName(keyNode)}`);
          continue;
        }
        const path = site.path ? `${site.path}.${key}` : key;
        const first = seen.get(key);
        if (first) {
          const firstAt = ctx.position((first.key as Node).range?.[0] ?? 0);
          ctx.error(
            keyAt,
            path,
            `Duplicate key "${key}" (first at line ${firstAt.line}, column ${firstAt.col})`,
            firstAt,
          );
          continue;
        }
        seen.set(key, pair);
        if (!Object.hasOwn(fields, key)) {
          const where = site.path ? ` in ${site.path}` : "";
          const list = known.length ? known.join(", ") : "none";
          ctx.error(keyAt, path, `Unknown key "${key}"${where}${suggest(key, known)} (known keys: ${list})`);
        }
      }
      const out: Record<string, unknown> = {};
      let ok = true;
      for (const [key, field] of Object.entries(fields)) {
        const path = site.path ? `${site.path}.${key}` : key;
        const pair = seen.get(key);
        if (!pair) {
          if (!("default" in field)) {
            ctx.error(at(site), path, `Missing required key "${key}" (${field.schema.describe})`);
            ok = false;
          } else {
            out[key] = field.default;
          }
          continue;
        }
        const value = field.schema.check(
          { node: pair.value as Node | null, anchor: pair.key as Node, path },
          ctx,
        );
        if (value === INVALID) ok = false;
        else out[key] = value;
      }
      if (!ok) return INVALID;
      const value = Object.freeze(out) as ObjectOf<F>;
      refine?.(value, isEmpty ? null : node as YAMLMap, ctx, site.path);
      return value;
    },
  };
}

/** The value a mapping of `fields` takes when it is absent: every field's default. */
export function defaultsOf<F extends Fields>(fields: F): ObjectOf<F> {
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(fields)) {
    if (!("default" in field)) {
      throw new Error(`Field "${key}" has no default, so its mapping cannot be omitted`);
    }
    out[key] = field.default;
  }
  return Object.freeze(out) as ObjectOf<F>;
}

/** An optional mapping whose absence means all its defaults (which `refine` does not see: they are known good). */
export function section<F extends Fields>(fields: F, refine?: Refine<ObjectOf<F>>): Field<ObjectOf<F>> {
  return opt(obj(fields, "a mapping", refine), defaultsOf(fields));
}

/** The node at `path` below `node` (for pointing at a field after a mapping was checked), else `node` itself. */
export function nodeAt(node: YAMLMap | null, path: readonly (string | number)[]): Node | number {
  const found = node?.getIn(path, true) as Node | undefined;
  return found ?? node ?? 0;
}
