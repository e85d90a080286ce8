/**
 * Declarative parameters of active programs, in the manner of Click's configuration parsing: a kind lists its
 * parameters with a parser each, and the graph check reads every `key = value` of an AP block through them before
 * anything runs, so that an unknown key or a value that does not parse is reported with its position.
 */
import type { Value } from "../dipronn/ast.ts";
import { valueText } from "../dipronn/ast.ts";

export interface Param<T> {
  readonly doc: string;
  /** The value, or a sentence saying why it is not one. */
  parse(values: readonly Value[]): T | ParamProblem;
  /** Used when the block does not give the parameter; absent means the parameter is required. */
  readonly default?: T;
}

export class ParamProblem {
  constructor(readonly message: string) {}
}

export type Params = Record<string, Param<unknown>>;
export type ParamValues<P extends Params> = {
  readonly [K in keyof P]: P[K] extends Param<infer T> ? T : never;
};

function one(values: readonly Value[], what: string): Value | ParamProblem {
  return values.length === 1 ? values[0] : new ParamProblem(`expected ${what}, not a list`);
}

export function stringParam(doc: string, dflt?: string): Param<string> {
  return {
    doc,
    default: dflt,
    parse(values) {
      const v = one(values, "a quoted string");
      if (v instanceof ParamProblem) return v;
      return v.kind === "string" ? v.text : new ParamProblem(`expected a quoted string, not ${valueText(v)}`);
    },
  };
}

export function numberParam(
  doc: string,
  o: { min?: number; max?: number; default?: number; integer?: boolean },
): Param<number> {
  return {
    doc,
    default: o.default,
    parse(values) {
      const v = one(values, "a number");
      if (v instanceof ParamProblem) return v;
      const n = v.kind === "number" ? Number(v.text) : NaN;
      if (!Number.isFinite(n)) return new ParamProblem(`expected a number, not ${valueText(v)}`);
      if (o.integer && !Number.isInteger(n)) {
        return new ParamProblem(`expected a whole number, not ${valueText(v)}`);
      }
      if (o.min !== undefined && n < o.min) return new ParamProblem(`must be at least ${o.min}`);
      if (o.max !== undefined && n > o.max) return new ParamProblem(`must be at most ${o.max}`);
      return n;
    },
  };
}

const TRUE = new Set(["true", "yes", "on"]);
const FALSE = new Set(["false", "no", "off"]);

export function boolParam(doc: string, dflt: boolean): Param<boolean> {
  return {
    doc,
    default: dflt,
    parse(values) {
      const v = one(values, "true or false");
      if (v instanceof ParamProblem) return v;
      const t = v.kind === "name" || v.kind === "string" ? v.text.toLowerCase() : "";
      if (TRUE.has(t)) return true;
      if (FALSE.has(t)) return false;
      return new ParamProblem(`expected true or false, not ${valueText(v)}`);
    },
  };
}

/** A file name inside the node's data directory: no directories, no leading dot, a short safe alphabet. */
const FILE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

export function fileNameParam(doc: string): Param<string> {
  const inner = stringParam(doc);
  return {
    doc,
    parse(values) {
      const name = inner.parse(values);
      if (name instanceof ParamProblem) return name;
      if (!FILE_NAME.test(name) || name.includes("..")) {
        return new ParamProblem(
          `"${name}" is not a plain file name: use letters, digits, "_", "-" and ".", no "/" or "..", up to 128`,
        );
      }
      return name;
    },
  };
}
