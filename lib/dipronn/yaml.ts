/**
 * The YAML form of a DiProNN program. It gives the same syntax tree as the text form, so one set of checks and one
 * session plan serve both:
 *
 *   project: synchro_infrastructure.first_tests
 *   owner: Tom Rebok
 *   use_RTP: true
 *   aps:
 *     - name: Dup_V
 *       ref: localservice.duplicator
 *       inputs: [V_in(DIPRONN_INPUT(10000))]
 *       outputs: [output1(Sync_high.in1), output2(Transcode.in)]
 *       params: {precision: 0.001}
 *   vms:
 *     - {name: my_VM1, ref: my_VM1_image, node: prague, aps: [...]}
 *
 * Port lists are written as in the language (a string, or a list of strings), parsed at their place in the file.
 */
import {
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseDocument,
  type Scalar,
  type YAMLMap,
} from "yaml";
import { suggest } from "../core/suggest.ts";
import type { Attr, Block, Pos, Program, Statement, Value } from "./ast.ts";
import { addError, ProgramError } from "./ast.ts";
import { MAX_PROGRAM_BYTES, parseValueList, programErrors } from "./parser.ts";
import { checkYamlText, checkYamlTree, PROGRAM_YAML_LIMITS, textPos } from "../config/yaml_limits.ts";

const TOP_KEYS = ["project", "owner", "notifications", "on_node_loss", "use_RTP", "aps", "vms"];
const AP_KEYS = ["name", "ref", "inputs", "outputs", "params"];
const VM_KEYS = ["name", "ref", "node", "aps"];
/** What the language reads as one name or one number; the YAML form keeps to them so that print gives a program. */
const NAME = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;
const NUMBER = /^-?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?$/;

export function parseYamlProgram(text: string, file: string): Program {
  const errors: ProgramError[] = [];
  if (text.length > MAX_PROGRAM_BYTES) {
    errors.push(
      new ProgramError(`Program is larger than ${MAX_PROGRAM_BYTES} bytes`, { file, line: 1, col: 1 }),
    );
    throw programErrors(errors);
  }
  const fail = (message: string, pos: Pos) => addError(errors, message, { file, ...pos });
  const tooLarge = checkYamlText(text, PROGRAM_YAML_LIMITS, "program");
  if (tooLarge) {
    fail(tooLarge.message, textPos(text, tooLarge.offset));
    throw programErrors(errors);
  }
  const lines = new LineCounter();
  // Keys are checked for repeats below, after the size limits: the library's own check is quadratic.
  const doc = parseDocument(text, {
    lineCounter: lines,
    prettyErrors: false,
    uniqueKeys: false,
    strict: true,
  });
  const posOf = (offset: number): Pos => {
    const p = lines.linePos(offset);
    return { line: p.line, col: p.col };
  };
  const where = (node: Node | null | undefined): Pos => posOf(node?.range?.[0] ?? 0);
  for (const e of doc.errors) {
    fail(`YAML: ${e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "")}`, posOf(e.pos[0]));
  }
  if (doc.errors.length) throw programErrors(errors);
  const tooBig = checkYamlTree(
    doc.contents as Node | null,
    PROGRAM_YAML_LIMITS,
    "program",
    (key) => fail("YAML: Map keys must be unique", where(key)),
  );
  if (tooBig) fail(tooBig.message, posOf(tooBig.offset));
  if (errors.length) throw programErrors(errors);

  const root = doc.contents;
  if (!isMap(root)) {
    fail("A program in YAML is a mapping with project, aps and so on", where(root as Node));
    throw programErrors(errors);
  }

  /** A scalar as a value of the language: strings stay strings, numbers numbers, booleans names. */
  const scalar = (node: unknown): Exclude<Value, { kind: "call" }> | null => {
    if (!isScalar(node)) {
      fail("Expected a single value here", where(node as Node));
      return null;
    }
    const pos = where(node);
    const v = (node as Scalar).value;
    if (typeof v === "number") {
      // 0x10, .5 and +5 are YAML numbers the language writes as 16, 0.5 and 5; .inf and .nan it cannot write.
      const source = String((node as Scalar).source ?? v);
      const text = NUMBER.test(source) ? source : String(v);
      if (NUMBER.test(text)) return { kind: "number", text, pos };
      fail(`Expected a finite number, not ${source}`, pos);
      return null;
    }
    if (typeof v === "boolean") return { kind: "name", text: String(v), pos };
    if (typeof v === "string" && v.includes("\n")) {
      fail("A string in a program is one line", pos);
      return null;
    }
    if (typeof v === "string") return { kind: "string", text: v, pos };
    fail("Expected a string, a number or true/false", pos);
    return null;
  };

  const checkKeys = (map: YAMLMap, known: string[], what: string) => {
    for (const item of map.items) {
      const key = String((item.key as Scalar)?.value);
      if (!known.includes(key)) {
        fail(`Unknown ${what} key "${key}"${suggest(key, known)}`, where(item.key as Node));
      }
    }
  };
  const get = (map: YAMLMap, key: string) => map.items.find((i) => (i.key as Scalar)?.value === key);

  /** `inputs:` / `outputs:` as a string or a list of strings in the language's own notation. */
  const ports = (node: unknown): Value[] => {
    const items = isSeq(node) ? node.items : [node];
    const out: Value[] = [];
    for (const item of items) {
      if (!isScalar(item) || typeof item.value !== "string") {
        fail("Expected ports as text, such as in or out(Next.in)", where(item as Node));
        continue;
      }
      const at = where(item);
      const source = text.slice(item.range?.[0] ?? 0, item.range?.[1] ?? 0);
      if (item.type === "BLOCK_FOLDED" || item.type === "BLOCK_LITERAL" || source.includes("\n")) {
        fail("Ports are written on one line, plain or quoted (not as a block or folded over lines)", at);
        continue;
      }
      const quoted = item.type === "QUOTE_DOUBLE" || item.type === "QUOTE_SINGLE";
      // A quoted text's escapes (\" or '') are longer in the file than in the value: each of the value's
      // columns is mapped to its place in the file, so that a mistake is shown where it is written.
      const cols = quoted ? quotedColumns(source, item.type === "QUOTE_DOUBLE") : null;
      const colOf = cols ? (col: number) => at.col + (cols[col - 1] ?? cols[cols.length - 1] + 1) : undefined;
      out.push(...parseValueList(item.value, file, quoted ? { ...at, col: at.col + 1 } : at, errors, colOf));
    }
    return out;
  };

  const header = (map: YAMLMap, what: string): Attr[] => {
    const out: Attr[] = [];
    for (const key of ["name", "ref"]) {
      const pair = get(map, key);
      if (!pair) continue;
      const v = scalar(pair.value);
      if (!v) continue;
      const value: Value = key === "ref" && v.kind === "string" && NAME.test(v.text)
        ? { kind: "name", text: v.text, pos: v.pos }
        : v;
      out.push({ kind: "attr", key, values: [value], pos: where(pair.key as Node) });
    }
    if (!get(map, "name")) fail(`The ${what} has no name`, where(map));
    return out;
  };

  const apBlock = (node: unknown): Block | null => {
    if (!isMap(node)) {
      fail("An AP is a mapping with name, ref, inputs, outputs and params", where(node as Node));
      return null;
    }
    checkKeys(node, AP_KEYS, "AP");
    const body: Statement[] = [];
    for (const key of ["inputs", "outputs"]) {
      const pair = get(node, key);
      const values = pair ? ports(pair.value) : [];
      // An empty list is as if the key were absent: the language has no way to write `outputs =` with nothing.
      if (pair && values.length) body.push({ kind: "attr", key, values, pos: where(pair.key as Node) });
    }
    const params = get(node, "params");
    if (params && !isMap(params.value)) {
      fail("params is a mapping of parameter: value", where(params.value as Node));
    } else if (params) {
      for (const p of (params.value as YAMLMap).items) {
        // The tree must be one the language can write (print gives a program): a name, then at least one value.
        const key = String((p.key as Scalar)?.value);
        if (!NAME.test(key)) {
          fail(`Parameter "${key}" is not a name (letters, digits, _ and dots)`, where(p.key as Node));
          continue;
        }
        const values = isSeq(p.value) ? p.value.items.map(scalar) : [scalar(p.value)];
        if (!values.length) fail(`Parameter ${key} has no value`, where(p.value as Node));
        if (!values.length || values.some((v) => !v)) continue;
        body.push({
          kind: "attr",
          key,
          values: values as Value[],
          pos: where(p.key as Node),
        });
      }
    }
    return { kind: "block", type: "AP", header: header(node, "AP"), body, pos: where(node) };
  };

  const list = (node: unknown, what: string): unknown[] => {
    if (isSeq(node)) return node.items;
    fail(`${what} is a list`, where(node as Node));
    return [];
  };

  checkKeys(root, TOP_KEYS, "program");
  let project: Program["project"] = null;
  const body: Statement[] = [];
  for (const item of root.items) {
    const key = String((item.key as Scalar)?.value);
    const kpos = where(item.key as Node);
    if (key === "project") {
      const v = scalar(item.value);
      if (v && !NAME.test(v.text)) {
        fail(`project is a name such as lecture.first_tests, not ${v.text}`, v.pos);
      } else if (v) project = { name: v.text, pos: kpos };
    } else if (key === "owner" || key === "notifications" || key === "on_node_loss") {
      const v = scalar(item.value);
      if (v) {
        const value: Value = key !== "owner" && v.kind === "string" && NAME.test(v.text)
          ? { ...v, kind: "name" }
          : v;
        body.push({ kind: "attr", key, values: [value], pos: kpos });
      }
    } else if (key === "use_RTP") {
      const v = (item.value as Scalar)?.value;
      if (typeof v !== "boolean") fail("use_RTP is true or false", where(item.value as Node));
      else if (v) body.push({ kind: "flag", name: "use_RTP", pos: kpos });
    } else if (key === "aps") {
      for (const ap of list(item.value, "aps")) {
        const b = apBlock(ap);
        if (b) body.push(b);
      }
    } else if (key === "vms") {
      for (const vm of list(item.value, "vms")) {
        if (!isMap(vm)) {
          fail("A VM is a mapping with name, ref and aps", where(vm as Node));
          continue;
        }
        checkKeys(vm, VM_KEYS, "VM");
        const members: Statement[] = [];
        // A VM group's pin is a statement of its block in the language: `node = "prague"` before its APs.
        const node = get(vm, "node");
        const pin = node ? scalar(node.value) : null;
        if (node && pin) {
          members.push({ kind: "attr", key: "node", values: [pin], pos: where(node.key as Node) });
        }
        const aps = get(vm, "aps");
        for (const ap of aps ? list(aps.value, "aps") : []) {
          const b = apBlock(ap);
          if (b) members.push(b);
        }
        body.push({ kind: "block", type: "VM", header: header(vm, "VM"), body: members, pos: where(vm) });
      }
    }
  }
  if (errors.length) throw programErrors(errors);
  return { file, project, body };
}

/**
 * For a quoted YAML scalar's source (quotes included, one line), the offset in it of each UTF-16 unit of its
 * value, and one past the last: `''` in single quotes and `\x` escapes in double quotes stand for one character
 * (\xHH, \uHHHH and \UHHHHHHHH for one code point).
 */
export function quotedColumns(source: string, double: boolean): number[] {
  const cols: number[] = [];
  let i = 1;
  const end = source.length - 1;
  while (i < end) {
    const c = source[i];
    if (!double && c === "'" && source[i + 1] === "'") {
      cols.push(i);
      i += 2;
    } else if (double && c === "\\") {
      const n = source[i + 1] === "x" ? 4 : source[i + 1] === "u" ? 6 : source[i + 1] === "U" ? 10 : 2;
      const hex = n > 2 ? parseInt(source.slice(i + 2, i + n), 16) : 0;
      cols.push(i);
      if (hex > 0xffff) cols.push(i);
      i += n;
    } else {
      cols.push(i);
      if (c.charCodeAt(0) >= 0xd800 && c.charCodeAt(0) <= 0xdbff) cols.push(++i);
      i++;
    }
  }
  cols.push(end);
  return cols;
}
