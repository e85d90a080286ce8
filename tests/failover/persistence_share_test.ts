/** What PersistenceTable offers sharing: the onSet hook, import without it, and export. */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { PersistenceTable } from "../../lib/scheduler/persistence.ts";

function table(timeoutMs = 1000, maxEntries = 100) {
  const clock = new ManualClock(0);
  const told: string[] = [];
  const t = new PersistenceTable(clock, { timeoutMs, maxEntries, onSet: (c, k) => told.push(`${c}>${k}`) });
  return { clock, told, t };
}

Deno.test("PersistenceTable onSet tells a new entry, a moved one, and a used one only every half timeout", () => {
  const { clock, told, t } = table();
  t.set("a", "s1");
  t.set("a", "s1");
  clock.advance(499);
  t.set("a", "s1");
  assert.deepEqual(told, ["a>s1"]);
  clock.advance(1);
  t.set("a", "s1");
  assert.deepEqual(told, ["a>s1", "a>s1"]);
  t.set("a", "s2");
  assert.deepEqual(told, ["a>s1", "a>s1", "a>s2"]);
});

Deno.test("PersistenceTable import sets entries with the local timeout and tells nobody", () => {
  const { clock, told, t } = table();
  assert.equal(t.import([["a", "s1"], ["b", "s2"]]), 2);
  assert.deepEqual(told, []);
  assert.equal(t.get("b"), "s2");
  // Used here soon after, an imported entry is not told back; moved, it is.
  t.set("a", "s1");
  assert.deepEqual(told, []);
  t.set("a", "s2");
  assert.deepEqual(told, ["a>s2"]);
  clock.advance(999);
  assert.equal(t.get("b"), "s2", "alive for the local timeout");
  clock.advance(1000);
  assert.equal(t.get("b"), undefined, "an imported entry expires like any other");
});

Deno.test("PersistenceTable import keeps the maxEntries bound and the index forget uses", () => {
  const { t } = table(1000, 2);
  t.import([["a", "s1"], ["b", "s1"], ["c", "s2"]]);
  assert.equal(t.size, 2);
  assert.equal(t.get("a"), undefined, "the least recently used made room");
  assert.equal(t.forget("s1"), 1);
  assert.equal(t.get("b"), undefined);
  assert.equal(t.get("c"), "s2");
});

Deno.test("PersistenceTable export gives live entries, most recently used first, up to max", () => {
  const { clock, t } = table();
  t.set("a", "s1");
  clock.advance(10);
  t.set("b", "s2");
  t.set("c", "s1");
  clock.advance(500);
  t.get("a");
  assert.deepEqual(t.export(), [["a", "s1"], ["c", "s1"], ["b", "s2"]]);
  assert.deepEqual(t.export(2), [["a", "s1"], ["c", "s1"]]);
  clock.advance(600);
  assert.deepEqual(t.export(), [["a", "s1"]], "expired entries are not exported");
});
