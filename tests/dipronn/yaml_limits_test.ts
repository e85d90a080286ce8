/**
 * Big YAML uploads are refused before anything quadratic runs: the yaml library's duplicate-key check compared each
 * key with every earlier one (a 1 MiB mapping took tens of seconds) and each alias walks the whole document.
 */
import assert from "node:assert/strict";
import { ErrorList } from "../../lib/core/errors.ts";
import { parseYamlProgram } from "../../lib/dipronn/yaml.ts";
import { MAX_PROGRAM_BYTES } from "../../lib/dipronn/parser.ts";

function refusal(text: string): string[] {
  try {
    parseYamlProgram(text, "up.yaml");
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected an ErrorList, got ${error}`);
    return error.errors.map((e) => e.format());
  }
  assert.fail("expected the upload to be refused");
}

const head = "project: p\naps:\n  - name: A\n    ref: localservice.counter\n    params:\n";

Deno.test("parseYamlProgram refuses a 1 MiB mapping of parameters at once, naming the limit", () => {
  let text = head;
  for (let i = 0; text.length < MAX_PROGRAM_BYTES - 40; i++) text += `      k${i}: 1\n`;
  const started = performance.now();
  const errors = refusal(text);
  const ms = performance.now() - started;
  assert.deepEqual(errors, [
    "up.yaml:20001:16: Cannot read program: more than 20000 lines and flow items (the limit of programs)",
  ]);
  // Generous: the refusal reads the text once; the quadratic check it replaces took tens of seconds here.
  assert.ok(ms < 5000, `took ${ms.toFixed(0)} ms`);
});

Deno.test("parseYamlProgram refuses one flow mapping of many keys by its items", () => {
  const keys = Array.from({ length: 30_000 }, (_, i) => `k${i}: 1`).join(", ");
  const [error] = refusal(`${head}      {${keys}}\n`);
  assert.match(error, /^up\.yaml:6:\d+: Cannot read program: more than 20000 lines and flow items/);
});

Deno.test("parseYamlProgram refuses a mapping of more than 1000 keys at the first key over", () => {
  let text = head;
  for (let i = 0; i < 1001; i++) text += `      k${i}: 1\n`;
  assert.deepEqual(refusal(text), [
    "up.yaml:1006:7: Cannot read program: a mapping with 1001 keys (at most 1000)",
  ]);
});

Deno.test("parseYamlProgram still points a repeated key at its place", () => {
  assert.deepEqual(refusal(`${head}      a: 1\n      b: 2\n      a: 3\n`), [
    "up.yaml:8:7: YAML: Map keys must be unique",
  ]);
});

Deno.test("parseYamlProgram refuses aliases", () => {
  assert.deepEqual(refusal(`${head}      a: &x 1\n      b: *x\n`), [
    "up.yaml:7:10: Cannot read program: aliases (*name) are not allowed here",
  ]);
});
