/**
 * What an uploaded active program is: a module that exports `ports` (names of its inputs and outputs), `params`
 * (declared, not parsed by the module: the host checks the session's values against them) and a batch handler.
 * This file is shared by the host (to check what a child reports) and by the guest runtime inside the child, so it
 * imports nothing.
 *
 *     export const ports = { inputs: ["in"], outputs: ["out"] };
 *     export const params = { payload_type: { type: "number", default: 96, min: 0, max: 127 } };
 *     export const needs = { files: "write" };        // optional: a storage directory of its own (its cwd)
 *     let seen = 0;                                   // state is allowed: one instance per sandbox
 *     export function start(ctx) { ... }              // optional: ctx.params, ctx.now()
 *     export function handle(input, batch, ctx) {     // batch: { data: Uint8Array, from: { host, port } }[]
 *       seen += batch.length;
 *       return [batch.filter((d) => (d.data[1] & 0x7f) !== ctx.params.payload_type)];   // per output
 *     }
 *
 * `ctx.now()` is the host's clock when it sent the batch (ms): the program gets no timer of the node's.
 */

/** A datagram as an uploaded program sees it; `data` is valid only during the call (copy what you keep). */
export interface Datagram {
  readonly data: Uint8Array;
  readonly from: { readonly host: string; readonly port: number };
}

export interface ParamDecl {
  readonly type: "number" | "string" | "boolean";
  readonly doc?: string;
  readonly default?: number | string | boolean;
  readonly min?: number;
  readonly max?: number;
}

export interface PortsDecl {
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
}

export type ParamValue = number | string | boolean;

/**
 * What a program reaches beyond memory, as it declares it: `export const needs = { files: "write" }` gives it a
 * directory of its own under the node's data directory (its working directory), "read" only reads there.
 */
export interface ProgramNeeds {
  readonly files?: "read" | "write";
}

/** The problems of a module's `needs` declaration. */
export function needsProblems(needs: unknown): string[] {
  if (needs === undefined || needs === null) return [];
  if (typeof needs !== "object" || Array.isArray(needs)) {
    return ['`needs` must be an object such as { files: "write" }'];
  }
  const problems: string[] = [];
  for (const [key, value] of Object.entries(needs as Record<string, unknown>)) {
    if (key !== "files") {
      problems.push(`needs.${key.slice(0, 40)} is not something a program may ask for (only files)`);
    } else if (value !== "read" && value !== "write") problems.push('needs.files must be "read" or "write"');
  }
  return problems;
}

export const MAX_PORTS = 16;
export const MAX_PARAMS = 64;
const NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

/** The problems of a module's `ports` declaration (none: it is a PortsDecl). */
export function portsProblems(ports: unknown): string[] {
  if (!ports || typeof ports !== "object") {
    return ["it must export `ports` = { inputs: [...], outputs: [...] }"];
  }
  const problems: string[] = [];
  for (const side of ["inputs", "outputs"] as const) {
    const list = (ports as Record<string, unknown>)[side];
    if (!Array.isArray(list)) {
      problems.push(`ports.${side} must be a list of names`);
      continue;
    }
    if (list.length > MAX_PORTS) {
      problems.push(`ports.${side} has ${list.length} names, at most ${MAX_PORTS}`);
    }
    if (side === "inputs" && list.length === 0) problems.push("ports.inputs must name at least one input");
    for (const name of list) {
      if (typeof name !== "string" || !NAME.test(name)) {
        problems.push(`ports.${side}: ${JSON.stringify(name)?.slice(0, 40)} is not a name`);
      }
    }
    if (new Set(list).size !== list.length) problems.push(`ports.${side} names a port twice`);
  }
  return problems;
}

/** The problems of a module's `params` declaration. */
export function paramsProblems(params: unknown): string[] {
  if (params === undefined) return [];
  if (!params || typeof params !== "object" || Array.isArray(params)) {
    return ["`params` must be an object of declarations"];
  }
  const entries = Object.entries(params as Record<string, unknown>);
  if (entries.length > MAX_PARAMS) return [`it declares ${entries.length} params, at most ${MAX_PARAMS}`];
  const problems: string[] = [];
  for (const [name, d] of entries) {
    if (!NAME.test(name)) problems.push(`param ${JSON.stringify(name).slice(0, 40)} is not a name`);
    const decl = d as Partial<ParamDecl> | null;
    if (!decl || typeof decl !== "object") {
      problems.push(`param "${name}" must be { type, default?, min?, max?, doc? }`);
      continue;
    }
    if (decl.type !== "number" && decl.type !== "string" && decl.type !== "boolean") {
      problems.push(`param "${name}": type must be "number", "string" or "boolean"`);
      continue;
    }
    if (decl.default !== undefined && typeName(decl.default) !== decl.type) {
      problems.push(`param "${name}": its default is not a ${decl.type}`);
    }
    for (const bound of ["min", "max"] as const) {
      if (decl[bound] !== undefined && (decl.type !== "number" || typeof decl[bound] !== "number")) {
        problems.push(`param "${name}": ${bound} is for numbers and must be one`);
      }
    }
  }
  return problems;
}

/** The values the program gets: `given` checked against `decl`, defaults filled in; or the problems. */
export function resolveParams(
  decl: Readonly<Record<string, ParamDecl>>,
  given: Readonly<Record<string, unknown>>,
): { values: Record<string, ParamValue>; problems: string[] } {
  const values: Record<string, ParamValue> = {};
  const problems: string[] = [];
  for (const key of Object.keys(given)) {
    if (!Object.hasOwn(decl, key)) {
      const known = Object.keys(decl);
      problems.push(
        `unknown param "${key}"${known.length ? ` (it has: ${known.join(", ")})` : " (it has none)"}`,
      );
    }
  }
  for (const [key, d] of Object.entries(decl)) {
    const v = Object.hasOwn(given, key) ? given[key] : d.default;
    if (v === undefined) {
      problems.push(`param "${key}" is required`);
      continue;
    }
    if (typeName(v) !== d.type) {
      problems.push(`param "${key}" must be a ${d.type}, not ${JSON.stringify(v)}`);
      continue;
    }
    if (typeof v === "number" && d.min !== undefined && v < d.min) {
      problems.push(`param "${key}" must be at least ${d.min}`);
    } else if (typeof v === "number" && d.max !== undefined && v > d.max) {
      problems.push(`param "${key}" must be at most ${d.max}`);
    } else values[key] = v as ParamValue;
  }
  return { values, problems };
}

/** `typeof`, as a value to compare with a declared type name. */
function typeName(v: unknown): string {
  return typeof v;
}
