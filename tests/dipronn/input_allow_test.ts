import assert from "node:assert/strict";
import { ErrorList } from "../../lib/core/errors.ts";
import { parseProgram } from "../../lib/dipronn/parser.ts";
import { printProgram } from "../../lib/dipronn/printer.ts";
import { describeSession } from "../../lib/dipronn/session.ts";

const program = (input: string) =>
  `Project p;\n{ AP name="C" ref=localservice.counter; inputs = in(${input}); }\n`;

Deno.test("describeSession reads the source prefixes a DIPRONN_INPUT lets in", () => {
  const text = program(`DIPRONN_INPUT(7000, "10.0.0.0/8", "2001:db8::/32")`);
  const spec = describeSession(parseProgram(text, "t.dipronn"));
  assert.deepEqual(spec.aps[0].inputs[0].external?.allow, ["10.0.0.0/8", "2001:db8::/32"]);
  assert.deepEqual(
    describeSession(parseProgram(program("DIPRONN_INPUT(7000)"), "t.dipronn")).aps[0].inputs[0]
      .external?.allow,
    [],
  );
  assert.equal(
    printProgram(parseProgram(text, "t.dipronn")).includes(`DIPRONN_INPUT(7000, "10.0.0.0/8"`),
    true,
  );
});

Deno.test("describeSession refuses a source prefix it cannot read, at its place", () => {
  const errors: string[] = [];
  try {
    describeSession(parseProgram(program(`DIPRONN_INPUT(7000, "10.0.0.300/8", 12)`), "t.dipronn"));
  } catch (error) {
    assert.ok(error instanceof ErrorList);
    errors.push(...error.errors.map((e) => e.format()));
  }
  assert.equal(errors.length, 2, errors.join("\n"));
  assert.match(errors[0], /^t\.dipronn:2:73: Cannot read source prefix "10\.0\.0\.300\/8": /);
  assert.match(
    errors[1],
    /^t\.dipronn:2:89: DIPRONN_INPUT\(port, "prefix", \.\.\.\) takes source prefixes as strings/,
  );
});
