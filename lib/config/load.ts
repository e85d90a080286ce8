/**
 * Config text -> Plan. Pure: the caller reads the file and passes the environment. YAML syntax errors and schema
 * errors come back together as one ErrorList, each with file:line:col; a plan is returned only when there are none.
 */
import { type Document, isNode, LineCounter, type Node, parseDocument } from "yaml";
import { ConfigError, ErrorList, type Position } from "../core/errors.ts";
import type { Registry } from "../core/registry.ts";
import type { RoleDef } from "../roles/role.ts";
import { configSchema, normaliseRoles, type Plan, setPlaces } from "./plan.ts";
import { Context, INVALID, MAX_ERRORS } from "./schema.ts";
import { checkYamlText, checkYamlTree, CONFIG_YAML_LIMITS, textPos } from "./yaml_limits.ts";

/** Config files larger than this are refused before parsing. */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

export const EMBEDDED_SOURCE = "<embedded default>";

export interface LoadOptions {
  /** Name used in error positions. */
  file: string;
  roles: Registry<RoleDef>;
  env?: (name: string) => string | undefined;
}

/** Parses and validates config text; throws ErrorList<ConfigError> listing every problem. */
export function loadConfig(text: string, options: LoadOptions): Plan {
  const { file, roles } = options;
  const env = options.env ?? (() => undefined);
  const tooLarge = checkYamlText(text, CONFIG_YAML_LIMITS, "config");
  if (tooLarge) {
    const { line, col } = textPos(text, tooLarge.offset);
    throw new ErrorList(
      [new ConfigError(tooLarge.message, { file, line, col })],
      `${file}: 1 error in config`,
    );
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter: lines,
    prettyErrors: false,
    uniqueKeys: false,
    strict: true,
  });
  const ctx = new Context(
    file,
    lines,
    env,
    (alias) => (alias as unknown as { resolve(d: unknown): Node }).resolve(doc) ?? null,
  );

  for (const problem of [...doc.errors, ...doc.warnings]) {
    const message = problem.code === "MULTIPLE_DOCS"
      ? "A config file holds one document; another starts here"
      : problem.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
    ctx.error(problem.pos[0], "", `YAML: ${message}`);
  }
  // Before the schema resolves aliases (each a walk of the whole document) and walks every mapping.
  const tooBig = doc.errors.length
    ? null
    : checkYamlTree(doc.contents as Node | null, CONFIG_YAML_LIMITS, "config");
  if (tooBig) ctx.error(tooBig.offset, "", tooBig.message);
  // A document that is not valid YAML gives no tree worth checking: report the syntax alone.
  const checked = doc.errors.length || tooBig ? INVALID : configSchema(roles).check({
    node: doc.contents as Node | null,
    anchor: 0,
    path: "",
  }, ctx);

  if (ctx.errors.length || checked === INVALID) {
    const errors = [...ctx.errors];
    if (ctx.dropped) {
      const last = errors[errors.length - 1];
      errors.push(new ConfigError(`${ctx.dropped} more errors not shown (limit ${MAX_ERRORS})`, last));
    }
    throw new ErrorList(errors, `${file}: ${errors.length} error${errors.length === 1 ? "" : "s"} in config`);
  }

  const { name, roles: roleNames, status, log, shutdown, process, ...sections } = checked;
  const plan: Plan = deepFreeze({
    source: file,
    name,
    roles: normaliseRoles(roleNames, roles),
    status,
    log,
    shutdown,
    process,
    sections,
  });
  setPlaces(plan, { locate: (keys) => placeOf(doc, lines, file, keys), flags: {} });
  return plan;
}

/** The value at `keys`, else the nearest parent the file writes; null when not even the first key is written. */
function placeOf(
  doc: Document,
  lines: LineCounter,
  file: string,
  keys: readonly (string | number)[],
): Position | null {
  for (let n = keys.length; n > 0; n--) {
    const node = doc.getIn(keys.slice(0, n), true);
    if (isNode(node) && node.range) return { file, ...lines.linePos(node.range[0]) };
  }
  return null;
}
function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
