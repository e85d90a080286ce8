/**
 * Property tests of the DiProNN program language, which sessions upload: any text gives a program or an ErrorList
 * of ProgramErrors (never another exception), every program the printer writes parses back to the same tree, and the
 * YAML form gives trees the text printer can write.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ErrorList } from "../../lib/core/errors.ts";
import {
  MAX_ERRORS,
  type Program,
  ProgramError,
  type Statement,
  stripPositions,
  type Value,
} from "../../lib/dipronn/ast.ts";
import { parseProgram } from "../../lib/dipronn/parser.ts";
import { printProgram } from "../../lib/dipronn/printer.ts";
import { parseYamlProgram } from "../../lib/dipronn/yaml.ts";
import { stringify } from "yaml";
import { anyText, onlyThrows, params } from "./_fuzz.ts";

const AT = { line: 0, col: 0 };
const FILE = "fuzz.dipronn";

const name = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,6}(\.[A-Za-z_][A-Za-z0-9_]{0,6}){0,2}$/);
const number = fc.oneof(
  fc.integer().map(String),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map(String),
);
const text = anyText(12).filter((s) => !s.includes("\n"));

const value: fc.Arbitrary<Value> = fc.letrec<{ value: Value }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    text.map((t) => ({ kind: "string" as const, text: t, pos: AT })),
    number.map((t) => ({ kind: "number" as const, text: t, pos: AT })),
    name.map((t) => ({ kind: "name" as const, text: t, pos: AT })),
    fc.record({ name, args: fc.array(tie("value"), { maxLength: 3 }) }).map(({ name, args }) => ({
      kind: "call" as const,
      name,
      args,
      pos: AT,
    })),
  ),
})).value;

/** Statements at nesting `depth` (0: top level, where a statement may not be named Project). */
function statements(depth: number): fc.Arbitrary<Statement[]> {
  const key = depth === 0 ? name.filter((n) => n !== "Project") : name;
  const simple: fc.Arbitrary<Statement>[] = [
    fc.record({ key, values: fc.array(value, { minLength: 1, maxLength: 3 }) }).map((a) => ({
      kind: "attr" as const,
      ...a,
      pos: AT,
    })),
    key.map((n) => ({ kind: "flag" as const, name: n, pos: AT })),
  ];
  const block = depth >= 2 ? [] : [
    fc.record({
      type: fc.constantFrom("AP" as const, "VM" as const),
      header: fc.array(fc.record({ key: name, value }), { maxLength: 2 }),
      body: statements(depth + 1),
    }).map(({ type, header, body }) => ({
      kind: "block" as const,
      type,
      header: header.map((h) => ({ kind: "attr" as const, key: h.key, values: [h.value], pos: AT })),
      body,
      pos: AT,
    })),
  ];
  return fc.array(fc.oneof(...simple, ...block), { maxLength: depth === 0 ? 6 : 3 });
}

const program: fc.Arbitrary<Program> = fc.record({
  project: fc.option(name.map((n) => ({ name: n, pos: AT }))),
  body: statements(0),
}).map((p) => ({ file: FILE, ...p }));

/** Words of the language, good and bad, so that random text reaches the parser's deeper states. */
const soup = fc.array(
  fc.oneof(
    fc.constantFrom("{", "}", "(", ")", ";", ",", "=", "\n", " ", "AP", "VM", "Project", "use_RTP", "#c\n"),
    fc.constantFrom('"open', "1.2.3", "a.", "-", "1e", "@", "\t", "\r", '"\\"', "\0"),
    name,
    number,
    text.map((t) => JSON.stringify(t)),
  ),
  { maxLength: 60 },
).map((words) => words.join(" "));

function parsed(source: string): Program | undefined {
  const p = onlyThrows(() => parseProgram(source, FILE), ErrorList);
  if (p === undefined) {
    try {
      parseProgram(source, FILE);
    } catch (error) {
      const list = error as ErrorList;
      assert.ok(
        list.errors.length > 0 && list.errors.length <= MAX_ERRORS + 1,
        `${list.errors.length} errors`,
      );
      for (const e of list.errors) assert.ok(e instanceof ProgramError);
    }
  }
  return p;
}

Deno.test("parseProgram gives a program or an ErrorList for any text", () => {
  fc.assert(
    fc.property(fc.oneof(anyText(200), soup), (source) => {
      parsed(source);
    }),
    params(2000),
  );
});

Deno.test("printProgram writes text that parseProgram reads back to the same tree", () => {
  fc.assert(
    fc.property(program, (p) => {
      const back = parseProgram(printProgram(p), FILE);
      assert.deepEqual(stripPositions(back), stripPositions(p));
    }),
    params(2000),
  );
});

Deno.test("parseProgram then printProgram is a fixed point on any text that parses", () => {
  fc.assert(
    fc.property(soup, (source) => {
      const p = parsed(source);
      if (!p) return;
      const printed = printProgram(p);
      assert.deepEqual(stripPositions(parseProgram(printed, FILE)), stripPositions(p));
    }),
    params(2000),
  );
});

const yamlScalar = fc.oneof(text, number.map(Number), fc.boolean(), name, fc.constant(null));
const ports = fc.oneof(
  fc.array(value, { minLength: 1, maxLength: 2 }).map((vs) => vs.map(valueWritten).join(", ")),
  fc.array(value.map(valueWritten), { maxLength: 2 }),
  text,
);
const yamlAp = fc.record({
  name: fc.oneof(name, text),
  ref: fc.oneof(name, text, yamlScalar),
  inputs: ports,
  outputs: ports,
  params: fc.dictionary(fc.oneof(name, text), fc.oneof(yamlScalar, fc.array(yamlScalar, { maxLength: 2 })), {
    maxKeys: 3,
  }),
}, { requiredKeys: ["name"] });
const yamlProgram = fc.record({
  project: fc.oneof(name, text, yamlScalar),
  owner: yamlScalar,
  notifications: fc.oneof(name, yamlScalar),
  use_RTP: fc.oneof(fc.boolean(), yamlScalar),
  aps: fc.array(yamlAp, { maxLength: 3 }),
  vms: fc.array(fc.record({ name, ref: fc.oneof(name, text), aps: fc.array(yamlAp, { maxLength: 2 }) }), {
    maxLength: 2,
  }),
}, { requiredKeys: [] });

function valueWritten(v: Value): string {
  switch (v.kind) {
    case "string":
      return `"${v.text.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
    case "call":
      return `${v.name}(${v.args.map(valueWritten).join(", ")})`;
    default:
      return v.text;
  }
}

Deno.test("parseYamlProgram gives a program or an ErrorList for any text", () => {
  fc.assert(
    fc.property(
      fc.oneof(anyText(200), yamlProgram.map((y) => stringify(y))),
      (source) => {
        onlyThrows(() => parseYamlProgram(source, "fuzz.yaml"), ErrorList);
      },
    ),
    params(1200),
  );
});

Deno.test("parseYamlProgram gives trees that printProgram writes as a text program with the same tree", () => {
  fc.assert(
    fc.property(yamlProgram, (y) => {
      const p = onlyThrows(() => parseYamlProgram(stringify(y), "fuzz.yaml"), ErrorList);
      if (!p) return;
      const printed = printProgram(p);
      const back = onlyThrows(() => parseProgram(printed, FILE), ErrorList);
      assert.ok(back, `the YAML form's tree printed as a program that does not parse:\n${printed}`);
      assert.deepEqual(stripPositions(back), stripPositions(p));
    }),
    params(1200),
  );
});
