import assert from "node:assert/strict";
import { UnknownNameError } from "../../lib/core/errors.ts";
import { Registry } from "../../lib/core/registry.ts";

interface Picker {
  readonly name: string;
  readonly weight: number;
}

const roundRobin: Picker = { name: "round-robin", weight: 1 };
const leastLoad: Picker = { name: "least-load", weight: 2 };

Deno.test("Registry.get returns the item registered under a name", () => {
  const registry = new Registry<Picker>("picker", [roundRobin, leastLoad]);
  assert.equal(registry.get("least-load"), leastLoad);
  assert.equal(registry.has("round-robin"), true);
  assert.equal(registry.has("random"), false);
  assert.deepEqual(registry.names(), ["round-robin", "least-load"]);
  assert.deepEqual(registry.values(), [roundRobin, leastLoad]);
});

Deno.test("Registry.get throws UnknownNameError listing the known names", () => {
  const registry = new Registry<Picker>("picker", [roundRobin, leastLoad]);
  assert.throws(() => registry.get("random"), (e: unknown) => {
    assert.ok(e instanceof UnknownNameError, `expected UnknownNameError, got ${e}`);
    assert.equal(e.message, 'Unknown picker "random" (known: round-robin, least-load)');
    assert.equal(e.kind, "picker");
    assert.equal(e.unknown, "random");
    assert.deepEqual(e.known, ["round-robin", "least-load"]);
    return true;
  });
});

Deno.test("Registry.get on an empty registry says none are known", () => {
  const registry = new Registry<Picker>("role");
  assert.throws(() => registry.get("relay"), { message: 'Unknown role "relay" (known: none)' });
});

Deno.test("Registry.register throws when a name is registered twice", () => {
  const registry = new Registry<Picker>("picker").register(roundRobin);
  assert.throws(
    () => registry.register({ name: "round-robin", weight: 9 }),
    /Picker "round-robin" is registered twice$/,
  );
  assert.equal(registry.get("round-robin"), roundRobin, "the first registration stays");
  assert.throws(() => new Registry<Picker>("picker", [leastLoad, leastLoad]), /registered twice/);
});
