import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";

const roles = builtinRoles();

function errorsOf(text: string): string[] {
  try {
    loadConfig(text, { file: "big.yaml", roles });
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected ErrorList, got ${error}`);
    return error.errors.map((e) => e.format());
  }
  assert.fail("config was accepted");
}

Deno.test("loadConfig refuses a config of more lines than its limit before parsing it", () => {
  const text = "log:\n" + "  # a comment\n".repeat(60_000);
  assert.deepEqual(errorsOf(text), [
    "big.yaml:50001:14: Cannot read config: more than 50000 lines and flow items (the limit of configs)",
  ]);
});

Deno.test("loadConfig refuses more aliases than its limit before resolving any", () => {
  const aliases = Array.from({ length: 101 }, () => "*s").join(", ");
  assert.deepEqual(errorsOf(`x: &s 1\nrelay:\n  targets: [${aliases}]\n`), [
    "big.yaml:3:413: Cannot read config: more than 100 aliases",
  ]);
});
